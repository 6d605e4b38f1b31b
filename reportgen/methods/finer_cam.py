"""Finer-CAM: Grad-CAM of the target's score against the classes the model confuses it with.

A ``map`` engine method: its score is not one logit but a softmax-weighted difference to other classes, so it
needs a backward pass of its own. One forward pass per batch, one backward per target column stopping at the
layer, for all images at once.

Matches pytorch-grad-cam 1.5.7's ``FinerCAM`` with its default ``base_method=GradCAM`` and
``utils/model_targets.FinerWeightedTarget``:

* the comparison classes of target c are the classes whose logits are closest to y_c (``|y_k - y_c|``
  ascending), positions 1 … ``comparisons`` of that ranking (the peer's default ``comparison_categories`` is
  [1, 2, 3], clamped to the K - 1 other classes); c itself is position 0 (here by construction, in the peer
  because its distance is 0);
* the score ``Σ_j p_j (y_c - α y_j) / (Σ_j p_j + 1e-9)`` with p = softmax(y), differentiated through p too;
* Grad-CAM weights ``mean_hw(G)``, then relu of the weighted channel sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.methods.inputs import check_batch
from reportgen.methods.shapley_cam import forward_with_layer

__all__ = ["comparison_classes", "finer_score", "finercam"]

_EPS = 1e-9  # FinerWeightedTarget: numerator / (denominator + 1e-9)


def comparison_classes(logits: Tensor, main: Tensor, count: int) -> Tensor:
    """The ``count`` classes whose logits are closest to each image's main class (ties by class index).

    Args:
        logits: (N, K) float.
        main: (N,) int64 class indices.
        count: how many (at most K - 1 are returned).

    Returns:
        (N, min(count, K - 1)) int64, closest first; never the main class.
    """
    dist = (logits - logits.gather(1, main[:, None])).abs()
    dist = dist.scatter(1, main[:, None], -1.0)  # the main class ranks first whatever the ties
    order = dist.argsort(dim=1, stable=True)
    return order[:, 1 : 1 + min(count, logits.shape[1] - 1)]


def finer_score(logits: Tensor, main: Tensor, others: Tensor, alpha: float) -> Tensor:
    """FinerWeightedTarget's score per image: ``Σ_j p_j (y_main - α y_j) / (Σ_j p_j + 1e-9)``.

    Args:
        logits: (N, K) float with its graph.
        main: (N,) int64.
        others: (N, J) int64 comparison classes.
        alpha: the comparison strength α.

    Returns:
        (N,) float.
    """
    prob = torch.softmax(logits, dim=1).gather(1, others)  # (N, J)
    y_main = logits.gather(1, main[:, None])  # (N, 1)
    y_other = logits.gather(1, others)
    return (prob * (y_main - alpha * y_other)).sum(dim=1) / (prob.sum(dim=1) + _EPS)


def finercam(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, alpha: float = 1.0,
             comparisons: int = 3) -> Tensor:
    """Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", CVPR 2025).

    Formula: ``cam_c = relu(Σ_k mean_hw(∂s_c/∂A_k) · A_k)``, ``s_c = Σ_j p_j (y_c - α y_j) / Σ_j p_j`` over the
    ``comparisons`` classes j with logits closest to y_c.

    Args:
        model: in eval mode with frozen weights (the caller borrows it); left as found.
        x: (N, 3, H, W) float32 normalised input; not modified.
        targets: (N, T) int64 class indices.
        layer: qualified name of a module whose output is (N, C, h, w).
        alpha: the comparison strength α (the peer's default 1; 0 gives plain Grad-CAM of y_c up to scale).
        comparisons: how many of the closest classes to compare with (the peer's default 3).

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = check_batch(x, targets)
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise MethodError(f"expected comparisons >= 1, got {comparisons!r}")
    logits, a = forward_with_layer(model, x, targets, layer)
    n, _, h, w = a.shape
    columns = targets.shape[1]
    maps = []
    for t in range(columns):
        main = targets[:, t]
        others = comparison_classes(logits.detach(), main, comparisons)
        if others.shape[1] == 0:  # a one-class model: nothing to compare with, the peer's score is 0
            maps.append(a.new_zeros((n, h, w)))
            continue
        score = finer_score(logits, main, others, alpha).sum()
        (g,) = torch.autograd.grad(score, a, retain_graph=t < columns - 1)
        maps.append(torch.relu((g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(dim=1)))
    return torch.stack(maps, dim=1).float()
