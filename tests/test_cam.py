"""Gradient CAMs: a hand-worked Grad-CAM, agreement with a per-image reference, targets, model left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.errors import MethodError
from reportgen.hooks import borrowed, capture, model_state
from reportgen.methods.cam import gradient_cams, gradient_formula, resolve_targets

METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]


def _cams(model, x, layers, methods, targets=None, kind="predicted", **kw):
    with borrowed(model), capture(model, layers, grad=True) as caught:
        with torch.enable_grad():
            logits = model(x)
        if targets is None:
            targets, _ = resolve_targets(logits.detach(), kind, **kw)
        return logits.detach(), gradient_cams(logits, {la: caught[la] for la in layers}, targets, methods)


def test_gradcam_worked_out_by_hand(fixed_model):
    # x = [[1, 2], [3, 4]] → A0 = x, A1 = 5 - x; logits = W · mean(A) = [2.5 - 5, 1.25 + 1.25] = [-2.5, 2.5].
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    logits, maps = _cams(fixed_model, x, ["act"], ["gradcam", "hirescam"], targets=torch.tensor([[0], [1]]).T)
    assert torch.allclose(logits, torch.tensor([[-2.5, 2.5]]))
    # class 0: weights = W[0] / 4 = [0.25, -0.5]; relu(0.25 x - 0.5 (5 - x)) = relu(0.75 x - 2.5)
    expected0 = torch.tensor([[0.0, 0.0], [0.0, 0.5]])
    # class 1: weights = [0.125, 0.125]; 0.125 (x + 5 - x) = 0.625 everywhere
    expected1 = torch.full((2, 2), 0.625)
    got = maps[("act", "gradcam")]
    assert got.shape == (1, 2, 2, 2)
    assert torch.allclose(got[0, 0], expected0, atol=1e-6)
    assert torch.allclose(got[0, 1], expected1, atol=1e-6)
    # gradients are uniform here, so HiResCAM = (G * A) summed = the same maps
    assert torch.allclose(maps[("act", "hirescam")][0], got[0], atol=1e-6)


def _reference(model, x, layer, cls):
    """Straightforward per-image CAMs: full backward through the whole model, formulas in numpy."""
    holder = {}
    module = dict(model.named_modules())[layer]

    def hook(_m, _i, out):
        # keep the layer's own output; the next (possibly in-place) module gets a copy
        out.retain_grad()
        holder["a"] = out
        return out.clone()

    handle = module.register_forward_hook(hook)
    try:
        xi = x.clone().requires_grad_(True)
        model.zero_grad()
        model(xi)[0, cls].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    a = holder["a"].detach()[0].double().numpy()
    g = holder["a"].grad[0].double().numpy()
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    pre = {}  # each map before its final ReLU
    pre["gradcam"] = np.einsum("c,chw->hw", g.mean(axis=(1, 2)), a)
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum(axis=(1, 2))[:, None, None] * g3  # the paper's alpha: no epsilon (docs/METHODS.md)
    alpha = np.where(denom != 0, g2 / np.where(denom != 0, denom, 1.0), 0.0)
    pre["gradcampp"] = np.einsum("c,chw->hw", (relu(g) * alpha).sum(axis=(1, 2)), a)
    w = (g * a / (a.sum(axis=(1, 2))[:, None, None] + 1e-7)).sum(axis=(1, 2))
    pre["xgradcam"] = np.einsum("c,chw->hw", w, a)
    pre["hirescam"] = (g * a).sum(axis=0)
    pre["layercam"] = (relu(g) * a).sum(axis=0)
    return {m: (relu(v), float(np.abs(v).max())) for m, v in pre.items()}


@pytest.mark.parametrize("layer", ["features.2", "features.5", "features.6"])
def test_five_cams_match_per_image_reference(tiny_model, layer):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 24, 24)
    logits, maps = _cams(tiny_model, x, [layer], METHODS)
    predicted = logits.argmax(1)
    nonzero = dict.fromkeys(METHODS, 0)
    for i in range(4):
        ref = _reference(tiny_model.eval(), x[i : i + 1], layer, int(predicted[i]))
        for m in METHODS:
            got = maps[(layer, m)][i, 0].double().numpy()
            want, scale = ref[m]
            assert got.shape == want.shape
            # float32 against float64: tolerance relative to the size of the map before its ReLU
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{m} image {i}")
            nonzero[m] += int(want.max() > 0)
    assert all(nonzero.values()), f"some method had only all-zero reference maps: {nonzero}"


def test_two_layers_share_one_pass_and_match_single_layer_runs(tiny_model):
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    _, both = _cams(tiny_model, x, ["features.2", "features.5"], METHODS)
    for layer in ["features.2", "features.5"]:
        _, single = _cams(tiny_model, x, [layer], METHODS)
        for m in METHODS:
            assert torch.allclose(both[(layer, m)], single[(layer, m)], atol=1e-6)


def test_topk_targets_give_one_map_per_class(tiny_model):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    logits, maps = _cams(tiny_model, x, ["features.5"], ["gradcam"], kind="topk", top_k=3)
    assert maps[("features.5", "gradcam")].shape[:2] == (2, 3)
    top = logits.topk(3, dim=1).indices
    for t in range(3):
        _, single = _cams(tiny_model, x, ["features.5"], ["gradcam"], targets=top[:, t : t + 1])
        assert torch.allclose(maps[("features.5", "gradcam")][:, t], single[("features.5", "gradcam")][:, 0], atol=1e-6)


def test_resolve_targets_kinds():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 1.0]])
    t, kinds = resolve_targets(logits, "predicted")
    assert t.tolist() == [[1], [0]] and kinds == [["predicted"], ["predicted"]]
    t, kinds = resolve_targets(logits, "true", labels=[2, None])
    assert t.tolist() == [[2], [0]] and kinds == [["true"], ["predicted (no label)"]]
    t, _ = resolve_targets(logits, "class", class_index=2)
    assert t.tolist() == [[2], [2]]
    t, _ = resolve_targets(logits, "topk", top_k=2)
    assert t.tolist() == [[1, 2], [0, 2]]
    with pytest.raises(MethodError, match="out of range"):
        resolve_targets(logits, "class", class_index=7)
    with pytest.raises(MethodError, match="only 3 classes"):
        resolve_targets(logits, "topk", top_k=4)
    with pytest.raises(MethodError, match="expected 2 labels"):
        resolve_targets(logits, "true", labels=[1])


def test_resolve_targets_bounds_defaults_and_names():
    """The edges of every kind (found by mutation testing: each line here kills a mutant that survived)."""
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 1.0]])
    t, kinds = resolve_targets(logits, "topk")  # top_k defaults to 1
    assert t.tolist() == [[1], [0]] and kinds == [["top-1"], ["top-1"]]
    t, kinds = resolve_targets(logits, "topk", top_k=3)  # as many as the model has classes
    assert t.tolist() == [[1, 2, 0], [0, 2, 1]] and kinds == [["top-1", "top-2", "top-3"]] * 2
    tied = torch.zeros(1, 40)
    assert resolve_targets(tied, "topk", top_k=40)[0].tolist() == [list(range(40))]  # ties by class index
    for index in (0, 2):
        t, kinds = resolve_targets(logits, "class", class_index=index)
        assert t.tolist() == [[index], [index]] and t.dtype == torch.long and kinds == [["class"], ["class"]]
    with pytest.raises(MethodError, match="target class 3 is out of range for a model with 3 classes"):
        resolve_targets(logits, "class", class_index=3)
    with pytest.raises(MethodError, match="target class None"):
        resolve_targets(logits, "class")
    t, kinds = resolve_targets(logits, "true", labels=[0, 2])
    assert t.tolist() == [[0], [2]] and kinds == [["true"], ["true"]]
    t, kinds = resolve_targets(logits, "true", labels=[3, -1])  # outside the model's classes: the prediction
    assert t.tolist() == [[1], [0]] and kinds == [["predicted (no label)"]] * 2
    with pytest.raises(MethodError, match="unknown target kind 'best'"):
        resolve_targets(logits, "best")


def test_gradient_formula_lookup():
    from reportgen.methods.eigen import eigencam, eigengradcam

    a = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    g = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    plain = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))  # Grad-CAM by hand
    assert torch.allclose(gradient_formula("gradcam")(a, g), plain)  # no eigen-smoothing unless asked
    assert not torch.allclose(gradient_formula("gradcam", eigen_smooth=True)(a, g), plain)
    assert gradient_formula("eigencam") is eigencam and gradient_formula("eigengradcam") is eigengradcam
    from reportgen.methods import list_methods

    known = ", ".join(s.name for s in list_methods("cam", engine="gradient"))
    assert known.startswith("gradcam, gradcampp, xgradcam, hirescam, layercam, eigencam, eigengradcam")
    with pytest.raises(MethodError, match=rf"unknown gradient CAM method 'nope'; expected one of {known}$"):
        gradient_formula("nope")
    with pytest.raises(MethodError, match="unknown gradient CAM method 'scorecam'"):  # registered, other engine
        gradient_formula("scorecam")


def test_gradcampp_guards_only_zero_denominators_worked_out_by_hand():
    """alpha = 1 / (2 + sum_hw(A) G) where G != 0 and the denominator is not 0; 0 elsewhere.

    Channel 0: A = [-1, -1] (sum -2), G = [1, 1]: denominator 2 - 2 = 0, so alpha = 0 and weight 0.
    Channel 1: A = [1, 3] (sum 4), G = [1, 0.5]: alpha = [1/6, 1/4]; weight = 1/6 + 0.5/4 = 7/24.
    Map: relu(0 * A0 + 7/24 * A1) = [7/24, 7/8].
    """
    a = torch.tensor([[-1.0, -1.0], [1.0, 3.0]]).view(1, 2, 1, 2)
    g = torch.tensor([[1.0, 1.0], [1.0, 0.5]]).view(1, 2, 1, 2)
    got = gradient_formula("gradcampp")(a, g)
    assert torch.allclose(got, torch.tensor([[[7 / 24, 7 / 8]]]), rtol=1e-6), got


def test_xgradcam_divides_by_the_channel_sum_plus_epsilon():
    """A channel whose values sum to 0 gets weight sum(G A) / 1e-7: its sign is kept (A = [1, -1], G = [1, 0])."""
    a = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    g = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    got = gradient_formula("xgradcam")(a, g)
    assert torch.allclose(got, torch.tensor([[[1e7, 0.0]]]), rtol=1e-5), got


def test_eigencam_alone_runs_no_backward_pass(tiny_model):
    """need_gradients=False: G is zeros and the graph is never used; the maps equal those of a run with G."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with borrowed(tiny_model), capture(tiny_model, ["features.5"], grad=True) as caught:
        with torch.enable_grad():
            logits = tiny_model(x)
        targets = torch.tensor([[1, 2], [3, 4]])
        acts = {"features.5": caught["features.5"]}
        without = gradient_cams(logits, acts, targets, ["eigencam"], need_gradients=False)
        assert logits.grad_fn is not None
        with_g = gradient_cams(logits, acts, targets, ["eigencam"])
    got, want = without[("features.5", "eigencam")], with_g[("features.5", "eigencam")]
    assert got.shape == (2, 2, 8, 8) and float(got.max()) > 0
    assert torch.allclose(got, want)


