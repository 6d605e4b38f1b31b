"""Trust metrics: agreement with torchcam 0.5.0 and pytorch-grad-cam 1.5.7, hand-computed curves, batching,
channels_last, bf16, forward-pass counts, the sanity check's randomization, model left unchanged, errors."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, capture, model_state
from reportgen.methods.cam import gradient_cams
from reportgen.metrics import METRICS, calls, confidence_change, deletion_insertion, road, sanity_check
from reportgen.metrics.imputation import linear_impute
from reportgen.metrics.sanity import parameterized_layers
from reportgen.metrics.scoring import upsample

torchcam_metrics = pytest.importorskip("torchcam.metrics")
pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget  # noqa: E402
from torchcam.methods.core import _CAM  # noqa: E402

# numpy 2 warns about pytorch-grad-cam's np.mean over a list of float32 arrays; not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


def peaky_cnn() -> nn.Module:
    """The tiny test net with its classifier scaled up, so probabilities move visibly when pixels change."""
    from tinynets import tiny_cnn

    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(40.0)
    return model


def _images(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _maps(n: int, h: int, w: int, seed: int = 2, zero_share: float = 0.3) -> torch.Tensor:
    """Random non-negative maps with a flat zero area (ties), as a ReLU'd CAM has."""
    m = torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed))
    return torch.where(m < zero_share, torch.zeros_like(m), m)


def _predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


class _Given:
    """A torchcam CAM extractor that returns given maps (normalized by torchcam's own code), one image at a time."""

    def __init__(self, model: nn.Module, maps: torch.Tensor):
        self.model, self.maps, self.i = model, maps, 0

    def __call__(self, class_idx, scores, normalized=True, **kwargs):
        cam = self.maps[self.i: self.i + 1].clone()
        return [_CAM._normalize(cam) if normalized else cam]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def _torchcam_per_image(metric_cls, model, x, maps, targets, **kwargs) -> dict[str, list[float]]:
    extractor = _Given(model, maps)
    metric = metric_cls(extractor, functools.partial(torch.softmax, dim=-1), **kwargs)
    out: dict[str, list[float]] = {}
    for i in range(x.shape[0]):
        extractor.i = i
        metric.reset()
        metric.update(x[i: i + 1], class_idx=[int(targets[i])])
        for key, value in metric.summary().items():
            out.setdefault(key, []).append(value)
    return out


# --- deletion / insertion -------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,size", [(7, (20, 24)), (20, (16, 16))])
def test_deletion_insertion_matches_torchcam(steps, size):
    model = peaky_cnn()
    x = _images(4, *size)
    maps = _maps(4, 5, 6)  # upsampled inside both
    t = _predicted(model, x)
    ref = _torchcam_per_image(torchcam_metrics.DeletionInsertionMetric, model, x, maps, t, steps=steps, batch_size=5)
    ours = deletion_insertion(model, x, maps, t, steps=steps, baseline=0.0, insertion_baseline=0.0, batch_size=9)
    assert torch.allclose(ours["deletion_auc"], torch.tensor(ref["deletion_auc"]), atol=1e-5, rtol=0)
    assert torch.allclose(ours["insertion_auc"], torch.tensor(ref["insertion_auc"]), atol=1e-5, rtol=0)
    with torch.no_grad():  # the probability does move with the pixels (a flat curve's AUC would be it): not vacuous
        y = model(x).softmax(1).gather(1, t[:, None])[:, 0]
    assert (ours["deletion_auc"] - y).abs().min() > 0.02


