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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.atomic import describe_os_error
from reportgen.config import ReportOptions
from reportgen.errors import RenderError
from reportgen.figures import (
    bar_ticks,
    concept_colors,
    concept_overlay,
    css_gradient,
    feature_panel,
    format_tick,
    image_grid,
    kernel_grid,
    overlay,
    save_jpeg,
    scale_map,
    with_legend,
)
from reportgen.images import ImageRecord
from reportgen.mapscales import DATASET_WIDE, bar_label, lookup, map_range, merge
from reportgen.names import file_part
from reportgen.results import FORMAT_VERSION, PREDICTIONS, ImageResult, ResultKey
from reportgen.tensorfile import write_tensors

__all__ = ["DrawContext", "draw_image", "draw_kernels", "draw_filters", "ImageNotWritten", "identical_groups",
           "colour_bar"]

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
    if not many:
        scale += ("; a tile's label is its output channel" if rgb else
                  "; a tile labelled o/i is the kernel from input channel i to output channel o")
    entry = _save(img, root, f"assets/kernels/{_file_part(layer)}.jpg")
    entry.update({
        "layer": layer, "shape": shape, "shown": len(labels), "total": total, "rgb": rgb,
        "caption": f"{len(labels)} of {total} {what}, ranked by L2 norm; {scale}",
    })
    return entry


def colour_bar(cmap: str, lo: float, hi: float, label: str) -> dict:
    """A colour bar as plain data for the page (``templates/_panel.html.j2`` draws it as HTML text): the
    colormap as a CSS gradient, tick texts at their positions along the bar (percent, low end left), the label."""
    return {"gradient": css_gradient(cmap), "label": label,
            "ticks": [{"text": format_tick(v), "at": round(100 * at, 2)} for v, at in bar_ticks(lo, hi)]}


def _cam_panels(ctx: DrawContext, base: str, image: ImageResult, cam: np.ndarray, method: str, title: str,
                layer: str, ti: int, scale: tuple[float, float], label: str, methods: list[str]) -> list[dict]:
    """One overlay for a layer's CAM; for an input-level map (saliency, FullGrad) the map itself and an overlay.
    Colours run from ``scale``'s low to its high value; the colour bar is plain data drawn by the page."""
    opts, tag = ctx.opts, _file_part(layer) if layer else "input"
    lo, hi = scale
    if cam.size and float(np.nanmin(cam)) == float(np.nanmax(cam)):
        label += f"; this map is constant: every value is {format_tick(float(np.nanmax(cam)))}"
    m01 = scale_map(cam, lo, hi)
    same = {"methods": methods} if len(methods) > 1 else {}
    common = {"method": method, **same, "scale": [lo, hi], "normalize": opts.normalize}
    if layer:
        img = overlay(image.display, m01, cmap=opts.colormap, alpha=opts.alpha, box=image.box)
        return [{**common, "title": title, **_save(img, ctx.root, f"{base}/cam-{method}-{tag}-t{ti}.jpg"),
                 "bar": colour_bar(opts.colormap, lo, hi, label)}]
    plain = overlay(image.display, m01, cmap="inferno", alpha=1.0, box=image.box)
    over = overlay(image.display, m01, cmap=opts.colormap, alpha=opts.alpha, box=image.box)
    return [
        {**common, "title": title, **_save(plain, ctx.root, f"{base}/cam-{method}-{tag}-t{ti}-map.jpg"),
         "bar": colour_bar("inferno", lo, hi, label)},
        {**common, "title": f"{title} overlay", **_save(over, ctx.root, f"{base}/cam-{method}-{tag}-t{ti}.jpg"),
         "bar": colour_bar(opts.colormap, lo, hi, label)},
    ]


def _same_map(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float rounding (relative 1e-4 of the larger map's peak); a constant map equals no other."""
    if a.shape != b.shape:
        return False
    peak = max(float(np.abs(a).max()), float(np.abs(b).max()))
    if not np.isfinite(peak) or float(np.ptp(a)) == 0 or float(np.ptp(b)) == 0:
        return False
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * peak))


def identical_groups(maps: Sequence[np.ndarray]) -> list[list[int]]:
    """Which of several maps of one image, layer and target are the same map (e.g. Grad-CAM, XGrad-CAM and
    HiResCAM at a layer followed by global average pooling and a linear layer).

    Returns:
        Clusters of indices into ``maps``, each in increasing order, ordered by their first index; every index is
        in exactly one cluster (a map equal to no other is a cluster of one).
    """
    clusters: list[list[int]] = []
    for i, m in enumerate(maps):
        for cluster in clusters:
            if _same_map(maps[cluster[0]], m):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    return clusters


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
        scales: the dataset-wide colour scales (``mapscales.ScaleTable.scales``) when ``opts.normalize`` is
            ``per_method`` or ``shared``; empty otherwise.
    """

    root: Path
    class_names: Sequence[str]
    opts: ReportOptions
    cam_methods: Sequence[tuple[str, str, bool]]
    cam_layers: Sequence[str]
    fm_layers: Sequence[str]
    target: str = "predicted"
    scales: Mapping[str, tuple[float, float, int]] = field(default_factory=dict)

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
        k, h, w = maps.shape
        caption = (f"the {k} channel{'s' if k != 1 else ''} of {layer} with the highest mean activation on this "
                   f"image, each {h}×{w}, highest first; each tile coloured min–max on its own (viridis, "
                   f"dark = its lowest value); #n = the channel's index in the layer")
        panels.append({"layer": layer, **fig, "channels": channels, "shape": list(maps.shape), "caption": caption})
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


@dataclass
class _Loaded:
    """One method's maps of an image at a layer, as read from its result."""

    method: str
    title: str
    key: ResultKey
    maps: np.ndarray  # (T, h, w) float32, or (K, h, w) concept maps
    targets: list[int]
    kinds: list[str]
    meta: dict[str, str]

    @property
    def concepts(self) -> bool:
        return _CONCEPTS in self.meta


