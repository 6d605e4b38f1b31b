"""The files of a comparison (``reportgen.compare``): figures, ``compare.json``, ``compare.xml``, HTML and PDF.

Written like a run's report: into a staging folder beside the output (``publish.open_staging``: only an empty
folder or a comparison reportgen wrote is replaced, and only with ``force``), then swapped into place whole. A run
folder, or the folder of either compared run, is never used as the output.

* ``compare.json``: every number of the comparison (``Comparison.as_dict``), the facts and the gate results.
* ``compare.xml``: JUnit XML for CI: one testsuite ``reportgen compare``, one testcase per gate condition (a
  failed one holds ``<failure message=...>``); with no condition, one passing testcase ``comparison written``.
* ``compare.html`` (opens offline; figures under ``assets/changes/``) and ``compare.pdf`` (same HTML, WeasyPrint).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from reportgen import __version__
from reportgen.api import Run, _index
from reportgen.atomic import swap_into_place, write_text_atomically
from reportgen.checks import CheckResult
from reportgen.compare import CompareResult, Comparison
from reportgen.compare_maps import read_map
from reportgen.errors import RenderError, UsageError
from reportgen.names import file_part, readable_data
from reportgen.outfolder import _real, write_marker

__all__ = ["write_comparison", "junit_xml", "FORMAT"]

FORMAT = 1  # the version of compare.json
TEMPLATE = "compare.html.j2"
SHOWN_ROWS = 100  # rows of a long table in the HTML (compare.json has them all)
MIN_PANEL = 160  # px: the long side of each panel of a side-by-side figure, at least


def _check_output(out: Path, runs: tuple[Run, Run]) -> None:
    """Refuse an output that is, holds or lies inside a compared run, or an existing folder that is not a comparison."""
    target = _real(out)
    for name, run in zip(("RUN_A", "RUN_B"), runs, strict=True):
        folder = _real(run.folder)
        if target == folder or folder in target.parents or target in folder.parents:
            what = "is" if target == folder else ("lies inside" if folder in target.parents else "contains")
            raise UsageError(f"--output {out} {what} {name} {run.folder}; choose a folder of its own for the comparison")
    for name, protected in (("the home folder", _real(Path.home())), ("the working folder", _real(Path.cwd()))):
        if target == protected or target in protected.parents:
            what = "is" if target == protected else "contains"
            raise UsageError(f"--output {out} {what} {name} {protected}; choose a folder of its own for the comparison")
    if out.is_dir() and not out.is_symlink() and os.listdir(out):
        if (out / "manifest.json").exists():
            raise UsageError(f"output folder {out} holds a reportgen run, not a comparison; a comparison never "
                             f"replaces a run: choose another --output")
        if not (out / "compare.json").is_file():
            raise UsageError(f"output folder {out} is not empty and is not a previous comparison (no compare.json); "
                             f"choose an empty or new folder")


def write_comparison(comparison: Comparison, a: Run, b: Run, out: Path, checks: list[CheckResult], *,
                     force: bool = False, pdf: bool = True, top: int = 8) -> CompareResult:
    """Write the comparison's files into ``out`` (see the module docstring) and return what was written.

    Raises:
        UsageError: ``out`` may not be written (a run's folder, a folder of other files, a comparison without
            ``force``).
        RenderError: the HTML, the figures or the PDF could not be written.
    """
    from reportgen.publish import discard, open_staging

    _check_output(out, (a, b))
    staging = open_staging(out, force)
    try:
        figures = _figures(comparison, a, b, staging, top)
        data = _as_data(comparison, a, b, checks, figures)
        data["thumbs"] = _thumbs(comparison.flips[:SHOWN_ROWS], a, staging)
        write_text_atomically(staging / "compare.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
        write_text_atomically(staging / "compare.xml", junit_xml(checks, comparison))
        html = _render_html(data, staging)
        if pdf:
            from reportgen.report import render_pdf

            render_pdf(html, staging / "compare.pdf")
        write_marker(staging, __version__)
        swap_into_place(staging, out)
    except OSError as exc:
        discard(staging)
        raise RenderError(f"cannot write the comparison to {out}: {exc}") from exc
    except BaseException:
        discard(staging)
        raise
    return CompareResult(out, out / "compare.json", out / "compare.xml", out / "compare.html",
                         out / "compare.pdf" if pdf else None, tuple(checks), comparison)


# ----------------------------------------------------------------------------------------------------- data


def _clean(value: Any) -> Any:
    """Plain JSON data: NaN and infinities as null, every string ``readable``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _as_data(c: Comparison, a: Run, b: Run, checks: list[CheckResult], figures: list[dict]) -> dict[str, Any]:
    failed = [r for r in checks if r.failed]
    return readable_data(_clean({
        "format": FORMAT, "tool": "reportgen compare", "reportgen_version": __version__,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": {"passed": not failed, "failed": [r.condition for r in failed], "checks": len(checks)},
        "checks": [asdict(r) for r in checks],
        "run_a": c.run_a, "run_b": c.run_b, "images": c.images, "accuracy": c.accuracy,
        "flips": c.flips, "changes": c.changes, "maps": c.maps, "metrics": c.metrics, "facts": c.facts,
        "figures": figures,
    }))