def test_target_rows_must_match_batch(tiny_model):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(MethodError, match=r"expected one target row per image \(2\), got 3$"):
        _cams(tiny_model, x, ["features.5"], ["gradcam"], targets=torch.tensor([[1, 2], [3, 4], [5, 6]]))


@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_each_method(tiny_model, method):
    tiny_model.train()
    tiny_model.features[0].weight.requires_grad_(False)
    before = model_state(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    x_before = x.clone()
    _, maps = _cams(tiny_model, x, ["features.5"], [method])
    assert model_state(tiny_model) == before  # modes, requires_grad, .grad, hook counts
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())  # BN stats untouched
    assert torch.equal(x, x_before)
    cam = maps[("features.5", method)]
    assert torch.isfinite(cam).all() and (cam >= 0).all()


def test_hooks_removed_when_the_forward_fails(tiny_model):
    before = model_state(tiny_model)
    with pytest.raises(RuntimeError):
        with borrowed(tiny_model), capture(tiny_model, ["features.5"], grad=True):
            tiny_model(torch.randn(1, 5, 16, 16))  # wrong channel count
    assert model_state(tiny_model) == before


def test_every_summed_method_of_the_registry_is_tested_here():
    from reportgen.methods.registry import list_methods

    assert {s.name for s in list_methods("cam", engine="gradient") if s.output == "weighted"} >= set(METHODS)


