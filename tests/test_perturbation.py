"""Score-CAM and Ablation-CAM: agreement with pytorch-grad-cam and with plain per-pair references, chunking,
targets, the prefix shortcut and its fallback, model and input left unchanged, errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import reportgen.methods.perturbation as perturbation
from reportgen.errors import MethodError
from reportgen.hooks import borrowed, model_state
from reportgen.methods.perturbation import ablationcam, scorecam

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

METHODS = {"scorecam": scorecam, "ablationcam": ablationcam}


def _images(n: int, size: int, seed: int = 1, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@contextmanager
def capture_output(model: nn.Module, layer: str, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The output of ``layer`` for ``x``, caught with a plain forward hook."""
    holder = {}

    def hook(_module, _inputs, out):
        holder["a"] = out.detach().clone()  # before any in-place module that follows; returns None: output kept

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    yield holder["a"]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() < 1e-6 and b.std() < 1e-6:  # both flat (e.g. an all-zero map): nothing to correlate, they agree
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def _as_peer(maps: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's post-processing of (N, h, w) maps: min-max each, cv2.resize (bilinear) to the input size,
    then min-max again (``aggregate_multi_layers``)."""
    return scale_cam_image(scale_cam_image(maps.numpy(), (x.shape[-1], x.shape[-2])))


def _peer(name: str, model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's map for one class per image: (N, H, W) in [0, 1]."""
    module = dict(model.named_modules())[layer]
    with warnings.catch_warnings(), borrowed(model):
        warnings.simplefilter("ignore")
        if name == "scorecam":
            cam = pgc.ScoreCAM(model, [module])
            cam.batch_size = 128  # its default is 16; the weights do not depend on it
        else:
            cam = pgc.AblationCAM(model, [module], batch_size=128)  # ablation of zero-min layers: independent of it
        with cam:
            return cam(x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in classes])


def _assert_matches_peer(name, model, layer, x, *, min_corr=0.99):
    with borrowed(model), torch.no_grad():
        classes = model(x).argmax(1)
    with borrowed(model):
        ours = METHODS[name](model, x, classes[:, None], layer=layer)
    n = x.shape[0]
    assert ours.shape[:2] == (n, 1) and ours.dtype == torch.float32
    ref = _peer(name, model, layer, x, classes)
    got = _as_peer(ours[:, 0], x)
    for i in range(n):
        assert ref[i].std() > 0.05, f"{name} {layer} image {i}: a flat reference map would make this test vacuous"
        corr = _pearson(got[i], ref[i])
        assert corr >= min_corr, f"{name} {layer} image {i}: Pearson {corr:.5f}"
    return ours


# Each (image, channel) pair costs a full forward pass in pytorch-grad-cam: the reference runs are kept to two
# images of 64×64 (resnet18) and one of 32×32 (vgg11, whose classifier alone costs 0.1 GMAC per pass).
@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_resnet18_matches_pytorch_grad_cam(resnet18, name, layer):
    _assert_matches_peer(name, resnet18, layer, _images(2, 64, seed=3))


@pytest.mark.parametrize(("name", "layer"), [("scorecam", "features.19"), ("ablationcam", "features.18")])
def test_vgg11_matches_pytorch_grad_cam(vgg11, name, layer):
    """features.19 is the last conv's ReLU. features.18 is that conv, with negative values: Ablation-CAM sets a
    channel to min - 1e7 there (the ReLU after it zeroes it). (Score-CAM on features.18 gives all-zero maps here:
    the channels' mean is negative at every position of this untrained net.)"""
    x = _images(1, 32, seed=4)
    with capture_output(vgg11, "features.18", x) as a:
        assert a.min() < 0
    _assert_matches_peer(name, vgg11, layer, x)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("layer", ["conv", "act"])
def test_fixed_net_with_dead_and_negative_channels_matches(fixed_model, name, layer):
    """FixedCNN: A0 = x, A1 = 5 - x. Image 0 has x >= 5, so channel 1 of ``act`` is all zero (the skipped pairs);
    ``conv`` has negative values, so Ablation-CAM uses the min - 1e7 branch there."""
    x = torch.stack([torch.linspace(5, 9, 36).view(1, 6, 6), torch.linspace(-2, 7, 36).view(1, 6, 6).flip(2)])
    x_before = x.clone()
    classes = torch.tensor([0, 1])
    with borrowed(fixed_model):
        ours = METHODS[name](fixed_model, x, classes[:, None], layer=layer, batch_size=1)
    assert torch.equal(x, x_before)
    ref = _peer(name, fixed_model, layer, x, classes)
    got = _as_peer(ours[:, 0], x)
    for i in range(2):
        assert _pearson(got[i], ref[i]) >= 0.999, f"image {i} (reference std {ref[i].std():.3f})"


# ------------------------------------------------------------------ plain references on small nets


