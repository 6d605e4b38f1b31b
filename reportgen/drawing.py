"""Turn one image's results into figure files, its raw-maps file, and the plain-data entry the report reads.

Takes only numpy-convertible tensors and plain values, so it can run in a worker process. Figures are JPEG
files under ``assets/``; raw maps go to ``maps/<image id>.safetensors`` so any figure can be re-plotted. Every
file name is built from bounded ASCII parts (the image id, ``reportgen.names.file_part`` of a layer name), so
none passes the 255-byte limit whatever the image or layer is called. An image whose files cannot be written for
any other reason than a full disk raises ``ImageNotWritten``: that image is skipped, the run goes on.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.atomic import describe_os_error
from reportgen.config import ReportOptions
from reportgen.errors import RenderError
from reportgen.figures import (
    feature_panel,
    image_grid,
    kernel_grid,
    normalize_map,
    overlay,
    save_jpeg,
    with_colorbar,
)
from reportgen.images import ImageRecord
from reportgen.names import file_part
from reportgen.tensorfile import write_tensors

__all__ = ["draw_image", "draw_kernels", "draw_filters", "ImageNotWritten"]

# A full disk (or file-size limit, or quota) ends the run: every later image would fail the same way.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class ImageNotWritten(Exception):
    """One image's figures or raw maps could not be written (for any reason but a full disk); the message is the
    reason the report gives for skipping it. Its files written so far are removed."""


def _file_part(name: str) -> str:
    """A layer name as part of a file name (``reportgen.names.file_part``): bounded, ASCII, never leaves its folder."""
    return file_part(name)


def _save(img: Image.Image, root: Path, rel: str) -> dict:
    save_jpeg(img, root / rel, atomic=False)  # root is the staging folder, published whole
    return {"image": rel, "width": img.width, "height": img.height}


def _save_maps(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """The image's raw maps as safetensors, the same bytes on every run (the staging folder is published whole)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tensors(path, tensors, meta)
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise  # this image alone: see draw_image
        raise RenderError(f"cannot write the report's {path.parent.name}/{path.name}: {describe_os_error(exc)}") from exc


def draw_kernels(root: Path, layer: str, kernels: np.ndarray, labels: list[str], rgb: bool, total: int,
                 shape: list[int]) -> dict:
    """Draw one layer's kernel gallery; return its report entry."""
    many = len(labels) > 256  # e.g. all 128x64 kernels of VGG11 features.3: small tiles, no per-tile labels
    img = kernel_grid(kernels, rgb=rgb, labels=None if many else labels, tile=12 if many else 40, gap=1 if many else 3)
    what = "filters" if rgb else "kernels"
    scale = "RGB, scaled over the shown filters" if rgb else "blue < 0 < red, centred at zero"
    entry = _save(img, root, f"assets/kernels/{_file_part(layer)}.jpg")
    entry.update({
        "layer": layer, "shape": shape, "shown": len(labels), "total": total, "rgb": rgb,
        "caption": f"{len(labels)} of {total} {what}, ranked by L2 norm; {scale}",
    })
    return entry


def _percentile_scale(cam: np.ndarray) -> tuple[np.ndarray, float]:
    """Input-gradient maps are heavy-tailed: scale to [0, 1] by their 99th percentile (clipped) for display."""
    top = float(np.percentile(cam, 99)) if cam.size else 0.0
    if not np.isfinite(top) or top <= 0:
        top = float(cam.max()) if cam.size and np.isfinite(cam.max()) and cam.max() > 0 else 1.0
    return np.clip(cam / top, 0.0, 1.0).astype(np.float32), top


def _cam_panels(root: Path, base: str, display: np.ndarray, box: tuple[int, int, int, int], cam: np.ndarray,
                method: str, title: str, layer: str, ti: int, opts: ReportOptions) -> list[dict]:
    """One overlay for a layer's CAM; for an input-level map (saliency, FullGrad) the map itself and an overlay."""
    tag = _file_part(layer) if layer else "input"
    if layer:
        lo, hi = float(cam.min()), float(cam.max())
        img = overlay(display, normalize_map(cam), cmap=opts.colormap, alpha=opts.alpha, box=box)
        img = with_colorbar(img, cmap=opts.colormap, vmin=lo, vmax=hi, label=title)
        return [{"method": method, "title": title, **_save(img, root, f"{base}/cam-{method}-{tag}-t{ti}.jpg")}]
    m01, top = _percentile_scale(cam)
    plain = overlay(display, m01, cmap="inferno", alpha=1.0, box=box)
    plain = with_colorbar(plain, cmap="inferno", vmin=0.0, vmax=top, label=f"{title} (p99 clip)")
    over = overlay(display, m01, cmap=opts.colormap, alpha=opts.alpha, box=box)
    over = with_colorbar(over, cmap=opts.colormap, vmin=0.0, vmax=top, label=title)
    return [
        {"method": method, "title": title, **_save(plain, root, f"{base}/cam-{method}-{tag}-t{ti}-map.jpg")},
        {"method": method, "title": f"{title} overlay", **_save(over, root, f"{base}/cam-{method}-{tag}-t{ti}.jpg")},
    ]


