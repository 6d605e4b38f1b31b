"""reportgen.similarity against scipy's spearmanr and skimage's SSIM, the references the sanity check literature uses."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from reportgen.similarity import at_size, normalize, spearman, ssim


def _pairs(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((5, 40, 33))
    b = a + 0.3 * rng.random((5, 40, 33))
    a[1] = np.round(a[1] * 5)  # many ties
    b[2] = -a[2]  # anti-correlated
    return a, b


def test_spearman_equals_scipy_with_ties_and_negative_correlation():
    a, b = _pairs()
    want = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    got = spearman(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[2] == pytest.approx(-1.0)


def test_ssim_equals_skimage_on_normalized_maps():
    a, b = _pairs(1)
    na, nb = normalize(torch.tensor(a)).numpy(), normalize(torch.tensor(b)).numpy()
    want = [structural_similarity(x, y, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for x, y in zip(na, nb, strict=True)]
    np.testing.assert_allclose(ssim(torch.tensor(a), torch.tensor(b)).numpy(), want, atol=1e-10)


def test_identical_maps_score_one_and_scale_does_not_matter():
    a, _ = _pairs(2)
    t = torch.tensor(a)
    np.testing.assert_allclose(spearman(t, 3 * t + 1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(t, 3 * t + 1).numpy(), 1.0, atol=1e-12)


def test_constant_maps():
    flat, noise = torch.ones(1, 7, 7), torch.rand(1, 7, 7)
    assert spearman(flat, flat).item() == 1.0
    assert np.isnan(spearman(flat, noise).item())
    assert ssim(flat, flat).item() == pytest.approx(1.0)


def test_small_maps_use_a_window_that_fits():
    t = torch.rand(2, 7, 7, dtype=torch.float64)
    assert ssim(t, t).numpy() == pytest.approx([1.0, 1.0])
    assert ssim(t, torch.rand(2, 7, 7, dtype=torch.float64)).max() < 0.9


def test_shapes_are_checked_and_at_size_resizes():
    with pytest.raises(ValueError, match="one shape"):
        spearman(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    assert at_size(torch.rand(3, 7, 7), (28, 28)).shape == (3, 28, 28)