def test_deletion_insertion_tensor_baseline_matches_torchcam():
    model = peaky_cnn()
    x = _images(3, 12, 12)
    maps = _maps(3, 12, 12)
    t = _predicted(model, x)
    base = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    ref = _torchcam_per_image(torchcam_metrics.DeletionInsertionMetric, model, x, maps, t, steps=5, baseline=base)
    ours = deletion_insertion(model, x, maps, t, steps=5, baseline=base, insertion_baseline=base)
    assert ours["forward_images"] == 3 * (1 + 2 * 5 - 1)  # the all-baseline image scored once for both curves
    assert torch.allclose(ours["deletion_auc"], torch.tensor(ref["deletion_auc"]), atol=1e-5, rtol=0)
    assert torch.allclose(ours["insertion_auc"], torch.tensor(ref["insertion_auc"]), atol=1e-5, rtol=0)


class RegionMean(nn.Module):
    """Logit 0 = mean of channel 0 over ``region`` (a boolean (H, W) mask) times ``sign``; logit 1 = 0."""

    def __init__(self, region: torch.Tensor, sign: float = 1.0):
        super().__init__()
        self.register_buffer("region", region.float())
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([self.sign * inside, torch.zeros_like(inside)], dim=1)


def _region() -> torch.Tensor:
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, :2] = True  # 4 of 16 pixels
    return region


def test_deletion_insertion_hand_computed():
    region = _region()
    model = RegionMean(region).eval()
    x = torch.ones(2, 3, 4, 4)
    good = region.float()  # the region first
    bad = 1.0 - region.float()  # the region last
    maps = torch.stack([good, bad])
    t = torch.zeros(2, dtype=torch.long)
    # 4 steps of 4 pixels: fractions 0, .25, .5, .75, 1; the raw logit is 1 while the region is whole, else 0.
    out = deletion_insertion(model, x, maps, t, steps=4, baseline=0.0, insertion_baseline=0.0, softmax=False)
    # good: deletion 1,0,0,0,0 -> 0.125; insertion 0,1,1,1,1 -> 0.875. bad: the reverse.
    assert torch.allclose(out["deletion_auc"], torch.tensor([0.125, 0.875]))
    assert torch.allclose(out["insertion_auc"], torch.tensor([0.875, 0.125]))
    assert out["forward_images"] == 2 + 2 * (2 * 4 - 1)


def test_insertion_starts_from_rise_blur():
    """RISE's substrate: a constant image blurred with gkern(11, 5) (zero padding) keeps its centre, dims its rim."""
    from reportgen.metrics.deletion import rise_blur

    blurred = rise_blur(torch.ones(1, 3, 32, 32))
    assert blurred[0, :, 16, 16].allclose(torch.ones(3), atol=1e-6)  # the kernel sums to 1 (gaussian_filter, reflect)
    assert float(blurred[0, 0, 0, 0]) < 0.5  # a corner sees 36 of the 121 taps
    region = _region()
    model = RegionMean(region).eval()
    x = torch.ones(1, 3, 4, 4)
    out = deletion_insertion(model, x, region.float()[None], torch.zeros(1, dtype=torch.long), steps=4,
                             softmax=False)
    # the curve starts from the blurred image's region mean, then the whole region is back: all ones
    start = float(rise_blur(x)[0, 0][region].mean())
    assert out["insertion_auc"].item() == pytest.approx(0.125 * (start + 1) + 0.75, abs=1e-6)
    assert out["forward_images"] == 1 + 2 * 4


# --- average drop / increase ----------------------------------------------------------------------------------


def test_confidence_change_matches_torchcam():
    model = peaky_cnn()
    x = _images(5, 20, 20)
    maps = _maps(5, 7, 7)
    t = _predicted(model, x)
    ref = _torchcam_per_image(torchcam_metrics.ClassificationMetric, model, x, maps, t)
    ours = confidence_change(model, x, maps, t, batch_size=2)
    assert torch.allclose(ours["average_drop"], torch.tensor(ref["avg_drop"], dtype=torch.float32), atol=1e-5, rtol=0)
    assert torch.equal(ours["increase"], torch.tensor(ref["conf_increase"], dtype=torch.float32))
    assert ours["average_drop"].max() > 0.05 and ours["forward_images"] == 10


