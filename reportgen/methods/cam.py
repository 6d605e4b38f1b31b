"""Gradient class-activation maps, all derived from one forward and one backward pass per batch and target.

Each method only states how it turns a layer's activations ``A`` and the gradients ``G`` of the target score
w.r.t. ``A`` (both (N, C, h, w) float32) into a map (N, h, w) float32 >= 0 at the layer's own resolution.
Capture, backward, targets and storage are shared (``gradient_cams``). Maps are returned unnormalised: the
figure code min-max scales them for display, as pytorch-grad-cam does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "gradient_formula", "gradient_cams",
           "resolve_targets"]

CamFormula = Callable[[Tensor, Tensor], Tensor]
_EPS = 1e-7


def gradcam(a: Tensor, g: Tensor) -> Tensor:
    return g.mean(dim=(2, 3), keepdim=True) * a


def gradcampp(a: Tensor, g: Tensor) -> Tensor:
    # The paper's alpha = G^2 / (2 G^2 + sum_hw(A) G^3) (eq. 19 with exponential scores), with G^2 cancelled:
    # alpha = 1 / (2 + sum_hw(A) G) where G != 0. No epsilon: pytorch-grad-cam adds 1e-6 to the denominator,
    # which dominates 2 G^2 once gradients are small (random-init nets: G^2 ~ 1e-8) and turns the weights into
    # sum relu(G)^3; cancelling G^2 also keeps alpha exact where G^2 would underflow. Only a zero denominator
    # (G == 0, or sum_hw(A) G == -2) is guarded: alpha = 0 there, as torchcam does.
    denom = 2 + a.sum(dim=(2, 3), keepdim=True) * g
    alpha = torch.where((g != 0) & (denom != 0), denom.reciprocal(), 0.0)
    return (torch.relu(g) * alpha).sum(dim=(2, 3), keepdim=True) * a


def xgradcam(a: Tensor, g: Tensor) -> Tensor:
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    return (g * a / (sum_a + _EPS)).sum(dim=(2, 3), keepdim=True) * a


def hirescam(a: Tensor, g: Tensor) -> Tensor:
    return g * a


def layercam(a: Tensor, g: Tensor) -> Tensor:
    return torch.relu(g) * a


def _summed(weighted: CamFormula) -> CamFormula:
    return lambda a, g: torch.relu(weighted(a, g).sum(dim=1))


def gradient_formula(name: str, *, eigen_smooth: bool = False, params: Mapping[str, Any] | None = None) -> CamFormula:
    """The map of the registered gradient method ``name`` as a function of (A, G) → (N, h, w) float32 >= 0.

    A ``weighted`` method's map is relu of its weighted activations summed over channels, or, with eigen-smoothing,
    relu of their projection on the first principal component (as pytorch-grad-cam does); a ``map`` method's
    function is its map. ``params`` (its ``cams.params`` block, validated) are passed to the function by name.
    """
    from reportgen.methods.registry import get_method, list_methods

    try:
        spec = get_method(name)
    except KeyError:
        spec = None
    if spec is None or spec.engine != "gradient":
        known = ", ".join(s.name for s in list_methods("cam", engine="gradient"))
        raise MethodError(f"unknown gradient CAM method {name!r}; expected one of {known}")
    fn = spec.implementation()
    if params:
        fn = functools.partial(fn, **params)
    if spec.output == "map":
        return fn
    if not eigen_smooth:
        return _summed(fn)
    from reportgen.methods.eigen import eigencam  # first-PC projection of its first argument, ReLU applied

    return lambda a, g: eigencam(fn(a, g), g)


def resolve_targets(
    logits: Tensor, kind: str, *, class_index: int | None = None, top_k: int = 1, labels: Sequence[int | None] = ()
) -> tuple[Tensor, list[list[str]]]:
    """The classes to explain for each image.

    "Top-1" and "most likely" rank the logits, never the softmax probabilities: probabilities of distinct logits
    can tie in float32 (logits 0 and 1e-8 both give exp = 1.0), and the report's predictions rank the same
    float32 logits the same way (descending, ties by class index), so the class it names is the class explained.

    Args:
        logits: (N, K) float.
        kind: ``predicted`` (top-1), ``true`` (the image's label; top-1 where it has none), ``predicted_and_true``
            (two columns: top-1, then the label — top-1 again where it has none, so a correctly classified image
            repeats its map and the report draws it once), ``class`` (``class_index`` for every image) or ``topk``
            (each of the ``top_k`` most likely classes).
        labels: per image, its class index or None (for ``true``).

    Returns:
        (targets (N, T) int64, per image and target the kind actually used).
    """
    n, k = logits.shape
    if kind == "topk":
        if top_k > k:
            raise MethodError(f"cams.top_k is {top_k} but the model has only {k} classes")
        # a stable sort: tied logits rank by class index, as argmax (top-1) and the report's ranking do
        ranked = logits.sort(dim=1, descending=True, stable=True).indices[:, :top_k]
        return ranked, [["top-" + str(t + 1) for t in range(top_k)] for _ in range(n)]
    if kind == "class":
        if class_index is None or not 0 <= class_index < k:
            raise MethodError(f"target class {class_index} is out of range for a model with {k} classes")
        return torch.full((n, 1), class_index, dtype=torch.long, device=logits.device), [["class"]] * n
    predicted = logits.argmax(dim=1, keepdim=True)
    if kind == "predicted":
        return predicted, [["predicted"]] * n
    if kind in ("true", "predicted_and_true"):
        if len(labels) != n:
            raise MethodError(f"expected {n} labels for target {kind!r}, got {len(labels)}")
        out = predicted.clone()
        kinds = []
        for i, label in enumerate(labels):
            if label is None or not 0 <= label < k:
                kinds.append(["predicted (no label)"])
            else:
                out[i, 0] = label
                kinds.append(["true"])
        if kind == "true":
            return out, kinds
        return torch.cat([predicted, out], dim=1), [["predicted", *row] for row in kinds]
    raise MethodError(f"unknown target kind {kind!r}")


def gradient_cams(
    logits: Tensor, activations: dict[str, Tensor], targets: Tensor, methods: Sequence[str], *,
    eigen_smooth: bool = False, need_gradients: bool = True, params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[tuple[str, str], Tensor]:
    """Every requested gradient CAM for every layer, one backward pass per target column.

    Args:
        logits: (N, K) with a graph back to each tensor of ``activations`` (caught with ``capture(grad=True)``).
        activations: layer → (N, C, h, w).
        targets: (N, T) class indices.
        methods: gradient-engine method names (``gradient_formula``).
        eigen_smooth: project weighted activations on their first principal component instead of summing.
        need_gradients: False when no method uses G (EigenCAM only): no backward pass, G is passed as zeros.

    Returns:
        (layer, method) → (N, T, h, w) float32 on the activations' device, detached.
    """
    formulas = {m: gradient_formula(m, eigen_smooth=eigen_smooth, params=(params or {}).get(m)) for m in methods}
    if targets.shape[0] != logits.shape[0]:
        raise MethodError(f"expected one target row per image ({logits.shape[0]}), got {targets.shape[0]}")
    layers = list(activations)
    per_target: dict[tuple[str, str], list[Tensor]] = {(layer, m): [] for layer in layers for m in methods}
    columns = targets.shape[1]
    for t in range(columns):
        if need_gradients:
            # Images are independent in eval mode, so the gradient of the summed scores is each image's own gradient.
            score = logits.gather(1, targets[:, t : t + 1]).sum()
            grads = torch.autograd.grad(score, [activations[layer] for layer in layers], retain_graph=t < columns - 1)
        else:
            grads = tuple(torch.zeros_like(activations[layer]) for layer in layers)
        for layer, g in zip(layers, grads, strict=True):
            a = activations[layer].detach().float()
            g = g.detach().float()
            for m in methods:
                per_target[(layer, m)].append(formulas[m](a, g))
    return {key: torch.stack(maps, dim=1) for key, maps in per_target.items()}
