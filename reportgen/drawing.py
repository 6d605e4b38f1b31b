"""Turn one image's results into figure files, its raw-maps file, and the plain-data entry the report reads.

Takes only numpy-convertible tensors and plain values, so it can run in a worker process. Figures are JPEG
files under ``assets/``; raw maps go to ``maps/<image id>.safetensors`` so any figure can be re-plotted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.config import ReportOptions
from reportgen.figures import feature_panel, kernel_grid, normalize_map, overlay, save_jpeg, with_colorbar
from reportgen.images import ImageRecord

__all__ = ["draw_image", "draw_kernels"]


def _save(img: Image.Image, root: Path, rel: str) -> dict:
    save_jpeg(img, root / rel)
    return {"image": rel, "width": img.width, "height": img.height}


def _save_maps(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def draw_kernels(root: Path, layer: str, kernels: np.ndarray, labels: list[str], rgb: bool, total: int,
                 shape: list[int]) -> dict:
    """Draw one layer's kernel gallery; return its report entry."""
    img = kernel_grid(kernels, rgb=rgb, labels=labels)
    what = "filters" if rgb else "kernels"
    scale = "RGB, scaled over the shown filters" if rgb else "blue < 0 < red, centred at zero"
    entry = _save(img, root, f"assets/kernels/{layer}.jpg")
    entry.update({
        "layer": layer, "shape": shape, "shown": len(labels), "total": total, "rgb": rgb,
        "caption": f"{len(labels)} of {total} {what}, ranked by L2 norm; {scale}",
    })
    return entry


def draw_image(root: Path, rec: ImageRecord, results: dict[tuple, tuple], display: np.ndarray,
               box: tuple[int, int, int, int], class_names: Sequence[str], opts: ReportOptions, true_index: int | None,
               method_titles: Sequence[str], methods: Sequence[str], cam_layers: Sequence[str],
               fm_layers: Sequence[str]) -> dict:
    """Draw every figure of one image and write its raw maps; return its report entry."""
    base = f"assets/images/{rec.id}"
    raw: dict[str, np.ndarray] = {}

    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else f"class {i}"

    logits = np.asarray(results[("pred",)][0]["logits"], dtype=np.float32)
    raw["logits"] = logits
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:5]
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
        fig = _save(feature_panel(maps, channels), root, f"{base}/fm-{layer}.jpg")
        entry["feature_maps"].append({"layer": layer, **fig, "channels": channels, "shape": list(maps.shape)})
    for layer in cam_layers:
        groups: list[dict] = []
        for method, title in zip(methods, method_titles, strict=True):
            tensors, meta = results[("cam", method, layer)]
            maps = np.asarray(tensors["maps"], dtype=np.float32)
            targets = [int(t) for t in tensors["targets"]]
            kinds = json.loads(meta.get("target_kinds", "[]")) or ["predicted"] * len(targets)
            raw[f"cam/{method}/{layer}"] = maps
            raw[f"cam/{method}/{layer}/targets"] = np.asarray(tensors["targets"])
            if not groups:
                groups = [{"layer": layer, "target_index": t, "target_name": name(t), "target_kind": k, "panels": []}
                          for t, k in zip(targets, kinds, strict=True)]
            for ti, cam in enumerate(maps):
                lo, hi = float(cam.min()), float(cam.max())
                img = overlay(display, normalize_map(cam), cmap=opts.colormap, alpha=opts.alpha, box=box)
                img = with_colorbar(img, cmap=opts.colormap, vmin=lo, vmax=hi, label=title)
                fig = _save(img, root, f"{base}/cam-{method}-{layer}-t{ti}.jpg")
                groups[ti]["panels"].append({"method": method, "title": title, **fig})
        entry["cams"].extend(groups)
    meta = {"image": rec.rel, "digest": rec.digest, "label": str(rec.label)}
    _save_maps(root / entry["maps_file"], raw, meta)
    return entry