def test_confidence_change_hand_computed():
    region = _region()
    x = torch.full((3, 3, 4, 4), 2.0)
    keeps = region.float() + 0.5  # min-max: 1 on the region, 0 elsewhere -> the region's mean is unchanged
    drops = 3.0 - region.float()  # min-max: 0 on the region -> the score falls to 0
    flat = torch.ones(4, 4)  # constant: normalized to all zeros (torchcam), the score of an all-zero input
    maps = torch.stack([keeps, drops, flat])
    t = torch.zeros(3, dtype=torch.long)
    out = confidence_change(RegionMean(region).eval(), x, maps, t, softmax=False)  # Y = 2
    assert torch.allclose(out["average_drop"], torch.tensor([0.0, 1.0, 1.0]), atol=1e-6)
    assert torch.equal(out["increase"], torch.zeros(3))
    out = confidence_change(RegionMean(region, sign=-1.0).eval(), x, maps, t, softmax=False)  # Y = -2
    assert torch.equal(out["increase"], torch.tensor([0.0, 1.0, 1.0]))  # O = -2, 0, 0
    nan = confidence_change(RegionMean(region).eval(), x[:1], torch.full((1, 4, 4), float("nan")), t[:1])
    assert torch.isnan(nan["average_drop"]).all()


# --- ROAD -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_linear_imputation_matches_pytorch_grad_cam(solver):
    """No noise: both solvers give pytorch-grad-cam's imputation (its own system, built and solved by scipy)."""
    img = _images(3, 32, 32)
    cam = upsample(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(4)), (32, 32))
    known = torch.stack([cam[0] < 0.3, cam[1] > 0.7, torch.rand(32, 32) < 0.5])[:, None]  # holes, border, speckle
    imputer = pgc_road.NoisyLinearImputer(noise=0.0)
    imputer.noise = 0.0
    ref = torch.stack([imputer(img[i], known[i, 0].float()) for i in range(3)])
    ours = linear_impute(img, known, solver=solver)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.equal(ours[known.expand_as(ours)], img[known.expand_as(img)])  # known pixels untouched
    nothing = linear_impute(img[:1], torch.zeros(1, 1, 32, 32, dtype=torch.bool), solver=solver)
    assert torch.isnan(nothing).all()  # no known pixel: no solution (pytorch-grad-cam: a singular matrix)


@pytest.mark.parametrize("softmax", [True, False])
def test_road_matches_pytorch_grad_cam(softmax):
    model = peaky_cnn()
    x = _images(3, 24, 28)
    maps = torch.rand(3, 24, 28, generator=torch.Generator().manual_seed(5))  # no ties (see road's docstring)
    t = _predicted(model, x)
    target = ClassifierOutputSoftmaxTarget if softmax else ClassifierOutputTarget
    targets = [target(int(c)) for c in t]
    cams = maps.numpy()
    percentiles = [10, 35, 60, 90]
    morf, lerf = [], []
    for i in range(3):  # ours seeds each image's noise: the reference's for that image alone
        torch.manual_seed(7)  # the reference draws its noise from the global RNG: MoRF's percentiles, then LeRF's
        morf.append(pgc_road.ROADMostRelevantFirstAverage(percentiles)(x[i:i + 1], cams[i:i + 1], targets[i:i + 1],
                                                                       model))
        lerf.append(pgc_road.ROADLeastRelevantFirstAverage(percentiles)(x[i:i + 1], cams[i:i + 1], targets[i:i + 1],
                                                                        model))
    morf, lerf = np.concatenate(morf), np.concatenate(lerf)
    ours = road(model, x, maps, t, percentiles=percentiles, softmax=softmax, seed=7, batch_size=5)
    np.testing.assert_allclose(ours["road_morf"].numpy(), morf, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["road_lerf"].numpy(), lerf, atol=1e-4, rtol=0)
    assert np.abs(morf).max() > 1e-3  # removing pixels changes the score: the comparison is not vacuous
    assert ours["forward_images"] == 3 * (1 + 2 * len(percentiles))


