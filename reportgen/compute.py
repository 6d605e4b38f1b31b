"""The model work of a run: one forward (and one backward per target column) per batch, results as numpy.

``compute_entries(spec, lm, x, wanted, labels, stats)`` is the engine: it reads only a ``plan.ComputeSpec``, so a
test calls it without a config file. Imported by the compute stage (``gather.py``) only when some result is
missing from the cache, so a fully cached rerun never imports torch. Everything leaves the device in one copy
per tensor kind per batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from reportgen.cache import TensorCache
from reportgen.config import FiltersConfig
from reportgen.hooks import borrowed, capture, find_layer
from reportgen.methods import get_method
from reportgen.methods.cam import gradient_cams, resolve_targets
from reportgen.methods.feature_maps import top_channels
from reportgen.methods.kernels import select_kernels
from reportgen.models import LoadedModel
from reportgen.plan import ComputeSpec
from reportgen.results import PREDICTIONS, Entry, ResultKey, RunStats

__all__ = ["compute_entries", "fill_batch", "kernel_entry", "filter_entry"]


def compute_entries(spec: ComputeSpec, lm: LoadedModel, x: torch.Tensor, wanted: set[ResultKey],
                    labels: Sequence[int | None], stats: RunStats) -> dict[ResultKey, list[Entry]]:
    """Produce every wanted result for the images of ``x`` (N, 3, H, W), per image.

    One forward pass catches the feature-map and CAM layers; one backward pass per target column gives every
    gradient-engine CAM of every layer. ``map`` engine methods then run their own passes with the same targets.
    The predictions are always computed (the targets come from them).
    """
    target = spec.target_name
    scored = {w for w in wanted if w.kind == "metric"}
    wanted = wanted | {ResultKey.cam(w.method, w.layer, w.target) for w in scored}  # scores need their maps
    fm_layers = [la for la in spec.fm_layers if ResultKey.feature_maps(la) in wanted]
    cams = [w for w in wanted if w.kind == "cam"]
    grad_methods = [m for m in spec.methods if get_method(m).engine == "gradient" and any(w.method == m for w in cams)]
    grad_layers = [la for la in spec.cam_layers if any(w.layer == la and w.method in grad_methods for w in cams)]
    need_gradients = any(get_method(m).uses_gradients for m in grad_methods)
    map_jobs = [(m, la) for m in spec.methods if get_method(m).engine == "map"
                for la in spec.method_layers(m) if ResultKey.cam(m, la, target) in wanted]
    n = x.shape[0]
    out: dict[ResultKey, list[Entry]] = {}
    model = lm.module
    with borrowed(model):
        with capture(model, [*fm_layers, *grad_layers], grad=need_gradients and bool(grad_layers)) as caught:
            with torch.enable_grad() if need_gradients and grad_layers else torch.inference_mode():
                logits = model(x)
            stats.forward_passes += 1
            scores = logits.detach().float()
            out[PREDICTIONS] = [({"logits": row}, {}) for row in scores.cpu().numpy()]
            for layer in fm_layers:
                maps, idx, means = (t.cpu().numpy() for t in top_channels(caught[layer], spec.fm_top_k))
                out[ResultKey.feature_maps(layer)] = [({"maps": maps[i], "channels": idx[i], "means": means[i]}, {})
                                                      for i in range(n)]
            targets, kinds = resolve_targets(scores, spec.target, class_index=spec.class_index, top_k=spec.top_k,
                                             labels=labels)
            maps_by_key: dict[tuple[str, str], torch.Tensor] = {}
            if grad_layers:
                maps_by_key.update(gradient_cams(logits, {la: caught[la] for la in grad_layers}, targets, grad_methods,
                                                 eigen_smooth=spec.eigen_smooth, need_gradients=need_gradients,
                                                 params=spec.params))
                stats.backward_passes += targets.shape[1] if need_gradients else 0
        del logits, caught
        if grad_layers and spec.aug_smooth:
            _augment_smooth(model, x, targets, grad_layers, grad_methods, spec, need_gradients, maps_by_key, stats)
        extras: dict[tuple[str, str], tuple[dict[str, str], torch.Tensor | None]] = {}
        for method, layer in map_jobs:
            maps_by_key[(layer, method)], *extra = _map_method(spec, lm, x, targets, method, layer)
            extras[(layer, method)] = tuple(extra)
            stats.map_passes += 1
        if scored:
            from reportgen.trust import score_batch

            out.update(score_batch(spec, lm, x, targets, maps_by_key, scored, stats))
    targets_np = targets.cpu().numpy()
    meta = [{"target_kinds": json.dumps(kinds[i])} for i in range(n)]
    for (layer, method), maps in maps_by_key.items():
        # float32 at every resolution: half precision flushes input gradients below 6e-8 to zero (all of a random
        # MobileNetV3's) and rounds the rest by 5e-4 relative
        maps_np = maps.float().cpu().numpy()
        notes, signed = extras.get((layer, method), ({}, None))
        arrays = [{"maps": maps_np[i], "targets": targets_np[i]} for i in range(n)]
        if signed is not None:  # report.raw_maps: full: the signed per-channel attribution too, (T, 3, H, W)
            for row, s in zip(arrays, signed.float().cpu().numpy(), strict=True):
                row["signed"] = s
        out[ResultKey.cam(method, layer, target)] = [(arrays[i], {**meta[i], **notes}) for i in range(n)]
    return out


def _map_method(spec: ComputeSpec, lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor, method: str,
                layer: str) -> tuple[torch.Tensor, dict[str, str], torch.Tensor | None]:
    """Run one ``map`` engine method: (maps (N, T, h, w), notes, the signed (N, T, 3, H, W) attribution or None).

    With ``raw_maps == "full"`` an input-gradient method (``MethodSpec.signed``) is computed through
    ``saliency.raw_attributions`` once, and its map is that attribution's reduction, the very map the method gives.
    """
    kwargs = dict(spec.params.get(method, {}))
    if layer:
        kwargs["layer"] = layer
    method_spec = get_method(method)
    if method_spec.wants_preprocess:
        kwargs.update(mean=lm.preprocess.mean, std=lm.preprocess.std)
    if spec.raw_maps == "full" and method_spec.signed:
        from reportgen.methods.saliency import magnitude, raw_attributions

        signed = raw_attributions(lm.module, x, targets, method, **kwargs)
        return magnitude(signed), {}, signed
    result = method_spec.implementation()(lm.module, x, targets, **kwargs)
    if isinstance(result, tuple):  # (maps, notes): what the method could not do, for the report
        return result[0], result[1], None
    return result, {}, None


# pytorch-grad-cam's aug_smooth (ttach): horizontal flip x multiply by 0.9 / 1.0 / 1.1; (flip, factor) = (False, 1.0)
# is the plain pass already computed.
_AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1) if (flip, factor) != (False, 1.0)]


def _augment_smooth(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, layers: list[str],
                    methods: list[str], spec: ComputeSpec, need_gradients: bool,
                    maps_by_key: dict[tuple[str, str], torch.Tensor], stats: RunStats) -> None:
    """Test-time augmentation smoothing of the gradient CAMs: average over 6 augmented copies (flipped maps are
    flipped back), the same targets for every copy. Replaces the entries of ``maps_by_key`` in place."""
    sums = {key: maps_by_key[key].clone() for key in maps_by_key}
    for flip, factor in _AUGMENTATIONS:
        xa = (x.flip(-1) if flip else x) * factor
        with capture(model, layers, grad=need_gradients) as caught:
            with torch.enable_grad() if need_gradients else torch.inference_mode():
                logits = model(xa)
            stats.forward_passes += 1
            maps = gradient_cams(logits, {la: caught[la] for la in layers}, targets, methods,
                                 eigen_smooth=spec.eigen_smooth, need_gradients=need_gradients, params=spec.params)
            stats.backward_passes += targets.shape[1] if need_gradients else 0
        for key, m in maps.items():
            sums[key] += m.flip(-1) if flip else m
    for key, total in sums.items():
        maps_by_key[key] = total / (len(_AUGMENTATIONS) + 1)


def fill_batch(spec: ComputeSpec, lm: LoadedModel, cache: TensorCache, keys: list[dict[ResultKey, str]],
               found: list[dict[ResultKey, Entry]], x: torch.Tensor, labels: list[int | None],
               stats: RunStats) -> None:
    """Compute what ``found`` lacks for the images of ``x``, store it in the cache and in ``found``.

    When any image lacks something, every image of ``x`` goes through the model (results already found are
    kept as they are): the batch's composition, and so the rounding of every result, does not depend on what
    happened to be cached.
    """
    missing = [r for r, image_keys in enumerate(keys) if len(found[r]) < len(image_keys)]
    if not missing:
        return
    rows = list(range(len(keys)))
    wanted = {name for r in missing for name in keys[r] if name not in found[r]} | {PREDICTIONS}
    for part in _split_on_oom(spec, lm, x, rows, wanted, labels, stats):
        part_rows, computed = part
        for j, row in enumerate(part_rows):
            for name, per_image in computed.items():
                if name not in found[row] and name in keys[row]:
                    arrays, meta = per_image[j]
                    cache.put(keys[row][name], arrays, meta)
                    found[row][name] = (arrays, meta)


def _split_on_oom(spec: ComputeSpec, lm: LoadedModel, x: torch.Tensor, rows: list[int], wanted: set[ResultKey],
                  labels: list[int | None], stats: RunStats) -> list[tuple[list[int], dict[ResultKey, list[Entry]]]]:
    """Compute ``rows`` of ``x`` in one go; on an out-of-memory error, halve the rows and retry each half.

    A single image that still does not fit re-raises the error. Results are identical either way (images are
    independent in eval mode); ``stats.oom_splits`` tells the run summary that it happened.
    """
    try:
        sub = x[rows].to(lm.device, memory_format=lm.memory_format, non_blocking=True)
        return [(rows, compute_entries(spec, lm, sub, wanted, [labels[r] for r in rows], stats))]
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise
        stats.oom_splits += 1
        if lm.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(rows) // 2
        return [*_split_on_oom(spec, lm, x, rows[:half], wanted, labels, stats),
                *_split_on_oom(spec, lm, x, rows[half:], wanted, labels, stats)]


def kernel_entry(lm: LoadedModel, layer: str, max_kernels: int) -> Entry:
    """A layer's kernels chosen for drawing, as a cache entry."""
    sel = select_kernels(find_layer(lm.module, layer), max_kernels, layer)
    meta = {"labels": json.dumps(sel.labels), "rgb": str(sel.rgb), "total": str(sel.total)}
    return {"kernels": sel.kernels.numpy()}, meta


def filter_entry(lm: LoadedModel, layer: str, f: FiltersConfig) -> Entry:
    """Activation-maximization images of ``f.channels`` at ``layer``, as uint8 (K, S, S, 3)."""
    from reportgen.methods.activation_max import visualize_filters

    images = visualize_filters(lm.module, layer, f.channels, mean=lm.preprocess.mean, std=lm.preprocess.std,
                               size=f.size, steps=f.steps, lr=f.lr, parameterization=f.parameterization,
                               transforms=f.transforms, seed=f.seed, batch_size=f.batch_size, device=lm.device)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return {"images": pixels, "channels": np.asarray(f.channels, dtype=np.int64)}, {}
