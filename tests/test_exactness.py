"""Maps that match what they claim (issue 10, items 8-12): float32 storage, one notion of "the prediction",
Grad-CAM++ as in the paper, FullGrad's biases on every conv/BatchNorm kind, Integrated Gradients' baselines.

Tiny-gradient models are the point: a randomly initialised MobileNetV3-Small has input gradients ~1e-12 and logits
~1e-10, which is where float16 storage, an epsilon in a denominator or a ranking by softmax probability go wrong.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from reportgen.compute import compute_entries
from reportgen.config import load_config
from reportgen.hooks import borrowed, capture
from reportgen.methods import get_method
from reportgen.methods.cam import gradient_cams, gradient_formula, resolve_targets
from reportgen.methods.fullgrad import bias_layers, fullgrad, fullgrad_with_notes
from reportgen.methods.saliency import ig_baseline, integrated_gradients, raw_attributions
from reportgen.models import load_model
from reportgen.plan import ComputeSpec
from reportgen.results import PREDICTIONS, RunStats

captum_attr = pytest.importorskip("captum.attr")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pearson(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _write(tmp_path, cfg: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _mobilenet_config(tmp_path, data_dir, size: int, methods: list[str], params: dict | None = None) -> dict:
    return {
        "model": {"source": "torchvision", "name": "mobilenet_v3_small", "labels": "none",
                  "preprocess": {"size": size, "mean": list(MEAN), "std": list(STD)}},
        "data": {"path": str(data_dir)},
        "run": {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                "batch_size": 2, "channels_last": False},
        "cams": {"methods": methods, "layers": ["features.12"], "target": "predicted", "params": params or {}},
        "report": {"pdf": False, "image_size": 64},
    }


# ---------------------------------------------------------------------------------------------------- item 8


def test_tiny_input_gradients_are_stored_float32_and_equal_captums(tmp_path):
    # 96 px: input-level maps above 64x64 were stored float16, which flushed every value of this model to zero
    (tmp_path / "images").mkdir()
    params = {"integrated_gradients": {"steps": 4, "baseline": "zero"}}
    cfg = load_config(_write(tmp_path, _mobilenet_config(tmp_path, tmp_path / "images", 96,
                                                         ["saliency", "guided_backprop", "integrated_gradients"],
                                                         params)))
    lm = load_model(cfg.model, "cpu")
    x = _images(2, 96)
    methods = ["saliency", "guided_backprop", "integrated_gradients"]
    spec = ComputeSpec.from_config(cfg)
    out = compute_entries(spec, lm, x, {PREDICTIONS} | {spec.cam_key(m) for m in methods}, [None, None], RunStats())
    targets = torch.tensor([int(e[0]["targets"][0]) for e in out[spec.cam_key("saliency")]])
    peers = {
        "saliency": lambda: captum_attr.Saliency(lm.module).attribute(x.clone(), target=targets, abs=False),
        "guided_backprop": lambda: captum_attr.GuidedBackprop(lm.module).attribute(x.clone(), target=targets),
        "integrated_gradients": lambda: captum_attr.IntegratedGradients(lm.module).attribute(
            x.clone(), target=targets, n_steps=4, method="gausslegendre"),
    }
    for method in methods:
        got = np.stack([e[0]["maps"][0] for e in out[spec.cam_key(method)]])
        assert got.dtype == np.float32, method
        with warnings.catch_warnings(), borrowed(lm.module):
            warnings.simplefilter("ignore")
            want = peers[method]().abs().amax(dim=1).numpy()
        assert 0 < want.max() < 1e-9, f"{method}: not the tiny-gradient regime this test is about ({want.max()})"
        assert (got > 0).mean() > 0.5, f"{method}: the stored map is mostly zero"
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max(), err_msg=method)


# ---------------------------------------------------------------------------------------------------- item 9


def test_tied_probabilities_name_the_logit_argmax_everywhere(tmp_path):
    from conftest import make_images

    from reportgen.runner import run

    make_images(tmp_path / "images", n=2, labelled=False, size=(72, 72))
    cfg = load_config(_write(tmp_path, _mobilenet_config(tmp_path, tmp_path / "images", 72,
                                                         ["gradcam", "saliency"])))
    result = run(cfg)
    manifest = json.loads(result.manifest.read_text())
    from safetensors.numpy import load_file

    for image in manifest["images"]:
        maps = load_file(str(cfg.run.output / image["maps_file"]))
        logits = maps["logits"]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(np.argmax(logits))
        # the point of the test: the probabilities tie in float32 although the logits do not
        assert best != 0 and probs[best] == probs[0] and logits[best] > logits[0]
        assert image["predictions"][0]["class_index"] == best
        assert [p["class_index"] for p in image["predictions"]] == [int(c) for c in np.argsort(-logits, kind="stable")[:5]]
        for group in image["cams"]:
            assert group["target_index"] == best
        assert int(maps["cam/gradcam/features.12/targets"][0]) == best
        assert int(maps["cam/saliency/targets"][0]) == best


def test_topk_targets_rank_tied_logits_by_class_index():
    logits = torch.tensor([[0.0, 2.0, 5.0, 5.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    targets, _ = resolve_targets(logits, "topk", top_k=4)
    assert targets.tolist() == [[2, 3, 5, 1], [0, 1, 2, 3]]
    top1, _ = resolve_targets(logits, "predicted")
    assert top1[:, 0].tolist() == targets[:, 0].tolist()
    # the report's ranking of the same float32 logits
    assert [list(np.argsort(-row, kind="stable")[:4]) for row in logits.numpy()] == targets.tolist()


# ---------------------------------------------------------------------------------------------------- item 10


def _scaled_tiny_cnn() -> nn.Module:
    """The tiny CNN with its classifier scaled by 1e-4: layer gradients ~1e-6, G^2 ~1e-12 << any epsilon."""
    from tinynets import tiny_cnn

    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(1e-4)
    for m in model.modules():  # torchcam keeps its caught activation by reference: an in-place ReLU would alter it
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def _paper_gradcampp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Chattopadhay et al. eq. 19 with exponential scores, float64: alpha = G^2 / (2 G^2 + sum_hw(A) G^3), 0 where
    the denominator is 0; weights sum_hw(alpha relu(G)); map relu(sum_c w_c A_c). a, g: (N, C, h, w)."""
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3
    alpha = np.where(denom != 0, g2 / np.where(denom != 0, denom, 1.0), 0.0)
    w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    return np.maximum(np.einsum("nc,nchw->nhw", w, a), 0)


