"""SS-CAM: Score-CAM whose channel scores are averaged over noisy masks (torchcam's Score-CAM family).

The torchcam family differs from pytorch-grad-cam's Score-CAM (``perturbation.scorecam``) in its mask: each
channel is min-max scaled at the layer's resolution, ``(A_k - min) / (max - min + 1e-8)``, then upsampled
bilinearly (align_corners=False). It subtracts the clean image's score from every masked score before the
softmax over channels; a softmax ignores a shift shared by all channels, so that subtraction is left out here.

All (image, channel) rows of the batch are scored together, ``batch_size`` masked inputs per forward pass under
``inference_mode``; masks are upsampled a chunk at a time, so memory does not grow with C·H·W per image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.methods.inputs import check_batch
from reportgen.methods.perturbation import _autocast, _first_pass

__all__ = ["sscam", "unit_masks", "score_rows", "softmax_cam"]

_EPS = 1e-8  # torchcam's _CAM._normalize


def unit_masks(a: Tensor) -> Tensor:
    """Each channel of A (N, C, h, w) min-max scaled over its positions, as torchcam: (N, C, h, w) in [0, 1]."""
    low = a.amin(dim=(2, 3), keepdim=True)
    shifted = a - low
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + _EPS)


def score_rows(model: nn.Module, x: Tensor, targets: Tensor, masks: Tensor, levels: int,
               masked: Callable[[Tensor, Tensor, Tensor, int | Tensor], Tensor], batch_size: int, bf16: bool, *,
               one_level_per_chunk: bool = False) -> Tensor:
    """Σ over levels of the target scores of every (level, image, channel) row: (N, C, T) float32.

    ``masked(up, img, ch, level)`` builds a chunk's inputs from its upsampled masks (B, 1, H, W); ``level`` is
    the rows' level (B,) or, with ``one_level_per_chunk``, the chunk's one level as an int. Rows run
    level-major, so a caller that draws noise per level draws it once per level, in order.
    """
    n, c = masks.shape[:2]
    flat = masks.reshape(n * c, 1, *masks.shape[2:])
    scores = torch.zeros(n * c, targets.shape[1], device=x.device, dtype=torch.float32)
    per = n * c if one_level_per_chunk else levels * n * c  # rows a chunk may range over
    for first in range(0, levels * n * c, per):
        rows = torch.arange(first, first + per, device=x.device)
        for start in range(0, per, batch_size):
            chunk = rows[start:start + batch_size]
            pair, level = chunk % (n * c), chunk // (n * c)
            img, ch = pair // c, pair % c
            up = F.interpolate(flat[pair], size=x.shape[-2:], mode="bilinear", align_corners=False)
            inputs = masked(up, img, ch, first // (n * c) if one_level_per_chunk else level)
            with _autocast(x, bf16):
                logits = model(inputs)
            scores.index_add_(0, pair, logits.float().gather(1, targets[img]))
    return scores.view(n, c, -1)


def softmax_cam(scores: Tensor, a: Tensor, levels: int) -> Tensor:
    """relu(Σ_k softmax_k(scores / levels) · A_k): scores (N, C, T), A (N, C, h, w) → (N, T, h, w)."""
    weights = torch.softmax(scores / levels, dim=1)
    return torch.relu(torch.einsum("nct,nchw->nthw", weights, a))


def check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MethodError(f"expected {name} >= 1, got {value!r}")


def sscam(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, num_samples: int = 35, std: float = 2.0,
          seed: int = 0, batch_size: int = 64, bf16: bool = False) -> Tensor:
    """SS-CAM (Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", 2020).

    Formula: ``cam_c = relu(Σ_k softmax_k(mean_s y_c(x ⊙ (up(norm(A_k)) + noise_sk))) · A_k)``,
    ``noise_s ~ N(0, std²)`` of shape (C, H, W) (torchcam's defaults: 35 samples, std 2.0, noise on the
    upsampled mask). Noise sample s is one draw from a generator seeded with ``seed`` shared by every image
    (torchcam draws (N, C, H, W) per sample from the global RNG): the same for a one-image batch, and a map
    that does not depend on the batch it was computed in.

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of a module whose output is (N, C, h, w).
        num_samples: noisy masks per channel; std: noise std (masks lie in [0, 1]); seed: noise seed.
        batch_size: masked inputs per forward pass. bf16: bfloat16 autocast of the masked passes.

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = check_batch(x, targets)
    check_counts(num_samples=num_samples, batch_size=batch_size)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    drawn: dict[str, object] = {"level": -1}  # only the current level's (C, H, W) draw is kept

    def masked(up: Tensor, img: Tensor, ch: Tensor, level: int | Tensor) -> Tensor:
        if level != drawn["level"]:  # a level's first chunk: draw its noise (levels come in order, once each)
            draw = torch.randn((1, a.shape[1], *x.shape[-2:]), generator=gen, device=x.device)[0].mul_(std)
            drawn.update(level=level, draw=draw)
        return x[img] * (up + drawn["draw"][ch, None])

    with torch.inference_mode():
        _, a, _ = _first_pass(model, x, layer, targets)
        scores = score_rows(model, x, targets, unit_masks(a), num_samples, masked, batch_size, bf16,
                            one_level_per_chunk=True)
        cam = softmax_cam(scores, a, num_samples)
    return cam.clone()  # a normal tensor, not an inference tensor

