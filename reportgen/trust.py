"""The compute stage's side of the trust metrics: score a batch's maps with ``reportgen.metrics``, as cache entries.

``score_batch(spec, lm, x, targets, maps_by_key, wanted, stats)`` runs each asked metric on the maps of target
column 0 of every scored method and layer (``metrics.methods`` × its layers) and returns one ``metric`` entry per
image: a float32 (1,) array per score (``deletion_auc``, ``insertion_auc``, ``average_drop``, ``increase``,
``road_morf``, ``road_lerf``) and, for the sanity check, ``sanity_spearman`` and ``sanity_ssim`` (S,) with the
randomized layers of each stage in the metadata. Imported only when a metric is missing from the cache: a run that
asks for none never loads this module. Its extra images pushed through the model are counted in
``RunStats.metric_images``.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from reportgen.hooks import borrowed, capture
from reportgen.methods import get_method
from reportgen.methods.cam import gradient_cams
from reportgen.models import LoadedModel
from reportgen.plan import ComputeSpec
from reportgen.results import Entry, ResultKey, RunStats

__all__ = ["score_batch", "single_map"]


def single_map(spec: ComputeSpec, lm: LoadedModel, module: nn.Module, x: Tensor, targets: Tensor, method: str,
               layer: str) -> Tensor:
    """``method``'s maps (N, h, w) at ``layer`` for the target column ``targets`` (N,), computed on ``module`` (the
    run's model, or a randomized copy of it for the sanity check)."""
    ms = get_method(method)
    cols = targets.reshape(-1, 1)
    if ms.engine == "gradient":
        grads = ms.uses_gradients
        with borrowed(module), capture(module, [layer], grad=grads) as caught:
            with torch.enable_grad() if grads else torch.inference_mode():
                logits = module(x)
            maps = gradient_cams(logits, {layer: caught[layer]}, cols, [method], eigen_smooth=spec.eigen_smooth,
                                 need_gradients=grads, params=spec.params)
        return maps[(layer, method)][:, 0].detach()
    from dataclasses import replace

    from reportgen.compute import _map_method

    with borrowed(module):
        maps, _, _ = _map_method(spec, replace(lm, module=module), x, cols, method, layer)
    return maps[:, 0].detach()


def _sanity(spec: ComputeSpec, lm: LoadedModel, x: Tensor, targets: Tensor, method: str, layer: str) -> dict:
    from reportgen.metrics import sanity_check

    def map_fn(module: nn.Module) -> Tensor:
        return single_map(spec, lm, module, x, targets, method, layer)

    return sanity_check(lm.module, x, targets, map_fn, stages=spec.metric_sanity_stages, seed=spec.metric_seed)


def score_batch(spec: ComputeSpec, lm: LoadedModel, x: Tensor, targets: Tensor,
                maps_by_key: dict[tuple[str, str], Tensor], wanted: set[ResultKey],
                stats: RunStats) -> dict[ResultKey, list[Entry]]:
    """A ``metric`` entry per image for each wanted metric key (see the module docstring)."""
    from reportgen.metrics import METRICS, calls, deletion_insertion

    n = x.shape[0]
    asked = [name for name in spec.metric_names if name != "sanity"]
    keep = {score for name in asked for score in METRICS[name].scores}  # deletion alone: no insertion_auc
    kw = {"batch_size": spec.metric_batch_size, "autocast_dtype": torch.bfloat16 if spec.metric_bf16 else None}
    own = {deletion_insertion: {"steps": spec.metric_steps}}
    out: dict[ResultKey, list[Entry]] = {}
    first = targets[:, 0]
    for key in sorted(k for k in wanted if k.kind == "metric"):
        maps = maps_by_key[(key.layer, key.method)][:, 0].float()
        arrays: list[dict] = [{} for _ in range(n)]
        meta: dict[str, str] = {}
        for function in calls(asked):  # one call serves deletion and insertion, average drop and increase, ...
            with borrowed(lm.module):
                scores = function(lm.module, x, maps, first, **kw, **own.get(function, {}))
            stats.metric_images += int(scores.get("forward_images", 0))
            for name, value in scores.items():
                if name in keep:
                    for i, v in enumerate(value.float().cpu().numpy()):
                        arrays[i][name] = v.reshape(1)
        if "sanity" in spec.metric_names:
            sanity = _sanity(spec, lm, x, first, key.method, key.layer)
            stats.metric_images += int(sanity.get("forward_images", 0))
            meta["stage_layers"] = json.dumps(sanity.get("stage_layers", []))
            for i in range(n):
                arrays[i]["sanity_spearman"] = sanity["spearman"][i].float().cpu().numpy()
                arrays[i]["sanity_ssim"] = sanity["ssim"][i].float().cpu().numpy()
        out[key] = [(arrays[i], dict(meta)) for i in range(n)]
    return out
