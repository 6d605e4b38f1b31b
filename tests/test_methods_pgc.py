"""The pytorch-grad-cam 1.5.7 methods reportgen lacked (issue 9): Grad-CAM ElementWise, KPCA-CAM, FEM,
Random-CAM, Shapley-CAM and Finer-CAM, each compared with its pytorch-grad-cam class per map (Pearson >= 0.99) on
ResNet-18 and VGG11 (random init, seeded), plus what the peer cannot show: seeded Random-CAM, Shapley-CAM's
Hessian term on a smooth network, Finer-CAM's comparison classes, the model and input left unchanged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.hooks import borrowed, capture, model_state
from reportgen.methods.cam import gradient_cams
from reportgen.methods.fem import fem
from reportgen.methods.finer_cam import comparison_classes, finercam
from reportgen.methods.kpca_cam import kpcacam
from reportgen.methods.random_cam import random_weights, randomcam
from reportgen.methods.shapley_cam import shapleycam

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

# (fixture, layer, input size): the last block and the one before it; VGG11's last conv and its ReLU
CASES = [("resnet18", "layer4", 128), ("resnet18", "layer3", 96), ("vgg11", "features.18", 96),
         ("vgg11", "features.19", 96)]


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def _as_peer(maps: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's post-processing of (N, h, w) maps: min-max, resize to the input, min-max again."""
    return scale_cam_image(scale_cam_image(maps.numpy(), (x.shape[-1], x.shape[-2])))


def _gradient_engine(model, x, classes, layer, method, **params) -> torch.Tensor:
    """A gradient-engine method as a run computes it: one forward, one backward to the layer, (N, h, w).

    With ``params`` the formula is called on the same A and G with them (the engine passes none today)."""
    from reportgen.methods.registry import get_method

    with borrowed(model), capture(model, [layer], grad=True) as caught:
        logits = model(x)
        if not params:
            return gradient_cams(logits, {layer: caught[layer]}, classes[:, None], [method])[(layer, method)][:, 0]
        a = caught[layer]
        g = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)[0]
        out = get_method(method).implementation()(a.detach(), g, **params)
    return out if out.ndim == 3 else torch.relu(out.sum(dim=1))


def _peer(cls, model, layer, x, classes, **kwargs) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    with warnings.catch_warnings(), borrowed(model, freeze=False):
        warnings.simplefilter("ignore")
        with cls(model, [module], **kwargs) as cam:
            return cam(x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in classes])


def _assert_agrees(ours: torch.Tensor, ref: np.ndarray, x: torch.Tensor, what: str, *, min_corr: float = 0.99,
                   flat: bool = False):
    """Pearson >= ``min_corr`` per map; with ``flat``, both maps of every image are all zero instead."""
    got = _as_peer(ours, x)
    for i in range(x.shape[0]):
        if flat:
            assert not ref[i].any() and not ours[i].any(), f"{what} image {i}: expected flat maps from both"
            continue
        assert ref[i].std() > 0.05, f"{what} image {i}: a flat reference map would make this test vacuous"
        corr = _pearson(got[i], ref[i])
        assert corr >= min_corr, f"{what} image {i}: Pearson {corr:.5f}"


def _predicted(model, x) -> torch.Tensor:
    with borrowed(model), torch.no_grad():
        return model(x).argmax(1)


# ------------------------------------------------------------------ gradient engine: formulas of (A, G)


@pytest.mark.parametrize("fixture, layer, size", CASES)
@pytest.mark.parametrize("method, peer, params", [
    ("gradcam_elementwise", "GradCAMElementWise", {}),
    ("fem", "FEM", {}),
    ("fem", "FEM", {"k": 1.0}),
    ("kpcacam", "KPCA_CAM", {}),
    ("kpcacam", "KPCA_CAM", {"kernel": "rbf", "gamma": 0.01}),
])
def test_gradient_methods_match_pytorch_grad_cam(request, fixture, layer, size, method, peer, params):
    model = request.getfixturevalue(fixture)
    x = _images(2, size, seed=3)
    classes = _predicted(model, x)
    ours = _gradient_engine(model, x, classes, layer, method, **params)
    ref = _peer(getattr(pgc, peer), model, layer, x, classes, **params)
    # FEM's weights are >= 0, and every channel sum of VGG11's pre-ReLU features.18 is negative here (untrained
    # net, negative channel means): both maps must then be all zero
    flat = method == "fem" and layer == "features.18"
    _assert_agrees(ours, ref, x, f"{method} {params} {fixture} {layer}", flat=flat)


