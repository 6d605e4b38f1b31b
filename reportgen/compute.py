"""The model work of a run: one forward (and one backward per target column) per batch, results as numpy.

Imported by the runner only when some result is missing from the cache, so a fully cached rerun never
imports torch. Everything leaves the device in one copy per tensor kind per batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from reportgen.cache import TensorCache
from reportgen.config import RunConfig
from reportgen.hooks import borrowed, capture
from reportgen.methods.cam import gradient_cams, resolve_targets
from reportgen.methods.feature_maps import top_channels
from reportgen.methods.kernels import select_kernels
from reportgen.models import LoadedModel, find_layer

__all__ = ["Counters", "compute_entries", "fill_batch", "kernel_entry"]

Entry = tuple[dict[str, np.ndarray], dict[str, str]]


class Counters:
    """Model work done, for the run summary."""

    def __init__(self) -> None:
        self.forward_passes = 0
        self.backward_passes = 0


def compute_entries(cfg: RunConfig, lm: LoadedModel, x: torch.Tensor, wanted: set[tuple], labels: Sequence[int | None],
                    counters: Counters) -> dict[tuple, list[Entry]]:
    """Run the model once on ``x`` (N, 3, H, W) and produce every wanted result name, per image."""
    fm_layers = [la for la in cfg.feature_maps.layers if ("fm", la) in wanted]
    cam_methods = [m for m in cfg.cams.methods if any(w[0] == "cam" and w[1] == m for w in wanted)]
    cam_layers = [la for la in cfg.cams.layers if any(w[0] == "cam" and w[2] == la for w in wanted)] if cam_methods else []
    n = x.shape[0]
    out: dict[tuple, list[Entry]] = {}
    model = lm.module
    with borrowed(model), capture(model, [*fm_layers, *cam_layers], grad=bool(cam_layers)) as caught:
        with torch.enable_grad() if cam_layers else torch.inference_mode():
            logits = model(x)
        counters.forward_passes += 1
        scores = logits.detach().float()
        logits_np = scores.cpu().numpy()
        out[("pred",)] = [({"logits": logits_np[i]}, {}) for i in range(n)]
        for layer in fm_layers:
            maps, idx, means = (t.cpu().numpy() for t in top_channels(caught[layer], cfg.feature_maps.top_k))
            out[("fm", layer)] = [({"maps": maps[i], "channels": idx[i], "means": means[i]}, {}) for i in range(n)]
        if cam_layers:
            targets, kinds = resolve_targets(scores, cfg.cams.target, class_index=cfg.cams.class_index,
                                             top_k=cfg.cams.top_k, labels=labels)
            maps_by_key = gradient_cams(logits, {la: caught[la] for la in cam_layers}, targets, cam_methods)
            counters.backward_passes += targets.shape[1]
            targets_np = targets.cpu().numpy()
            for (layer, method), maps in maps_by_key.items():
                maps = maps.cpu().numpy()
                out[("cam", method, layer)] = [
                    ({"maps": maps[i], "targets": targets_np[i]}, {"target_kinds": json.dumps(kinds[i])}) for i in range(n)
                ]
    return out


def fill_batch(cfg: RunConfig, lm: LoadedModel, cache: TensorCache, keys: list[dict[tuple, str]],
               found: list[dict[tuple, Entry]], x: torch.Tensor, labels: list[int | None], counters: Counters) -> None:
    """Compute what ``found`` lacks for the images of ``x``, store it in the cache and in ``found``."""
    rows = [r for r, image_keys in enumerate(keys) if len(found[r]) < len(image_keys)]
    if not rows:
        return
    wanted = {name for r in rows for name in keys[r] if name not in found[r]} | {("pred",)}
    sub = x[rows].to(lm.device, non_blocking=True)
    computed = compute_entries(cfg, lm, sub, wanted, [labels[r] for r in rows], counters)
    for j, row in enumerate(rows):
        for name, per_image in computed.items():
            if name not in found[row] and name in keys[row]:
                arrays, meta = per_image[j]
                cache.put(keys[row][name], arrays, meta)
                found[row][name] = (arrays, meta)


def kernel_entry(lm: LoadedModel, layer: str, max_kernels: int) -> Entry:
    """A layer's kernels chosen for drawing, as a cache entry."""
    sel = select_kernels(find_layer(lm.module, layer), max_kernels, layer)
    meta = {"labels": json.dumps(sel.labels), "rgb": str(sel.rgb), "total": str(sel.total)}
    return {"kernels": sel.kernels.numpy()}, meta
