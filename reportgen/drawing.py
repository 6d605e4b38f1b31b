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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.atomic import describe_os_error
from reportgen.config import ReportOptions
from reportgen.errors import RenderError
from reportgen.figures import (
    concept_colors,
    concept_overlay,
    feature_panel,
    image_grid,
    kernel_grid,
    normalize_map,
    overlay,
    save_jpeg,
    with_colorbar,
    with_legend,
)
from reportgen.images import ImageRecord
from reportgen.names import file_part
from reportgen.results import FORMAT_VERSION, PREDICTIONS, ImageResult, ResultKey
from reportgen.tensorfile import write_tensors

__all__ = ["DrawContext", "draw_image", "draw_kernels", "draw_filters", "ImageNotWritten"]

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


@dataclass(frozen=True)
class DrawContext:
    """What every image of a run is drawn with (sent to each drawing process once).

    Attributes:
        root: the report's staging folder.
        cam_methods: (name, title, needs_layer) per CAM/saliency method, in config order.
        target: the target rule the maps explain (``ResultKey.target``).
    """

    root: Path
    class_names: Sequence[str]
    opts: ReportOptions
    cam_methods: Sequence[tuple[str, str, bool]]
    cam_layers: Sequence[str]
    fm_layers: Sequence[str]
    target: str = "predicted"

    def class_name(self, i: int) -> str:
        return self.class_names[i] if 0 <= i < len(self.class_names) else f"class {i}"


def draw_image(ctx: DrawContext, image: ImageResult) -> dict:
    """Draw every figure of one image and write its raw maps; return its report entry (plain data).

    Raises:
        ImageNotWritten: a file of this image could not be written (e.g. a name the file system refuses); its
            files are removed and the run skips it.
        OSError, RenderError: the disk is full: the run cannot go on.
    """
    try:
        return _draw_image(ctx, image)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise
        raise _not_written(ctx.root, image.record, exc) from exc


def _predictions(ctx: DrawContext, image: ImageResult, raw: dict[str, np.ndarray]) -> tuple[list[dict], bool | None]:
    """The top-5 classes with their probabilities, and whether the first is the image's label (None: no label)."""
    logits = np.asarray(image.results[PREDICTIONS][0]["logits"], dtype=np.float32)
    raw[PREDICTIONS.maps_name] = logits
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-logits, kind="stable")[:5]  # rank logits: probabilities can tie in float32 (cam.resolve_targets)
    predictions = [{"rank": r + 1, "class_index": int(c), "class_name": ctx.class_name(int(c)),
                    "prob": round(float(probs[c]), 4)} for r, c in enumerate(top)]
    return predictions, None if image.true_index is None else bool(int(top[0]) == image.true_index)


def _feature_maps(ctx: DrawContext, image: ImageResult, base: str, raw: dict[str, np.ndarray]) -> list[dict]:
    panels = []
    for layer in ctx.fm_layers:
        key = ResultKey.feature_maps(layer)
        tensors, _ = image.results[key]
        maps = np.asarray(tensors["maps"], dtype=np.float32)
        channels = [int(c) for c in tensors["channels"]]
        raw[key.maps_name] = maps
        raw[f"{key.maps_name}/channels"] = np.asarray(tensors["channels"])
        fig = _save(feature_panel(maps, channels), ctx.root, f"{base}/fm-{_file_part(layer)}.jpg")
        panels.append({"layer": layer, **fig, "channels": channels, "shape": list(maps.shape)})
    return panels


_CONCEPTS = "dff_concepts"  # the note of a concept factorization: (K, C) concept embeddings as JSON