@pytest.mark.parametrize("fixture, layer, size", CASES)
def test_randomcam_matches_pytorch_grad_cam_given_the_same_weights(request, monkeypatch, fixture, layer, size):
    """The peer draws np.random.uniform(-1, 1, (N, C)); fed our seeded weights, it gives our maps."""
    import pytorch_grad_cam.random_cam as peer_module

    model = request.getfixturevalue(fixture)
    x = _images(2, size, seed=5)
    classes = _predicted(model, x)
    ours = _gradient_engine(model, x, classes, layer, "randomcam", seed=7)
    drawn = []

    def uniform(low, high, size):
        assert (low, high) == (-1, 1)
        drawn.append(size)
        return np.broadcast_to(random_weights(size[1], 7).double().numpy(), size).copy()

    monkeypatch.setattr(peer_module.np.random, "uniform", uniform)
    ref = _peer(pgc.RandomCAM, model, layer, x, classes)
    assert drawn, "the peer did not draw its weights from np.random.uniform: this test compares nothing"
    _assert_agrees(ours, ref, x, f"randomcam {fixture} {layer}")


def test_randomcam_is_seeded_batch_independent_and_differs_between_seeds():
    a = torch.rand(3, 16, 5, 5, generator=torch.Generator().manual_seed(0))
    first = randomcam(a, torch.zeros_like(a), seed=1)
    assert torch.equal(first, randomcam(a, torch.zeros_like(a), seed=1))  # reproducible
    assert torch.equal(first[1:2], randomcam(a[1:2], torch.zeros_like(a[1:2]), seed=1))  # not the batch's
    assert not torch.allclose(first, randomcam(a, torch.zeros_like(a), seed=2))
    w = random_weights(10_000, 3)
    assert -1 <= float(w.min()) < -0.99 and 0.99 < float(w.max()) <= 1 and abs(float(w.mean())) < 0.02


def test_fem_threshold_is_strict_and_uses_the_population_std():
    # channel 0: values 0, 0, 0, 4 → mean 1, population std sqrt(3); k = 1: threshold 2.73 → 1 of 4 above.
    # channel 1: constant 2 → std 0, threshold 2: nothing is strictly above it → weight 0.
    a = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = fem(a, torch.zeros_like(a), k=1.0)
    assert torch.equal(out[0, 0], a[0, 0] * 0.25) and torch.equal(out[0, 1], torch.zeros(2, 2))
    # k = 1.5: 1 + 1.5·sqrt(3) = 3.6 < 4 keeps the 4; the sample std (ddof 1, = 2) would give 4, not above 4
    assert float(fem(a, torch.zeros_like(a), k=1.5)[0, 0].max()) == 1.0


def test_kpcacam_sign_follows_scikit_learn_and_rows_are_independent():
    a = torch.rand(4, 32, 6, 6, generator=torch.Generator().manual_seed(2))
    full = kpcacam(a, None)
    for i in range(4):
        assert torch.allclose(full[i : i + 1], kpcacam(a[i : i + 1], None), atol=1e-6)
    assert torch.allclose(kpcacam(a[:, torch.randperm(32)], None), full, atol=1e-5)  # channel order is irrelevant


# ------------------------------------------------------------------ map engine: passes of their own


@pytest.mark.parametrize("fixture, layer, size", CASES)
def test_shapleycam_matches_pytorch_grad_cam(request, fixture, layer, size):
    model = request.getfixturevalue(fixture)
    x = _images(2, size, seed=3)
    classes = _predicted(model, x)
    with borrowed(model):
        ours = shapleycam(model, x, classes[:, None], layer=layer)
    _assert_agrees(ours[:, 0], _peer(pgc.ShapleyCAM, model, layer, x, classes), x, f"shapleycam {fixture} {layer}")


class SmoothNet(nn.Module):
    """SiLU everywhere after ``body``: the target logit is curved in the layer's activations (H != 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU())
        self.head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 8, 3, padding=1),
                                  nn.Softplus(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.body(x))


def test_shapleycam_hessian_term_matches_the_peer_on_a_smooth_network():
    """On ReLU networks H = 0 and Shapley-CAM is Grad-CAM; here the Hessian term changes the map, and the
    peer's HVP gives the same one."""
    model = SmoothNet().eval()
    x = _images(3, 12, seed=8)
    classes = _predicted(model, x)
    with borrowed(model):
        ours = shapleycam(model, x, classes[:, None], layer="body")
    plain = _gradient_engine(model, x, classes, "body", "gradcam")
    assert max(1 - _pearson(ours[i, 0].numpy(), plain[i].numpy()) for i in range(3)) > 1e-3, "H A had no effect"
    _assert_agrees(ours[:, 0], _peer(pgc.ShapleyCAM, model, "body", x, classes), x, "shapleycam smooth", min_corr=0.999)


