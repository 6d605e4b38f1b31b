"""Eigen-CAM and Eigen-Grad-CAM: a worked example, a float64 SVD reference, the sign rule, and agreement with
pytorch-grad-cam up to the sign it happens to pick."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, capture, model_state
from reportgen.methods.eigen import eigencam, eigengradcam, principal_projection

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_projection(z: torch.Tensor) -> torch.Tensor:
    """float64 numpy SVD per image, with our sign rule: largest |value| positive."""
    out = []
    for img in z.double().numpy():
        x = img.reshape(img.shape[0], -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        p = x @ vt[0]
        p = p if p[np.abs(p).argmax()] >= 0 else -p
        out.append(p.reshape(img.shape[1:]))
    return torch.tensor(np.array(out))


def test_worked_example():
    # A0 = [[0, 0], [0, 4]], A1 = 2 A0: centred rows (c, 2c) with c = (-1, -1, -1, 3); v₁ = (1, 2)/√5, so the
    # projection is √5 c = (-√5, -√5, -√5, 3√5): its largest |value| is already positive; ReLU keeps 3√5.
    a0 = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    a = torch.stack([a0, 2 * a0])[None]
    expected = torch.tensor([[[0.0, 0.0], [0.0, 3 * math.sqrt(5)]]])
    assert torch.allclose(eigencam(a, torch.zeros_like(a)), expected, atol=1e-5)
    assert torch.allclose(eigencam(-a, torch.zeros_like(a)), expected, atol=1e-5)  # -a: same map, by the sign rule
    p = principal_projection(a)
    assert torch.allclose(p, torch.tensor([[[-1.0, -1.0], [-1.0, 3.0]]]) * math.sqrt(5), atol=1e-5)
    assert torch.allclose(eigengradcam(a, torch.ones_like(a)), expected, atol=1e-5)  # G = 1: G ⊙ A = A
    assert torch.allclose(eigengradcam(a, torch.full_like(a, -0.5)), expected / 2, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 16, 3, 3), (2, 1024, 7, 7), (3, 4, 5, 5), (2, 8, 1, 6)])
def test_projection_matches_float64_svd(shape):
    """Both branches: Gram matrix over positions (h·w <= C) and over channels (h·w > C)."""
    z = torch.relu(_randn(*shape, seed=1) + _randn(shape[0], shape[1], 1, 1, seed=2))
    got = principal_projection(z)
    assert got.shape == (shape[0], *shape[2:]) and got.dtype == torch.float32
    ref = _reference_projection(z)
    scale = ref.abs().flatten(1).max(1).values[:, None, None]
    assert ((got.double() - ref).abs() / scale).max() < 1e-4


def test_sign_rule_is_deterministic():
    """The map does not depend on the channel order, on the sign of the input, or on the rest of the batch."""
    z = _randn(5, 64, 6, 6, seed=3)
    p = principal_projection(z)
    flat = p.flatten(1)
    assert (flat.gather(1, flat.abs().argmax(1, keepdim=True)) > 0).all()  # largest |value| positive
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(4))
    scale = float(p.abs().max())
    assert torch.allclose(principal_projection(z[:, perm]), p, atol=1e-4 * scale)
    assert torch.allclose(principal_projection(-z), p, atol=1e-4 * scale)
    assert torch.allclose(principal_projection(z[2:3]), p[2:3], atol=1e-4 * scale)
    assert torch.equal(principal_projection(z), p)


def test_degenerate_inputs():
    flat_positions = torch.ones(2, 8, 3, 3) * torch.arange(8.0).view(1, 8, 1, 1)  # no variation over positions
    assert torch.equal(eigencam(flat_positions, flat_positions), torch.zeros(2, 3, 3))
    assert torch.equal(eigencam(torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)), torch.zeros(1, 1, 1))
    z = _randn(1, 8, 4, 4, seed=5)
    with_nan = z.clone()
    with_nan[0, 3, 1, 2] = float("nan")
    cleaned = z.clone()
    cleaned[0, 3, 1, 2] = 0
    assert torch.equal(eigencam(with_nan, with_nan), eigencam(cleaned, cleaned))  # NaN counts as 0, as in the peer
    with pytest.raises(MethodError, match=r"expected activations of shape \(N, C, h, w\), got shape \(8, 4, 4\)"):
        eigencam(z[0], z[0])
    with pytest.raises(MethodError, match=r"expected gradients of the activations' shape \(1, 8, 4, 4\), got"):
        eigengradcam(z, z[:, :4])


def test_output_contract():
    a = torch.relu(_randn(3, 32, 5, 5, seed=6))
    g = _randn(3, 32, 5, 5, seed=7)
    a_before, g_before = a.clone(), g.clone()
    for f in (eigencam, eigengradcam):
        cam = f(a, g)
        assert cam.shape == (3, 5, 5) and cam.dtype == torch.float32
        assert torch.isfinite(cam).all() and (cam >= 0).all() and (cam.flatten(1).max(1).values > 0).all()
    assert torch.equal(a, a_before) and torch.equal(g, g_before)


# ------------------------------------------------------------------ pytorch-grad-cam


def _ours(model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's inputs, as ``gradient_cams`` gets them: activations and gradients of each image's class."""
    with borrowed(model), capture(model, [layer], grad=True) as caught, torch.enable_grad():
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), [caught[layer]])
        return caught[layer].detach().float(), g.float()


