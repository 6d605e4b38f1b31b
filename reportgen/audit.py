"""Stage 3b of a run: the audit — groups, trust metrics, localization and class-average maps over the dataset.

``audit_run(...)`` runs after the draw stage, over every drawn image's entry and its results in the tensor cache
(the figure cache may have linked an image's figures without gathering it, so the cache is the one place every
result is). It

* adds to each image entry its ``groups`` (the ``data.metadata`` columns), its ``metrics`` (trust scores of target
  column 0, flat: ``deletion_auc[gradcam]``) and, with ``data.boxes``, its ``localization`` scores;
* returns the ``Audit``: the report's audit section (accuracy, confidence and metrics per group value and per class
  with bootstrap intervals; methods ranked by each metric; the sanity check per randomization stage; localization
  per method; class-average maps, drawn into the staging folder) and the run's **facts** the gate conditions of
  ``checks:`` are evaluated against (docs/AUDIT.md lists them).

Nothing here touches the model or torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reportgen.annotations import NO_VALUE, Box
from reportgen.cache import TensorCache
from reportgen.config import RunConfig
from reportgen.images import crop_box
from reportgen.methods import get_method
from reportgen.modelcard import Preprocess
from reportgen.plan import RunPlan
from reportgen.results import ResultKey

__all__ = ["Audit", "Annotations", "audit_run", "load_annotations", "check_gates", "metric_name", "POINTING_TOLERANCE"]

log = logging.getLogger(__name__)

POINTING_TOLERANCE = 15  # pixels of the network input: a hit within this distance of a box counts (Zhang et al. 2016)
_FRAME = 64  # the long side of the class-average maps' frame (the squashed input), in cells


@dataclass(frozen=True)
class Annotations:
    """What ``data.metadata`` and ``data.boxes`` say, read before the run starts (``reportgen.annotations``)."""

    columns: tuple[str, ...] = ()
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    metadata_file: str = ""
    boxes_file: str = ""


@dataclass
class Audit:
    """The audit of a run: ``section`` for the report and manifest, ``facts`` for the gate conditions."""

    section: dict[str, Any]
    facts: dict[str, Any]


def load_annotations(cfg: RunConfig) -> Annotations:
    """Read ``data.metadata`` and ``data.boxes`` (``DataError`` naming the file and line on any problem)."""
    from reportgen.annotations import read_boxes, read_metadata

    columns: tuple[str, ...] = ()
    groups: dict[str, dict[str, str]] = {}
    if cfg.data.metadata is not None:
        cols, groups = read_metadata(cfg.data.metadata)
        columns = tuple(cols)
    boxes = read_boxes(cfg.data.boxes) if cfg.data.boxes is not None else {}
    return Annotations(columns, groups, boxes, cfg.data.metadata.name if cfg.data.metadata else "",
                       cfg.data.boxes.name if cfg.data.boxes else "")


def check_gates(conditions: Sequence[str], facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Each gate condition evaluated against the run's facts: ``{condition, value, failed, detail}``.

    A condition that names no fact of this run (a group or method the run does not have) fails, with the reason:
    a gate fails closed.
    """
    from reportgen.checks import evaluate, parse_condition

    out = []
    for text in conditions:
        try:
            (result,) = evaluate([parse_condition(text)], facts)
            out.append({"condition": result.condition, "value": result.value, "failed": result.failed,
                        "detail": result.detail})
        except ValueError as exc:
            out.append({"condition": text, "value": None, "failed": True, "detail": f"cannot be evaluated: {exc}"})
    if any(c["failed"] for c in out):
        log.warning("gate conditions failed: %s", "; ".join(c["condition"] for c in out if c["failed"]))
    return out


def metric_name(score: str, method: str, layer: str, layers: Sequence[str]) -> str:
    """A per-image or dataset score's name: ``deletion_auc[gradcam]``, or ``[gradcam@layer4]`` with several layers."""
    if not layer or len(layers) <= 1:
        return f"{score}[{method}]"
    return f"{score}[{method}@{layer}]"