TINY_GRADIENT_MODELS = {
    "tiny_cnn_x1e-4": (_scaled_tiny_cnn, "features.5", 24),
    "mobilenet_v3_small": (lambda: _seeded(torchvision.models.mobilenet_v3_small), "features.12", 64),
}


def _seeded(factory):
    torch.manual_seed(0)
    return factory(weights=None).eval()


@pytest.mark.parametrize("name", list(TINY_GRADIENT_MODELS))
def test_gradcampp_follows_the_paper_on_tiny_gradients_against_torchcams_capture(name):
    torchcam = pytest.importorskip("torchcam.methods")
    build, layer, size = TINY_GRADIENT_MODELS[name]
    model = build()
    x = _images(3, size, seed=4)
    with borrowed(model), capture(model, [layer], grad=True) as caught:
        with torch.enable_grad():
            logits = model(x)
        targets = logits.argmax(dim=1, keepdim=True)
        ours = gradient_cams(logits, {layer: caught[layer]}, targets, ["gradcampp"])[(layer, "gradcampp")][:, 0]
    # torchcam catches A and G with its own hooks; the formula is then the paper's, in float64
    for p in model.parameters():
        p.requires_grad_(True)
    with torchcam.GradCAMpp(model, layer) as extractor:
        scores = model(x)
        extractor(targets[:, 0].tolist(), scores)
        a = extractor.hook_a[0].detach().double().numpy()
        g = extractor.hook_g[0].detach().double().numpy()
    model.zero_grad(set_to_none=True)
    assert np.median(g**2) < 1e-6, "not the tiny-gradient regime this test is about"
    want = _paper_gradcampp(a, g)
    for i in range(3):
        assert want[i].max() > 0
        assert _pearson(ours[i].numpy(), want[i]) >= 0.9999, f"image {i}"
        np.testing.assert_allclose(ours[i].numpy(), want[i], rtol=1e-3, atol=1e-4 * want[i].max())


