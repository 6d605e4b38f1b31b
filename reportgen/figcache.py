"""Finished figures of an image, kept in the cache so a warm rerun links them instead of drawing them again.

An image's figures (thumbnail, feature-map panels, CAM overlays) and its raw-maps file are a pure function of its
cached results and of how they are drawn. The key covers all of it: the result keys, the report options, the
class names, the method plan and layers, the image's id/path/label, and the source of reportgen's drawing code
(so any change to the drawing redraws). A warm run of 200 images spent 80% of its time redrawing.

Layout: ``CACHE_DIR/figures/ab/<key>/`` holds the image's files at their paths in the report plus ``entry.json``
(the report entry and each file's SHA-256). Files are hard links of the drawn ones, and restoring links them into
the report again (17x faster than writing 1,600 files here; a copy where linking is not possible). A folder is
built under a temporary name and renamed into place, so a crash never leaves half an entry; every file's
checksum is verified before use, so a damaged one is redrawn, never shown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from reportgen.atomic import sweep, temp_name
from reportgen.cache import CacheInfo, cache_key
from reportgen.config import ReportOptions
from reportgen.images import ImageRecord
from reportgen.results import ResultKey, RunStats

__all__ = ["figure_key", "FigureStore"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _drawing_code_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in ("drawing.py", "figures.py", "mapscales.py", "tensorfile.py", "figcache.py", "names.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def figure_key(rec: ImageRecord, keys: Mapping[ResultKey, str], opts: ReportOptions, class_names: Sequence[str],
               cam_methods: Sequence[tuple[str, str, bool]], cam_layers: Sequence[str], fm_layers: Sequence[str],
               true_index: int | None, scales: Mapping[str, Sequence[float]] | None = None) -> str:
    """The key of one image's drawn figures.

    Args:
        scales: the run's dataset-wide colour scales (``report.normalize: per_method | shared``): they change
            every panel's colours, so an image is redrawn when another image moves a scale.
    """
    names = hashlib.sha256("\n".join(class_names).encode("utf-8")).hexdigest()
    return cache_key({
        "what": "figures", "results": sorted(keys.values()), "image": [rec.id, rec.rel, rec.label],
        "report": [opts.colormap, opts.alpha, opts.image_size, opts.normalize],
        "scales": {k: list(v) for k, v in sorted((scales or {}).items())}, "class_names": names,
        "cams": [list(m) for m in cam_methods], "cam_layers": list(cam_layers), "fm_layers": list(fm_layers),
        "true_index": true_index, "drawing": _drawing_code_digest(),
    })


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(src, dst)


def _files_of(root: Path, entry: dict) -> list[str]:
    """The files ``draw_image`` wrote for one image: its assets folder and its raw-maps file."""
    folder = root / "assets" / "images" / entry["id"]
    return [*sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()), entry["maps_file"]]


class FigureStore:
    """The drawn figures of images, by ``figure_key``; this run's use is counted in ``stats`` (``figures_*``)."""

    def __init__(self, root: Path, stats: RunStats | None = None):
        self.root = Path(root)
        self.stats = stats if stats is not None else RunStats()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def store(self, key: str, report_root: Path, entry: dict) -> None:
        """Keep the files one image's drawing wrote under ``report_root``, with its report entry."""
        final = self._dir(key)
        if final.is_dir():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / temp_name("tmp", key[:16])
        try:
            files = {}
            for rel in _files_of(report_root, entry):
                _link(report_root / rel, tmp / rel)
                files[rel] = _sha256(tmp / rel)
            (tmp / "entry.json").write_text(json.dumps({"entry": entry, "files": files}), encoding="utf-8")
            os.rename(tmp, final)
            self.stats.figures_stored += 1
        except OSError as exc:  # kept figures are an optimisation: never fail a run over them
            if not final.is_dir():
                log.info("could not keep the drawn figures of %s in %s: %s", entry.get("path"), self.root, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def has(self, key: str) -> bool:
        """Whether the figures of ``key`` are kept (not checked: ``restore`` verifies them)."""
        return (self._dir(key) / "entry.json").is_file()

    def restore(self, key: str, report_root: Path) -> dict | None:
        """Link one image's kept files into ``report_root`` and return its report entry; None when not kept (or
        damaged: then the entry is removed and the image is drawn again)."""
        folder = self._dir(key)
        try:
            record = json.loads((folder / "entry.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = None
        try:
            files = record["files"] if record else None
            if not files or any(_sha256(folder / rel) != digest for rel, digest in files.items()):
                raise ValueError("checksum mismatch")
            root = report_root.resolve()
            for rel in files:
                target = (report_root / rel).resolve()
                if root not in target.parents:  # names come from the cache: never write outside the report
                    raise ValueError(f"file name {rel!r} leads outside the report")
                _link(folder / rel, report_root / rel)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("kept figures %s are damaged (%s); drawing them again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        self.stats.figures_restored += 1
        return record["entry"]

    def sweep(self) -> int:
        """Remove the half-built entries of killed runs; how many."""
        if not self.root.is_dir():
            return 0
        return sum(sweep(sub) for sub in self.root.iterdir() if sub.is_dir())

    def info(self) -> CacheInfo:
        entries, size = 0, 0
        for entry in self.root.glob("??/[!.]*/entry.json"):
            entries += 1
            size += sum(p.stat().st_size for p in entry.parent.rglob("*") if p.is_file())
        return CacheInfo(self.root, entries, size)

    def clear(self) -> int:
        """Remove every kept image's figures; how many."""
        removed = sum(1 for _ in self.root.glob("??/[!.]*/entry.json"))
        for sub in self.root.glob("??"):
            shutil.rmtree(sub, ignore_errors=True)
        return removed
