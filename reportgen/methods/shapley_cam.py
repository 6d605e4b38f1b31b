"""Shapley-CAM: Grad-CAM's channel weights corrected by a Hessian-vector product (second-order Shapley term).

A ``map`` engine method: it needs the gradient with its graph (``create_graph=True``) to differentiate it once
more, which the shared one-pass engine does not keep. One forward pass per batch, then per target column one
backward with a graph and one Hessian-vector product, both stopping at the layer (``capture(grad=True)`` makes
the layer's output a leaf), for all images at once.

Matches pytorch-grad-cam 1.5.7's ``ShapleyCAM.get_cam_weights``: ``hvp = autograd.grad(G, A, grad_outputs=A)``,
i.e. ``H A`` with H the Hessian of the target logit w.r.t. A, and weights ``mean_hw(G - 0.5 · H A)``; where the
network after the layer is piecewise linear (ReLU, max pooling, linear layers, BatchNorm in eval mode), H is 0
and the map is Grad-CAM's. The peer differentiates the summed scores of the batch; images are independent in
eval mode, so each image's G and H A are its own either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reportgen.hooks import capture, find_layer
from reportgen.methods.inputs import check_batch, check_caught, check_logits

__all__ = ["forward_with_layer", "shapleycam"]

_FD_STEP = 1e-3  # relative step of the central difference d/ds G(s·A) at s = 1, the fallback for H·A


def forward_with_layer(model: nn.Module, x: Tensor, targets: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """One forward pass with grad enabled: (logits (N, K) with a graph to the layer, its output A (N, C, h, w)).

    Raises:
        MethodError: the layer did not run, the model does not return (N, K) logits, or a target is out of range.
    """
    with capture(model, [layer], grad=True) as caught, torch.enable_grad():
        logits = model(x)
    a = check_caught(caught, layer)
    return check_logits(logits, x.shape[0], targets), a


def shapleycam(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str) -> Tensor:
    """Shapley-CAM (Cai et al., "CAMs as Shapley Value-based Explainers", 2025, arXiv:2501.06261).

    Formula: ``cam_c = relu(Σ_k mean_hw(G_k - ½ (H A)_k) · A_k)``, G = ∂y_c/∂A, H = ∂²y_c/∂A².

    Args:
        model: in eval mode with frozen weights (the caller borrows it); left as found.
        x: (N, 3, H, W) float32 normalised input; not modified.
        targets: (N, T) int64 class indices.
        layer: qualified name of a module whose output is (N, C, h, w).

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached; with notes ``{"hessian": ...}``
        when H·A had to be taken by central differences (an op without a second derivative in torch).
    """
    targets = check_batch(x, targets)
    logits, a = forward_with_layer(model, x, targets, layer)
    columns = targets.shape[1]
    maps, notes = [], {}
    for t in range(columns):
        score = logits.gather(1, targets[:, t : t + 1]).sum()
        (g,) = torch.autograd.grad(score, a, create_graph=True, retain_graph=True)
        hvp = None
        if g.requires_grad:  # else G does not depend on A (a linear head): H = 0
            try:
                (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True)
            except RuntimeError as exc:  # an op without a second derivative in torch (hardsigmoid, hardswish)
                if "not implemented" not in str(exc):
                    raise
                hvp = _hvp_by_differences(model, x, layer, targets[:, t : t + 1], a.detach())
                notes["hessian"] = (f"H·A by central differences of the gradient (step {_FD_STEP} of A): torch has "
                                    f"no second derivative for an op after the layer ({str(exc).splitlines()[0]})")
        weight = g.detach() if hvp is None else g.detach() - 0.5 * hvp
        maps.append(torch.relu((weight.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(dim=1)))
        del g, hvp
    out = torch.stack(maps, dim=1).float()
    return (out, notes) if notes else out


def _hvp_by_differences(model: nn.Module, x: Tensor, layer: str, column: Tensor, a: Tensor) -> Tensor:
    """``H·A = d/ds G(s·A)`` at s = 1, by a central difference: two forward + backward passes from the layer.

    Exact where the network after the layer is quadratic between the two points (hardswish away from its
    kinks); float32 rounding of G limits it to about 1e-4 relative.
    """
    module = find_layer(model, layer)
    grads = []
    for s in (1 + _FD_STEP, 1 - _FD_STEP):
        scaled = (a * s).requires_grad_(True)
        handle = module.register_forward_hook(lambda _m, _i, _o, z=scaled: z.clone())
        try:
            with torch.enable_grad():
                score = model(x).gather(1, column).sum()
        finally:
            handle.remove()
        grads.append(torch.autograd.grad(score, scaled)[0])
    return (grads[0] - grads[1]) / (2 * _FD_STEP)
