"""Smooth Grad-CAM++: Grad-CAM++ with its first, second and third derivatives averaged over noisy inputs.

The (image, noise sample) pairs of the whole batch run together, ``batch_size`` noisy inputs per forward pass;
each pass backpropagates once per target column, only down to the layer (``capture(grad=True)``). The noise is
drawn from a local generator seeded with ``seed``: sample s is one (3, H, W) draw shared by every image, so an
image's map depends on its pixels and the seed, never on the batch it was computed in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.hooks import capture
from reportgen.methods.inputs import check_batch, check_caught, check_logits

__all__ = ["smoothgradcampp", "smooth_moments", "smooth_formula"]


def _noise(x: Tensor, num_samples: int, std: float, seed: int) -> Tensor:
    """(S, 3, H, W): one draw per sample, in the order torchcam draws them (so a test can give both the same)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.cat([torch.randn((1, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype).mul_(std)
                      for _ in range(num_samples)])


def smooth_moments(model: nn.Module, x: Tensor, targets: Tensor, layer: str, noise: Tensor,
                   batch_size: int) -> tuple[Tensor, Tensor]:
    """The clean activations and the noise-averaged powers of the gradients.

    Args:
        x: (N, 3, H, W) inputs; noise: (S, 3, H, W); targets: (N, T) int64.

    Returns:
        A (N, C, h, w) float32 of the clean input, and (3, N, T, C, h, w) float32: mean_s G, mean_s G², mean_s G³,
        G the gradient of the target score w.r.t. the layer's output at ``x + noise_s``.
    """
    n, s = x.shape[0], noise.shape[0]
    with torch.inference_mode(), capture(model, [layer]) as caught:
        check_logits(model(x), n, targets)
    a = check_caught(caught, layer).float().clone()
    moments = torch.zeros((3, n, targets.shape[1], *a.shape[1:]), device=x.device, dtype=torch.float32)
    rows = torch.arange(n * s, device=x.device)
    for start in range(0, n * s, batch_size):
        chunk = rows[start:start + batch_size]
        img, smp = chunk // s, chunk % s
        with torch.enable_grad(), capture(model, [layer], grad=True) as caught:
            logits = model(x[img] + noise[smp])
            for t in range(targets.shape[1]):
                score = logits.gather(1, targets[img, t:t + 1]).sum()  # images are independent in eval mode
                (g,) = torch.autograd.grad(score, [caught[layer]], retain_graph=t < targets.shape[1] - 1)
                g = g.detach().float()
                for p in range(3):
                    moments[p, :, t].index_add_(0, img, g ** (p + 1))
    return a, moments / s


def smooth_formula(a: Tensor, moments: Tensor) -> Tensor:
    """The paper's map from A (N, C, h, w) and the averaged D1, D2, D3 (3, N, T, C, h, w): (N, T, h, w) >= 0.

    ``alpha = D2 / (2 D2 + Σ_hw(A) · D3)`` (0 where the denominator is 0), ``w = Σ_hw alpha · relu(D1)``,
    ``cam = relu(Σ_k w_k A_k)``. No epsilon: like ``gradcampp``, one would swamp the tiny derivatives of
    untrained or saturated nets.
    """
    d1, d2, d3 = moments
    denom = 2 * d2 + a.sum(dim=(2, 3), keepdim=True)[:, None] * d3
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, 1.0), 0.0)
    weights = (alpha * torch.relu(d1)).sum(dim=(3, 4))  # (N, T, C)
    return torch.relu(torch.einsum("ntc,nchw->nthw", weights, a))


def smoothgradcampp(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, num_samples: int = 4,
                    std: float = 0.3, seed: int = 0, batch_size: int = 64) -> Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization Technique
    for Deep Convolutional Neural Network Models", 2019).

    Formula: ``cam_c = relu(Σ_k Σ_hw(alpha_k · relu(D1_k)) · A_k)``, ``alpha = D2 / (2 D2 + Σ_hw(A_k) · D3)``,
    ``Dp = mean_s (dy_c/dA(x + noise_s))^p``, ``noise_s ~ N(0, std²)`` on the normalised input (torchcam's
    defaults: 4 samples, std 0.3), A the clean image's activations.

    torchcam 0.5.0's ``SmoothGradCAMpp`` differs (see docs/METHODS.md): it sums ``A · D3`` over positions
    instead of ``Σ_hw(A) · D3``, takes ``relu`` of the last sample's gradient instead of the mean, adds 1e-8 to
    the denominator, and combines the weights with the last noisy sample's activations.

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of a module whose output is (N, C, h, w).
        num_samples: noisy copies per image; std: noise std in normalised input units; seed: noise seed.
        batch_size: noisy inputs per forward pass.

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = check_batch(x, targets)
    for name, value, low in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MethodError(f"expected {name} >= {low}, got {value!r}")
    a, moments = smooth_moments(model, x, targets, layer, _noise(x, num_samples, std, seed), batch_size)
    return smooth_formula(a, moments)
