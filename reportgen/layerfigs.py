"""The figures of the model alone, before any image: kernel galleries and filter visualizations per layer.

Each is a result of the weights only: looked up in the cache by the model's identity, computed (torch, imported
only then) on a miss, and drawn into the staging folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.cache import TensorCache, cache_key
from reportgen.config import FiltersConfig, RunConfig
from reportgen.drawing import draw_filters, draw_kernels
from reportgen.plan import layout_name
from reportgen.prepare import ModelHandle
from reportgen.results import Entry

__all__ = ["kernel_galleries", "kernel_arrays", "filter_figures"]


def _model_level(cache: TensorCache, model: ModelHandle, method: str, params: dict, layer: str,
                 compute: Callable[[Any], Entry]) -> Entry:
    """A result of the model alone (no image): from the cache, or ``compute(built model)`` and stored."""
    key = cache_key({"model": model.card.identity(), "method": method, "params": params, "layer": layer})
    hit = cache.get(key)
    if hit is None:
        hit = compute(model.loaded())
        cache.put(key, *hit)
    return hit


def _compute_kernels(lm, *, layer: str, max_kernels: int) -> Entry:
    from reportgen.compute import kernel_entry  # torch: only when the cache misses

    return kernel_entry(lm, layer, max_kernels)


def _compute_filters(lm, *, layer: str, filters: FiltersConfig) -> Entry:
    from reportgen.compute import filter_entry  # torch: only when the cache misses

    return filter_entry(lm, layer, filters)


def _kernels(cfg: RunConfig, model: ModelHandle, cache: TensorCache, layer: str
             ) -> tuple[np.ndarray, list[str], bool, int]:
    """A layer's kernels as the gallery shows them: (kernels (n, c, kh, kw), tile labels, rgb, the layer's total)."""
    from_model = partial(_compute_kernels, layer=layer, max_kernels=cfg.kernels.max_kernels)
    arrays, meta = _model_level(cache, model, "kernels", {"max_kernels": cfg.kernels.max_kernels}, layer, from_model)
    return (np.asarray(arrays["kernels"], dtype=np.float32), json.loads(meta["labels"]), meta["rgb"] == "True",
            int(meta["total"]))


def kernel_galleries(cfg: RunConfig, model: ModelHandle, cache: TensorCache, staging: Path) -> list[dict]:
    """One kernel gallery per ``kernels.layers`` entry, drawn; their report entries."""
    entries = []
    for layer in cfg.kernels.layers:
        shape = list(model.card.layers[layer].weight_shape or ())
        entries.append(draw_kernels(staging, layer, *_kernels(cfg, model, cache, layer), shape=shape))
    return entries


def kernel_arrays(cfg: RunConfig, model: ModelHandle, cache: TensorCache
                  ) -> dict[str, tuple[np.ndarray, list[str], bool, int]]:
    """The kernels of each ``figures.kernels`` layer, for the paper figures (from the cache the gallery filled)."""
    return {layer: _kernels(cfg, model, cache, layer) for layer in cfg.figures.kernels}


def filter_figures(cfg: RunConfig, model: ModelHandle, cache: TensorCache, staging: Path) -> list[dict]:
    """One filter-visualization grid per ``filters.layers`` entry, drawn; their report entries."""
    f = cfg.filters
    params = {"channels": list(f.channels), "size": f.size, "steps": f.steps, "lr": f.lr,
              "parameterization": f.parameterization, "transforms": f.transforms, "seed": f.seed,
              "layout": layout_name(cfg)}
    entries = []
    for layer in f.layers:
        arrays, _ = _model_level(cache, model, "activation_max", params, layer,
                                 partial(_compute_filters, layer=layer, filters=f))
        how = ("Fourier-space image, decorrelated colour" if f.parameterization == "fourier" else "pixel-space image")
        caption = (f"channels {', '.join(str(c) for c in f.channels)}: {how}, "
                   f"{'jitter/scale/rotation, ' if f.transforms else ''}{f.steps} Adam steps, lr {f.lr}, seed {f.seed}")
        entries.append(draw_filters(staging, layer, np.asarray(arrays["images"]), f.channels, caption))
    return entries