def _map_at(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized bilinearly to ``size`` (H, W) as float32 (PIL's float images: no torch needed)."""
    h, w = size
    if m.shape == (h, w):
        return m.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F").resize(
        (w, h), Image.BILINEAR), dtype=np.float32)


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _localize(m: np.ndarray, boxes: list[Box], image_size: tuple[int, int], pre: Preprocess) -> tuple[float, float]:
    """(pointing-game hit 0/1, share of the map's positive mass inside the boxes) at the network input's resolution.

    Boxes are in the image file's pixels; they are mapped into the input frame through the region the network saw
    (``images.crop_box``: the whole image when squashed, the centre crop otherwise).
    """
    in_h, in_w = pre.size
    full = np.clip(_map_at(m, (in_h, in_w)), 0.0, None)
    left, top, right, bottom = crop_box(image_size[0], image_size[1], pre)
    sx, sy = in_w / (right - left), in_h / (bottom - top)
    inside = np.zeros((in_h, in_w), dtype=bool)
    near = np.zeros((in_h, in_w), dtype=bool)
    ys, xs = np.mgrid[0:in_h, 0:in_w]
    cx, cy = xs + 0.5, ys + 0.5  # pixel centres
    for b in boxes:
        x0, x1 = (b.x0 - left) * sx, (b.x1 - left) * sx
        y0, y1 = (b.y0 - top) * sy, (b.y1 - top) * sy
        inside |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        dx = np.maximum(np.maximum(x0 - cx, cx - x1), 0)
        dy = np.maximum(np.maximum(y0 - cy, cy - y1), 0)
        near |= np.hypot(dx, dy) <= POINTING_TOLERANCE
    total = float(full.sum())
    energy = float(full[inside].sum()) / total if total > 0 else 0.0
    peak = np.unravel_index(int(np.argmax(full)), full.shape)
    return float(near[peak]), energy


class _ClassMaps:
    """Running sums of min-max normalized maps per (method, layer, by, class) on one frame: memory stays flat."""

    def __init__(self, frame: tuple[int, int]):
        self.frame = frame
        self.sums: dict[tuple[str, str, str, int], np.ndarray] = {}
        self.counts: dict[tuple[str, str, str, int], int] = {}

    def add(self, method: str, layer: str, by: str, cls: int, m: np.ndarray) -> None:
        key = (method, layer, by, cls)
        unit = _unit(_map_at(m, self.frame))
        if key in self.sums:
            self.sums[key] += unit
            self.counts[key] += 1
        else:
            self.sums[key], self.counts[key] = unit, 1


def _frame(pre: Preprocess) -> tuple[int, int]:
    h, w = pre.size
    scale = _FRAME / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - it was decoded a moment ago; a vanished file just has no localization
        return None


# One number per image for "how far to trust its map" (higher: more), from the first scored method's first layer:
# the first of these the run computed. Used to pick the least trustworthy images (report.pdf_images: lowest_trust).
_TRUST = (("insertion_auc", "deletion_auc", "insertion − deletion AUC"), ("road_lerf", "road_morf", "ROAD LeRF − MoRF"),
          ("increase", "average_drop", "increase − average drop"))


def _trust(scores: dict[tuple[str, str, str], float], methods: Sequence[str],
           layers_of) -> tuple[float, str] | None:
    for method in methods:
        for layer in layers_of(method):
            for good, bad, what in _TRUST:
                if (good, method, layer) in scores and (bad, method, layer) in scores:
                    value = scores[(good, method, layer)] - scores[(bad, method, layer)]
                    where = f" at {layer}" if layer else ""
                    return round(value, 4), f"{what} of {get_method(method).title}{where}"
    return None