def test_torchcam_0_5_0_gradcampp_never_divides_alpha():
    """Why torchcam's own GradCAMpp map is not the reference: in 0.5.0 ``alpha[mask].div_(...)`` divides a copy,
    so its weights are sum_hw(G^2 relu(G)). If this fails, torchcam changed: compare with its maps directly."""
    torchcam = pytest.importorskip("torchcam.methods")
    model = _scaled_tiny_cnn()
    x = _images(2, 24, seed=4)
    for p in model.parameters():
        p.requires_grad_(True)
    with torchcam.GradCAMpp(model, "features.5") as extractor:
        scores = model(x)
        (theirs,) = extractor(scores.argmax(1).tolist(), scores, normalized=False)
        a = extractor.hook_a[0].detach().double()
        g = extractor.hook_g[0].detach().double()
    model.zero_grad(set_to_none=True)
    undivided = torch.relu(((g * g * torch.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(1))
    paper = _paper_gradcampp(a.numpy(), g.numpy())
    for i in range(2):
        assert _pearson(theirs[i].detach().numpy(), undivided[i].numpy()) > 0.99999
        assert _pearson(theirs[i].detach().numpy(), paper[i]) < 0.99


def test_gradcampp_guards_only_a_zero_denominator():
    # sum_hw(A) = 4 and G = -0.5 at one position: 2 + sum_hw(A) G = 0 there. G = 0 elsewhere in channel 0.
    a = torch.ones(1, 2, 2, 2)
    g = torch.zeros(1, 2, 2, 2)
    g[0, 0, 0, 0] = -0.5
    g[0, 1, 0, 0] = 1e-20  # G^2 underflows in float32; alpha = 1 / (2 + 4e-20) = 0.5 all the same
    g[0, 1, 1, 1] = 0.25  # alpha = 1 / (2 + 1) = 1/3
    got = gradient_formula("gradcampp")(a, g)
    w1 = 0.5 * 1e-20 + 0.25 / 3  # channel 0 has no positive gradient: weight 0
    assert torch.isfinite(got).all()
    assert torch.allclose(got, torch.full((1, 2, 2), w1), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- item 11


def _minmax(v: np.ndarray) -> np.ndarray:
    v = v - v.min()
    return v / (1e-7 + v.max())


def _with_bias_stats(model: nn.Module, seed: int = 5) -> nn.Module:
    """Non-trivial BatchNorm statistics and betas (random init leaves them 0 / 1 / 0)."""
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


def _unfused(model: nn.Module) -> nn.Module:
    """A copy where every timm ``BatchNormAct2d`` is ``Sequential(nn.BatchNorm2d, drop, act)`` and every timm
    ``Conv2dSame`` is ``Sequential(its padding, nn.Conv2d)``: the same function, in the exact types
    pytorch-grad-cam's FullGrad takes (activations out of place, so the peer's hooks see their own outputs)."""
    from timm.layers import BatchNormAct2d, Conv2dSame
    from timm.layers.padding import pad_same

    class _PadSame(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.k, self.s, self.d = conv.kernel_size, conv.stride, conv.dilation

        def forward(self, x):
            return pad_same(x, self.k, self.s, self.d)

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, BatchNormAct2d):
            bn = nn.BatchNorm2d(module.num_features, eps=module.eps)
            bn.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith(("act", "drop"))})
            act = copy.deepcopy(module.act)
            if hasattr(act, "inplace"):
                act.inplace = False
            new = nn.Sequential(bn, module.drop, act)
        elif isinstance(module, Conv2dSame):
            conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                             module.dilation, module.groups, module.bias is not None)
            conv.load_state_dict(module.state_dict())
            new = nn.Sequential(_PadSame(module), conv)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model.eval()


def _pgc_fullgrad(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with warnings.catch_warnings(), borrowed(model):
        warnings.simplefilter("ignore")
        with pgc.FullGrad(model, []) as cam:
            return cam(x.clone(), [ClassifierOutputTarget(c) for c in targets])


def test_fullgrad_takes_the_49_batchnormact_biases_of_efficientnet_lite0():
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = _with_bias_stats(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10))
    layers = bias_layers(model)
    assert len(layers) == 49 and all(isinstance(m, BatchNormAct2d) for m in layers)
    x = _images(2, 64, seed=3)
    targets = torch.tensor([[3], [7]])
    with borrowed(model):
        ours = fullgrad(model, x, targets)[:, 0].numpy()
    ref = _pgc_fullgrad(_unfused(model), x, [3, 7])  # by hand: the same net in the types the peer takes
    # what the peer computes on the timm model itself: no bias at all, only |x * dy/dx|
    without = _pgc_fullgrad(model, x, [3, 7])
    for i in range(2):
        assert _pearson(_minmax(ours[i]), ref[i]) >= 0.999
        np.testing.assert_allclose(_minmax(ours[i]), ref[i], atol=2e-3)
        assert _pearson(_minmax(ours[i]), without[i]) < 0.95  # the 49 biases change the map