def _concept_panel(ctx: DrawContext, image: ImageResult, base: str, key: ResultKey, maps: np.ndarray,
                   meta: dict[str, str], title: str, raw: dict[str, np.ndarray]) -> dict:
    """One overlay of an image's K concept maps (K, h, w) in K colours, with the concept legend below it.

    The maps file gets the concept indices as the maps' ``targets`` and the (K, C) concept embeddings.
    """
    k = maps.shape[0]
    raw[f"{key.maps_name}/targets"] = np.arange(k, dtype=np.int64)
    raw[f"{key.maps_name}/concepts"] = np.asarray(json.loads(meta[_CONCEPTS]), dtype=np.float32).reshape(k, -1)
    tops = json.loads(meta.get("dff_top_classes", "[]"))
    labels = [f"{i + 1}: " + ", ".join(f"{ctx.class_name(int(c))} {float(p):.2f}" for c, p in tops[i])
              if tops else f"concept {i + 1}" for i in range(k)]
    colors = concept_colors(k)
    img = concept_overlay(image.display, np.clip(maps, 0.0, 1.0), colors, alpha=ctx.opts.alpha, box=image.box)
    img = with_legend(img, colors, labels)
    tag = _file_part(key.layer)
    panel = _save(img, ctx.root, f"{base}/cam-{key.method}-{tag}-concepts.jpg")
    return {"method": key.method, "title": f"{title}: {k} concepts", **panel, "legend": " · ".join(labels)}


def _cams(ctx: DrawContext, image: ImageResult, base: str, raw: dict[str, np.ndarray]) -> list[dict]:
    """Per layer (then the input) and target, the panels of every method."""
    groups_of = [(layer, [m for m in ctx.cam_methods if m[2]]) for layer in ctx.cam_layers]
    groups_of.append(("", [m for m in ctx.cam_methods if not m[2]]))
    out: list[dict] = []
    for layer, methods in groups_of:
        groups: list[dict] = []
        for method, title, _ in methods:
            key = ResultKey.cam(method, layer, ctx.target)
            tensors, meta = image.results[key]
            maps = np.asarray(tensors["maps"], dtype=np.float32)
            targets = [int(t) for t in tensors["targets"]]
            kinds = json.loads(meta.get("target_kinds", "[]")) or ["predicted"] * len(targets)
            raw[key.maps_name] = maps
            raw[f"{key.maps_name}/targets"] = np.asarray(tensors["targets"])
            if "signed" in tensors:  # report.raw_maps: full
                raw[f"{key.maps_name}/signed"] = np.asarray(tensors["signed"], dtype=np.float32)
            if not groups:
                groups = [{"layer": layer, "target_index": t, "target_name": ctx.class_name(t), "target_kind": k,
                           "panels": []} for t, k in zip(targets, kinds, strict=True)]
            if _CONCEPTS in meta:  # concept maps (dff): one overlay of all K, beside the first target's panels
                groups[0]["panels"].append(_concept_panel(ctx, image, base, key, maps, meta, title, raw))
                continue
            for ti, cam in enumerate(maps):
                groups[ti]["panels"].extend(_cam_panels(ctx.root, base, image.display, image.box, cam, method, title,
                                                        layer, ti, ctx.opts))
        out.extend(groups)
    return out


def _draw_image(ctx: DrawContext, image: ImageResult) -> dict:
    rec, display = image.record, image.display
    base = f"assets/images/{rec.id}"
    raw: dict[str, np.ndarray] = {}
    predictions, correct = _predictions(ctx, image, raw)
    entry = {
        "id": rec.id, "path": rec.rel, "label": rec.label,
        "width": int(display.shape[1]), "height": int(display.shape[0]),
        "thumb": _save(Image.fromarray(display), ctx.root, f"{base}/thumb.jpg")["image"],
        "correct": correct, "predictions": predictions,
        "feature_maps": _feature_maps(ctx, image, base, raw), "cams": _cams(ctx, image, base, raw),
        "maps_file": f"maps/{rec.id}.safetensors",
    }
    meta = {"image": rec.rel, "digest": rec.digest, "label": str(rec.label), "format": str(FORMAT_VERSION)}
    _save_maps(ctx.root / entry["maps_file"], raw, meta)
    return entry


def draw_filters(root: Path, layer: str, images: np.ndarray, channels: Sequence[int], opts_caption: str) -> dict:
    """Draw one layer's activation-maximization images; return its report entry."""
    img = image_grid(images, [f"#{int(c)}" for c in channels])
    entry = _save(img, root, f"assets/filters/{_file_part(layer)}.jpg")
    entry.update({"layer": layer, "channels": [int(c) for c in channels], "caption": opts_caption})
    return entry
