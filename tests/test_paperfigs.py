"""Tests for reportgen.paperfigs: figures for papers (PNG at figures.dpi, vector PDF and SVG with real text, a
caption file), drawn from a run's own maps files, with stable names and checked config."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pypdf
import pytest
from conftest import make_images, write_config
from PIL import Image

import reportgen
from reportgen.config import load_config
from reportgen.errors import ConfigError
from reportgen.paperfigs import write_class_average, write_paper_figures

_SVG = "{http://www.w3.org/2000/svg}"
_DPI = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    tmp = tmp_path_factory.mktemp("paper")
    paths = make_images(tmp / "images", n=3, size=(48, 40))
    rels = [p.relative_to(tmp / "images").as_posix() for p in paths]
    cfg = write_config(tmp, tmp / "images", report={"pdf": False, "image_size": 64},
                       cams={"methods": ["gradcam", "layercam", "saliency"], "layers": ["features.6"]},
                       figures={"strips": [rels[1]], "grid": {"images": rels[:2], "methods": ["gradcam", "saliency"]},
                                "kernels": ["features.2"], "dpi": _DPI})
    out = reportgen.run(str(cfg)).output
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["strip"] = next(e for e in manifest["images"] if e["path"] == rels[1])  # the strip's image
    return out, manifest, cfg


def _stems(manifest: dict) -> list[str]:
    return [f"strip-{manifest['strip']['id']}", "grid", "kernels-features.2"]


def test_stable_names_in_every_format(run) -> None:
    out, manifest, _ = run
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in _stems(manifest) for ext in ("png", "pdf", "svg", "txt"))
    assert "figures" in json.loads((out / ".reportgen-run.json").read_text())["entries"]  # part of the run


def test_svg_text_is_text(run) -> None:
    out, manifest, _ = run
    for stem in _stems(manifest):
        root = ET.parse(out / "figures" / f"{stem}.svg").getroot()
        texts = ["".join(t.itertext()) for t in root.iter(f"{_SVG}text")]
        assert texts, stem
        if stem.startswith("strip"):
            assert {"Grad-CAM", "LayerCAM", "Saliency"} <= set(texts)
            assert manifest["strip"]["path"] in texts
        if stem == "kernels-features.2":
            assert "weight" in texts and any("/" in t for t in texts)  # the o/i tile labels
    assert not list(ET.parse(out / "figures" / "grid.svg").getroot().iter(f"{_SVG}path[@id='DejaVuSans-47']"))


def test_pdf_has_extractable_text_in_truetype_fonts(run) -> None:
    out, manifest, _ = run
    reader = pypdf.PdfReader(out / "figures" / f"{_stems(manifest)[0]}.pdf")
    page = reader.pages[0]
    text = page.extract_text()
    for word in ("Grad-CAM", "LayerCAM", "Saliency", manifest["strip"]["path"]):
        assert word in text
    fonts = [f.get_object() for f in page["/Resources"]["/Font"].values()]
    # pdf.fonttype 42: TrueType glyphs (a Type0 font over a CIDFontType2), not Type 3 bitmaps-as-procedures
    assert {f["/Subtype"] for f in fonts} == {"/Type0"}
    assert {d.get_object()["/Subtype"] for f in fonts for d in f["/DescendantFonts"]} == {"/CIDFontType2"}


def test_png_carries_the_dpi(run) -> None:
    out, manifest, _ = run
    for stem in _stems(manifest):
        with Image.open(out / "figures" / f"{stem}.png") as img:
            assert img.info["dpi"] == pytest.approx((_DPI, _DPI), abs=0.01)


def test_caption_says_what_is_shown(run) -> None:
    out, manifest, _ = run
    strip = (out / "figures" / f"{_stems(manifest)[0]}.txt").read_text(encoding="utf-8")
    assert strip.count("\n") == 1 and strip.endswith("\n")  # one paragraph
    entry = manifest["strip"]
    target = entry["cams"][0]
    for part in (entry["path"], "Grad-CAM at features.6", "LayerCAM at features.6", "Saliency at the input pixels",
                 f"target class {target['target_index']} {target['target_name']} ({target['target_kind']})",
                 "report.normalize: per_map", "min–max per map", "99th percentile", "tinynets:tiny_cnn"):
        assert part in strip, part
    kernels = (out / "figures" / "kernels-features.2.txt").read_text(encoding="utf-8")
    assert kernels.startswith("16 of the 128 kernels of layer features.2 with the largest L2 norm")
    assert "o/i is the kernel from input channel i to output channel o" in kernels


def test_same_bytes_when_drawn_again(run, tmp_path: Path) -> None:
    out, manifest, cfg_path = run
    cfg = load_config(cfg_path)
    cfg = replace(cfg, figures=replace(cfg.figures, strips=(), grid=replace(cfg.figures.grid, images=()), kernels=()))
    for folder in ("maps", "assets"):
        (tmp_path / folder).symlink_to(out / folder)
    strip = manifest["strip"]["path"]
    written = write_paper_figures(tmp_path, replace(cfg, figures=replace(cfg.figures, strips=(strip,))),
                                  manifest["images"])
    assert len(written) == 4
    for path in written:
        assert path.read_bytes() == (out / "figures" / path.name).read_bytes(), path.name


def test_an_image_not_in_the_run_is_named_with_its_line_and_close_matches(run) -> None:
    out, manifest, cfg_path = run
    text = Path(cfg_path).read_text(encoding="utf-8")
    wrong = manifest["images"][0]["path"].replace("img0", "imgO")
    bad = Path(cfg_path).with_name("bad.yaml")
    bad.write_text(text.replace("figures:\n  strips:\n", f"figures:\n  strips:\n  - {wrong}\n"), encoding="utf-8")
    line = bad.read_text(encoding="utf-8").splitlines().index(f"  - {wrong}") + 1
    with pytest.raises(ConfigError) as err:
        reportgen.run(str(bad))
    message = str(err.value)
    assert message.startswith(f"{bad}:{line}: figures.strips[0]: no image '{wrong}' in the run; close matches: ")
    assert f"'{manifest['images'][0]['path']}'" in message.partition("close matches: ")[2]
    assert "\n" not in message


def test_config_refuses_methods_layers_and_kernels_outside_the_run(tmp_path: Path) -> None:
    make_images(tmp_path / "images", n=1)
    cfg = write_config(tmp_path, tmp_path / "images", cams={"methods": ["gradcam"], "layers": ["features.6"]},
                       figures={"methods": ["layercam"], "layer": "features.4", "kernels": ["features.4"],
                                "grid": {"methods": ["gradcam", "scorecam"]}, "formats": ["png", "eps"]})
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    for part in ("figures.methods[0]: 'layercam' is not in cams.methods",
                 "figures.layer: 'features.4' is not in cams.layers",
                 "figures.kernels[0]: 'features.4' is not in kernels.layers",
                 "figures.grid.methods[1]: 'scorecam' is not in cams.methods",
                 "figures.formats[1]: unknown name 'eps'"):
        assert part in text, text


def test_class_average_from_an_array(run, tmp_path: Path) -> None:
    _, _, cfg_path = run
    cfg = load_config(cfg_path)
    avg = np.outer(np.arange(7.0), np.ones(7)) * 0.25
    photo = np.full((60, 60, 3), 200, np.uint8)
    written = write_class_average(tmp_path, cfg, "Egyptian cat", avg, photo, method="gradcam", layer="layer4",
                                  images=12)
    assert sorted(p.name for p in written) == [f"class-average-egyptian-cat.{e}" for e in ("pdf", "png", "svg", "txt")]
    texts = ["".join(t.itertext()) for t in ET.parse(tmp_path / "figures" / "class-average-egyptian-cat.svg")
             .getroot().iter(f"{_SVG}text")]
    assert " ".join(texts[:2]) == "Egyptian cat: mean gradcam"  # the title, on two lines
    assert texts[2:] == ["0", "0.5", "1", "1.5"]  # the bar's ticks: its ends 0 and 1.5, round values between
    pdf = pypdf.PdfReader(io.BytesIO((tmp_path / "figures" / "class-average-egyptian-cat.pdf").read_bytes()))
    assert "Egyptian cat" in pdf.pages[0].extract_text()
    assert "over the 12 images of class Egyptian cat" in (tmp_path / "figures" / "class-average-egyptian-cat.txt"
                                                           ).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="expected a class-average map of shape"):
        write_class_average(tmp_path, cfg, "x", np.zeros(3), None, method="gradcam", layer="l", images=1)
