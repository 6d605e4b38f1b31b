"""Input-gradient maps: agreement with captum on torchvision nets, hand-worked linear cases, model left unchanged."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, model_state
from reportgen.methods.saliency import (
    guided_backprop,
    integrated_gradients,
    raw_attributions,
    saliency,
    smoothgrad,
)

captum_attr = pytest.importorskip("captum.attr")

MAPS = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "smoothgrad": lambda m, x, t, **kw: smoothgrad(m, x, t, samples=4, **kw),
    # the default black baseline, for an ImageNet-normalised input
    "integrated_gradients": lambda m, x, t, **kw: integrated_gradients(
        m, x, t, steps=6, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **kw),
}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


def _images(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


SIZES = {"resnet18": 32, "vgg11": 32, "alexnet": 64}  # small inputs each net accepts (alexnet pools 3x)


@pytest.fixture(scope="module", params=list(SIZES))
def tv_model(request):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)(weights=None).eval()
    model.test_size = SIZES[request.param]
    return model


def _captum(kind: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "saliency":
            return captum_attr.Saliency(model).attribute(x.clone(), target=target, abs=False)
        if kind == "guided_backprop":
            return captum_attr.GuidedBackprop(model).attribute(x.clone(), target=target)
        ig = captum_attr.IntegratedGradients(model)
        return ig.attribute(x.clone(), target=target, n_steps=8, method="gausslegendre")


@pytest.mark.parametrize("kind", ["saliency", "guided_backprop", "integrated_gradients"])
def test_raw_attributions_and_maps_match_captum(tv_model, kind):
    size = tv_model.test_size
    x = _images(2, size)
    targets = torch.tensor([[3, 7], [5, 1]])
    with borrowed(tv_model):
        raw = raw_attributions(tv_model, x, targets, kind, steps=8)
        maps = {"saliency": saliency, "guided_backprop": guided_backprop}.get(
            kind, lambda m, x, t: integrated_gradients(m, x, t, steps=8, baseline="zero"))(tv_model, x, targets)
    assert raw.shape == (2, 2, 3, size, size) and maps.shape == (2, 2, size, size)
    for t in range(2):
        ref = _captum(kind, tv_model, x, targets[:, t])
        scale = ref.abs().max()
        assert scale > 0
        assert torch.allclose(raw[:, t], ref, rtol=1e-4, atol=1e-5 * scale), f"{kind} column {t}"
        ref_map = ref.abs().amax(dim=1)
        for i in range(2):
            assert _pearson(maps[i, t], ref_map[i]) >= 0.99


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_smoothgrad_matches_captum_noise_tunnel_with_identical_noise(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = _images(3, 32)
    # every image spans [-2, 2], so our per-image std equals captum's single absolute stdev
    lo, hi = x.flatten(1).amin(1).view(-1, 1, 1, 1), x.flatten(1).amax(1).view(-1, 1, 1, 1)
    x = (x - lo) / (hi - lo) * 4 - 2
    spans = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    assert torch.equal(spans, torch.full((3,), 4.0))
    # samples * 3 * 32 * 32 is a multiple of 16, so per-image CPU draws continue captum's single draw exactly
    noise, seed, samples = 0.2, 11, 4
    stdev = float(spans[0] * noise)  # the same float32 value our code computes
    targets = torch.tensor([[3], [5], [1]])
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)  # a CPU torch.Generator seeded alike draws the same stream
        nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
        ref = nt.attribute(x.clone(), nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=targets[:, 0],
                           abs=False)
    with borrowed(model):
        raw = raw_attributions(model, x, targets, "smoothgrad", samples=samples, noise=noise, seed=seed, batch_size=4)
        maps = smoothgrad(model, x, targets, samples=samples, noise=noise, seed=seed, batch_size=4)
    assert torch.allclose(raw[:, 0], ref, rtol=1e-4, atol=1e-5 * ref.abs().max())
    ref_map = ref.abs().amax(dim=1)
    for i in range(3):
        assert _pearson(maps[i, 0], ref_map[i]) >= 0.99


def test_smoothgrad_seeding_and_global_rng(tiny_model):
    x = _images(2, 24)
    targets = torch.tensor([[1], [4]])
    rng_before = torch.get_rng_state()
    with borrowed(tiny_model):
        a = smoothgrad(tiny_model, x, targets, samples=6, seed=3)
        b = smoothgrad(tiny_model, x, targets, samples=6, seed=3)
        c = smoothgrad(tiny_model, x, targets, samples=6, seed=4)
        plain = saliency(tiny_model, x, targets)
        silent = smoothgrad(tiny_model, x, targets, samples=3, noise=0.0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # only a local generator was used
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.allclose(silent, plain, rtol=1e-5, atol=1e-7)  # no noise: the mean of identical gradients


@pytest.mark.parametrize("method", ["smoothgrad", "integrated_gradients"])
def test_batch_size_does_not_change_the_result(tiny_model, method):
    x = _images(3, 20, seed=5)
    targets = torch.tensor([[0, 1], [2, 3], [4, 5]])
    with borrowed(tiny_model):
        one = MAPS[method](tiny_model, x, targets, batch_size=1)
        seven = MAPS[method](tiny_model, x, targets, batch_size=7)
        many = MAPS[method](tiny_model, x, targets, batch_size=64)
    assert torch.allclose(one, many, rtol=1e-5, atol=1e-6 * many.max())
    assert torch.allclose(seven, many, rtol=1e-5, atol=1e-6 * many.max())


@pytest.mark.parametrize("method", list(MAPS))
def test_two_target_columns_equal_two_single_calls(tiny_model, method):
    x = _images(2, 20, seed=6)
    targets = torch.tensor([[1, 8], [6, 2]])
    with borrowed(tiny_model):
        both = MAPS[method](tiny_model, x, targets)
        singles = [MAPS[method](tiny_model, x, targets[:, t : t + 1]) for t in range(2)]
    for t in range(2):
        assert torch.allclose(both[:, t], singles[t][:, 0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", list(MAPS))
def test_model_and_input_unchanged(tiny_model, method):
    tiny_model.train()
    tiny_model.features[0].weight.requires_grad_(False)
    before = model_state(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    inplace = [m.inplace for m in tiny_model.modules() if isinstance(m, nn.ReLU)]
    x = _images(2, 16)
    x_before = x.clone()
    with borrowed(tiny_model):
        maps = MAPS[method](tiny_model, x, torch.tensor([[1], [2]]))
    assert model_state(tiny_model) == before  # modes, requires_grad, .grad, hook counts
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())
    assert [m.inplace for m in tiny_model.modules() if isinstance(m, nn.ReLU)] == inplace
    assert torch.equal(x, x_before) and not x.requires_grad
    assert maps.shape == (2, 1, 16, 16) and maps.dtype == torch.float32 and not maps.requires_grad
    assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0


def test_maps_work_without_grad_mode(tiny_model):
    x = _images(1, 16)
    with borrowed(tiny_model), torch.no_grad():
        maps = saliency(tiny_model, x, torch.tensor([[3]]))
    assert maps.max() > 0


class _Linear(nn.Module):
    """y = W · flatten(x): every input gradient is a row of W."""

    def __init__(self, channels: int = 3, size: int = 4, classes: int = 2):
        super().__init__()
        self.fc = nn.Linear(channels * size * size, classes, bias=True)
        self.act = nn.ReLU()  # present but unused: guided backprop changes nothing here

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_linear_model_worked_out():
    torch.manual_seed(3)
    model = _Linear().eval()
    x = _images(2, 4, seed=9)
    targets = torch.tensor([[0, 1], [1, 1]])
    w = model.fc.weight.detach().view(2, 3, 4, 4)
    expected_grad = w[targets]  # (N, T, 3, 4, 4)
    with borrowed(model):
        for method in ["saliency", "guided_backprop", "smoothgrad"]:
            raw = raw_attributions(model, x, targets, method, samples=3)
            assert torch.allclose(raw, expected_grad, atol=1e-6), method
        ig = raw_attributions(model, x, targets, "integrated_gradients", steps=5)
        sal_map = saliency(model, x, targets)
    assert torch.allclose(ig, x[:, None] * expected_grad, atol=1e-6)  # exact for a linear model
    assert torch.allclose(sal_map, expected_grad.abs().amax(dim=2))  # FlashTorch: max over colours of |grad|


def test_integrated_gradients_completeness(tiny_model):
    # sum of attributions ≈ y(x) - y(0) for a zero baseline
    x = _images(2, 16, seed=4)
    targets = torch.tensor([[1], [7]])
    with borrowed(tiny_model):
        raw = raw_attributions(tiny_model, x, targets, "integrated_gradients", steps=64)
        with torch.no_grad():
            gain = tiny_model(x).gather(1, targets) - tiny_model(torch.zeros_like(x)).gather(1, targets)
    assert torch.allclose(raw.sum(dim=(2, 3, 4)), gain, rtol=0.02, atol=0.02 * gain.abs().max())


def test_guided_backprop_inplace_relus_give_the_same_result(tv_model):
    relus = [m for m in tv_model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)  # torchvision's ReLUs are in-place
    copy_model = copy.deepcopy(tv_model)
    for m in copy_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = _images(1, tv_model.test_size, seed=2)
    targets = torch.tensor([[10]])
    with borrowed(tv_model):
        a = raw_attributions(tv_model, x, targets, "guided_backprop")
    with borrowed(copy_model):
        b = raw_attributions(copy_model, x, targets, "guided_backprop")
    assert torch.equal(a, b)
    assert all(m.inplace for m in relus)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in relus)


class _FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("build", [_FunctionalRelu, lambda: torchvision.models.mobilenet_v2(weights=None)])
def test_guided_backprop_without_relu_modules_is_an_error(build):
    model = build().eval()
    before = model_state(model)
    with borrowed(model), pytest.raises(MethodError, match="needs nn.ReLU modules; found none in"):
        guided_backprop(model, _images(1, 32), torch.tensor([[1]]))
    assert model_state(model) == before
    with borrowed(model):  # the other methods do not need ReLU modules
        assert saliency(model, _images(1, 32), torch.tensor([[1]])).max() > 0


class _Failing(nn.Module):
    """ReLU modules run, then the forward raises."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        self.act(self.conv(x))
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", list(MAPS))
def test_hooks_removed_when_the_forward_fails(method):
    model = _Failing().eval()
    before = model_state(model)
    with borrowed(model), pytest.raises(RuntimeError, match="boom"):
        MAPS[method](model, _images(1, 8), torch.tensor([[0]]))
    assert model_state(model) == before