def _peer(name: str, model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor):
    """pytorch-grad-cam's maps (N, H, W) in [0, 1], and its raw projections (N, h, w) from the very arrays it used."""
    cls = pgc.EigenCAM if name == "eigencam" else pgc.EigenGradCAM
    module = dict(model.named_modules())[layer]
    # not frozen: its loss.backward() needs weights that require grad; borrowed puts back every .grad after
    with warnings.catch_warnings(), borrowed(model, freeze=False), cls(model, [module]) as cam:
        warnings.simplefilter("ignore")
        maps = cam(x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in classes])
        a = cam.activations_and_grads.activations[0].numpy()
        z = a if name == "eigencam" else cam.activations_and_grads.gradients[0].numpy() * a
        return maps, get_2d_projection(z)  # deterministic: the same call on the same array as inside the peer


@pytest.mark.parametrize("name", ["eigencam", "eigengradcam"])
@pytest.mark.parametrize(("net", "layer", "n", "size"), [
    ("resnet18", "layer4", 3, 96), ("resnet18", "layer3", 3, 96), ("vgg11", "features.19", 2, 64),
])
def test_matches_pytorch_grad_cam_up_to_its_sign(request, name, net, layer, n, size):
    """pytorch-grad-cam keeps the SVD's arbitrary sign, we fix ours (largest |value| positive). Per image: the raw
    projections agree up to sign; our map equals the peer's where the signs agree, and relu(-projection) of ours
    equals the peer's where they do not."""
    model = request.getfixturevalue(net)
    x = _randn(n, 3, size, size, seed=8)
    with torch.no_grad():
        classes = model(x).argmax(1)
    before = model_state(model)
    a, g = _ours(model, layer, x, classes)
    cam = eigencam(a, g) if name == "eigencam" else eigengradcam(a, g)
    projection = principal_projection(a if name == "eigencam" else g * a)
    ref, raw = _peer(name, model, layer, x, classes)
    assert model_state(model) == before and all(p.grad is None for p in model.parameters())
    assert torch.allclose(cam, torch.relu(projection))
    for i in range(n):
        ours_raw, peer_raw = projection[i].double().numpy().ravel(), raw[i].astype(np.float64).ravel()
        corr = np.corrcoef(ours_raw, peer_raw)[0, 1]
        assert abs(corr) >= 0.999, f"image {i}: raw projections correlate {corr:.5f}"
        signed = torch.relu(projection[i] if corr > 0 else -projection[i])
        got = scale_cam_image(scale_cam_image(signed[None].numpy(), (size, size)))[0]
        assert ref[i].std() > 0.05, f"image {i}: a flat reference map would make this test vacuous"
        match = np.corrcoef(got.ravel(), ref[i].ravel())[0, 1]
        assert match >= 0.99, f"image {i}: Pearson {match:.5f} (sign {'same' if corr > 0 else 'flipped'})"