def _load(ctx: DrawContext, image: ImageResult, layer: str, methods: Sequence[tuple[str, str, bool]],
          raw: dict[str, np.ndarray]) -> list[_Loaded]:
    """The maps of ``methods`` at ``layer``, each also put in the image's raw-maps file."""
    out = []
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
        out.append(_Loaded(method, title, key, maps, targets, kinds, meta))
    return out


def _image_scales(loaded: Sequence[_Loaded]) -> dict[bool, tuple[float, float, int]]:
    """``per_image``: one scale over the image's layer-level maps (key False) and one over its input-level maps
    (key True), with the number of maps each covers."""
    found: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for item in loaded:
        if not item.concepts:
            level = not item.key.layer
            found[level].extend(map_range(m, input_level=level) for m in item.maps)
    return {level: (*merge(ranges), len(ranges)) for level, ranges in found.items() if ranges}


def _scale(ctx: DrawContext, item: _Loaded, ti: int, per_image: dict[bool, tuple[float, float, int]]
           ) -> tuple[tuple[float, float], str]:
    """The colour scale of ``item``'s map of target column ``ti`` under ``report.normalize``, and what its bar
    says of it."""
    mode, layer = ctx.opts.normalize, item.key.layer
    own = map_range(item.maps[ti], input_level=not layer)
    count, n_maps = 0, 0
    if mode == "per_image":
        lo, hi, n_maps = per_image[not layer]
        scale = (lo, hi)
    elif mode in DATASET_WIDE:
        scale, count = lookup(ctx.scales, mode, item.method, layer, own)
    else:
        scale = own
    return scale, bar_label(mode, input_level=not layer, layer=layer, images=count, maps=n_maps)


def _cams(ctx: DrawContext, image: ImageResult, base: str, raw: dict[str, np.ndarray], correct: bool | None
          ) -> list[dict]:
    """Per layer (then the input) and target, the panels of every method; equal maps drawn once."""
    layers = [(layer, [m for m in ctx.cam_methods if m[2]]) for layer in ctx.cam_layers]
    layers.append(("", [m for m in ctx.cam_methods if not m[2]]))
    loaded_by_layer = [(layer, _load(ctx, image, layer, methods, raw)) for layer, methods in layers]
    per_image = _image_scales([item for _, loaded in loaded_by_layer for item in loaded])
    out: list[dict] = []
    for layer, loaded in loaded_by_layer:
        if not loaded:
            continue
        plain = [item for item in loaded if not item.concepts]
        first = plain[0] if plain else loaded[0]
        groups = [{"layer": layer, "target_index": t, "target_name": ctx.class_name(t), "target_kind": k,
                   "panels": [], "identical": []} for t, k in zip(first.targets, first.kinds, strict=True)]
        for ti, group in enumerate(groups):
            clusters = identical_groups([item.maps[ti] for item in plain]) if plain else []
            leader = {plain[c[0]].method: [plain[i] for i in c] for c in clusters}
            group["identical"] = [[m.method for m in same] for same in leader.values() if len(same) > 1]
            for item in loaded:
                if item.concepts:  # concept maps (dff): one overlay of all K, beside the first target's panels
                    if ti == 0:
                        group["panels"].append(_concept_panel(ctx, image, base, item.key, item.maps, item.meta,
                                                              item.title, raw))
                    continue
                if item.method not in leader:
                    continue  # drawn in its leader's panel
                same = leader[item.method]
                scale, says = _scale(ctx, item, ti, per_image)
                title = " = ".join(m.title for m in same)
                group["panels"].extend(_cam_panels(ctx, base, image, item.maps[ti], item.method, title, layer, ti,
                                                   scale, f"{title}, {says}", [m.method for m in same]))
        once: dict[int, dict] = {}  # a target rule naming one class twice (predicted and true of a right call)
        for g in groups:
            once.setdefault(g["target_index"], g)
        groups = list(once.values())
        out.extend(_true_class_beside(groups, image.true_index, correct))
    return out


def _true_class_beside(groups: list[dict], true_index: int | None, correct: bool | None) -> list[dict]:
    """For a misclassified image whose label's class is among the targets (``cams.target: topk``): that group
    marked and moved right after the first (the predicted class's), so the two maps sit side by side."""
    if correct is not False or true_index is None or len(groups) < 2:
        return groups
    at = next((i for i, g in enumerate(groups) if g["target_index"] == true_index), None)
    if at is None:
        return groups
    true = {**groups[at], "true_class": True, "target_kind": f"{groups[at]['target_kind']}, the label's class"}
    rest = [g for i, g in enumerate(groups) if i != at]
    return [rest[0], true, *rest[1:]] if at != 0 else [true, *rest]


def _draw_image(ctx: DrawContext, image: ImageResult) -> dict:
    rec, display = image.record, image.display
    base = f"assets/images/{rec.id}"
    raw: dict[str, np.ndarray] = {}
    predictions, correct = _predictions(ctx, image, raw)
    entry = {
        "id": rec.id, "path": rec.rel, "label": rec.label,
        "width": int(display.shape[1]), "height": int(display.shape[0]), "box": [int(v) for v in image.box],
        "thumb": _save(Image.fromarray(display), ctx.root, f"{base}/thumb.jpg")["image"],
        "correct": correct, "predictions": predictions,
        "label_class": None if image.true_index is None else ctx.class_name(image.true_index),
        "feature_maps": _feature_maps(ctx, image, base, raw), "cams": _cams(ctx, image, base, raw, correct),
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
