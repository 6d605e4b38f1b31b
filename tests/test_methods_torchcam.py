"""torchcam 0.5.0's methods (CAM, Smooth Grad-CAM++, SS-CAM, IS-CAM) and SESS against their peers.

CAM, SS-CAM and IS-CAM are compared with torchcam's classes map by map (Pearson >= 0.99); the noisy ones get
the same noise: torchcam draws from the global RNG, seeded here before each one-image call with our ``seed``,
and our draws come from a generator seeded the same way, in the same order (sample by sample). Smooth
Grad-CAM++ follows the paper where torchcam does not: it is checked against the paper's formula computed on the
tensors torchcam itself caught. SESS is compared with pytorch-grad-cam 1.5.7's ``SESS`` and its defining
properties are tested. Tiny inputs and few samples keep each test around a second.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, model_state
from reportgen.methods.cam import gradient_cams
from reportgen.methods.fc_cam import cam
from reportgen.methods.iscam import iscam
from reportgen.methods.sess import sess
from reportgen.methods.smooth_gradcampp import smoothgradcampp
from reportgen.methods.sscam import sscam

tc = pytest.importorskip("torchcam.methods")


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _classes(model, x) -> torch.Tensor:
    with borrowed(model), torch.no_grad():
        return model(x).argmax(1)


def _torchcam(cls, model, layer, x, classes, **kwargs) -> torch.Tensor:
    """torchcam's raw map (N, h, w) for one class per image, one image per call, RNG seeded with 0 first."""
    out = []
    with borrowed(model):
        for i in range(x.shape[0]):
            with warnings.catch_warnings(), cls(model, layer, **kwargs) as extractor:
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                scores = model(x[i:i + 1])
                maps = extractor(class_idx=[int(classes[i])], scores=scores, normalized=False)
            out.append(maps[0][0].detach())
    return torch.stack(out)


def _assert_close_maps(ours, ref, what: str, min_corr: float = 0.99, atol: float = 1e-3) -> list[float]:
    """Pearson >= min_corr per map, and the maps min-max scaled agree to ``atol`` (Pearson alone misses a wrong
    noise level or blur width on 2×2 maps)."""
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    corrs = []
    for i in range(ref.shape[0]):
        assert ref[i].std() > 0, f"{what} image {i}: a flat reference would make this vacuous"
        corrs.append(_pearson(ours[i], ref[i]))
        assert corrs[-1] >= min_corr, f"{what} image {i}: Pearson {corrs[-1]:.5f}"
    torch.testing.assert_close(_minmax(ours.float()), _minmax(ref.float()), rtol=0, atol=atol)
    return corrs


# ---- CAM ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "layer", "fc", "size"), [("resnet18", "layer4", "fc", 64),
                                                                 ("tiny", "features.6", "fc", 16)])
def test_cam_matches_torchcam(request, tiny_model, model_name, layer, fc, size):
    model = tiny_model if model_name == "tiny" else request.getfixturevalue(model_name)
    x = _images(2, size)
    classes = _classes(model, x)
    before = model_state(model)
    with borrowed(model):
        ours = cam(model, x, torch.stack([classes, (classes + 1) % 10], 1), layer=layer)
    assert model_state(model) == before
    ref = torch.relu(_torchcam(tc.CAM, model, layer, x, classes, fc_layer=fc))  # torchcam keeps negatives
    _assert_close_maps(ours[:, 0], ref, "cam")
    torch.testing.assert_close(ours[:, 0], ref, rtol=1e-4, atol=1e-6)


def test_cam_finds_the_classifier_and_refuses_other_layers(vgg11, tiny_model, resnet18):
    x = _images(1, 32)
    with borrowed(tiny_model):
        auto = cam(tiny_model, x, torch.tensor([[3]]), layer="features.6")
        named = cam(tiny_model, x, torch.tensor([[3]]), layer="features.6", fc_layer="fc")
        assert torch.equal(auto, named)
        # features.5 is the conv before the last ReLU: same 16 channels, but the pool sees relu(A), not A
        with pytest.raises(MethodError, match="not the global average pool of layer 'features.5'"):
            cam(tiny_model, x, torch.tensor([[3]]), layer="features.5")
        with pytest.raises(MethodError, match="fc_layer 'features.0' is a Conv2d"):
            cam(tiny_model, x, torch.tensor([[3]]), layer="features.6", fc_layer="features.0")
    with borrowed(vgg11), pytest.raises(MethodError, match="no nn.Linear takes 512 inputs"):
        cam(vgg11, x, torch.tensor([[0]]), layer="features.19")  # flatten + three Linear layers: not CAM's shape
    with borrowed(resnet18), pytest.raises(MethodError, match="layer 'layer3' has 256 channels"):
        cam(resnet18, x, torch.tensor([[0]]), layer="layer3", fc_layer="fc")