def test_road_keeps_pixels_on_ties():
    """A map with a flat zero area: pytorch-grad-cam keeps none of the tied pixels (NaN); here ties are broken."""
    model = peaky_cnn()
    x = _images(2, 16, 16)
    maps = _maps(2, 16, 16, zero_share=0.5)
    out = road(model, x, maps, _predicted(model, x), percentiles=(10, 40))
    assert torch.isfinite(out["road_morf"]).all() and torch.isfinite(out["road_lerf"]).all()


# --- batching, layout, precision, cost, model state --------------------------------------------------------------


def _all(model, x, maps, t, **kw):
    out = {}
    out.update(deletion_insertion(model, x, maps, t, steps=6, **kw))
    out.update(confidence_change(model, x, maps, t, **kw))
    out.update(road(model, x, maps, t, percentiles=(20, 70), **kw))
    return {k: v for k, v in out.items() if k != "forward_images"}


def test_batched_equals_per_image_and_channels_last():
    model = peaky_cnn()
    x = _images(4, 16, 16)
    maps = _maps(4, 8, 8)
    t = _predicted(model, x)
    state = model_state(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    batched = _all(model, x, maps, t, batch_size=3)
    for i in range(4):
        single = _all(model, x[i: i + 1], maps[i: i + 1], t[i: i + 1], batch_size=64)
        for key, value in single.items():
            assert torch.allclose(batched[key][i: i + 1], value, atol=1e-6, rtol=0), key
    model_cl = peaky_cnn().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for key, value in _all(model_cl, x_cl, maps, t, batch_size=5).items():
        assert torch.allclose(batched[key], value, atol=1e-5, rtol=0), key
    assert model_state(model) == state and torch.equal(x, x_before)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())


def test_bf16_stays_close_to_float32():
    """bfloat16 autocast: scores within 0.03 (probabilities; bf16 keeps ~3 significant digits of each logit)."""
    model = peaky_cnn()
    x = _images(3, 16, 16)
    maps = _maps(3, 8, 8)
    t = _predicted(model, x)
    fp32 = _all(model, x, maps, t)
    bf16 = _all(model, x, maps, t, autocast_dtype=torch.bfloat16)
    for key in fp32:
        if key == "increase":
            continue  # a 0/1 flag flips on rounding
        assert (bf16[key] - fp32[key]).abs().max() < 0.03, key


def test_forward_images_counts_the_passes():
    model = peaky_cnn()
    seen = [0]
    model.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__(0, seen[0] + inputs[0].shape[0]))
    x = _images(3, 10, 10)
    maps = _maps(3, 10, 10)
    t = _predicted(model, x)
    for fn, kw in ((deletion_insertion, {"steps": 6}), (confidence_change, {}), (road, {"percentiles": (30, 60)})):
        seen[0] = 0
        out = fn(model, x, maps, t, batch_size=4, **kw)
        assert out["forward_images"] == seen[0] > 0, fn.__name__
        assert all(v.shape == (3,) and v.dtype == torch.float32 and v.device.type == "cpu"
                   for k, v in out.items() if k != "forward_images")


def test_errors_name_what_was_wrong():
    model = peaky_cnn()
    x = _images(2, 8, 8)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(MethodError, match=r"maps of shape \(2, h, w\)"):
        confidence_change(model, x, torch.rand(3, 4, 4), t)
    with pytest.raises(MethodError, match="targets of shape"):
        road(model, x, torch.rand(2, 4, 4), t[:, None])
    with pytest.raises(MethodError, match="target classes in"):
        deletion_insertion(model, x, torch.rand(2, 4, 4), torch.tensor([0, 10]))
    with pytest.raises(MethodError, match="steps >= 1"):
        deletion_insertion(model, x, torch.rand(2, 4, 4), t, steps=0)
    with pytest.raises(MethodError, match="percentiles"):
        road(model, x, torch.rand(2, 4, 4), t, percentiles=(0, 50))
    with pytest.raises(MethodError, match="'blur'"):
        deletion_insertion(model, x, torch.rand(2, 4, 4), t, baseline="mean")


