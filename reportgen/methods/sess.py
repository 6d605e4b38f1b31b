"""SESS: a gradient CAM of sliding windows over several scales of the image, pasted back and fused.

Semantics follow pytorch-grad-cam 1.5.7's ``SESS`` (the reference, ``sess.py``), batched: the (image, window)
patches of the whole batch run together, ``batch_size`` patches per pass, in two phases — one forward pass per
chunk under ``inference_mode`` scores every patch (the patch weights need each image's best score), then one
forward and one backward per target column per chunk gives the base CAM of every kept patch. Fusion
accumulates into (N, T, H, W) sums and counts as chunks finish, so memory does not grow with the patch count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import resize

from reportgen.errors import MethodError
from reportgen.hooks import capture
from reportgen.methods.cam import gradient_cams
from reportgen.methods.inputs import check_batch
from reportgen.methods.registry import get_method, list_methods

__all__ = ["sess", "sess_patches"]

_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (x - min) / (1e-7 + max)
_BLUR = (11, 5.0)  # the peer's cv2.GaussianBlur(cam, (11, 11), 5.0): kernel size, sigma


def _starts(length: int, step: int, window: int) -> list[int]:
    """Window starts along one side; a window past the border is shifted back inside (as the peer)."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def sess_patches(height: int, width: int, window: int, step: int, scales: list[int]) -> list[tuple[int, int, int]]:
    """Every patch as (scale, y1, x1); the image is resized so that its shorter side is ``scale``."""
    out = []
    for scale in scales:
        short, long = min(height, width), max(height, width)
        other = int(scale * long / short)  # torchvision's resize(img, scale) rule
        sh, sw = (scale, other) if height <= width else (other, scale)
        out += [(scale, y, x) for y in _starts(sh, step, window) for x in _starts(sw, step, window)]
    return out


def _chunks(x: Tensor, patches: list[tuple[int, int, int]], rows: Tensor, window: int, batch_size: int):
    """Per chunk of at most ``batch_size`` rows of one scale (row = image · P + patch): (rows, images, patches,
    crops (B, 3, window, window), the scaled image's (h, w))."""
    p = len(patches)
    scale_of = torch.tensor([q[0] for q in patches], device=rows.device)
    for scale in sorted({q[0] for q in patches}):
        mine = rows[scale_of[rows % p] == scale]
        for start in range(0, mine.numel(), batch_size):
            chunk = mine[start:start + batch_size]
            img, pat = chunk // p, chunk % p
            used = torch.unique(img)
            scaled = resize(x[used], [scale])  # only the chunk's images, at this scale
            where = torch.searchsorted(used, img).tolist()
            crops = [scaled[w, :, y:y + window, x0:x0 + window]
                     for w, (_, y, x0) in zip(where, (patches[q] for q in pat.tolist()), strict=True)]
            yield chunk, img, pat, torch.stack(crops), tuple(scaled.shape[-2:])


def _minmax(m: Tensor) -> Tensor:
    low = m.amin(dim=(-2, -1), keepdim=True)
    m = m - low
    return m / (_EPS + m.amax(dim=(-2, -1), keepdim=True))


def _blur(m: Tensor) -> Tensor:
    """cv2.GaussianBlur(m, (11, 11), 5.0) on (N, T, H, W): separable, edges reflected without repeating (101)."""
    size, sigma = _BLUR
    r = size // 2
    k = torch.exp(-((torch.arange(size, device=m.device, dtype=torch.float64) - r) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).float()
    n, t, h, w = m.shape
    flat = m.reshape(n * t, 1, h, w)
    mode = "reflect" if min(h, w) > r else "replicate"
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, size))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=mode), k.view(1, 1, size, 1))
    return flat.view(n, t, h, w)


def _scores(model: nn.Module, x: Tensor, targets: Tensor, patches: list, window: int, batch_size: int,
            softmax: bool) -> Tensor:
    """Target score of every (image, patch): (N, P, T) float32 >= 0 (softmax probabilities, or logits clipped)."""
    n, p = x.shape[0], len(patches)
    out = torch.zeros(n * p, targets.shape[1], device=x.device)
    with torch.inference_mode():
        for chunk, img, _, crops, _ in _chunks(x, patches, torch.arange(n * p, device=x.device), window, batch_size):
            logits = model(crops).float()
            logits = torch.softmax(logits, dim=1) if softmax else logits
            out[chunk] = logits.gather(1, targets[img]).clamp(min=0)
    return out.view(n, p, -1).clone()


def _weights(scores: Tensor, pre_filter: float) -> Tensor:
    """Each patch's weight per (image, target), (N, P, T): score / best score, 0 for the pre-filtered lowest."""
    n, p, t = scores.shape
    drop = int(p * pre_filter)
    rank = torch.argsort(torch.argsort(scores, dim=1, stable=True), dim=1)  # 0 = lowest score
    best = scores.amax(dim=1, keepdim=True)
    weights = torch.where(best > 0, scores / torch.where(best > 0, best, 1.0), 1.0)  # all zero: equal weights
    return torch.where(rank >= drop, weights, 0.0)


