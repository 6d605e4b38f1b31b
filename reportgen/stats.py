"""Dataset means with bootstrap confidence intervals: the one way the audit summarizes a per-image number.

``mean_ci(values, rng, resamples)`` gives the mean and the 95 % percentile-bootstrap interval (Efron 1979) of the
finite values; with fewer than two values or no resamples the interval is the mean itself. Seeded: the same values
and seed give the same interval on every run. Numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["mean_ci", "summary"]

_CHUNK = 2_000_000  # resampled indices drawn at once (int64): memory stays ~16 MB whatever the dataset size


def mean_ci(values: Iterable[float], rng: np.random.Generator, resamples: int,
            level: float = 0.95) -> tuple[float | None, list[float] | None, int]:
    """(mean, [low, high] or None, n) of the finite ``values``; (None, None, 0) when there is none."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return None, None, 0
    mean = float(x.mean())
    if n < 2 or resamples <= 0:
        return mean, [mean, mean], n
    per = max(1, _CHUNK // n)
    means = []
    for start in range(0, resamples, per):
        b = min(per, resamples - start)
        means.append(x[rng.integers(0, n, size=(b, n))].mean(axis=1))
    boot = np.concatenate(means)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return mean, [float(low), float(high)], n


def summary(values: Iterable[float], rng: np.random.Generator, resamples: int) -> dict:
    """``{"mean", "ci", "n"}`` rounded to 4 places, for the report and the manifest."""
    mean, ci, n = mean_ci(values, rng, resamples)
    return {"mean": None if mean is None else round(mean, 4),
            "ci": None if ci is None else [round(c, 4) for c in ci], "n": n}