@pytest.mark.parametrize("fixture, layer, size", CASES)
def test_finercam_matches_pytorch_grad_cam(request, fixture, layer, size):
    """The peer explains the top-1 class when given no targets; ``target_idx`` picks another class."""
    model = request.getfixturevalue(fixture)
    x = _images(2, size, seed=3)
    classes = _predicted(model, x)
    other = torch.full_like(classes, 17)
    with borrowed(model):
        ours = finercam(model, x, torch.stack([classes, other], dim=1), layer=layer)
    module = dict(model.named_modules())[layer]
    for t, target_idx in ((0, None), (1, 17)):
        with warnings.catch_warnings(), borrowed(model, freeze=False):
            warnings.simplefilter("ignore")
            with pgc.FinerCAM(model, [module]) as cam:
                ref = cam(x.clone(), targets=None, target_idx=target_idx)
        _assert_agrees(ours[:, t], ref, x, f"finercam {fixture} {layer} target {target_idx}")


def test_finercam_alpha_and_comparisons_match_the_peer(resnet18):
    x = _images(2, 96, seed=4)
    classes = _predicted(resnet18, x)
    with borrowed(resnet18):
        ours = finercam(resnet18, x, classes[:, None], layer="layer3", alpha=0.6, comparisons=5)
    module = resnet18.layer3
    with warnings.catch_warnings(), borrowed(resnet18, freeze=False):
        warnings.simplefilter("ignore")
        with pgc.FinerCAM(resnet18, [module]) as cam:
            ref = cam(x.clone(), targets=None, alpha=0.6, comparison_categories=[1, 2, 3, 4, 5])
    _assert_agrees(ours[:, 0], ref, x, "finercam alpha 0.6, 5 comparisons")


def test_comparison_classes_are_the_closest_logits_never_the_target():
    logits = torch.tensor([[0.0, 5.0, 4.0, 5.5, 1.0], [3.0, 3.0, 3.0, -1.0, 9.0]])
    got = comparison_classes(logits, torch.tensor([1, 0]), 3)
    assert got.tolist() == [[3, 2, 4], [1, 2, 3]]  # ties (row 2: classes 0, 1, 2 equal) by class index
    assert comparison_classes(logits[:, :2], torch.tensor([1, 0]), 3).tolist() == [[0], [1]]  # clamped to K - 1


@pytest.mark.parametrize("method", [shapleycam, finercam])
def test_map_methods_leave_model_and_input_unchanged(resnet18, method):
    x = _images(2, 64, seed=6)
    x_before = x.clone()
    before = model_state(resnet18)
    with borrowed(resnet18):
        maps = method(resnet18, x, torch.tensor([[1, 2], [3, 4]]), layer="layer3")
    assert maps.shape == (2, 2, 4, 4) and maps.dtype == torch.float32 and not maps.requires_grad
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert model_state(resnet18) == before and torch.equal(x, x_before)


def test_shapleycam_difference_fallback_equals_the_exact_hessian_product():
    """Where torch lacks a second derivative (MobileNetV3's hardsigmoid) H·A is d/ds G(s·A) by central
    differences; on the smooth net it must equal the double-backward product."""
    from reportgen.methods.shapley_cam import _hvp_by_differences, forward_with_layer

    model = SmoothNet().eval()
    x = _images(2, 12, seed=9)
    column = _predicted(model, x)[:, None]
    with borrowed(model):
        logits, a = forward_with_layer(model, x, column, "body")
        (g,) = torch.autograd.grad(logits.gather(1, column).sum(), a, create_graph=True)
        (exact,) = torch.autograd.grad(g, a, grad_outputs=a.detach())
        approx = _hvp_by_differences(model, x, "body", column, a.detach())
    assert float(exact.abs().max()) > 0
    # float32 central differences: round-off of order eps/step; measured 1.8e-3 of the largest value on a CPU with
    # AMX (1e-3 elsewhere). A wrong product (a sign, a missing factor) is off by the order of the values themselves.
    assert torch.allclose(approx, exact, rtol=1e-2, atol=4e-3 * float(exact.abs().max()))
    assert float((approx - exact).norm() / exact.norm()) < 5e-3


def test_shapleycam_on_hardsigmoid_notes_the_difference_fallback():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Hardsigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = _images(2, 10, seed=2)
    with borrowed(model):
        maps, notes = shapleycam(model, x, torch.tensor([[0], [3]]), layer="0")
    assert maps.shape == (2, 1, 10, 10) and torch.isfinite(maps).all()
    assert "central differences" in notes["hessian"] and "hardsigmoid" in notes["hessian"]