def test_bad_arguments_are_method_errors(tiny_model):
    x = _images(2, 16)
    with borrowed(tiny_model):
        with pytest.raises(MethodError, match=r"expected targets of shape \(N, T\)"):
            saliency(tiny_model, x, torch.tensor([1, 2]))
        with pytest.raises(MethodError, match=r"expected targets of shape \(N, T\) with an integer dtype, got torch.float32"):
            saliency(tiny_model, x, torch.tensor([[1.0], [2.0]]))
        with pytest.raises(MethodError, match=r"expected target classes in \[0, 10\)"):
            guided_backprop(tiny_model, x, torch.tensor([[1], [10]]))
        with pytest.raises(MethodError, match=r"expected input images of shape \(N, 3, H, W\)"):
            saliency(tiny_model, x[0], torch.tensor([[1]]))
        with pytest.raises(MethodError, match="expected samples to be a positive integer"):
            smoothgrad(tiny_model, x, torch.tensor([[1], [2]]), samples=0)
        with pytest.raises(MethodError, match="expected steps to be a positive integer"):
            integrated_gradients(tiny_model, x, torch.tensor([[1], [2]]), steps=0)
        with pytest.raises(MethodError, match="expected a noise level >= 0"):
            smoothgrad(tiny_model, x, torch.tensor([[1], [2]]), noise=-1.0)
        with pytest.raises(MethodError, match="expected a method in saliency"):
            raw_attributions(tiny_model, x, torch.tensor([[1], [2]]), "deconvnet")
        for method in MAPS:  # an empty batch gives empty maps
            assert MAPS[method](tiny_model, x[:0], torch.zeros((0, 2), dtype=torch.long)).shape == (0, 2, 16, 16)
    assert all(p.grad is None for p in tiny_model.parameters())