# ---- SS-CAM and IS-CAM -------------------------------------------------------------------------------------


# 64 channels: 64 passes per image and sample; VGG11's classifier alone costs 0.12 GMAC per pass, so one image
SCORE_CASES = [("resnet18", "layer1", 32, 2, 3), ("vgg11", "features.1", 32, 1, 2)]


@pytest.mark.parametrize(("model_name", "layer", "size", "n", "samples"), SCORE_CASES)
def test_sscam_matches_torchcam_with_the_same_noise(request, model_name, layer, size, n, samples):
    model = request.getfixturevalue(model_name)
    x = _images(n, size, seed=5)
    classes = _classes(model, x)
    with borrowed(model):
        ours = sscam(model, x, classes[:, None], layer=layer, num_samples=samples, seed=0, batch_size=128)
    ref = _torchcam(tc.SSCAM, model, layer, x, classes, num_samples=samples, batch_size=128)
    _assert_close_maps(ours[:, 0], ref, f"sscam {model_name}")


def test_sscam_noise_is_seeded_and_matters(resnet18):
    x = _images(1, 32, seed=5)
    t = torch.tensor([[1]])
    with borrowed(resnet18):
        a = sscam(resnet18, x, t, layer="layer1", num_samples=2, seed=3, batch_size=128)
        b = sscam(resnet18, x, t, layer="layer1", num_samples=2, seed=3, batch_size=50)
        c = sscam(resnet18, x, t, layer="layer1", num_samples=2, seed=4, batch_size=128)
    torch.testing.assert_close(a, b)  # chunking does not change the draws
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("model_name", "layer", "size", "n", "samples"), SCORE_CASES)
def test_iscam_matches_torchcam(request, model_name, layer, size, n, samples):
    model = request.getfixturevalue(model_name)
    x = _images(n, size, seed=6)
    classes = _classes(model, x)
    with borrowed(model):
        ours = iscam(model, x, classes[:, None], layer=layer, num_samples=samples, batch_size=100)
    ref = _torchcam(tc.ISCAM, model, layer, x, classes, num_samples=samples, batch_size=128)
    _assert_close_maps(ours[:, 0], ref, f"iscam {model_name}")


# ---- Smooth Grad-CAM++ -------------------------------------------------------------------------------------


def _torchcam_smooth_tensors(model, layer, x, cls, num_samples):
    """torchcam's SmoothGradCAMpp map for one image and the tensors it used: clean A, per-sample (G, A)."""
    seen = []
    with borrowed(model), tc.SmoothGradCAMpp(model, layer, num_samples=num_samples) as extractor:
        backprop = extractor._backprop

        def recording(*args, **kwargs):
            backprop(*args, **kwargs)
            seen.append((extractor.hook_g[0].clone(), extractor.hook_a[0].clone()))

        extractor._backprop = recording
        torch.manual_seed(0)
        model(x)
        clean = extractor.hook_a[0].clone()
        ref = extractor(class_idx=[cls], normalized=False)[0][0].detach()
    return ref, clean, seen


@pytest.mark.parametrize(("model_name", "layer", "size"), [("resnet18", "layer4", 64), ("vgg11", "features.19", 32)])
def test_smoothgradcampp_is_the_paper_formula_on_torchcams_tensors(request, model_name, layer, size):
    model = request.getfixturevalue(model_name)
    x = _images(2, size, seed=7)
    classes = _classes(model, x)
    with borrowed(model):
        ours = smoothgradcampp(model, x, classes[:, None], layer=layer, num_samples=3, seed=0)
    for i in range(2):
        ref, clean, seen = _torchcam_smooth_tensors(model, layer, x[i:i + 1], int(classes[i]), 3)
        g = torch.stack([s[0] for s in seen])  # (S, 1, C, h, w)
        moments = torch.stack([(g ** p).mean(0) for p in (1, 2, 3)])[:, :, None]  # (3, 1, T=1, C, h, w)
        # the paper's formula written out again here (not smooth_formula: a test of it must not reuse it)
        a = clean.float()
        d1, d2, d3 = (mo[:, 0] for mo in moments)
        alpha = torch.nan_to_num(d2 / (2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3))  # 0/0 (dead unit): 0
        paper = torch.relu(((alpha * torch.relu(d1)).sum(dim=(2, 3))[..., None, None] * a).sum(1))[0]
        torch.testing.assert_close(ours[i, 0], paper, rtol=1e-4, atol=1e-6 * float(paper.max()))
        # torchcam's own formula on the same tensors reproduces torchcam: the capture above is faithful
        g2, g3 = moments[1, :, 0], moments[2, :, 0]
        alpha = g2 / (2 * g2 + (g3 * clean).flatten(2).sum(-1)[..., None, None] + 1e-8)
        w = (alpha * torch.relu(seen[-1][0])).flatten(2).sum(-1)
        theirs = torch.relu((w[..., None, None] * seen[-1][1]).sum(1))[0]
        torch.testing.assert_close(theirs, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))


