"""Hostile or careless input: duplicate YAML keys, YAML's boolean trap, a report pointing outside its folder."""

from __future__ import annotations

import re
import textwrap

import pytest
from PIL import Image

from reportgen.config import load_config
from reportgen.errors import ConfigError
from reportgen.report import render_pdf

BASE = """\
model:
  source: factory
  name: tinynets:tiny_cnn
  labels: none
data:
  path: images
"""


def _problems(tmp_path, text):
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value.problems


def test_duplicate_keys_are_reported_not_silently_overwritten(tmp_path):
    path, problems = _problems(tmp_path, BASE + "run:\n  device: cpu\n  device: cuda\n")
    assert problems == [f"{path}:9: run.device: duplicate key (first given on line 8); give it once"]


def test_yaml_boolean_trap_gets_a_hint(tmp_path):
    path, problems = _problems(tmp_path, BASE.replace("labels: none", "labels: no"))
    assert problems == [
        f"{path}:4: model.labels: expected a string, got boolean False "
        "(YAML reads yes/no/on/off/true/false as booleans: put the text in quotes)"
    ]


def test_pdf_printer_reads_nothing_outside_the_report_folder(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(outside)
    report = tmp_path / "report"
    (report / "assets").mkdir(parents=True)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(report / "assets" / "ok.png")
    html = report / "report.html"
    html.write_text(
        '<html><body><p>x</p><img src="assets/ok.png" alt="inside">'
        f'<img src="../secret.png" alt="outside-relative"><img src="file://{outside}" alt="outside-absolute">'
        '<img src="http://127.0.0.1:9/x.png" alt="network"></body></html>', encoding="utf-8")
    pdf = render_pdf(html, report / "report.pdf")
    from pypdf import PdfReader

    page = PdfReader(str(pdf)).pages[0]
    images = list(page.images)
    assert len(images) == 1  # only the file inside the report folder was embedded
    assert images[0].image.convert("RGB").getpixel((5, 5)) == (0, 0, 255)


def test_layer_names_cannot_send_assets_outside_their_folder():
    from reportgen.drawing import _file_part

    assert _file_part("blocks.4.conv_pw") == "blocks.4.conv_pw"
    assert "/" not in _file_part("../../etc/evil") and not _file_part("../../etc/evil").startswith(".")
    assert _file_part("..") == "_"


def test_cache_entry_with_altered_bytes_is_recomputed(tmp_path):
    import numpy as np

    from reportgen.cache import TensorCache

    cache = TensorCache(tmp_path)
    cache.put("ab" + "0" * 62, {"maps": np.arange(64, dtype=np.float32)}, {"note": "x"})
    path = next(tmp_path.glob("ab/*.safetensors"))
    arrays, meta = cache.get("ab" + "0" * 62)
    assert meta == {"note": "x"} and arrays["maps"][5] == 5
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x40  # flip one bit inside the last float: the header still parses
    path.write_bytes(bytes(data))
    assert cache.get("ab" + "0" * 62) is None and not path.exists()


def test_mixed_folder_of_bad_and_good_images(tmp_path, capsys):
    import json
    import os

    import numpy as np
    from conftest import write_config

    from reportgen.cli import main

    root = tmp_path / "images"
    (root / "sub" / "empty").mkdir(parents=True)
    rng = np.random.default_rng(1)
    good = {
        "photo.jpg": Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)),
        "gray.png": Image.new("L", (20, 20), 128),
        "rgba.png": Image.new("RGBA", (20, 20), (0, 0, 255, 128)),
        "tiny.png": Image.new("RGB", (1, 1), (9, 9, 9)),
        "cmyk.jpg": Image.new("CMYK", (20, 20), (0, 50, 100, 0)),
        "sixteen.png": Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100),
        "<img src=x onerror=alert(1)> 'q' \"é\".png": Image.new("RGB", (12, 12), (1, 2, 3)),
    }
    for name, img in good.items():
        img.save(root / name)
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    data = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / ".hidden.png").write_bytes(data)
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    bomb = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(bomb)
    (root / "bomb.png").write_bytes(bomb.read_bytes())
    Image.MAX_IMAGE_PIXELS, before = 20_000, Image.MAX_IMAGE_PIXELS  # 300x300 > 2x the limit: a "bomb"
    try:
        path = write_config(tmp_path, root, cams={"methods": ["gradcam"], "layers": ["features.5"]})
        assert main(["run", str(path), "--quiet"]) == 0
    finally:
        Image.MAX_IMAGE_PIXELS = before
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(i["path"] for i in manifest["images"]) == sorted([*good, "anim.gif"])
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"zero.jpg", "text.jpg", "truncated.jpg", "dangling.png", "bomb.png"}
    assert skipped["dangling.png"] == "broken symbolic link"
    assert "decompression bomb" in skipped["bomb.png"].lower()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_no_readable_image_is_a_clear_error(tmp_path, capsys):
    from conftest import write_config

    from reportgen.cli import main

    root = tmp_path / "images"
    root.mkdir()
    path = write_config(tmp_path, root)
    assert main(["run", str(path), "--quiet"]) == 1
    assert "no image files found in" in capsys.readouterr().err
    (root / "bad.png").write_text("not a png")
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "none of the 1 image files" in err and "bad.png" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_output_folder_that_cannot_be_created_is_a_usage_error(tmp_path, image_dir, capsys):
    from conftest import write_config

    from reportgen.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path, image_dir, run={"output": str(blocker / "out"), "cache_dir": str(tmp_path / "c"),
                                                  "device": "cpu"})
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"config.yaml:\d+: run.output: cannot write to {re.escape(str(blocker / 'out'))}: "
                     rf"{re.escape(str(blocker))} is a file, not a folder", err), err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.safetensors"))