def _scorecam_reference(model, x, classes, layer):
    """Straight from the paper: one forward per (image, channel), float64 softmax."""
    with capture_output(model, layer, x) as a:
        pass
    maps = []
    for i in range(x.shape[0]):
        scores = []
        for k in range(a.shape[1]):
            up = nn.functional.interpolate(a[i : i + 1, k : k + 1], size=x.shape[-2:], mode="bilinear", align_corners=True)
            mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
            with torch.no_grad():
                scores.append(float(model(x[i : i + 1] * mask)[0, classes[i]]))
        w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
        maps.append(torch.relu((w[:, None, None] * a[i].double()).sum(0)))
    return torch.stack(maps).float()


def _ablation_reference(model, x, classes, layer, *, negative=False):
    """One forward per (image, channel), the layer's output replaced by a hook. An ablated channel is set to 0
    where the image's activations have minimum 0, else (``negative``) to that minimum - 1e7."""
    module = dict(model.named_modules())[layer]
    with capture_output(model, layer, x) as a:
        pass
    if not negative:
        assert a.min() == 0
    maps = []
    for i in range(x.shape[0]):
        with torch.no_grad():
            y = float(model(x[i : i + 1])[0, classes[i]])
        low = float(a[i].min())
        value = 0.0 if low == 0 else low - 1e7
        weights = []
        for k in range(a.shape[1]):
            ablated = a[i : i + 1].clone()
            ablated[:, k] = value
            handle = module.register_forward_hook(lambda _m, _i, _o, t=ablated: t)
            try:
                with torch.no_grad():
                    weights.append((y - float(model(x[i : i + 1])[0, classes[i]])) / y)
            finally:
                handle.remove()
        w = torch.tensor(weights, dtype=torch.float64)
        maps.append(torch.relu((w[:, None, None] * a[i].double()).sum(0)))
    return torch.stack(maps).float()


