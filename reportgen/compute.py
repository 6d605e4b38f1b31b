"""The model work of a run: one forward (and one backward per target column) per batch, results as numpy.

Imported by the runner only when some result is missing from the cache, so a fully cached rerun never
imports torch. Everything leaves the device in one copy per tensor kind per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from reportgen.cache import TensorCache
from reportgen.config import RunConfig
from reportgen.hooks import borrowed, capture
from reportgen.methods import get_method
from reportgen.methods.cam import gradient_cams, resolve_targets
from reportgen.methods.feature_maps import top_channels
from reportgen.methods.kernels import select_kernels
from reportgen.models import LoadedModel, find_layer

__all__ = ["Counters", "compute_entries", "fill_batch", "kernel_entry", "filter_entry"]

Entry = tuple[dict[str, np.ndarray], dict[str, str]]


class Counters:
    """Model work done, for the run summary: the shared forward and backward passes, and the ``map`` method
    calls (each runs passes of its own: perturbations, input gradients)."""

    def __init__(self) -> None:
        self.forward_passes = 0
        self.backward_passes = 0
        self.map_passes = 0
        self.oom_splits = 0


# map methods that also take the preprocessing's mean and std (Integrated Gradients' black baseline)
_NEEDS_PREPROCESS = frozenset({"integrated_gradients"})


def _map_functions() -> dict[str, Callable[..., torch.Tensor | tuple[torch.Tensor, dict[str, str]]]]:
    """Implementations of the ``map`` engine methods: (model, x, targets, [layer=], **params) → (N, T, h, w), or
    ((N, T, h, w), notes): string metadata stored with every image's entry (FullGrad's unused biases)."""
    from reportgen.methods.fullgrad import fullgrad_with_notes
    from reportgen.methods.perturbation import ablationcam, scorecam
    from reportgen.methods.saliency import guided_backprop, integrated_gradients, saliency, smoothgrad

    return {
        "scorecam": scorecam,
        "ablationcam": ablationcam,
        "fullgrad": fullgrad_with_notes,
        "saliency": saliency,
        "guided_backprop": guided_backprop,
        "smoothgrad": smoothgrad,
        "integrated_gradients": integrated_gradients,
    }


def compute_entries(cfg: RunConfig, lm: LoadedModel, x: torch.Tensor, wanted: set[tuple], labels: Sequence[int | None],
                    counters: Counters) -> dict[tuple, list[Entry]]:
    """Produce every wanted result for the images of ``x`` (N, 3, H, W), per image.

    One forward pass catches the feature-map and CAM layers; one backward pass per target column gives every
    gradient-engine CAM of every layer. ``map`` engine methods then run their own passes with the same targets.
    """
    fm_layers = [la for la in cfg.feature_maps.layers if ("fm", la) in wanted]
    cams = [w for w in wanted if w[0] == "cam"]
    grad_methods = [m for m in cfg.cams.methods if get_method(m).engine == "gradient" and any(w[1] == m for w in cams)]
    grad_layers = [la for la in cfg.cams.layers if any(w[2] == la and w[1] in grad_methods for w in cams)]
    need_gradients = any(get_method(m).uses_gradients for m in grad_methods)
    map_jobs = [(m, la) for m in cfg.cams.methods if get_method(m).engine == "map"
                for la in (cfg.cams.layers if get_method(m).needs_layer else ("",)) if ("cam", m, la) in wanted]
    n = x.shape[0]
    out: dict[tuple, list[Entry]] = {}
    model = lm.module
    with borrowed(model):
        with capture(model, [*fm_layers, *grad_layers], grad=need_gradients and bool(grad_layers)) as caught:
            with torch.enable_grad() if need_gradients and grad_layers else torch.inference_mode():
                logits = model(x)
            counters.forward_passes += 1
            scores = logits.detach().float()
            out[("pred",)] = [({"logits": row}, {}) for row in scores.cpu().numpy()]
            for layer in fm_layers:
                maps, idx, means = (t.cpu().numpy() for t in top_channels(caught[layer], cfg.feature_maps.top_k))
                out[("fm", layer)] = [({"maps": maps[i], "channels": idx[i], "means": means[i]}, {}) for i in range(n)]
            targets, kinds = resolve_targets(scores, cfg.cams.target, class_index=cfg.cams.class_index,
                                             top_k=cfg.cams.top_k, labels=labels)
            maps_by_key: dict[tuple[str, str], torch.Tensor] = {}
            if grad_layers:
                maps_by_key.update(gradient_cams(logits, {la: caught[la] for la in grad_layers}, targets, grad_methods,
                                                 eigen_smooth=cfg.cams.eigen_smooth, need_gradients=need_gradients))
                counters.backward_passes += targets.shape[1] if need_gradients else 0
        del logits, caught
        if grad_layers and cfg.cams.aug_smooth:
            _augment_smooth(model, x, targets, grad_layers, grad_methods, cfg.cams.eigen_smooth, need_gradients,
                            maps_by_key, counters)
        functions = _map_functions() if map_jobs else {}
        notes_by_key: dict[tuple[str, str], dict[str, str]] = {}
        for method, layer in map_jobs:
            kwargs = dict(cfg.cams.params.get(method, {}))
            if layer:
                kwargs["layer"] = layer
            if method in _NEEDS_PREPROCESS:
                kwargs.update(mean=lm.preprocess.mean, std=lm.preprocess.std)
            result = functions[method](model, x, targets, **kwargs)
            if isinstance(result, tuple):  # (maps, notes): what the method could not do, for the report
                result, notes_by_key[(layer, method)] = result
            maps_by_key[(layer, method)] = result
            counters.map_passes += 1
    targets_np = targets.cpu().numpy()
    meta = [{"target_kinds": json.dumps(kinds[i])} for i in range(n)]
    for (layer, method), maps in maps_by_key.items():
        # float32 at every resolution: half precision flushes input gradients below 6e-8 to zero (all of a random
        # MobileNetV3's) and rounds the rest by 5e-4 relative
        maps_np = maps.float().cpu().numpy()
        notes = notes_by_key.get((layer, method), {})
        out[("cam", method, layer)] = [({"maps": maps_np[i], "targets": targets_np[i]}, {**meta[i], **notes})
                                       for i in range(n)]
    return out


# pytorch-grad-cam's aug_smooth (ttach): horizontal flip x multiply by 0.9 / 1.0 / 1.1; (flip, factor) = (False, 1.0)
# is the plain pass already computed.
_AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1) if (flip, factor) != (False, 1.0)]


def _augment_smooth(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, layers: list[str],
                    methods: list[str], eigen_smooth: bool, need_gradients: bool,
                    maps_by_key: dict[tuple[str, str], torch.Tensor], counters: Counters) -> None:
    """Test-time augmentation smoothing of the gradient CAMs: average over 6 augmented copies (flipped maps are
    flipped back), the same targets for every copy. Replaces the entries of ``maps_by_key`` in place."""
    sums = {key: maps_by_key[key].clone() for key in maps_by_key}
    for flip, factor in _AUGMENTATIONS:
        xa = (x.flip(-1) if flip else x) * factor
        with capture(model, layers, grad=need_gradients) as caught:
            with torch.enable_grad() if need_gradients else torch.inference_mode():
                logits = model(xa)
            counters.forward_passes += 1
            maps = gradient_cams(logits, {la: caught[la] for la in layers}, targets, methods,
                                 eigen_smooth=eigen_smooth, need_gradients=need_gradients)
            counters.backward_passes += targets.shape[1] if need_gradients else 0
        for key, m in maps.items():
            sums[key] += m.flip(-1) if flip else m
    for key, total in sums.items():
        maps_by_key[key] = total / (len(_AUGMENTATIONS) + 1)


def fill_batch(cfg: RunConfig, lm: LoadedModel, cache: TensorCache, keys: list[dict[tuple, str]],
               found: list[dict[tuple, Entry]], x: torch.Tensor, labels: list[int | None], counters: Counters) -> None:
    """Compute what ``found`` lacks for the images of ``x``, store it in the cache and in ``found``.

    When any image lacks something, every image of ``x`` goes through the model (results already found are
    kept as they are): the batch's composition, and so the rounding of every result, does not depend on what
    happened to be cached.
    """
    missing = [r for r, image_keys in enumerate(keys) if len(found[r]) < len(image_keys)]
    if not missing:
        return
    rows = list(range(len(keys)))
    wanted = {name for r in missing for name in keys[r] if name not in found[r]} | {("pred",)}
    for part in _split_on_oom(cfg, lm, x, rows, wanted, labels, counters):
        part_rows, computed = part
        for j, row in enumerate(part_rows):
            for name, per_image in computed.items():
                if name not in found[row] and name in keys[row]:
                    arrays, meta = per_image[j]
                    cache.put(keys[row][name], arrays, meta)
                    found[row][name] = (arrays, meta)


def _split_on_oom(cfg: RunConfig, lm: LoadedModel, x: torch.Tensor, rows: list[int], wanted: set[tuple],
                  labels: list[int | None], counters: Counters) -> list[tuple[list[int], dict[tuple, list[Entry]]]]:
    """Compute ``rows`` of ``x`` in one go; on an out-of-memory error, halve the rows and retry each half.

    A single image that still does not fit re-raises the error. Results are identical either way (images are
    independent in eval mode); ``counters.oom_splits`` tells the run summary that it happened.
    """
    try:
        sub = x[rows].to(lm.device, memory_format=lm.memory_format, non_blocking=True)
        return [(rows, compute_entries(cfg, lm, sub, wanted, [labels[r] for r in rows], counters))]
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise
        counters.oom_splits += 1
        if lm.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(rows) // 2
        return [*_split_on_oom(cfg, lm, x, rows[:half], wanted, labels, counters),
                *_split_on_oom(cfg, lm, x, rows[half:], wanted, labels, counters)]


def kernel_entry(lm: LoadedModel, layer: str, max_kernels: int) -> Entry:
    """A layer's kernels chosen for drawing, as a cache entry."""
    sel = select_kernels(find_layer(lm.module, layer), max_kernels, layer)
    meta = {"labels": json.dumps(sel.labels), "rgb": str(sel.rgb), "total": str(sel.total)}
    return {"kernels": sel.kernels.numpy()}, meta


def filter_entry(lm: LoadedModel, layer: str, cfg: RunConfig) -> Entry:
    """Activation-maximization images of ``cfg.filters.channels`` at ``layer``, as uint8 (K, S, S, 3)."""
    from reportgen.methods.activation_max import visualize_filters

    f = cfg.filters
    images = visualize_filters(lm.module, layer, f.channels, mean=lm.preprocess.mean, std=lm.preprocess.std,
                               size=f.size, steps=f.steps, lr=f.lr, parameterization=f.parameterization,
                               transforms=f.transforms, seed=f.seed, batch_size=f.batch_size, device=lm.device)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return {"images": pixels, "channels": np.asarray(f.channels, dtype=np.int64)}, {}
