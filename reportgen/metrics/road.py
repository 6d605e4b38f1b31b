"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022), most and least relevant first, averaged over removal percentiles, per image.

Same definition as pytorch-grad-cam 1.5.7's ``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``
(``metrics/road.py``, ``metrics/perturbation_confidence.py``): for each percentile ``p`` the pixels at or above the
map's ``p``-th percentile (MoRF) or at or below its ``(100 - p)``-th (LeRF) are removed and filled by noisy linear
imputation; the score is the target's score on the imputed image minus its score on the image; the two results are
the means of these differences over the percentiles. A good map makes MoRF fall (lower is better) and LeRF stay
(higher is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.metrics.imputation import linear_impute
from reportgen.metrics.scoring import Scorer, check_args, upsample

__all__ = ["road", "PERCENTILES"]

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer(noise=0.01): absolute std of the noise on imputed pixels


def _kept(pixels: int, percentile: float) -> int:
    """Pixels pytorch-grad-cam keeps, ``#{m < np.percentile(m, p)}`` on a map without ties: ``ceil(p/100·(P-1))``."""
    return max(0, math.ceil(percentile / 100.0 * (pixels - 1) - 1e-9))


def road(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *,
         percentiles: Sequence[float] = PERCENTILES, softmax: bool = True, noise: float = _NOISE, seed: int = 0,
         batch_size: int = 64, autocast_dtype: torch.dtype | None = None) -> dict[str, Tensor | int]:
    """ROAD MoRF and LeRF of each image's map, averaged over ``percentiles``.

    The map is resized bilinearly to the input (align_corners=False). At percentile ``p`` the ``k =
    ceil(p/100·(H·W - 1))`` pixels with the lowest map values are kept (MoRF; LeRF: the highest), the others are
    imputed in all channels of ``x`` (``reportgen.metrics.imputation``) plus Gaussian noise of std ``noise``. On a
    map without ties these are the pixels pytorch-grad-cam keeps (``map < np.percentile(map, p)``); on ties (the flat
    zero area of a ReLU'd map) pytorch-grad-cam keeps none of the tied pixels, which can leave an image with no
    known pixel and a NaN score, whereas here the ties are broken in raster order and ``k`` pixels are always kept.
    The noise is drawn on the CPU, for each image from its own generator seeded with ``seed``, in pytorch-grad-cam's
    order (MoRF's percentiles, then LeRF's): an image's result depends neither on the device, the batch size nor the
    other images of the batch, and equals what pytorch-grad-cam gives for that image alone after
    ``torch.manual_seed(seed)`` (which draws the noise of a whole batch from one stream).

    Args:
        model: in eval mode, on ``x``'s device (channels_last or not); not modified.
        x: (N, C, H, W) float normalized network inputs.
        maps: (N, h, w) non-negative saliency maps of one target column, any resolution.
        targets: (N,) int64 class indices.
        percentiles: removal percentiles, each in (0, 100).
        softmax: scores are softmax probabilities (pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``); False:
            raw logits (``ClassifierOutputTarget``).
        noise: std of the noise added to the imputed pixels (0: plain linear imputation).
        seed: seed of the noise.
        batch_size: imputed images per solve and per forward pass.
        autocast_dtype: None (float32) or torch.bfloat16, for every forward pass (the imputation stays float64).

    Returns:
        ``road_morf``, ``road_lerf``: (N,) float32 on the CPU; ``forward_images``: ``N·(1 + 2·len(percentiles))``.
    """
    maps, targets = check_args(x, maps, targets, batch_size, autocast_dtype)
    if not percentiles or any(not isinstance(p, int | float) or isinstance(p, bool) or not 0 < p < 100
                              for p in percentiles):
        raise MethodError(f"expected percentiles in (0, 100), got {percentiles!r}")
    n, c, h, w = x.shape
    pixels = h * w
    kept = [_kept(pixels, p) for p in percentiles] * 2  # MoRF's variants, then LeRF's
    gens = [torch.Generator().manual_seed(seed) for _ in range(n)]  # per image: its noise ignores its neighbours
    score = Scorer(model, x, targets, batch_size=batch_size, autocast_dtype=autocast_dtype, softmax=softmax)
    with torch.inference_mode():
        cam = upsample(maps, (h, w)).flatten(1)
        rank_up = torch.argsort(torch.argsort(cam, dim=1, stable=True), dim=1)  # 0 = lowest value
        rank_down = torch.argsort(torch.argsort(cam, dim=1, descending=True, stable=True), dim=1)  # 0 = highest
        y = score.chunks(n, lambda a, b: (x[a:b], torch.arange(a, b, device=x.device)))
        jobs = [(v, i) for v in range(len(kept)) for i in range(n)]
        half = len(percentiles)

        def make(a: int, b: int) -> tuple[Tensor, Tensor]:
            var = torch.tensor([jobs[j][0] for j in range(a, b)], device=x.device)
            img = torch.tensor([jobs[j][1] for j in range(a, b)], device=x.device)
            limit = torch.tensor(kept, device=x.device)[var][:, None]
            ranks = torch.where((var < half)[:, None], rank_up[img], rank_down[img])
            known = (ranks < limit).view(-1, 1, h, w)
            filled = linear_impute(x[img], known)
            if noise:
                extra = torch.zeros(b - a, c, pixels)
                missing = ~known.view(b - a, pixels).cpu()
                for row in range(b - a):  # (C, m) over the missing pixels in raster order; jobs come variant-major
                    v, i = jobs[a + row]
                    extra[row][:, missing[row]] = torch.randn(c, pixels - kept[v], generator=gens[i])
                filled = filled + noise * extra.view(-1, c, h, w).to(filled)
            return filled, img

        scores = score.chunks(len(jobs), make).view(len(kept), n)
        diff = scores - y[None]
        morf, lerf = diff[:half].mean(dim=0), diff[half:].mean(dim=0)
    return {"road_morf": morf.cpu().clone(), "road_lerf": lerf.cpu().clone(), "forward_images": score.images}