def _metric_scores(tensors: dict[str, np.ndarray]) -> dict[str, float]:
    """The scalar scores of a metric entry (target column 0): ``deletion_auc``, ... (sanity arrays left out)."""
    return {name: float(np.asarray(v).reshape(-1)[0]) for name, v in tensors.items()
            if not name.startswith("sanity_") and np.asarray(v).size}


def audit_run(cfg: RunConfig, plan: RunPlan, cache: TensorCache, entries: list[dict], class_names: Sequence[str],
              pre: Preprocess, notes: Annotations, staging: Path, images_skipped: int) -> Audit:
    """Annotate ``entries`` in place and summarize the run (see the module docstring)."""
    from reportgen.auditsummary import summarize

    position = {rec.rel: p for p, rec in enumerate(plan.records)}
    spec = plan.spec
    scored = list(cfg.metrics.methods) if cfg.metrics.compute else []
    layers_of = {m: spec.method_layers(m) for m in spec.methods}
    map_methods = [m for m in spec.methods if get_method(m).explains_class]
    class_maps = _ClassMaps(_frame(pre))
    rows: list[dict[str, Any]] = []  # one small record per image: what the summaries read
    sanity: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        p = position.get(entry["path"])
        if p is None:
            continue
        keys, rec = plan.keys[p], plan.records[p]
        entry["groups"] = {c: notes.groups.get(rec.rel, {}).get(c, NO_VALUE) for c in notes.columns}
        top = entry["predictions"][0] if entry["predictions"] else None
        row: dict[str, Any] = {"path": rec.rel, "label": rec.label, "true": plan.true_index[p],
                               "pred": top["class_index"] if top else None, "confidence": top["prob"] if top else None,
                               "correct": entry["correct"], "groups": entry["groups"], "metrics": {}, "local": {}}
        boxes = notes.boxes.get(rec.rel, [])
        size = _image_size(rec.path) if boxes else None
        for method in map_methods:
            for layer in spec.method_layers(method):
                key = ResultKey.cam(method, layer, spec.target_name)
                found = cache.get(keys[key], count=False) if key in keys else None
                if found is None:
                    continue
                maps = np.asarray(found[0]["maps"], dtype=np.float32)
                if maps.ndim != 3 or not len(maps):
                    continue
                if row["true"] is not None:
                    class_maps.add(method, layer, "true", row["true"], maps[0])
                if row["pred"] is not None:
                    class_maps.add(method, layer, "predicted", row["pred"], maps[0])
                if boxes and size is not None:
                    hit, energy = _localize(maps[0], boxes, size, pre)
                    row["local"][(method, layer)] = (hit, energy)
        for method in scored:
            for layer in spec.method_layers(method):
                key = ResultKey("metric", method, layer, spec.target_name)
                found = cache.get(keys[key], count=False) if key in keys else None
                if found is None:
                    continue
                tensors, meta = found
                for score, value in _metric_scores(tensors).items():
                    row["metrics"][(score, method, layer)] = value
                if "sanity_spearman" in tensors:
                    s = sanity.setdefault((method, layer), {"stage_layers": json.loads(meta.get("stage_layers", "[]")),
                                                            "spearman": [], "ssim": []})
                    s["spearman"].append(np.asarray(tensors["sanity_spearman"], dtype=np.float64))
                    s["ssim"].append(np.asarray(tensors["sanity_ssim"], dtype=np.float64))
        entry["metrics"] = {metric_name(s, m, la, layers_of[m]): round(v, 4) for (s, m, la), v in row["metrics"].items()}
        trust = _trust(row["metrics"], scored, spec.method_layers)
        if trust is not None:
            entry["trust"], entry["trust_what"] = trust
        if row["local"]:
            entry["localization"] = {metric_name(k, m, la, layers_of[m]): round(v, 4)
                                     for (m, la), (hit, energy) in row["local"].items()
                                     for k, v in (("pointing_game", hit), ("box_energy", energy))}
        rows.append(row)
    return summarize(cfg, rows, class_names, class_maps, sanity, notes, staging, images_skipped)
