"""Deep Feature Factorization: the NMF against scikit-learn and pytorch-grad-cam's ``dff``, repeatability, the
concept notes, the multi-colour overlay, and a real run drawing one concept overlay with its legend."""

from __future__ import annotations

import json
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import REPO, make_images, write_config
from PIL import Image
from safetensors import safe_open

from reportgen.cli import main
from reportgen.errors import MethodError, ModelError
from reportgen.figures import concept_colors, concept_overlay, with_legend
from reportgen.hooks import model_state
from reportgen.methods.dff import dff, nmf, random_init

sklearn_nmf = pytest.importorskip("sklearn.decomposition").NMF

LAYERS = {"resnet18": "layer3", "vgg11": "features.13"}  # (4, 256, 8, 8) and (4, 512, 16, 16) at 128 px


def _images(n: int = 4, size: int = 128) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _activations(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    held = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: held.update(a=o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return held["a"]


def _shifted(a: torch.Tensor) -> torch.Tensor:
    """(C, N*h*w) activations minus each channel's minimum: what DFF factorizes."""
    v = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
    return v - v.amin(dim=1, keepdim=True)


def _rel_error(v: np.ndarray, w: np.ndarray, h: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(np.linalg.norm(v - w.astype(np.float64) @ h.astype(np.float64)) / np.linalg.norm(v))


@pytest.mark.parametrize("arch", list(LAYERS))
def test_nmf_is_scikit_learns_multiplicative_update_from_the_same_start(arch, request):
    # measured: max |h - h_sklearn| / max h = 4.7e-6 (resnet18), 3.3e-6 (vgg11); sklearn runs in float64
    v = _shifted(_activations(request.getfixturevalue(arch), LAYERS[arch], _images()))
    w, h = nmf(v, 5, max_iter=200, seed=0)
    scale = float(v.max())
    w0, h0 = random_init(v / scale, 5, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Maximum number of iterations reached": tol=0 asks for all 200
        ref = sklearn_nmf(5, init="custom", solver="mu", max_iter=200, tol=0.0)
        w_ref = ref.fit_transform(v.double().numpy(), W=(w0 * scale).double().numpy(), H=h0.double().numpy())
    h_ref = ref.components_
    assert np.abs(h.numpy() - h_ref).max() / h_ref.max() < 1e-4
    assert np.abs(w.numpy() - w_ref).max() / w_ref.max() < 1e-4


@pytest.mark.parametrize("arch", list(LAYERS))
def test_reconstruction_is_as_good_as_the_peers_dff(arch, request):
    # pytorch-grad-cam's dff: scikit-learn's coordinate descent (init="random", random_state=0). Measured relative
    # Frobenius errors: resnet18 0.31370 (ours) vs 0.31218 (peer), vgg11 0.18273 vs 0.17940.
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as peer_dff

    model = request.getfixturevalue(arch)
    x = _images()
    a = _activations(model, LAYERS[arch], x)
    v = _shifted(a).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concepts, explanations = peer_dff(a.numpy().copy(), n_components=5)
    offset = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).amin(dim=1).numpy()
    peer_error = _rel_error(v, concepts - offset[:, None], explanations.transpose(1, 0, 2, 3).reshape(5, -1))
    maps, notes = dff(model, x, torch.zeros(4, 1, dtype=torch.long), layer=LAYERS[arch])
    w = np.asarray(json.loads(notes["dff_concepts"]), dtype=np.float64).T - offset[:, None]
    ours = _rel_error(v, w, maps.permute(1, 0, 2, 3).reshape(5, -1).numpy())
    assert ours <= peer_error * 1.03, (ours, peer_error)


def test_maps_notes_and_classifier_projection(resnet18):
    x = _images(3, 96)
    maps, notes = dff(resnet18, x, torch.zeros(3, 2, dtype=torch.long), layer="layer4", n_components=4)
    assert maps.shape == (3, 4, 3, 3) and maps.dtype == torch.float32 and (maps >= 0).all()
    assert torch.allclose(maps.amax(dim=(0, 2, 3)), torch.ones(4))  # each concept peaks at 1 over the batch
    concepts = torch.tensor(json.loads(notes["dff_concepts"]), dtype=torch.float32)
    assert concepts.shape == (4, 512)
    with torch.no_grad():
        probs = torch.softmax(resnet18.fc(concepts), dim=1)  # the peer's computation_on_concepts=model.fc
    top = json.loads(notes["dff_top_classes"])
    assert [[c for c, _ in row] for row in top] == torch.topk(probs, 3, dim=1).indices.tolist()
    assert np.allclose([[p for _, p in row] for row in top], torch.topk(probs, 3, dim=1).values, atol=1e-4)
    # concepts come largest share first
    a = _activations(resnet18, "layer4", x)
    w = concepts.T - a.permute(1, 0, 2, 3).reshape(512, -1).amin(dim=1)[:, None]
    share = w.sum(dim=0) * maps.sum(dim=(0, 2, 3))
    assert torch.all(share[:-1] >= share[1:])
    _, mid = dff(resnet18, x, torch.zeros(3, 1, dtype=torch.long), layer="layer3", n_components=2)
    assert mid["dff_top_classes"] == "[]"  # layer3 has 256 channels; fc takes 512


def test_repeatable_seeded_and_dependent_on_the_batch(vgg11):
    x, t = _images(4, 64), torch.zeros(4, 1, dtype=torch.long)
    before = model_state(vgg11)
    x_before = x.clone()
    first, notes = dff(vgg11, x, t, layer="features.8", max_iter=50)
    again, notes_again = dff(vgg11, x, t, layer="features.8", max_iter=50)
    assert torch.equal(first, again) and notes == notes_again
    assert not torch.equal(first, dff(vgg11, x, t, layer="features.8", max_iter=50, seed=1)[0])
    chunked, _ = dff(vgg11, x, t, layer="features.8", max_iter=50, batch_size=3)  # forward chunks: memory only
    assert torch.allclose(chunked, first, atol=1e-4)
    alone, _ = dff(vgg11, x[:2], t[:2], layer="features.8", max_iter=50)  # another batch: other concepts
    assert not torch.allclose(alone, first[:2], atol=1e-2)
    assert model_state(vgg11) == before and torch.equal(x, x_before)


def test_errors(tiny_model):
    x, t = torch.rand(2, 3, 32, 32), torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(MethodError, match="n_components >= 1"):
        dff(tiny_model, x, t, layer="features.5", n_components=0)
    with pytest.raises(MethodError, match="batch_size >= 1"):
        dff(tiny_model, x, t, layer="features.5", batch_size=True)
    with pytest.raises(ModelError, match="features.5"):
        dff(tiny_model, x, t, layer="features.55")
    with pytest.raises(MethodError, match="targets of shape"):
        dff(tiny_model, x, t[:, 0], layer="features.5")


def test_nmf_of_zeros_is_zero():
    w, h = nmf(torch.zeros(6, 10), 3)
    assert w.shape == (6, 3) and h.shape == (3, 10) and not w.any() and not h.any()


def test_concept_overlay_colours_each_pixel_by_its_strongest_concept():
    photo = np.full((20, 40, 3), 200, dtype=np.uint8)
    maps = np.zeros((2, 2, 4), dtype=np.float32)
    maps[0, :, :2], maps[1, :, 2:] = 1.0, 0.5  # concept 0 on the left at full strength, concept 1 right at half
    colors = concept_colors(2)
    out = np.asarray(concept_overlay(photo, maps, colors, alpha=1.0))
    assert (out[:, :8] == colors[0]).all()
    assert (out[:, -8:] == np.rint(colors[1] * 0.5)).all()
    half = np.asarray(concept_overlay(photo, maps, colors, alpha=0.5, box=(0, 0, 20, 20)))
    assert (half[:, 30:] == (200 + 128) // 2).all()  # outside the box: dimmed, untinted
    legend = with_legend(Image.fromarray(out), colors, ["1: cat 0.50", "2: dog 0.25"])
    assert legend.width == 120 and legend.height > 20
    with pytest.raises(ValueError, match="colors of shape"):
        concept_overlay(photo, maps, colors[:1])


class _Legends(HTMLParser):
    def __init__(self):
        super().__init__()
        self.legends, self.images, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in = tag == "p" and a.get("class") == "concept-legend"
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_data(self, data):
        if self._in:
            self.legends.append(data)
            self._in = False


def test_a_run_draws_one_concept_overlay_per_image_with_its_legend(tmp_path):
    make_images(tmp_path / "images", n=5)
    path = write_config(tmp_path, tmp_path / "images", feature_maps={"layers": []},
                        cams={"methods": ["gradcam", "dff"], "layers": ["features.5"], "target": "topk", "top_k": 2,
                              "params": {"dff": {"n_components": 3}}})
    assert main(["run", str(path), "--quiet"]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    parser = _Legends()
    for page in sorted((out / "images").glob("*.html")):  # one page per image; its figures at ../assets/
        parser.feed(page.read_text(encoding="utf-8").replace('src="../', 'src="'))
    assert len(parser.legends) == 5  # one per image
    assert all(re.fullmatch(r"1: .+ \d\.\d\d · 2: .+ · 3: .+", text) for text in parser.legends), parser.legends
    for entry in manifest["images"]:
        groups = entry["cams"]
        assert [len(g["panels"]) for g in groups] == [2, 1]  # target 1: gradcam and dff; target 2: gradcam
        panel = groups[0]["panels"][1]
        assert panel["method"] == "dff" and panel["image"].endswith("/cam-dff-features.5-concepts.jpg")
        assert (out / panel["image"]).is_file() and panel["image"] in parser.images
        with safe_open(str(out / entry["maps_file"]), framework="numpy") as f:
            maps, targets = f.get_tensor("cam/dff/features.5"), f.get_tensor("cam/dff/features.5/targets")
            concepts = f.get_tensor("cam/dff/features.5/concepts")
            assert f.get_tensor("cam/gradcam/features.5").shape == (2, 16, 16)
        assert maps.shape == (3, 16, 16) and maps.dtype == np.float32 and targets.tolist() == [0, 1, 2]
        assert concepts.shape == (3, 16) and concepts.dtype == np.float32
    _check_format_doc(out, manifest)


def _check_format_doc(out, manifest) -> None:
    """docs/FORMAT.md's dff tables against the run: every key with its dtype and rank, and the figure's path."""
    rows = [[c.strip().strip("`") for c in line.strip("|").split("|")]
            for line in (REPO / "docs" / "FORMAT.md").read_text(encoding="utf-8").splitlines()
            if line.startswith(("| `cam/dff/", "| `assets/images/<id>/cam-dff-"))]
    keys = {r[0].replace("<layer>", "features.5"): r for r in rows if r[0].startswith("cam/")}
    assert len(keys) == 3 and len(rows) == 4
    for entry in manifest["images"]:
        with safe_open(str(out / entry["maps_file"]), framework="numpy") as f:
            assert {k for k in f.keys() if k.startswith("cam/dff/")} == set(keys)
            for key, (_, dtype, shape, _) in keys.items():
                assert f.get_slice(key).get_dtype() == {"float32": "F32", "int64": "I64"}[dtype]
                assert len(f.get_slice(key).get_shape()) == len([s for s in shape.strip("()").split(",") if s]), key
        path = rows[-1][0].replace("<id>", entry["id"]).replace("<layer>", "features.5")
        assert (out / path).is_file(), path