# --- sanity check ---------------------------------------------------------------------------------------------


def _gradcam_fn(x: torch.Tensor, t: torch.Tensor, layer: str = "features.5"):
    def map_fn(model: nn.Module) -> torch.Tensor:
        with borrowed(model), capture(model, [layer], grad=True) as caught:
            logits = model(x)
            maps = gradient_cams(logits, caught, t[:, None], ["gradcam"])
        return maps[(layer, "gradcam")][:, 0]

    return map_fn


def _edges(x: torch.Tensor):
    def map_fn(_model: nn.Module) -> torch.Tensor:  # ignores the model: an edge detector on the input
        gray = x.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
        gx, gy = F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(2, 3), padding=1)
        return (gx.square() + gy.square()).sqrt()[:, 0]

    return map_fn


def test_sanity_check_separates_a_method_from_an_edge_detector():
    from tinynets import tiny_cnn

    model = tiny_cnn()
    x = _images(4, 24, 24)
    t = _predicted(model, x)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    state = model_state(model)
    rng = torch.get_rng_state()
    edges = sanity_check(model, x, t, _edges(x), stages=3)
    assert edges["spearman"].shape == (4, 3) and edges["ssim"].shape == (4, 3)
    assert torch.allclose(edges["spearman"], torch.ones(4, 3)) and torch.allclose(edges["ssim"], torch.ones(4, 3))
    cam = sanity_check(model, x, t, _gradcam_fn(x, t), stages=5)
    assert cam["spearman"].shape == (4, 5)
    last = torch.nan_to_num(cam["spearman"][:, -1], nan=0.0)
    assert last.mean() < 0.5 and cam["ssim"][:, -1].mean() < 0.5  # the map follows the weights
    assert cam["forward_images"] == 1 + 4 * 6  # the layer-order probe, then the original and 5 stages of 4 images
    # the caller's model, and the global RNG, are left as they were
    assert model_state(model) == state and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    again = sanity_check(model, x, t, _gradcam_fn(x, t), stages=5)  # seeded: the same numbers
    assert torch.equal(torch.nan_to_num(again["spearman"]), torch.nan_to_num(cam["spearman"]))


def test_sanity_check_stages_cut_the_layers_from_the_top():
    from tinynets import tiny_cnn

    model = tiny_cnn()
    x = _images(2, 16, 16)
    t = _predicted(model, x)
    layers = parameterized_layers(model, x[:1])
    assert layers == ["features.0", "features.2", "features.3", "features.5", "fc"]
    out = sanity_check(model, x, t, _edges(x), stages=3)
    assert out["stage_layers"] == [["fc", "features.5"], ["fc", "features.5", "features.3"], layers[::-1]]
    out = sanity_check(model, x, t, _edges(x), stages=50)
    assert len(out["stage_layers"]) == 5 and out["spearman"].shape == (2, 5)
    assert out["stage_layers"][0] == ["fc"]


# --- registry -------------------------------------------------------------------------------------------------


def test_registry_names_functions_and_scores():
    model = peaky_cnn()
    x = _images(2, 8, 8)
    maps = _maps(2, 8, 8)
    t = _predicted(model, x)
    grouped = calls(["deletion", "insertion", "average_drop", "road_lerf"])
    assert grouped == {deletion_insertion: ["deletion", "insertion"], confidence_change: ["average_drop"],
                       road: ["road_lerf"]}
    for name, metric in METRICS.items():
        assert metric.name == name and metric.description and "20" in metric.description  # a cited year
        if metric.function is sanity_check:
            continue
        kwargs = {"percentiles": (50,)} if metric.function is road else {}
        out = metric.function(model, x, maps, t, **kwargs)
        assert all(score in out for score in metric.scores), name
    assert METRICS["deletion"].higher_is_better is False and METRICS["insertion"].higher_is_better is True