class ResidualNet(nn.Module):
    """A stem, then a block whose input bypasses ``body`` (x + body(x)), then pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        s = self.stem(x)
        return self.fc(self.pool(s + self.body(s)).flatten(1))


class ConcatNet(ResidualNet):
    """Like ResidualNet, but the bypass is concatenated: one input cannot stand for a chunk of rows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        s = self.stem(x)
        return self.fc(self.pool(torch.cat([s, self.body(s)], 1)).flatten(1))


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize(("net", "layer", "shortcut"), [
    (ResidualNet, "body", True), (ResidualNet, "stem", True), (ConcatNet, "body", False), (ConcatNet, "stem", True),
])
def test_ablation_prefix_shortcut_is_used_only_where_sound(monkeypatch, net, layer, shortcut):
    model = _seeded(net)
    x = _images(3, 12, seed=6)
    with torch.no_grad():
        classes = model(x).argmax(1)
    decisions = []
    original = perturbation._suffix_is_sound
    monkeypatch.setattr(perturbation, "_suffix_is_sound", lambda *a: decisions.append(original(*a)) or decisions[-1])
    with borrowed(model):
        ours = ablationcam(model, x, classes[:, None], layer=layer, batch_size=5)
    assert decisions == [shortcut]
    ref = _ablation_reference(model, x, classes, layer)
    assert torch.allclose(ours[:, 0], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_scorecam_matches_plain_reference(tiny_model):
    x = _images(3, 16, seed=7)
    classes = torch.tensor([1, 4, 9])
    with borrowed(tiny_model):
        ours = scorecam(tiny_model, x, classes[:, None], layer="features.5", batch_size=7)
    ref = _scorecam_reference(tiny_model, x, classes, "features.5")
    assert torch.allclose(ours[:, 0], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


class LinearHead(nn.Module):
    """A conv whose output (negative values, no ReLU after it) goes straight to pooling and a linear classifier:
    the ablated value (``min - 1e7``, not 0) decides every weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_ablation_of_a_layer_with_negative_values_uses_min_minus_1e7():
    model = _seeded(LinearHead)
    x = _images(2, 8, seed=14)
    with capture_output(model, "conv", x) as a:
        assert (a.flatten(1).amin(1) < 0).all()  # the min - 1e7 branch for both images
    with torch.no_grad():
        classes = model(x).argmax(1)
    with borrowed(model):
        ours = ablationcam(model, x, classes[:, None], layer="conv", batch_size=4)
    ref = _ablation_reference(model, x, classes, "conv", negative=True)
    assert float(ref.std()) > 0 and float(ours.std()) > 0  # not flat: a flat pair would agree with anything
    assert torch.allclose(ours[:, 0], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_layer_that_runs_twice_ablates_its_last_call():
    """A module shared by two places runs twice per pass; ``capture`` keeps the last output, and so does ablation."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.act(self.conv(self.act(x)) - 0.1).mean((2, 3)))

    model = _seeded(Twice)
    x = _images(2, 8, seed=8)
    classes = torch.tensor([0, 3])
    with borrowed(model):
        ours = ablationcam(model, x, classes[:, None], layer="act", batch_size=4)
    # reference: the same net with the second ReLU a separate module
    model.act2 = nn.ReLU()
    model.forward = lambda x: model.fc(model.act2(model.conv(model.act(x)) - 0.1).mean((2, 3)))
    ref = _ablation_reference(model, x, classes, "act2")
    assert torch.allclose(ours[:, 0], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


# ------------------------------------------------------------------ chunking, targets, state, errors


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_chunk_size_does_not_change_the_maps(tiny_model, name):
    x = _images(3, 16, seed=9)
    targets = torch.tensor([[1, 2], [3, 4], [5, 6]])
    with borrowed(tiny_model):
        one = METHODS[name](tiny_model, x, targets, layer="features.5", batch_size=1)
        many = METHODS[name](tiny_model, x, targets, layer="features.5", batch_size=64)
        odd = METHODS[name](tiny_model, x, targets, layer="features.5", batch_size=7)
    scale = float(one.abs().max())
    assert scale > 0
    assert torch.allclose(one, many, rtol=1e-5, atol=1e-6 * scale)
    assert torch.allclose(one, odd, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_two_targets_equal_two_single_target_calls(tiny_model, name):
    x = _images(2, 16, seed=10)
    targets = torch.tensor([[0, 7], [2, 2]])
    with borrowed(tiny_model):
        both = METHODS[name](tiny_model, x, targets, layer="features.2")
        first = METHODS[name](tiny_model, x, targets[:, :1], layer="features.2")
        second = METHODS[name](tiny_model, x, targets[:, 1:], layer="features.2")
    assert both.shape == (2, 2, 8, 8)
    scale = float(both.abs().max())
    assert torch.allclose(both[:, :1], first, rtol=1e-5, atol=1e-6 * scale)
    assert torch.allclose(both[:, 1:], second, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_model_and_input_unchanged_outputs_sane(tiny_model, name):
    tiny_model.train()
    tiny_model.features[0].weight.requires_grad_(False)
    outside = model_state(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = _images(2, 16, seed=11)
    x_before = x.clone()
    with borrowed(tiny_model):
        inside = model_state(tiny_model)
        cam = METHODS[name](tiny_model, x, torch.tensor([[1], [2]]), layer="features.5", batch_size=3)
        assert model_state(tiny_model) == inside
    assert model_state(tiny_model) == outside
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(x, x_before)
    assert cam.shape == (2, 1, 8, 8) and cam.dtype == torch.float32 and cam.device == x.device
    assert not cam.requires_grad and not cam.is_inference()
    assert torch.isfinite(cam).all() and (cam >= 0).all() and cam.max() > 0


def test_bf16_on_cpu_stays_close_to_float32(resnet18):
    """bf16 autocast runs on the CPU too; maps correlate >= 0.98.

    Fast only where the CPU has native bf16 (AVX512-BF16: 2x fp32); elsewhere it is emulated — on a CPU without it
    (2026-12-02) layer4 at 64 px took 25x the fp32 time, 177 s for this test — so it explains layer3 at 32 px (~20 s).
    """
    x = _images(2, 32, seed=12)
    with torch.no_grad():
        t = resnet18(x).argmax(1, keepdim=True)
    with borrowed(resnet18):
        fp32 = METHODS["scorecam"](resnet18, x, t, layer="layer3")
        bf16 = METHODS["scorecam"](resnet18, x, t, layer="layer3", bf16=True)
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # autocast really ran
    for i in range(2):
        assert _pearson(bf16[i, 0].numpy(), fp32[i, 0].numpy()) >= 0.98


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_errors_and_hooks_removed(tiny_model, name):
    method = METHODS[name]
    x = _images(2, 16, seed=13)
    before = model_state(tiny_model)
    with borrowed(tiny_model):
        with pytest.raises(MethodError, match=r"expected \(N, C, H, W\)"):
            method(tiny_model, x, torch.tensor([[1], [2]]), layer="fc")  # (N, 10) output
        with pytest.raises(MethodError, match=r"expected one target row per image \(2\), got 3"):
            method(tiny_model, x, torch.tensor([[1], [2], [3]]), layer="features.5")
        with pytest.raises(MethodError, match=r"expected targets of shape \(N, T\) with an integer dtype"):
            method(tiny_model, x, torch.tensor([1, 2]), layer="features.5")
        with pytest.raises(MethodError, match=r"expected target classes in \[0, 10\), got values from 1 to 10"):
            method(tiny_model, x, torch.tensor([[1], [10]]), layer="features.5")
        with pytest.raises(MethodError, match="expected a batch_size >= 1, got 0"):
            method(tiny_model, x, torch.tensor([[1], [2]]), layer="features.5", batch_size=0)
        with pytest.raises(RuntimeError):  # the model's own error, with every hook removed afterwards
            method(tiny_model, _images(2, 16, channels=5), torch.tensor([[1], [2]]), layer="features.5")
    assert model_state(tiny_model) == before