def _not_written(root: Path, rec: ImageRecord, exc: OSError) -> ImageNotWritten:
    """Remove what one image's drawing wrote; the reason it is skipped, naming the file (in the report) that failed."""
    shutil.rmtree(root / "assets" / "images" / rec.id, ignore_errors=True)
    try:
        (root / "maps" / f"{rec.id}.safetensors").unlink(missing_ok=True)
    except OSError:
        pass
    where = ""
    if exc.filename:
        try:
            where = Path(exc.filename).relative_to(root).as_posix()
        except ValueError:
            where = Path(exc.filename).name
    return ImageNotWritten(f"cannot write its figures: {exc.strerror or exc}" + (f" ({where})" if where else ""))


def draw_image(root: Path, rec: ImageRecord, results: dict[tuple, tuple], display: np.ndarray,
               box: tuple[int, int, int, int], class_names: Sequence[str], opts: ReportOptions, true_index: int | None,
               cam_methods: Sequence[tuple[str, str, bool]], cam_layers: Sequence[str],
               fm_layers: Sequence[str]) -> dict:
    """Draw every figure of one image and write its raw maps; return its report entry.

    Args:
        cam_methods: (name, title, needs_layer) per CAM/saliency method, in config order.

    Raises:
        ImageNotWritten: a file of this image could not be written (e.g. a name the file system refuses); its
            files are removed and the run skips it.
        OSError, RenderError: the disk is full: the run cannot go on.
    """
    try:
        return _draw_image(root, rec, results, display, box, class_names, opts, true_index, cam_methods,
                           cam_layers, fm_layers)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise
        raise _not_written(root, rec, exc) from exc


def _draw_image(root: Path, rec: ImageRecord, results: dict[tuple, tuple], display: np.ndarray,
                box: tuple[int, int, int, int], class_names: Sequence[str], opts: ReportOptions,
                true_index: int | None, cam_methods: Sequence[tuple[str, str, bool]], cam_layers: Sequence[str],
                fm_layers: Sequence[str]) -> dict:
    base = f"assets/images/{rec.id}"
    raw: dict[str, np.ndarray] = {}

    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else f"class {i}"

    logits = np.asarray(results[("pred",)][0]["logits"], dtype=np.float32)
    raw["logits"] = logits
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-logits, kind="stable")[:5]  # rank logits: probabilities can tie in float32 (cam.resolve_targets)
    predictions = [{"rank": r + 1, "class_index": int(c), "class_name": name(int(c)), "prob": round(float(probs[c]), 4)}
                   for r, c in enumerate(top)]
    entry = {
        "id": rec.id, "path": rec.rel, "label": rec.label,
        "width": int(display.shape[1]), "height": int(display.shape[0]),
        "thumb": _save(Image.fromarray(display), root, f"{base}/thumb.jpg")["image"],
        "correct": None if true_index is None else bool(int(top[0]) == true_index),
        "predictions": predictions, "feature_maps": [], "cams": [], "maps_file": f"maps/{rec.id}.safetensors",
    }
    for layer in fm_layers:
        tensors, _ = results[("fm", layer)]
        maps = np.asarray(tensors["maps"], dtype=np.float32)
        channels = [int(c) for c in tensors["channels"]]
        raw[f"feature_maps/{layer}"] = maps
        raw[f"feature_maps/{layer}/channels"] = np.asarray(tensors["channels"])
        fig = _save(feature_panel(maps, channels), root, f"{base}/fm-{_file_part(layer)}.jpg")
        entry["feature_maps"].append({"layer": layer, **fig, "channels": channels, "shape": list(maps.shape)})
    groups_of = [(layer, [m for m in cam_methods if m[2]]) for layer in cam_layers]
    groups_of.append(("", [m for m in cam_methods if not m[2]]))
    for layer, methods in groups_of:
        groups: list[dict] = []
        for method, title, _ in methods:
            tensors, meta = results[("cam", method, layer)]
            maps = np.asarray(tensors["maps"], dtype=np.float32)
            targets = [int(t) for t in tensors["targets"]]
            kinds = json.loads(meta.get("target_kinds", "[]")) or ["predicted"] * len(targets)
            key = f"cam/{method}/{layer}" if layer else f"cam/{method}"
            raw[key] = maps
            raw[f"{key}/targets"] = np.asarray(tensors["targets"])
            if not groups:
                groups = [{"layer": layer, "target_index": t, "target_name": name(t), "target_kind": k, "panels": []}
                          for t, k in zip(targets, kinds, strict=True)]
            for ti, cam in enumerate(maps):
                groups[ti]["panels"].extend(_cam_panels(root, base, display, box, cam, method, title, layer, ti, opts))
        entry["cams"].extend(groups)
    meta = {"image": rec.rel, "digest": rec.digest, "label": str(rec.label)}
    _save_maps(root / entry["maps_file"], raw, meta)
    return entry


def draw_filters(root: Path, layer: str, images: np.ndarray, channels: Sequence[int], opts_caption: str) -> dict:
    """Draw one layer's activation-maximization images; return its report entry."""
    img = image_grid(images, [f"#{int(c)}" for c in channels])
    entry = _save(img, root, f"assets/filters/{_file_part(layer)}.jpg")
    entry.update({"layer": layer, "channels": [int(c) for c in channels], "caption": opts_caption})
    return entry