def test_eigen_smooth_projects_the_weighted_activations(tiny_model):
    from reportgen.methods import get_method
    from reportgen.methods.eigen import eigencam

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with borrowed(tiny_model), capture(tiny_model, ["features.5"], grad=True) as caught:
        with torch.enable_grad():
            logits = tiny_model(x)
        targets, _ = resolve_targets(logits.detach(), "predicted")
        a = caught["features.5"]
        (g,) = torch.autograd.grad(logits.gather(1, targets).sum(), [a], retain_graph=True)
        maps = gradient_cams(logits, {"features.5": a}, targets, ["gradcam", "layercam"], eigen_smooth=True)
    for m in ["gradcam", "layercam"]:
        expected = eigencam(get_method(m).implementation()(a.detach(), g), g)
        assert torch.allclose(maps[("features.5", m)][:, 0], expected, atol=1e-6)


def test_aug_smooth_averages_six_augmented_passes(tmp_path, image_dir):
    import numpy as np
    from conftest import write_config

    from reportgen.compute import compute_entries
    from reportgen.config import load_config
    from reportgen.models import load_model
    from reportgen.plan import ComputeSpec
    from reportgen.results import PREDICTIONS, RunStats

    cams = {"methods": ["gradcam"], "layers": ["features.5"], "aug_smooth": True}
    cfg = load_config(write_config(tmp_path, image_dir, cams=cams))
    lm = load_model(cfg.model, "cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    counters, spec = RunStats(), ComputeSpec.from_config(cfg)
    key = spec.cam_key("gradcam", "features.5")
    out = compute_entries(spec, lm, x, {PREDICTIONS, key}, [None, None], counters)
    assert (counters.forward_passes, counters.backward_passes) == (6, 6)
    got = np.stack([e[0]["maps"][0] for e in out[key]])
    # reference: the plain maps of each augmentation, flipped back, averaged
    total = 0
    targets = torch.tensor([[int(e[0]["targets"][0])] for e in out[key]])
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (x.flip(-1) if flip else x) * factor
            with borrowed(lm.module), capture(lm.module, ["features.5"], grad=True) as caught:
                with torch.enable_grad():
                    logits = lm.module(xa)
                m = gradient_cams(logits, {"features.5": caught["features.5"]}, targets, ["gradcam"])
            m = m[("features.5", "gradcam")][:, 0]
            total = total + (m.flip(-1) if flip else m)
    np.testing.assert_allclose(got, (total / 6).numpy(), rtol=1e-5, atol=1e-7)
