"""FullGrad: agreement with pytorch-grad-cam's FullGrad, its bias terms, targets, model left unchanged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, model_state
from reportgen.methods.fullgrad import bias_layers, fullgrad

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _with_biases(model: nn.Module, seed: int = 5) -> nn.Module:
    """Non-trivial bias terms: torchvision initialises conv biases and BatchNorm betas/statistics to 0/0/1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _minmax(v: np.ndarray) -> np.ndarray:
    v = v - v.min()
    return v / (1e-7 + v.max())  # pytorch-grad-cam's final scale_cam_image


def _reference(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's FullGrad, one call per target column: (N, T, H, W) in [0, 1].

    Run with frozen parameters (``borrowed``), so its ``loss.backward()`` fills no weight ``.grad``; its hooks are
    released by the ``with`` block.
    """
    maps = []
    for t in range(targets.shape[1]):
        with warnings.catch_warnings(), borrowed(model):
            warnings.simplefilter("ignore")
            with pgc.FullGrad(model, []) as cam:
                maps.append(cam(x.clone(), [ClassifierOutputTarget(int(c)) for c in targets[:, t]]))
    return np.stack(maps, axis=1)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_matches_pytorch_grad_cam(name):
    torch.manual_seed(0)
    model = _with_biases(getattr(torchvision.models, name)(weights=None))
    x = _images(2, 32)
    targets = torch.tensor([[3, 7], [5, 1]])
    with borrowed(model):
        ours = fullgrad(model, x, targets)
    assert ours.shape == (2, 2, 32, 32) and ours.dtype == torch.float32
    ref = _reference(model, x, targets)
    for i in range(2):
        for t in range(2):
            got = _minmax(ours[i, t].numpy())
            assert np.corrcoef(got.ravel(), ref[i, t].ravel())[0, 1] >= 0.99
            np.testing.assert_allclose(got, ref[i, t], atol=1e-4)


def test_matches_pytorch_grad_cam_on_a_tiny_net_at_odd_size(tiny_model):
    # 23 px: the stride-2 layers give 12 px maps, resized by a non-integer factor
    x = _images(3, 23, seed=2)
    targets = torch.tensor([[1], [4], [9]])
    with borrowed(tiny_model):
        ours = fullgrad(tiny_model, x, targets)
    ref = _reference(tiny_model, x, targets)
    for i in range(3):
        got = _minmax(ours[i, 0].numpy())
        assert np.corrcoef(got.ravel(), ref[i, 0].ravel())[0, 1] >= 0.99
        np.testing.assert_allclose(got, ref[i, 0], atol=1e-3)


def test_bias_layers_are_conv_and_batchnorm_layers_with_a_bias_subclasses_included():
    from torchvision.ops import FrozenBatchNorm2d

    class BNAct(nn.BatchNorm2d):  # like timm's BatchNormAct2d: taken (pytorch-grad-cam leaves it out)
        pass

    class SameConv(nn.Conv2d):  # like timm's Conv2dSame
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4),
                          nn.BatchNorm2d(4, affine=False), BNAct(4), nn.Conv1d(4, 4, 1), SameConv(4, 4, 1),
                          FrozenBatchNorm2d(4), nn.SyncBatchNorm(4), nn.GroupNorm(2, 4))
    assert bias_layers(model) == [model[0], model[2], model[4], model[6], model[7], model[8]]


def test_input_term_alone_when_no_layer_has_a_bias():
    # conv without bias → linear head: FullGrad is then sum_c minmax(|dy/dx_c * x_c|) alone
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).eval()
    x = _images(1, 5, seed=3)
    with borrowed(model):
        got = fullgrad(model, x, torch.tensor([[2]]))
    xi = x.clone().requires_grad_(True)
    model(xi)[0, 2].backward()
    v = (xi.grad * x).abs()[0]
    v = v - v.flatten(1).amin(1).view(3, 1, 1)
    expected = (v / (1e-7 + v.flatten(1).amax(1).view(3, 1, 1))).sum(0)
    assert torch.allclose(got[0, 0], expected, atol=1e-6)


def test_two_target_columns_equal_two_single_calls(tiny_model):
    x = _images(2, 20, seed=6)
    targets = torch.tensor([[1, 8], [6, 2]])
    with borrowed(tiny_model):
        both = fullgrad(tiny_model, x, targets)
        singles = [fullgrad(tiny_model, x, targets[:, t : t + 1]) for t in range(2)]
    for t in range(2):
        assert torch.allclose(both[:, t], singles[t][:, 0], atol=1e-5)


def test_batch_of_images_equals_one_image_at_a_time(tiny_model):
    x = _images(3, 20, seed=7)
    targets = torch.tensor([[1], [2], [3]])
    with borrowed(tiny_model):
        batch = fullgrad(tiny_model, x, targets)
        single = torch.cat([fullgrad(tiny_model, x[i : i + 1], targets[i : i + 1]) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_model_and_input_unchanged(tiny_model):
    tiny_model.train()
    tiny_model.features[0].weight.requires_grad_(False)
    before = model_state(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = _images(2, 16)
    x_before = x.clone()
    with borrowed(tiny_model):
        maps = fullgrad(tiny_model, x, torch.tensor([[1], [2]]))
    assert model_state(tiny_model) == before  # modes, requires_grad, .grad, hook counts
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())  # BN stats untouched
    assert torch.equal(x, x_before) and not x.requires_grad
    assert maps.shape == (2, 1, 16, 16) and not maps.requires_grad
    assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0


def test_hooks_removed_when_the_forward_fails(tiny_model):
    before = model_state(tiny_model)
    original = tiny_model.fc.forward
    tiny_model.fc.forward = lambda _x: (_ for _ in ()).throw(RuntimeError("boom"))  # fails after the conv hooks ran
    try:
        with borrowed(tiny_model), pytest.raises(RuntimeError, match="boom"):
            fullgrad(tiny_model, _images(1, 16), torch.tensor([[0]]))
    finally:
        tiny_model.fc.forward = original
    assert model_state(tiny_model) == before


def test_bad_arguments_are_method_errors(tiny_model):
    x = _images(2, 16)
    with borrowed(tiny_model):
        with pytest.raises(MethodError, match=r"expected one target row per image \(2\), got 1"):
            fullgrad(tiny_model, x, torch.tensor([[1]]))
        with pytest.raises(MethodError, match=r"expected target classes in \[0, 10\)"):
            fullgrad(tiny_model, x, torch.tensor([[1], [-1]]))
        assert fullgrad(tiny_model, x[:0], torch.zeros((0, 2), dtype=torch.long)).shape == (0, 2, 16, 16)
    assert all(not m._forward_hooks for m in tiny_model.modules())
