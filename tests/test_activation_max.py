"""Activation maximization: images that drive their own channel, seeded and chunk-exact, the model left unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, capture, model_state
from reportgen.methods.activation_max import visualize_filters

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (layer, channels, size, steps) per model: the tiny CNN needs more (cheap) steps to move far from grey.
SETUPS = {
    "tiny": ("features.5", [0, 2, 4, 5, 11, 14], 32, 64),
    "vgg11": ("features.13", [0, 5, 100, 300, 511], 48, 16),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    from tinynets import tiny_cnn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vgg = torchvision.models.vgg11(weights=None).eval()
    return {"tiny": tiny_cnn(), "vgg11": vgg}


def _run(model: nn.Module, name: str, *, channels: list[int] | None = None, **kw) -> torch.Tensor:
    layer, default_channels, size, steps = SETUPS[name]
    args = {"mean": MEAN, "std": STD, "size": size, "steps": steps, **kw}
    return visualize_filters(model, layer, default_channels if channels is None else channels, **args)


def _activations(model: nn.Module, layer: str, images: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """(image i, channel j) → mean activation of ``channels[j]`` on image i: (K, K) float32."""
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with borrowed(model), capture(model, [layer]) as caught, torch.no_grad():
        model(x)
        return caught[layer].float().mean(dim=(2, 3))[:, channels]


@pytest.mark.parametrize("name", ["tiny", "vgg11"])
@pytest.mark.parametrize("parameterization", ["fourier", "pixel"])
def test_each_image_drives_its_own_channel(models, name, parameterization):
    model = models[name]
    layer, channels, size, _ = SETUPS[name]
    images = _run(model, name, parameterization=parameterization, transforms=False)
    assert images.shape == (len(channels), 3, size, size)
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    # one Adam step from the near-grey initial images: a conservative stand-in for the initial images
    start = _run(model, name, parameterization=parameterization, transforms=False, steps=1)
    a = _activations(model, layer, images, channels)
    a0 = _activations(model, layer, start, channels)
    gain = a.diag() - a0.diag()
    assert (gain > 0.02).all(), gain
    assert (gain > 10 * a0.std(dim=0)).all(), (gain, a0.std(dim=0))  # far beyond how much the start images differ
    others = a.masked_fill(torch.eye(len(channels), dtype=torch.bool), float("-inf")).max(dim=0).values
    assert (a.diag() > others).all(), a  # diagonal dominance: no other image drives channel j as much


@pytest.mark.parametrize("parameterization", ["fourier", "pixel"])
def test_transforms_still_drive_own_channel(models, parameterization):
    model = models["vgg11"]
    layer, channels, size, _ = SETUPS["vgg11"]
    images = _run(model, "vgg11", parameterization=parameterization)  # jitter, scale, rotation, decorrelated colour
    assert images.shape == (len(channels), 3, size, size)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    start = _run(model, "vgg11", parameterization=parameterization, steps=1)
    a = _activations(model, layer, images, channels)
    a0 = _activations(model, layer, start, channels)
    assert (a.diag() - a0.diag() > 5 * a0.std(dim=0)).all()
    others = a.masked_fill(torch.eye(len(channels), dtype=torch.bool), float("-inf")).max(dim=0).values
    assert (a.diag() > others).all(), a


def test_model_sees_normalised_images_in_range(models):
    model = models["tiny"]
    seen = []

    def pre_hook(_module, inputs):
        x = inputs[0].detach() * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        seen.append((x.min().item(), x.max().item(), x.shape[0]))

    handle = model.features[0].register_forward_pre_hook(pre_hook)
    try:
        _run(model, "tiny", steps=3, channels=[1, 2, 3], batch_size=2)
    finally:
        handle.remove()
    # a 1-image probe, then per step a chunk of 2 and a singleton chunk run as 2 (see the module docstring)
    assert [s[2] for s in seen] == [1] + [2, 2] * 3
    assert all(-1e-5 <= lo and hi <= 1 + 1e-5 for lo, hi, _ in seen)


@pytest.mark.parametrize("parameterization", ["fourier", "pixel"])
def test_seeded_and_global_rng_untouched(models, parameterization):
    model = models["tiny"]
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = _run(model, "tiny", parameterization=parameterization, steps=8)
    assert torch.equal(torch.get_rng_state(), state)
    b = _run(model, "tiny", parameterization=parameterization, steps=8)
    c = _run(model, "tiny", parameterization=parameterization, steps=8, seed=1)
    assert torch.equal(a, b)  # bit for bit
    assert not torch.allclose(a, c, atol=1e-3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("transforms", [False, True])
def test_chunking_and_other_channels_do_not_change_images(models, transforms):
    # Every image draws from its own generator seeded from (seed, position), and a singleton chunk is run as two
    # images, so the forward batches always take the same CPU kernels: batch_size is a pure speed/memory knob.
    model = models["tiny"]
    full = _run(model, "tiny", transforms=transforms, steps=8, batch_size=16)
    for batch_size in (1, 4):
        assert torch.equal(_run(model, "tiny", transforms=transforms, steps=8, batch_size=batch_size), full)
    prefix = _run(model, "tiny", transforms=transforms, steps=8, channels=SETUPS["tiny"][1][:2])
    assert torch.equal(prefix, full[:2])


def test_vgg_chunking_exact_with_transforms(models):
    model = models["vgg11"]
    channels = [5, 100, 300]
    one = _run(model, "vgg11", steps=4, channels=channels, batch_size=1)
    assert torch.equal(_run(model, "vgg11", steps=4, channels=channels, batch_size=16), one)


def test_options_change_the_images(models):
    model = models["tiny"]
    base = _run(model, "tiny", steps=4)
    assert not torch.equal(base, _run(model, "tiny", steps=4, decorrelate=False))
    assert not torch.equal(base, _run(model, "tiny", steps=4, transforms=False))
    assert not torch.equal(base, _run(model, "tiny", steps=4, parameterization="pixel"))
    repeated = _run(model, "tiny", steps=4, channels=[3, 3])
    assert not torch.equal(repeated[0], repeated[1])  # same channel, own seed per position


def test_model_left_exactly_as_found(models):
    model = models["tiny"]
    model.train()
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = model_state(model)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        _run(model, "tiny", steps=4)
        assert model_state(model) == before  # modes, requires_grad, the very same .grad objects, no hooks left
        assert model.training and model.features[3].training
        assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())  # BatchNorm stats included
        assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    finally:
        model.eval()
        model.features[0].weight.requires_grad_(True)
        model.fc.weight.grad = None


def test_forward_stops_at_the_layer(models):
    model = models["tiny"]
    calls = []
    handle = model.fc.register_forward_hook(lambda *_: calls.append(1))
    try:
        _run(model, "tiny", steps=2)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("channel", [16, -1])
def test_bad_channel_names_layer_and_count_and_removes_hooks(models, channel):
    model = models["tiny"]
    before = model_state(model)
    with pytest.raises(MethodError, match=r"'features\.5'.*\[0, 16\).*got " + str(channel)):
        visualize_filters(model, "features.5", [1, channel], mean=MEAN, std=STD, size=32, steps=2)
    assert model_state(model) == before


def test_unknown_layer_is_a_method_error(models):
    with pytest.raises(MethodError, match=r"no layer named 'features\.55'.*did you mean"):
        visualize_filters(models["tiny"], "features.55", [0], mean=MEAN, std=STD, size=32, steps=2)


def test_layer_without_feature_maps_is_a_method_error(models):
    model = models["tiny"]
    before = model_state(model)
    with pytest.raises(MethodError, match=r"'fc'.*expected \(N, C, H, W\)"):
        visualize_filters(model, "fc", [0], mean=MEAN, std=STD, size=32, steps=2)
    assert model_state(model) == before


def test_layer_never_reached_is_a_method_error():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    with pytest.raises(MethodError, match=r"'unused'.*skips it"):
        visualize_filters(Skips(), "unused", [0], mean=MEAN, std=STD, size=32, steps=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 8}, r"expected size >= 16, got 8"),
        ({"steps": 0}, r"expected steps >= 1, got 0"),
        ({"lr": 0.0}, r"expected a learning rate > 0, got 0.0"),
        ({"batch_size": 0}, r"expected batch_size >= 1, got 0"),
        ({"parameterization": "cppn"}, r"expected parameterization to be one of fourier, pixel, got 'cppn'"),
        ({"mean": (0.5, 0.5)}, r"expected 3 per-channel means and stds \(RGB\), got 2 and 3"),
        ({"std": (0.2, 0.0, 0.2)}, r"expected stds > 0"),
        ({"channels": []}, r"expected at least one channel index, got \[\]"),
        ({"channels": [1.5]}, r"expected integer channel indices, got \[1\.5\]"),
    ],
)
def test_argument_errors(models, kwargs, message):
    args = {"channels": [0], "mean": MEAN, "std": STD, "size": 32, "steps": 2, **kwargs}
    channels = args.pop("channels")
    with pytest.raises(MethodError, match=message):
        visualize_filters(models["tiny"], "features.5", channels, **args)


def test_runs_inside_no_grad_and_inference_mode(models):
    expected = _run(models["tiny"], "tiny", steps=2)
    with torch.no_grad():
        assert torch.equal(_run(models["tiny"], "tiny", steps=2), expected)
    with torch.inference_mode():
        assert torch.equal(_run(models["tiny"], "tiny", steps=2), expected)
