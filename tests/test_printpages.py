"""The printed report (report.pdf) with the demo's methods: one page per image, every figure on it, light files.

A run of the tiny CNN with ``configs/demo.yaml``'s sections (12 methods at 2 layers, feature maps at 2 layers,
kernels of 3 layers) over images of three shapes (landscape, portrait, square), ``report.pdf: full``. Also the
print view's parts on their own: the colour ramps' pixels against the colormap, the shared bar label and the
print-size copies.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.figures import colormap_lut, css_gradient
from reportgen.printview import PRINT_ASSETS, PRINT_PX, print_copies, print_image, ramp_pixels

DEMO_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "ablationcam",
                "fullgrad", "saliency", "smoothgrad", "integrated_gradients"]
SHAPES = [(96, 64), (64, 96), (72, 72), (96, 64)]  # width, height: a portrait photo makes the tallest panels


@pytest.fixture(scope="module")
def demo_like_run(tmp_path_factory):
    from conftest import write_config

    from reportgen.config import load_config
    from reportgen.runner import run

    tmp = tmp_path_factory.mktemp("printpages")
    rng = np.random.default_rng(7)
    for n, (w, h) in enumerate(SHAPES):
        folder = tmp / "photos" / f"{n % 2}_class{n % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{n}.png")
    cfg = write_config(tmp, tmp / "photos",
                       kernels={"layers": ["features.0", "features.2", "features.5"], "max_kernels": 64},
                       feature_maps={"layers": ["features.2", "features.5"], "top_k": 16},
                       cams={"methods": DEMO_METHODS, "layers": ["features.5", "features.2"], "target": "predicted",
                             "params": {"smoothgrad": {"samples": 4}, "integrated_gradients": {"steps": 4}}},
                       report={"pdf": "full", "image_size": 384})
    config = load_config(cfg)
    run(config)
    out = config.run.output
    import json

    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_each_image_of_the_demo_methods_takes_exactly_one_page(demo_like_run):
    pypdf = pytest.importorskip("pypdf")
    out, manifest = demo_like_run
    images = manifest["images"]
    assert len(images) == len(SHAPES)
    texts = [page.extract_text() for page in pypdf.PdfReader(str(out / "report.pdf")).pages]
    titles = [f"{n}. {e['path']}" for n, e in enumerate(images, start=1)]
    # the running header repeats an image's title on every page its section reaches: one page each
    on = [[p for p, t in enumerate(texts) if title in t] for title in titles]
    assert all(len(pages) == 1 for pages in on), on
    first = on[0][0]
    # and no two share a page (an image of these methods fills more than half a page): the appendix is N pages,
    # the last pages of the PDF, starting on the page after the appendix heading (or on it)
    assert [pages[0] for pages in on] == list(range(first, first + len(images)))
    assert first + len(images) == len(texts)
    heading = next(p for p, t in enumerate(texts) if "Appendix: every image" in t and "1." not in t.split("Appendix")[0])
    assert first - heading <= 1
    assert not (out / ".report-print.html").exists() and not (out / PRINT_ASSETS).exists()


def test_every_method_of_every_image_is_on_its_page(demo_like_run):
    pypdf = pytest.importorskip("pypdf")
    out, manifest = demo_like_run
    reader = pypdf.PdfReader(str(out / "report.pdf"))
    texts = [" ".join(page.extract_text().split()) for page in reader.pages]
    for n, e in enumerate(manifest["images"], start=1):
        text = next(t for t in texts if f"{n}. {e['path']}" in t)
        for group in e["cams"]:
            for p in group["panels"]:
                for title in p["title"].removesuffix(" overlay").split(" = "):  # identical maps: every name
                    assert title in text, (e["path"], p["title"])
                lo, hi = p["bar"]["ticks"][0]["text"], p["bar"]["ticks"][-1]["text"]
                assert lo in text and hi in text, (e["path"], p["title"], lo, hi)
        for fm in e["feature_maps"]:
            assert f"feature maps {fm['layer']}" in text
    # the panels' JPEGs (one per panel, the thumb, the feature maps) are all in the PDF, once each
    jpegs = sum(1 for page in reader.pages for name, x in (page["/Resources"].get("/XObject") or {}).items()
                if x.get_object().get("/Filter") == "/DCTDecode")
    per_image = sum(1 + len(e["feature_maps"]) + sum(len(g["panels"]) for g in e["cams"]) for e in manifest["images"])
    assert jpegs >= per_image


def test_ramp_pixels_follow_the_colormap():
    for cmap in ("jet", "inferno", "viridis"):
        row = ramp_pixels(css_gradient(cmap), width=257)[0]
        lut = colormap_lut(cmap).astype(int)
        for i in range(0, 257, 16):  # the stops: pixel i of 257 sits at i/256 + 1/514 of the ramp
            assert np.abs(row[i].astype(int) - lut[round(i * 255 / 256)]).max() <= 12, (cmap, i)
        assert np.abs(row[0].astype(int) - lut[0]).max() <= 2 and np.abs(row[-1].astype(int) - lut[255]).max() <= 2
    assert ramp_pixels("red") is None


def _entry(px: int) -> dict:
    def bar(title, lo, hi, extra=""):
        return {"gradient": css_gradient("jet"), "label": f"{title}, raw values; colours min–max per map{extra}",
                "ticks": [{"text": lo, "at": 0.0}, {"text": "0.5", "at": 50.0}, {"text": hi, "at": 100.0}]}

    panel = {"image": "assets/a.jpg", "width": px, "height": px}
    return {"id": "a", "thumb": "assets/a.jpg", "width": px, "height": px, "feature_maps": [], "cams": [
        {"layer": "l", "target_index": 0, "target_name": "cat", "target_kind": "predicted", "panels": [
            {**panel, "method": "gradcam", "title": "Grad-CAM", "scale": [0, 1], "bar": bar("Grad-CAM", "0", "1")},
            {**panel, "method": "layercam", "title": "LayerCAM", "scale": [0, 0],
             "bar": bar("LayerCAM", "0", "0", "; this map is constant: every value is 0")}]},
        {"layer": "", "target_index": 0, "target_name": "cat", "target_kind": "predicted", "panels": [
            {**panel, "method": "saliency", "title": "Saliency", "scale": [0, 2], "bar": bar("Saliency", "0", "2")},
            {**panel, "method": "saliency", "title": "Saliency overlay", "scale": [0, 2],
             "bar": bar("Saliency", "0", "2")}]}]}


def test_print_view_says_the_shared_label_once_and_keeps_each_panels_own(tmp_path: Path):
    view = print_image(_entry(64))
    layer, pixels = view["groups"]
    assert layer["bar_says"] == "raw values; colours min–max per map"
    assert [u["extra"] for u in layer["units"]] == ["", "this map is constant: every value is 0"]
    assert [u["ends"] for u in layer["units"]] == [("0", "1"), ("0", "0")]
    (unit,) = pixels["units"]  # the map and its overlay: one panel of two images over one scale
    assert len(unit["figures"]) == 2 and unit["ends"] == ("0", "2") and len(unit["gradients"]) == 2
    assert view["cols"] == 4


def test_a_panel_of_identical_maps_is_titled_by_the_first_and_names_the_others():
    entry = _entry(64)
    first = entry["cams"][0]["panels"][0]
    first.update(title="Grad-CAM = XGrad-CAM = HiResCAM", methods=["gradcam", "xgradcam", "hirescam"])
    first["bar"]["label"] = "Grad-CAM = XGrad-CAM = HiResCAM, raw values; colours min–max per map"
    unit = print_image(entry)["groups"][0]["units"][0]
    assert (unit["title"], unit["same"], unit["extra"]) == ("Grad-CAM", ["XGrad-CAM", "HiResCAM"], "")


def test_print_copies_shrink_only_what_prints_smaller(tmp_path: Path):
    (tmp_path / "assets").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(tmp_path / "assets" / "a.jpg",
                                                                              quality=88)
    big = print_copies(tmp_path, [_entry(384)])
    copy = Image.open(tmp_path / big["assets/a.jpg"])
    assert copy.width == max(PRINT_PX.values()) or copy.width in PRINT_PX.values()
    assert copy.width < 384 and (tmp_path / big["assets/a.jpg"]).stat().st_size < (tmp_path / "assets/a.jpg").stat().st_size
    assert all(re.fullmatch(rf"{PRINT_ASSETS}/.+", v) for v in big.values())
    small = print_copies(tmp_path, [_entry(64)])  # no larger than it prints: the original is used
    assert "assets/a.jpg" not in small and css_gradient("jet") in small