def test_fullgrad_takes_timm_conv2dsame_biases():
    pytest.importorskip("timm")
    from timm.layers import Conv2dSame

    torch.manual_seed(1)
    model = _with_bias_stats(nn.Sequential(
        Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)))
    assert bias_layers(model) == [model[0], model[2], model[3]]
    x = _images(2, 21, seed=2)
    with borrowed(model):
        ours = fullgrad(model, x, torch.tensor([[1], [4]]))[:, 0].numpy()
    ref = _pgc_fullgrad(_unfused(model), x, [1, 4])
    for i in range(2):
        np.testing.assert_allclose(_minmax(ours[i]), ref[i], atol=1e-4)


@pytest.mark.parametrize("kind", ["frozen", "sync"])
def test_frozen_and_sync_batchnorm_give_the_same_map_as_batchnorm(tiny_model, kind):
    from torchvision.ops import FrozenBatchNorm2d

    bn = tiny_model.features[3]
    with torch.no_grad():
        bn.bias.copy_(torch.linspace(-0.3, 0.3, bn.num_features))
    other = FrozenBatchNorm2d(bn.num_features, eps=bn.eps) if kind == "frozen" else nn.SyncBatchNorm(bn.num_features)
    other.load_state_dict(bn.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked itself
    swapped = copy.deepcopy(tiny_model)
    swapped.features[3] = other.eval()
    x = _images(2, 20, seed=7)
    targets = torch.tensor([[2], [5]])
    with borrowed(tiny_model):
        want = fullgrad(tiny_model, x, targets)
    with borrowed(swapped):
        got = fullgrad(swapped, x, targets)
    assert len(bias_layers(swapped)) == len(bias_layers(tiny_model)) == 4
    assert torch.allclose(got, want, atol=1e-5)


def test_biases_fullgrad_cannot_use_are_named_in_the_log_and_the_entry(caplog):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with borrowed(model), caplog.at_level(logging.WARNING, logger="reportgen.methods.fullgrad"):
        maps, notes = fullgrad_with_notes(model, _images(2, 12), torch.tensor([[0], [2]]))
    assert maps.shape == (2, 1, 12, 12)
    assert json.loads(notes["ignored_biases"]) == ["1"]  # the GroupNorm; the classifier's Linear is not spatial
    assert notes["bias_layers"] == "1"
    assert "leaves out the biases of 1 module(s)" in caplog.text and ": 1" in caplog.text


def test_fullgrad_entries_carry_what_was_left_out(tmp_path, image_dir):
    from conftest import write_config

    cfg = load_config(write_config(tmp_path, image_dir, cams={"methods": ["fullgrad"], "layers": ["features.5"]}))
    lm = load_model(cfg.model, "cpu")
    spec = ComputeSpec.from_config(cfg)
    out = compute_entries(spec, lm, _images(2, 32), {PREDICTIONS, spec.cam_key("fullgrad")}, [None, None], RunStats())
    for _, meta in out[spec.cam_key("fullgrad")]:
        assert meta["bias_layers"] == "4" and json.loads(meta["ignored_biases"]) == []
        assert "target_kinds" in meta


# ---------------------------------------------------------------------------------------------------- item 12


def _blur_by_hand(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", radius=math.ceil(3 * sigma))
    return torch.from_numpy(out).float()


def _baseline_by_hand(kind: str, x: torch.Tensor, sigma: float) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "black":  # pixel value 0 in each channel, normalised
        return torch.stack([torch.full_like(x[:, c], -MEAN[c] / STD[c]) for c in range(3)], dim=1)
    return _blur_by_hand(x, sigma)


@pytest.mark.parametrize("baseline", ["zero", "black", "blur"])
def test_integrated_gradients_baselines_match_captum(resnet18, baseline):
    x = _images(2, 32, seed=8)
    targets = torch.tensor([[3], [6]])
    sigma = 2.5
    start = _baseline_by_hand(baseline, x, sigma)
    assert torch.allclose(ig_baseline(x, baseline, mean=MEAN, std=STD, blur_sigma=sigma), start, atol=1e-5)
    with borrowed(resnet18):
        raw = raw_attributions(resnet18, x, targets, "integrated_gradients", steps=8, baseline=baseline, mean=MEAN,
                               std=STD, blur_sigma=sigma)[:, 0]
        maps = integrated_gradients(resnet18, x, targets, steps=8, baseline=baseline, mean=MEAN, std=STD,
                                    blur_sigma=sigma)[:, 0]
    with warnings.catch_warnings(), borrowed(resnet18):
        warnings.simplefilter("ignore")
        ref = captum_attr.IntegratedGradients(resnet18).attribute(
            x.clone(), baselines=start, target=targets[:, 0], n_steps=8, method="gausslegendre")
    scale = ref.abs().max()
    assert scale > 0
    assert torch.allclose(raw, ref, rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(maps, ref.abs().amax(dim=1), rtol=1e-4, atol=1e-5 * scale)


def test_integrated_gradients_default_is_the_black_baseline_it_describes(tmp_path, image_dir):
    from conftest import write_config

    spec = get_method("integrated_gradients")
    assert spec.defaults()["baseline"] == "black" and "black" in spec.description
    assert next(p for p in spec.params if p.name == "baseline").choices == ("black", "zero", "blur")
    cams = {"methods": ["integrated_gradients"], "layers": ["features.5"], "params": {"integrated_gradients": {"steps": 4}}}
    cfg = load_config(write_config(tmp_path, image_dir, cams=cams))
    assert cfg.cams.params["integrated_gradients"]["baseline"] == "black"
    lm = load_model(cfg.model, "cpu")
    x = _images(2, 32)
    spec = ComputeSpec.from_config(cfg)
    key = spec.cam_key("integrated_gradients")
    out = compute_entries(spec, lm, x, {PREDICTIONS, key}, [None, None], RunStats())
    got = np.stack([e[0]["maps"] for e in out[key]])
    targets = torch.tensor(np.stack([e[0]["targets"] for e in out[key]]))
    mean, std = lm.preprocess.mean, lm.preprocess.std  # the config's 0.5 / 0.25: black is -2 in every channel
    start = torch.full_like(x, -2.0)
    with warnings.catch_warnings(), borrowed(lm.module):
        warnings.simplefilter("ignore")
        ref = captum_attr.IntegratedGradients(lm.module).attribute(
            x.clone(), baselines=start, target=targets[:, 0], n_steps=4, method="gausslegendre")
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_allclose(got[:, 0], ref.abs().amax(dim=1).numpy(), rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_feature_maps_keep_activations_beyond_float16_range():
    """Feature maps were stored float16: an unnormalised layer's 1e5 activations became inf in the report."""
    from reportgen.methods.feature_maps import top_channels

    a = torch.tensor([1e5, 7e4, 3.0, 1e-9]).reshape(1, 4, 1, 1).expand(2, 4, 2, 2).contiguous()
    maps, idx, means = top_channels(a, 3)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps[0, :, 0, 0].tolist() == [1e5, 7e4, 3.0] and idx[0].tolist() == [0, 1, 2]


def test_raw_maps_full_keeps_the_signed_attribution_equal_to_captums(tmp_path):
    """report.raw_maps: full stores cam/<method>/signed (T, 3, H, W): captum's signed attribution; the map is its
    channel reduction, and the default run stores no such key (and keeps its cache keys)."""
    from captum import attr as captum_attr
    from conftest import make_images, write_config
    from safetensors.numpy import load_file

    from reportgen.runner import run

    make_images(tmp_path / "images", 2)
    maps = {}
    for mode in ("reduced", "full"):
        cfg = load_config(write_config(tmp_path, tmp_path / "images", cams={"methods": ["saliency"]},
                                       report={"pdf": False, "image_size": 64, "raw_maps": mode},
                                       run={"output": str(tmp_path / mode), "cache_dir": str(tmp_path / "cache"),
                                            "device": "cpu", "batch_size": 2}))
        result = run(cfg)
        image = json.loads(result.manifest.read_text())["images"][0]
        maps[mode] = load_file(str(result.output / image["maps_file"]))
        assert result.stats.cache_misses > 0  # the full run computes its own entries: other cache keys
    assert "cam/saliency/signed" not in maps["reduced"]
    signed = maps["full"]["cam/saliency/signed"]
    assert signed.dtype == np.float32 and signed.shape == (1, 3, 32, 32)
    assert (signed < 0).any() and (signed > 0).any()
    np.testing.assert_array_equal(maps["full"]["cam/saliency"], np.abs(signed).max(axis=1))
    np.testing.assert_array_equal(maps["full"]["cam/saliency"], maps["reduced"]["cam/saliency"])
    lm = load_model(cfg.model, "cpu")
    from reportgen.batches import to_tensor
    from reportgen.images import decode

    x = to_tensor(decode(sorted((tmp_path / "images").rglob("*.png"))[0]), lm.preprocess)[None]
    target = int(maps["full"]["cam/saliency/targets"][0])
    with borrowed(lm.module):
        want = captum_attr.Saliency(lm.module).attribute(x, target=target, abs=False).numpy()
    np.testing.assert_allclose(signed[0], want[0], rtol=1e-4, atol=1e-6)
