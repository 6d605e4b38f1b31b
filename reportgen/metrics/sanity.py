"""Sanity check by cascading randomization (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains the model must change when the model's weights are destroyed. The parameterized layers of a
copy of the model are re-initialized one group after another from the output end, the maps recomputed after each
group, and each compared with the original maps (Spearman rank correlation and SSIM, as the paper reports). A
method whose similarity stays near 1 ignores the weights (an edge detector does); Random-CAM is the floor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.similarity import normalize, spearman, ssim

__all__ = ["sanity_check", "parameterized_layers"]

MapFn = Callable[[nn.Module], Tensor]


def parameterized_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Qualified names of the modules holding parameters of their own, in the order a forward pass of ``x`` first
    calls them (registration order for those it does not call, after the others)."""
    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    called: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, name=name: called.append(name)) for name, m in owners]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    first = list(dict.fromkeys(called))
    return first + [name for name, _ in owners if name not in set(first)]


def _reinit(module: nn.Module) -> None:
    """Fresh random parameters: the module's own initializer, else a Gaussian with each tensor's mean and std."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.copy_(torch.randn_like(p) * std + float(p.mean()))


def _maps(map_fn: MapFn, model: nn.Module, n: int) -> Tensor:
    maps = map_fn(model)
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != n:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise MethodError(f"expected map_fn to return maps of shape ({n}, h, w), got {got}")
    return normalize(maps.detach().float().cpu())


def sanity_check(model: nn.Module, x: Tensor, targets: Tensor, map_fn: MapFn, *, stages: int = 5,
                 seed: int = 0) -> dict[str, Tensor | int | list[list[str]]]:
    """Cascading randomization: similarity of each image's map to its map after each randomization stage.

    A deep copy of ``model`` gives the original maps, then its parameterized layers (``parameterized_layers``,
    forward order) are re-initialized from the top: ``S = min(stages, L)`` stages, stage ``s`` having re-initialized
    the top ``round(s·L/S)`` layers (cumulative, with the RNG seeded by ``seed + s``, the caller's RNG state left as
    it was). The maps are min-max normalized and compared with the original's by ``reportgen.similarity``:
    Spearman's rank correlation (NaN where exactly one of the two maps is constant, e.g. a ReLU'd map gone all zero)
    and SSIM. The caller's model is not modified.

    Args:
        model: in eval mode; not modified (``map_fn`` only ever sees copies).
        x: (N, C, H, W) inputs, used here only to find the layers' forward order (one image is run).
        targets: (N,) int64 class indices: ``map_fn``'s targets, given here for the record (checked for shape).
        map_fn: ``map_fn(model) -> (N, h, w)`` maps of the method for ``x`` and ``targets`` on the given model.
        stages: number of randomization stages wanted.
        seed: seed of the re-initialization.

    Returns:
        ``spearman``, ``ssim``: (N, S) float32 on the CPU, stage 1 (top layers only) first; ``stage_layers``: for
        each stage the names of all layers randomized up to it; ``forward_images``: images the copies were run on
        (``map_fn`` included).
    """
    n = x.shape[0]
    if not isinstance(targets, Tensor) or targets.shape != (n,):
        raise MethodError(f"expected targets of shape ({n},), got {getattr(targets, 'shape', type(targets))}")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise MethodError(f"expected stages >= 1, got {stages!r}")
    work = copy.deepcopy(model)
    seen = [0]
    hook = work.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__(0, seen[0] + _batch(inputs)))
    try:
        layers = parameterized_layers(work, x[:1])
        if not layers:
            raise MethodError("expected a model with parameters to randomize, got none")
        original = _maps(map_fn, work, n)
        top_first = layers[::-1]
        count = min(stages, len(top_first))
        cuts = [round(s * len(top_first) / count) for s in range(1, count + 1)]
        rho, sim, names = [], [], []
        done = 0
        devices = sorted({p.device.index or 0 for p in work.parameters() if p.device.type == "cuda"})
        for s, cut in enumerate(cuts, start=1):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + s)
                for name in top_first[done:cut]:
                    _reinit(work.get_submodule(name))
            done = cut
            maps = _maps(map_fn, work, n)
            if maps.shape != original.shape:
                raise MethodError(f"expected map_fn to return maps of one shape, got {tuple(original.shape)} then "
                                  f"{tuple(maps.shape)}")
            rho.append(spearman(original, maps).float())
            sim.append(ssim(original, maps).float())
            names.append(top_first[:cut])
    finally:
        hook.remove()
    return {"spearman": torch.stack(rho, dim=1), "ssim": torch.stack(sim, dim=1), "stage_layers": names,
            "forward_images": seen[0]}


def _batch(inputs: tuple) -> int:
    first = inputs[0] if inputs else None
    return int(first.shape[0]) if isinstance(first, Tensor) and first.ndim > 0 else 1