def junit_xml(checks: list[CheckResult], comparison: Comparison | None = None) -> str:
    """JUnit XML of the gate results: one testsuite ``reportgen compare``, one testcase per condition."""
    failed = [r for r in checks if r.failed]
    suites = ET.Element("testsuites", name="reportgen", tests=str(max(len(checks), 1)), failures=str(len(failed)))
    suite = ET.SubElement(suites, "testsuite", name="reportgen compare", tests=str(max(len(checks), 1)),
                          failures=str(len(failed)), errors="0", skipped="0",
                          timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not checks:
        ET.SubElement(suite, "testcase", classname="reportgen.compare", name="comparison written")
    for r in checks:
        case = ET.SubElement(suite, "testcase", classname="reportgen.compare", name=r.condition)
        if r.failed:
            failure = ET.SubElement(case, "failure", message=r.detail, type="GateFailed")
            failure.text = f"{r.condition}: {r.detail}"
        else:
            ET.SubElement(case, "system-out").text = r.detail
    if comparison is not None:
        a, b = comparison.run_a["folder"], comparison.run_b["folder"]
        ET.SubElement(suite, "system-out").text = (
            f"A: {a}\nB: {b}\n{comparison.images['common']} common images, {len(comparison.flips)} flips")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------------------------------- figures


def _box(run: Run, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The region of a thumb the network saw (``None``: all of it), from the manifest's preprocessing."""
    from reportgen.images import crop_box

    model = run.manifest.get("model", {})
    if model.get("resize", "squash") == "squash":
        return None
    size = model.get("input_size") or [224, 224]
    pre = SimpleNamespace(size=(int(size[0]), int(size[1])), resize=model.get("resize"),
                          crop_pct=float(model.get("crop_pct", 0.875)))
    box = crop_box(width, height, pre)
    return round(box[0]), round(box[1]), round(box[2]), round(box[3])


def _figures(c: Comparison, a: Run, b: Run, root: Path, top: int) -> list[dict]:
    """A | B | B − A for the ``top`` most changed maps (one per image): overlays on A's photo, each map min-max
    normalized at the compared (input) resolution; the difference blue < 0 < red."""
    import numpy as np
    import torch
    from PIL import Image

    from reportgen.figures import image_grid, normalize_map, overlay, save_jpeg, with_colorbar
    from reportgen.similarity import at_size

    size = tuple(c.maps["compared_at"])
    chosen, seen = [], set()
    for row in c.maps["rows"]:
        if row["path"] not in seen and len(chosen) < top:
            chosen.append(row)
            seen.add(row["path"])
    entries_a = {e["path"]: e for e in a.manifest["images"]}
    entries_b = {e["path"]: e for e in b.manifest["images"]}
    out = []
    for rank, row in enumerate(chosen, 1):
        ea, eb = entries_a[row["path"]], entries_b[row["path"]]
        try:
            photo = Image.open(a.folder / ea["thumb"]).convert("RGB")
        except (OSError, KeyError, ValueError):
            continue  # a run folder without its thumbs: the tables still say everything
        if max(photo.size) < MIN_PANEL:  # tiny photos: enlarged so the three panels can be read
            scale = MIN_PANEL / max(photo.size)
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)
        display = np.asarray(photo)
        maps = []
        for run, entry, layer in ((a, ea, row["layer_a"]), (b, eb, row["layer_b"])):
            with run._open(run.folder / entry["maps_file"]) as handle:
                m, _ = read_map(handle, _index(set(handle.keys())), row["method"], layer)
            maps.append(normalize_map(at_size(torch.from_numpy(m.copy())[None], size)[0].numpy()))
        box = _box(a, display.shape[1], display.shape[0])
        diff = (maps[1] - maps[0] + 1.0) / 2.0
        panels = [np.asarray(overlay(display, maps[0], cmap="jet", alpha=0.5, box=box)),
                  np.asarray(overlay(display, maps[1], cmap="jet", alpha=0.5, box=box)),
                  np.asarray(overlay(display, diff, cmap="RdBu_r", alpha=0.75, box=box))]
        img = with_colorbar(image_grid(np.stack(panels), ["A", "B", "B - A"], columns=3), cmap="RdBu_r",
                            vmin=-1.0, vmax=1.0, label="B - A")
        rel = f"assets/changes/{rank:02d}-{ea['id']}-{file_part(row['method'])}-{file_part(row['layer_a'] or 'input')}.jpg"
        save_jpeg(img, root / rel, atomic=False)
        out.append({**row, "image": rel, "width": img.width, "height": img.height})
    return out


def _thumbs(flips: list[dict], a: Run, root: Path) -> dict[str, dict]:
    """A's photo of each flipped image, copied under ``assets/thumbs/`` (the comparison opens on its own)."""
    entries = {e["path"]: e for e in a.manifest["images"]}
    out = {}
    for f in flips:
        entry = entries[f["path"]]
        source = a.folder / entry.get("thumb", "")
        if not entry.get("thumb") or not source.is_file():
            continue
        rel = f"assets/thumbs/{entry['id']}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / rel)
        out[f["path"]] = {"image": rel, "width": entry.get("width", 48), "height": entry.get("height", 48)}
    return out


# ------------------------------------------------------------------------------------------------------- HTML


def _signed(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{float(value):+.{digits}f}"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{float(value):.{digits}f}"


def _render_html(data: dict, root: Path) -> Path:
    import jinja2
    from markupsafe import Markup

    from reportgen.names import readable
    from reportgen.report import _environment, _read_css

    try:
        env = _environment()
        env.filters.update({"signed": _signed, "num": _num})
        template = env.get_template(TEMPLATE)
        html = template.render(**data, shown=SHOWN_ROWS, inline_css=Markup(_read_css()))
    except (OSError, jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RenderError(f"rendering {TEMPLATE} failed: {type(exc).__name__}: {exc}") from exc
    path = root / "compare.html"
    write_text_atomically(path, readable(html))
    return path
