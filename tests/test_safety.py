"""Hostile or careless input: duplicate YAML keys, YAML's boolean trap, a report pointing outside its folder."""

from __future__ import annotations

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
