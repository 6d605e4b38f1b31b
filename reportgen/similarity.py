"""How alike two batches of maps are: Spearman rank correlation and SSIM, one score per pair of maps.

Both compare maps as images: ``a`` and ``b`` are float tensors (N, h, w) of the same shape (resize them to one
resolution first: ``at_size``). Used by the sanity check (a map against the map of a randomized model, Adebayo et al.
2018, who report both scores) and by ``reportgen compare`` (a map of run A against run B's).

* ``spearman``: Pearson correlation of the ranks of the pixels; ties get their average rank (as
  ``scipy.stats.spearmanr`` does). A constant map has no ranking: the score is NaN unless both maps are constant
  (then 1.0: they are the same map up to scale).
* ``ssim``: structural similarity with an 11-pixel Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  on maps min-max normalized to [0, 1] first (a constant map becomes 0), averaged over the pixels whose window lies inside the map —
  ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`` on the normalized maps, which crops the border the same way; maps smaller than the
  window use the largest odd window that fits (skimage refuses them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["spearman", "ssim", "normalize", "at_size"]


def _check(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"expected two (N, h, w) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().double(), b.detach().double()


def at_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps (N, h, w) resized to ``size`` (H, W) bilinearly (align_corners=False); unchanged when already that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (N, h, w) scaled to [0, 1] (min-max); a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                         torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) of each row of (N, P), ties sharing the mean of their positions."""
    n, p = flat.shape
    order = flat.argsort(dim=1, stable=True)
    sorted_vals = flat.gather(1, order)
    positions = torch.arange(1, p + 1, dtype=torch.float64, device=flat.device).expand(n, p)
    ranks = torch.empty_like(positions)
    for i in range(n):  # ties: one pass over each row's runs of equal values
        vals = sorted_vals[i]
        starts = torch.ones(p, dtype=torch.bool, device=flat.device)
        starts[1:] = vals[1:] != vals[:-1]
        run_id = starts.cumsum(0) - 1
        counts = torch.bincount(run_id)
        sums = torch.zeros(len(counts), dtype=torch.float64, device=flat.device).index_add_(0, run_id, positions[i])
        ranks[i, order[i]] = (sums / counts)[run_id]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: (N,) float64 in [-1, 1] (see the module docstring for NaN)."""
    a, b = _check(a, b)
    ra, rb = _ranks(a.reshape(a.shape[0], -1)), _ranks(b.reshape(b.shape[0], -1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
    both_flat = (ra.abs().sum(1) == 0) & (rb.abs().sum(1) == 0)
    return torch.where(den > 0, rho, torch.where(both_flat, torch.ones_like(rho), torch.full_like(rho, float("nan"))))


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of each pair of maps after min-max normalization: (N,) float64 in [-1, 1]."""
    a, b = _check(a, b)
    a, b = normalize(a)[:, None], normalize(b)[:, None]
    h, w = a.shape[-2:]
    win = min(window, h, w)
    if win % 2 == 0:
        win -= 1
    win = max(win, 1)
    g = _gaussian(win, sigma, a.dtype, a.device)
    kernel_h, kernel_w = g.view(1, 1, win, 1), g.view(1, 1, 1, win)

    def blur(t: torch.Tensor) -> torch.Tensor:  # "valid": only the pixels whose window lies inside, as skimage crops
        return F.conv2d(F.conv2d(t, kernel_h), kernel_w)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