def test_smoothgradcampp_targets_and_batch(resnet18):
    x = _images(3, 32, seed=8)
    t = torch.tensor([[0, 5], [1, 2], [7, 7]])
    with borrowed(resnet18):
        both = smoothgradcampp(resnet18, x, t, layer="layer3", num_samples=2, batch_size=4)
        one = smoothgradcampp(resnet18, x[1:2], t[1:2, 1:], layer="layer3", num_samples=2, batch_size=1)
    torch.testing.assert_close(both[1:2, 1:], one, rtol=1e-4, atol=1e-7)  # per image = in a batch (shared noise)
    torch.testing.assert_close(both[2, 0], both[2, 1])
    assert both.shape == (3, 2, 2, 2) and (both >= 0).all() and both.amax() > 0


# ---- SESS ----------------------------------------------------------------------------------------------------


def _peer_sess(model, layer, x, classes, **kwargs) -> np.ndarray:
    from pytorch_grad_cam import SESS
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    with warnings.catch_warnings(), borrowed(model, freeze=False):  # the peer backpropagates into the weights
        warnings.simplefilter("ignore")
        with SESS(model, [module], **kwargs) as peer:
            return peer(x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in classes])


@pytest.mark.parametrize(("model_name", "layer", "size", "kwargs"), [
    ("resnet18", "layer4", 64, {}),
    ("resnet18", "layer3", 48, {"pool": "max", "pre_filter": 0.5, "step": 20, "smooth": False}),
    ("vgg11", "features.19", 32, {"theta": 0.2}),
])
def test_sess_matches_pytorch_grad_cam(request, model_name, layer, size, kwargs):
    model = request.getfixturevalue(model_name)
    n = 1 if model_name == "vgg11" else 2  # the peer backpropagates into VGG's 0.1 G classifier weights
    x = _images(n, size, seed=9)
    classes = _classes(model, x)
    with borrowed(model):
        ours = sess(model, x, classes[:, None], layer=layer, num_scales=3, **kwargs)
    peer_names = {"step": "step_size", "window": "window_size", "pre_filter": "pre_filter_ratio"}
    ref = _peer_sess(model, layer, x, classes, num_scales=3, **{peer_names.get(k, k): v for k, v in kwargs.items()})
    assert ours.shape == (n, 1, size, size)
    _assert_close_maps(ours[:, 0].numpy(), torch.from_numpy(ref), f"sess {model_name} {kwargs}")


def _minmax(m):
    m = m - m.amin(dim=(-2, -1), keepdim=True)
    return m / (1e-7 + m.amax(dim=(-2, -1), keepdim=True))


def test_sess_at_one_scale_and_window_is_the_base_method(resnet18):
    x = _images(2, 64, seed=10)
    t = torch.tensor([[1, 2], [3, 4]])
    with borrowed(resnet18):
        ours = sess(resnet18, x, t, layer="layer3", base="gradcampp", num_scales=1, smooth=False)
        from reportgen.hooks import capture

        with torch.enable_grad(), capture(resnet18, ["layer3"], grad=True) as caught:
            base = gradient_cams(resnet18(x), {"layer3": caught["layer3"]}, t, ["gradcampp"])[("layer3", "gradcampp")]
    expected = _minmax(F.interpolate(_minmax(base), size=(64, 64), mode="bilinear", align_corners=False))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_sess_batch_equals_per_image_and_ignores_chunking_and_order(resnet18):
    x = _images(3, 40, seed=11)
    t = torch.tensor([[1], [2], [3]])
    kw = {"layer": "layer3", "num_scales": 2, "step": 16}
    with borrowed(resnet18):
        whole = sess(resnet18, x, t, batch_size=64, **kw)
        small = sess(resnet18, x, t, batch_size=3, **kw)
        flipped = sess(resnet18, x.flip(0), t.flip(0), batch_size=5, **kw)
        alone = torch.cat([sess(resnet18, x[i:i + 1], t[i:i + 1], **kw) for i in range(3)])
    for other in (small, flipped.flip(0), alone):
        torch.testing.assert_close(whole, other, rtol=1e-4, atol=1e-6)


def test_sess_refuses_bad_parameters(resnet18):
    x = _images(1, 32)
    with borrowed(resnet18):
        with pytest.raises(MethodError, match="base 'scorecam' is not a gradient CAM"):
            sess(resnet18, x, torch.tensor([[0]]), layer="layer3", base="scorecam")
        with pytest.raises(MethodError, match="window 40 is larger"):
            sess(resnet18, x, torch.tensor([[0]]), layer="layer3", window=40)
