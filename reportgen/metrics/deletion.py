"""Deletion and insertion AUC (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018), per image.

Pixels are ranked by the map, most salient first. Deletion replaces them with a baseline in ``steps`` equal chunks
and follows the target's probability as they go (a good map makes it fall fast: low AUC is better); insertion
starts from a substrate (RISE: a blurred copy) and puts the original pixels back in the same order (a good map
makes it rise fast: high AUC is better). The curve points and the trapezoid rule over the perturbed fraction are
those of torchcam 0.5.0's ``DeletionInsertionMetric``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.metrics.scoring import Scorer, check_args, minmax, upsample

__all__ = ["deletion_insertion", "rise_blur"]

Substrate = float | Tensor | str  # a constant, a tensor broadcastable to x, or "blur"

_BLUR_SIZE, _BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate: gkern(klen=11, nsig=5)


@functools.lru_cache(maxsize=4)
def _rise_kernel(size: int, sigma: float) -> Tensor:
    """RISE's ``gkern``: a centred delta smoothed by ``scipy.ndimage.gaussian_filter`` (its reflect mode), (k, k)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma).astype("float32"))


def rise_blur(x: Tensor) -> Tensor:
    """RISE's insertion substrate: each channel of (N, C, H, W) ``x`` convolved with ``gkern(11, 5)``, zero padded."""
    k = _rise_kernel(_BLUR_SIZE, _BLUR_SIGMA).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    weight = k.expand(c, 1, *k.shape).contiguous()
    return F.conv2d(x, weight, padding=_BLUR_SIZE // 2, groups=c)


def _substrate(spec: Substrate, x: Tensor, name: str) -> Tensor:
    """The (N, C, H, W) image the perturbed pixels are taken from."""
    if isinstance(spec, str):
        if spec != "blur":
            raise MethodError(f"expected {name} to be a number, a tensor or 'blur', got {spec!r}")
        return rise_blur(x)
    if isinstance(spec, bool) or not isinstance(spec, int | float | Tensor):
        raise MethodError(f"expected {name} to be a number, a tensor or 'blur', got {type(spec).__name__}")
    try:
        return torch.broadcast_to(torch.as_tensor(spec).to(x), x.shape)
    except RuntimeError as exc:
        raise MethodError(f"expected {name} broadcastable to the input {tuple(x.shape)}, got "
                          f"{tuple(torch.as_tensor(spec).shape)}") from exc


def _counts(pixels: int, steps: int) -> list[int]:
    """Pixels perturbed at each curve point: 0, s, 2s, ... and all of them, s = ceil(pixels / steps) (torchcam)."""
    size = (pixels + steps - 1) // steps
    return [*range(0, pixels, size), pixels]


def deletion_insertion(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, steps: int = 20,
                       baseline: Substrate = 0.0, insertion_baseline: Substrate = "blur", softmax: bool = True,
                       batch_size: int = 64, autocast_dtype: torch.dtype | None = None) -> dict[str, Tensor | int]:
    """Deletion and insertion AUC of each image's map.

    The map is normalized as torchcam normalizes a CAM, resized bilinearly to the input (align_corners=False) and
    its pixels ranked by a stable descending sort (ties in raster order); a pixel is perturbed in all channels.
    With ``k = ceil(H·W / steps)``, the curve has points at 0, k, 2k, ..., H·W perturbed pixels; deletion's first
    point and insertion's last are the score of ``x`` itself. AUC = ``torch.trapezoid`` of the curve over the
    perturbed fractions, in [0, 1] for probabilities. With ``insertion_baseline=baseline`` (a number or the same
    tensor) this is torchcam's ``DeletionInsertionMetric`` exactly, and the all-baseline image is scored once for
    both curves.

    Args:
        model: in eval mode, on ``x``'s device (channels_last or not); not modified.
        x: (N, C, H, W) float normalized network inputs.
        maps: (N, h, w) non-negative saliency maps of one target column, any resolution.
        targets: (N,) int64 class indices.
        steps: curve intervals (torchcam's default 20; RISE uses H·W / W, one row's worth of pixels per step).
        baseline: what deleted pixels become: a number (0.0: the dataset mean, in normalized inputs), a tensor
            broadcastable to ``x`` or "blur".
        insertion_baseline: what insertion starts from: "blur" (RISE: ``rise_blur(x)``), a number or a tensor.
        softmax: the curve follows the target's softmax probability (False: its raw logit).
        batch_size: perturbed images per forward pass.
        autocast_dtype: None (float32) or torch.bfloat16, for every pass.

    Returns:
        ``deletion_auc``, ``insertion_auc``: (N,) float32 on the CPU; ``forward_images``: images pushed,
        ``N·(1 + 2·I)`` (``N·2·I`` when the two substrates are the same), with ``I = ceil(H·W / k) <= steps`` the
        curve's intervals (``I = steps`` whenever ``steps`` divides H·W or nearly: 20 at 224×224).
    """
    maps, targets = check_args(x, maps, targets, batch_size, autocast_dtype)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MethodError(f"expected steps >= 1, got {steps!r}")
    n, c, h, w = x.shape
    score = Scorer(model, x, targets, batch_size=batch_size, autocast_dtype=autocast_dtype, softmax=softmax)
    with torch.inference_mode():
        delete_from = _substrate(baseline, x, "baseline")
        shared = insertion_baseline is baseline or (
            isinstance(baseline, int | float) and not isinstance(baseline, bool) and baseline == insertion_baseline)
        insert_from = delete_from if shared else _substrate(insertion_baseline, x, "insertion_baseline")
        cam = upsample(minmax(maps), (h, w)).flatten(1)  # (N, P)
        order = torch.argsort(cam, dim=1, descending=True, stable=True)
        ranks = torch.argsort(order, dim=1)  # rank of each pixel, 0 = most salient
        counts = _counts(h * w, steps)
        m = len(counts)
        # Jobs: per image, deletion points 1..m-1 then insertion points 0..m-2 (insertion 0 = deletion m-1 if shared).
        curve = torch.tensor([0] * (m - 1) + [1] * (m - 2 if shared else m - 1), device=x.device)
        point = torch.tensor([*range(1, m), *range(1 if shared else 0, m - 1)], device=x.device)
        jobs_img = torch.arange(n, device=x.device).repeat_interleave(curve.numel())
        jobs_curve, jobs_point = curve.repeat(n), point.repeat(n)
        count_of = torch.tensor(counts, device=x.device)
        flat_x, flat_del, flat_ins = x.flatten(2), delete_from.flatten(2), insert_from.flatten(2)

        def make(a: int, b: int) -> tuple[Tensor, Tensor]:
            img, cv = jobs_img[a:b], jobs_curve[a:b]
            relevant = ranks[img] < count_of[jobs_point[a:b]][:, None]  # (B, P): among the first `count`
            keep = torch.where((cv == 1)[:, None], relevant, ~relevant)[:, None]  # where x's own pixel stays
            sub = torch.where((cv == 1)[:, None, None], flat_ins[img], flat_del[img])
            return torch.where(keep, flat_x[img], sub).view(-1, c, h, w), img

        y = score.chunks(n, lambda a, b: (x[a:b], torch.arange(a, b, device=x.device)))
        perturbed = score.chunks(jobs_img.numel(), make).view(n, -1)
        deletion = torch.cat([y[:, None], perturbed[:, : m - 1]], dim=1)
        rest = perturbed[:, m - 1:]
        insertion = torch.cat([perturbed[:, m - 2: m - 1] if shared else rest[:, :0], rest, y[:, None]], dim=1)
        fractions = count_of.float() / (h * w)
        deletion_auc = torch.trapezoid(deletion, fractions, dim=1)
        insertion_auc = torch.trapezoid(insertion, fractions, dim=1)
    return {"deletion_auc": deletion_auc.cpu().clone(), "insertion_auc": insertion_auc.cpu().clone(),
            "forward_images": score.images}
