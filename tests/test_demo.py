"""The embedded demo: real pretrained weights, real photos, the full report (HTML + PDF), then a warm rerun."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.batches import to_tensor
from reportgen.cli import main
from reportgen.config import ModelConfig, PreprocessConfig, load_config
from reportgen.demo import DEMO_PHOTOS, write_demo_images
from reportgen.methods import get_method
from reportgen.models import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lite0():
    cfg = ModelConfig(source="factory", name="reportgen.zoo:efficientnet_lite0", labels="imagenet",
                      preprocess=PreprocessConfig(size=(224, 224), resize="squash", interpolation="bicubic",
                                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    return load_model(cfg, "cpu")


@pytest.mark.parametrize(("photo", "index", "name"), [("chelsea", 285, "Egyptian cat"), ("coffee", 967, "espresso")])
def test_pretrained_weights_are_really_loaded(lite0, photo, index, name):
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
    with torch.no_grad():
        probs = lite0.module(to_tensor(img, lite0.preprocess)[None]).softmax(1)[0]
    assert int(probs.argmax()) == index
    assert lite0.labels[index] == name
    assert float(probs[index]) > 0.5


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)


def test_demo_end_to_end_then_warm_rerun(tmp_path, capsys):
    from pypdf import PdfReader

    data = tmp_path / "demo-images"
    write_demo_images(data)
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--quiet", "--data", str(data),
            "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "images: 5 rendered, 1 skipped" in first
    out = tmp_path / "out"
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.imgs and all(img.get("loading") == "lazy" for img in page.imgs)
    assert all((out / img["src"]).is_file() for img in page.imgs)
    assert not any(img["src"].startswith(("data:", "http")) for img in page.imgs)
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = load_config(REPO / "configs" / "demo.yaml", data_dir=data)
    assert len(manifest["images"]) == len(DEMO_PHOTOS)
    assert [k["layer"] for k in manifest["kernels"]] == list(cfg.kernels.layers)
    for image in manifest["images"]:
        assert (out / "images" / f"{image['id']}.html").is_file()  # one page per image
        assert [f["layer"] for f in image["feature_maps"]] == list(cfg.feature_maps.layers)
        layered = [m for m in cfg.cams.methods if get_method(m).needs_layer]
        on_input = [m for m in cfg.cams.methods if not get_method(m).needs_layer]
        # one group per layer (a panel per method), then the input-level group (the map and an overlay each)
        assert [g["layer"] for g in image["cams"]] == [*cfg.cams.layers, ""]
        # identical maps (Grad-CAM = XGrad-CAM = HiResCAM before global pooling) are one panel naming them all
        shown = [sum(len(p.get("methods", [p["method"]])) for p in g["panels"]) for g in image["cams"][:-1]]
        assert shown == [len(layered)] * len(cfg.cams.layers)
        assert len(image["cams"][-1]["panels"]) == 2 * len(on_input)
        assert (out / image["maps_file"]).is_file()
    by_path = {i["path"]: i for i in manifest["images"]}
    assert by_path["Egyptian cat/chelsea.png"]["correct"] is True
    assert by_path["espresso/coffee.png"]["predictions"][0]["class_name"] == "espresso"
    assert manifest["skipped"][0]["path"] == "corrupt-example.jpg"
    reader = PdfReader(str(out / "report.pdf"))
    assert len(reader.pages) >= 5 and reader.outline

    # a CAM at the layer's own 7x7 resolution peaks on the cat, not in a corner
    from safetensors.numpy import load_file

    cam = load_file(str(out / by_path["Egyptian cat/chelsea.png"]["maps_file"]))["cam/gradcam/bn2"][0]
    assert cam.shape == (7, 7) and np.isfinite(cam).all() and cam.max() > 0

    assert main([*args, "--force"]) == 0
    second = capsys.readouterr().out
    assert "model work: 0 forward passes, 0 backward passes" in second
    assert " 0 misses, 0 written" in second


@pytest.fixture
def classic_tree(tmp_path):
    """configs/*.yaml copied with the folder layout they expect (../outputs/demo-images), one photo in it."""
    import shutil

    from conftest import make_images

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    make_images(tmp_path / "outputs" / "demo-images", n=1, labelled=False, size=(64, 48))
    # the audit scenario's layout (make audit-demo), untrained: validate checks names and files, not what was learned
    from safetensors.torch import save_file

    from reportgen.auditdemo import CLASSES, audit_net

    demo = tmp_path / "outputs" / "audit-demo"
    make_images(demo / "images", n=2, size=(64, 64))
    (demo / "metadata.csv").write_text("file,marked\n0_class0/img0.png,yes\n", encoding="utf-8")
    (demo / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    for name in ("clean", "shortcut"):
        save_file(audit_net().state_dict(), str(demo / f"{name}.safetensors"))
    (tmp_path / "outputs" / "audit-clean").mkdir()  # compare_to: the clean net's run
    return tmp_path


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_classic_config_validates(classic_tree, name, capsys):
    assert main(["validate", str(classic_tree / "configs" / f"{name}.yaml")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", ["vgg11_kernels", "alexnet_saliency"])
def test_classic_config_runs(classic_tree, name, capsys):
    """The classics as shipped (random weights, PDF off to stay fast): kernels, feature maps, saliency at class 24."""
    import yaml

    path = classic_tree / "configs" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["report"]["pdf"] = False
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["run", str(path), "--quiet"]) == 0, capsys.readouterr().err
    manifest = json.loads((classic_tree / "outputs" / name / "manifest.json").read_text())
    (image,) = manifest["images"]
    if name == "vgg11_kernels":
        assert [k["layer"] for k in manifest["kernels"]] == ["features.0", "features.3"]
        assert [k["total"] for k in manifest["kernels"]] == [64, 128 * 64]
    else:
        assert {(g["target_kind"], g["target_index"]) for g in image["cams"]} == {("class", 24)}