def _check(num_scales: int, scale_step: float, window: int, step: int, pre_filter: float, pool: str,
           batch_size: int, base: str, height: int, width: int) -> None:
    for name, value, low in (("num_scales", num_scales, 1), ("window", window, 0), ("step", step, 0),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MethodError(f"sess: expected {name} >= {low}, got {value!r}")
    if not (0.0 <= pre_filter < 1.0) or pool not in ("mean", "max") or not math.isfinite(scale_step) or scale_step < 0:
        raise MethodError(f"sess: expected pre_filter in [0, 1), pool mean or max and scale_step >= 0, got "
                          f"{pre_filter!r}, {pool!r}, {scale_step!r}")
    if window > min(height, width):
        raise MethodError(f"sess: window {window} is larger than the image's shorter side {min(height, width)}")
    names = tuple(spec.name for spec in list_methods("cam", "gradient"))
    if base not in names:
        raise MethodError(f"sess: base {base!r} is not a gradient CAM; expected one of {', '.join(names)}")


def sess(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, base: str = "gradcam", num_scales: int = 12,
         scale_step: float = 2 / 7, window: int = 0, step: int = 0, pre_filter: float = 0.0, theta: float = 0.0,
         pool: str = "mean", smooth: bool = True, softmax_scores: bool = True, batch_size: int = 32) -> Tensor:
    """SESS (Tyagi et al., "SESS: Saliency Enhancing with Scaling and Sliding", ECCV 2022).

    Formula: ``cam = blur(fuse_p w_p · paste_p(norm(up(norm(base(patch_p))))))`` over the windows p of every
    scale, ``w_p = s_p / max_p s_p`` with ``s_p`` the patch's softmax score of the target; ``fuse`` is the mean
    over the patches whose pasted value exceeds ``theta`` at each pixel (or the max). Scales: the window size
    plus ``i · round(scale_step · window)``, i < ``num_scales`` (the paper: 224, 288, … for 224 px).

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: the layer the base CAM explains, on every patch.
        base: a gradient-engine method (``gradcam``, ``gradcampp``, …).
        num_scales, scale_step: the scales, as above. window: the square window's side (0: the image's shorter
            side). step: the windows' stride (0: the window). pre_filter: fraction of each image's lowest
            scoring patches left out. theta: the mean fusion's threshold. pool: ``mean`` or ``max``.
            smooth: the final Gaussian blur (11×11, sigma 5). softmax_scores: weight by softmax probabilities
            (else by logits clipped at 0). batch_size: patches per pass.

    Returns:
        (N, T, H, W) float32 >= 0 at the input's resolution on ``x``'s device, unnormalised, detached.
    """
    targets = check_batch(x, targets)
    height, width = x.shape[-2:]
    _check(num_scales, scale_step, window, step, pre_filter, pool, batch_size, base, height, width)
    win = window or min(height, width)
    stride = step or win
    grow = int(round(win * scale_step))
    patches = sess_patches(height, width, win, stride, [win + grow * i for i in range(num_scales)])
    n, t = targets.shape
    weights = _weights(_scores(model, x, targets, patches, win, batch_size, softmax_scores), pre_filter)
    total = torch.zeros(n, t, height, width, device=x.device)
    counts = torch.zeros_like(total)
    rows = weights.gt(0).any(dim=2).flatten().nonzero().squeeze(1)
    for _chunk, img, pat, crops, size in _chunks(x, patches, rows, win, batch_size):
        with torch.enable_grad(), capture(model, [layer], grad=get_method(base).uses_gradients) as caught:
            logits = model(crops)
            maps = gradient_cams(logits, {layer: caught[layer]}, targets[img], [base],
                                 need_gradients=get_method(base).uses_gradients)[(layer, base)]
        up = _minmax(F.interpolate(_minmax(maps), size=(win, win), mode="bilinear", align_corners=False))
        cams = up * weights[img, pat][:, :, None, None]  # (B, T, win, win)
        canvas = cams.new_zeros((*cams.shape[:2], *size))
        for i, (_, y, x0) in enumerate(patches[p] for p in pat.tolist()):
            canvas[i, :, y:y + win, x0:x0 + win] = cams[i]
        back = F.interpolate(canvas, size=(height, width), mode="bilinear", align_corners=False)
        if pool == "max":
            total.scatter_reduce_(0, img.view(-1, 1, 1, 1).expand_as(back), back, "amax")
        else:
            keep = back > theta
            total.index_add_(0, img, torch.where(keep, back, 0.0))
            counts.index_add_(0, img, keep.float())
    fused = total if pool == "max" else torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
    return (_blur(fused) if smooth else fused).detach()
