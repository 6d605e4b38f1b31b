"""Tests for reportgen.report: HTML rendering (escaping, relative lazy images, anchors, strictness) and PDF printing."""

from __future__ import annotations

import copy
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from reportgen.errors import RenderError
from reportgen.report import render_html, render_pdf

MALICIOUS_PATH = "<script>alert(1)</script>.png"


# ---------------------------------------------------------------------------------------------------------------
# A fake context whose every asset exists on disk (tiny JPEGs by default; realistic sizes with scale=1).
# ---------------------------------------------------------------------------------------------------------------


def _jpeg(out_dir: Path, rel: str, width: int, height: int, seed: int = 0) -> str:
    """Write a gradient JPEG of width x height at out_dir/rel and return rel."""
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = max(1, width), max(1, height)
    grad_x = Image.linear_gradient("L").resize((w, h)).rotate(90 * (seed % 4), expand=False).resize((w, h))
    grad_y = Image.linear_gradient("L").resize((w, h))
    noise = Image.effect_noise((w, h), 40 + 10 * (seed % 3))
    Image.merge("RGB", (grad_x, grad_y, noise)).save(path, "JPEG", quality=70)
    return rel


def build_context(out_dir: Path, n_images: int = 3, *, scale: float = 0.1) -> dict:
    """A report context shaped like the real one, with its assets written under ``out_dir``.

    ``scale`` shrinks the JPEG files actually written (the width/height in the context stay realistic).
    """
    out_dir = Path(out_dir)

    def img(rel: str, w: int, h: int, seed: int = 0) -> str:
        return _jpeg(out_dir, rel, round(w * scale), round(h * scale), seed)

    classes = ["Egyptian cat", "tabby", "tiger cat", "lynx", "coffee mug", "astronaut", "rocket", "space shuttle"]
    samples = [
        ("egyptian-cat-chelsea-png", "Egyptian cat/chelsea.png", "Egyptian cat", 451, 300),
        ("unlabelled-astronaut-png", "astronaut.png", None, 512, 512),
        ("coffee-mug-coffee-png", "coffee mug/coffee & cream.png", "coffee mug", 600, 400),
        ("unlabelled-malicious", MALICIOUS_PATH, None, 300, 451),
        ("rocket-rocket-jpg", "rocket/rocket.jpg", "rocket", 427, 640),
        (
            "unlabelled-a-very-long-name",
            "some/deeply/nested/folder_with_a_really_long_name/image_0001_final_v2.png",
            None,
            640,
            480,
        ),
    ]
    methods = [
        {
            "name": "gradcam",
            "title": "Grad-CAM",
            "paper": "Selvaraju et al., ICCV 2017",
            "description": "Gradient-weighted class activation mapping: channel weights from spatially pooled gradients.",
        },
        {
            "name": "gradcampp",
            "title": "Grad-CAM++",
            "paper": "Chattopadhay et al., WACV 2018",
            "description": "Grad-CAM with higher-order gradient weights; better localization of several instances.",
        },
        {
            "name": "scorecam",
            "title": "Score-CAM",
            "paper": "Wang et al., CVPRW 2020",
            "description": "Gradient-free: weights each activation map by the score increase it causes when used as a mask.",
        },
    ]
    images = []
    for i in range(n_images):
        image_id, path, label, w, h = samples[i % len(samples)]
        if i >= len(samples):
            image_id, path = f"{image_id}-{i}", f"{i}/{path}"
        base = f"assets/images/{image_id}"
        preds = [
            {"rank": r + 1, "class_index": 281 + (i + r) % 8, "class_name": classes[(i + r) % len(classes)], "prob": p}
            for r, p in enumerate([0.7733, 0.1102, 0.0521, 0.0104, 0.00004])
        ]
        correct = None if label is None else preds[0]["class_name"] == label
        fms = [
            {
                "layer": layer,
                "image": img(f"{base}/fm-{layer}.jpg", 500, 520, i),
                "width": 500,
                "height": 520,
                "channels": chans,
                "shape": shape,
            }
            for layer, chans, shape in [
                ("blocks.2", [12, 3, 40], [40, 28, 28]),
                ("blocks.5", list(range(0, 64, 4)), [192, 7, 7]),
            ]
        ]
        cams = []
        for layer in ["bn2", "blocks.5"]:
            target = preds[0]
            cams.append(
                {
                    "layer": layer,
                    "target_index": target["class_index"],
                    "target_name": target["class_name"],
                    "target_kind": "predicted",
                    "panels": [
                        {
                            "method": m["name"],
                            "title": m["title"],
                            "image": img(f"{base}/cam-{layer}-{target['class_index']}-{m['name']}.jpg", 520, 300, i),
                            "width": 520,
                            "height": 300,
                        }
                        for m in methods
                    ],
                }
            )
        images.append(
            {
                "id": image_id,
                "path": path,
                "label": label,
                "width": w,
                "height": h,
                "thumb": img(f"{base}/thumb.jpg", min(w, 256), round(h * min(w, 256) / w), i),
                "correct": correct,
                "predictions": preds,
                "feature_maps": fms,
                "cams": cams,
                "maps_file": f"maps/{image_id}.safetensors",
            }
        )
    kernels = [
        {
            "layer": "conv_stem",
            "shape": [32, 3, 3, 3],
            "shown": 32,
            "total": 32,
            "rgb": True,
            "image": img("assets/kernels/conv_stem.jpg", 400, 300),
            "width": 400,
            "height": 300,
            "caption": "32 of 32 filters, ranked by L2 norm; RGB, scaled over the whole layer",
        },
        {
            "layer": "blocks.1.0.conv_pw",
            "shape": [24, 32, 1, 1],
            "shown": 24,
            "total": 24,
            "rgb": False,
            "image": img("assets/kernels/blocks.1.0.conv_pw.jpg", 600, 260, 1),
            "width": 600,
            "height": 260,
            "caption": "24 of 24 filters, ranked by L2 norm; input channel mean, scaled per filter",
        },
    ]
    n_ok = len(images)
    return {
        "title": "reportgen demo: EfficientNet-Lite0 on scikit-image photos",
        "generated_at": "2026-11-27T18:40:00+00:00",
        "reportgen_version": "0.1.0",
        "config_path": "configs/demo.yaml",
        "run": {
            "device": "cpu",
            "duration_s": 12.3,
            "images_total": n_ok + 1,
            "images_ok": n_ok,
            "images_skipped": 1,
            "batches": 2,
            "batch_size": 4,
            "cache_hits": 40,
            "cache_misses": 0,
            "forward_passes": 0,
            "backward_passes": 0,
        },
        "model": {
            "name": "tf_efficientnet_lite0",
            "source": "factory",
            "spec": "reportgen.zoo:efficientnet_lite0",
            "weights": "/path/efficientnet-lite0-57934424.pth",
            "weights_digest": "3f2a9c1d7b10",
            "input_size": [224, 224],
            "resize": "squash",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_parameters": 4652008,
            "num_classes": 1000,
        },
        "dataset": {
            "root": "outputs/demo-images",
            "classes": [
                {"name": "Egyptian cat", "count": 1},
                {"name": "coffee mug", "count": 1},
                {"name": "rocket", "count": 1},
            ],
            "unlabelled": 3,
        },
        "methods": methods,
        "skipped": [{"path": "broken.jpg", "reason": "cannot identify image file"}],
        "kernels": kernels,
        "images": images,
    }


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict[str, str | None]] = []
        self.urls: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "script":
            self.scripts += 1
        if "id" in a:
            self.ids.add(a["id"] or "")
        for name in ("src", "href", "srcset", "poster", "data"):
            if a.get(name) is not None:
                self.urls.append((tag, name, a[name] or ""))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    context = build_context(out_dir, n_images=4)
    html_path = render_html(context, out_dir)
    parser = _Collector()
    parser.feed(html_path.read_text(encoding="utf-8"))
    return out_dir, context, html_path, parser


def test_render_html_writes_report(rendered):
    out_dir, _, html_path, _ = rendered
    assert html_path == out_dir / "report.html"
    assert html_path.is_file()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")], "temp file left behind"
    text = html_path.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "<style>" in text and "@page" in text, "report.css must be inlined"
    assert "<link" not in text.lower()


def test_images_are_lazy_relative_and_exist(rendered):
    out_dir, context, _, parser = rendered
    expected = 2 + sum(
        2 + len(im["feature_maps"]) + sum(len(g["panels"]) for g in im["cams"]) for im in context["images"]
    )
    assert len(parser.imgs) == expected
    for attrs in parser.imgs:
        assert attrs.get("loading") == "lazy", attrs
        assert attrs.get("alt"), attrs
        assert int(attrs["width"]) > 0 and int(attrs["height"]) > 0, attrs
        src = attrs["src"] or ""
        assert not src.startswith("data:"), src
        parts = urlsplit(src)
        assert not parts.scheme and not parts.netloc and not src.startswith("/"), src
        assert (out_dir / unquote(parts.path)).is_file(), src


def test_no_network_urls(rendered):
    _, _, html_path, parser = rendered
    for tag, name, url in parser.urls:
        assert not url.lower().startswith(("http:", "https:", "//", "data:")), (tag, name, url)
    text = html_path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "url(" not in text


def test_sections_and_anchors(rendered):
    _, context, _, parser = rendered
    for section in ("overview", "kernels", "images", "predictions", "skipped"):
        assert section in parser.ids
    hrefs = {url for tag, name, url in parser.urls if tag == "a" and name == "href"}
    for image in context["images"]:
        assert image["id"] in parser.ids
        assert f"#{image['id']}" in hrefs
        assert image["maps_file"] in hrefs
    text = " ".join(parser.text)
    assert "layer bn2 · target" in " ".join(text.split())
    assert "Grad-CAM++" in text and "Selvaraju et al., ICCV 2017" in text
    assert "cannot identify image file" in text


def test_values_are_escaped(rendered):
    _, _, html_path, parser = rendered
    raw = html_path.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in raw
    assert "coffee &amp; cream.png" in raw
    assert parser.scripts == 0
    assert MALICIOUS_PATH in "".join(parser.text)


def test_missing_key_raises_render_error(tmp_path):
    context = build_context(tmp_path, n_images=1)
    broken = copy.deepcopy(context)
    del broken["images"][0]["predictions"]
    with pytest.raises(RenderError, match="predictions"):
        render_html(broken, tmp_path / "out")
    del context["run"]
    with pytest.raises(RenderError, match="run"):
        render_html(context, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_absolute_asset_path_is_refused(tmp_path):
    context = build_context(tmp_path, n_images=1)
    context["images"][0]["thumb"] = str((tmp_path / "x.jpg").resolve())
    with pytest.raises(RenderError, match="relative"):
        render_html(context, tmp_path)


def test_empty_lists_render(tmp_path):
    context = build_context(tmp_path, n_images=1)
    context.update(images=[], kernels=[], skipped=[], methods=[])
    html_path = render_html(context, tmp_path)
    assert "none" in html_path.read_text(encoding="utf-8")


def test_render_pdf(rendered, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    _, context, html_path, _ = rendered
    pdf_path = tmp_path / "sub" / "report.pdf"
    assert render_pdf(html_path, pdf_path, timeout=300) == pdf_path
    assert pdf_path.read_bytes()[:5] == b"%PDF-"
    assert not [p for p in pdf_path.parent.iterdir() if p.name != "report.pdf"], "temp file left behind"
    reader = pypdf.PdfReader(str(pdf_path))
    assert len(reader.pages) >= 3
    # overview (1+) + kernel gallery + one page per image
    assert len(reader.pages) >= 2 + len(context["images"])
    outline = reader.outline
    assert outline, "PDF has no bookmarks"

    def titles(items):
        for item in items:
            if isinstance(item, list):
                yield from titles(item)
            else:
                yield item.title

    names = list(titles(outline))
    assert "Overview" in names and "Kernel gallery" in names
    assert any("chelsea.png" in n for n in names)
    assert reader.metadata.title == context["title"]
    uris = [
        annot.get_object()["/A"].get_object().get("/URI")
        for page in reader.pages
        for annot in page.get("/Annots") or []
        if "/A" in annot.get_object()
    ]
    uris = [str(u) for u in uris if u is not None]
    assert uris, "asset links missing"
    assert not [u for u in uris if u.startswith(("file:", "/"))], "PDF links must not carry local absolute paths"
    total = len(reader.pages)
    for number, page in enumerate(reader.pages, start=1):  # the footer numbers every page: "page N of M"
        assert re.search(rf"\bpage {number} of {total}\b", page.extract_text()), f"page {number}: no page number"


def test_no_figure_is_split_across_pdf_pages(rendered):
    """Every <figure> (kernel gallery, thumbnail, panels, CAM groups) lies on one page of the printed report.

    Reads WeasyPrint's layout (``page._page_box``, internal API): a figure split by a page break has boxes on two
    pages. Without the print CSS's ``break-inside: avoid`` one figure of this report is split.
    """
    weasyprint = pytest.importorskip("weasyprint")
    _, _, html_path, _ = rendered
    document = weasyprint.HTML(filename=str(html_path), base_url=html_path.parent.as_uri() + "/",
                               media_type="print").render()
    pages_of: dict[int, set[int]] = {}

    def walk(box, number: int) -> None:
        element = getattr(box, "element", None)
        if element is not None and element.tag == "figure":
            pages_of.setdefault(id(element), set()).add(number)
        for child in getattr(box, "children", None) or []:
            walk(child, number)

    for number, page in enumerate(document.pages):
        walk(page._page_box, number)
    assert len(document.pages) >= 3 and len(pages_of) >= 20  # enough figures that some meet a page break
    split = [sorted(pages) for pages in pages_of.values() if len(pages) > 1]
    assert not split, f"{len(split)} figure(s) split across pages: {split}"


def test_render_pdf_missing_html(tmp_path):
    with pytest.raises(RenderError, match="does not exist"):
        render_pdf(tmp_path / "nope.html", tmp_path / "out.pdf")
    assert not (tmp_path / "out.pdf").exists()


def test_pdf_main_errors(tmp_path, capsys):
    from reportgen import pdf

    assert pdf.main([]) == 1
    assert pdf.main([str(tmp_path / "missing.html"), str(tmp_path / "out.pdf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("reportgen.pdf: error:") for line in err)


def test_pdf_main_prints_in_process_with_relative_links_and_confined_reads(tmp_path, capsys, monkeypatch):
    """The printer's own code, run in this process (the report's PDF runs it in a child, which mutation testing
    cannot see): a PDF with relative asset links, and a file outside the report folder refused, not read."""
    pypdf = pytest.importorskip("pypdf")
    from reportgen import pdf

    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(secret)
    report = tmp_path / "report"
    (report / "assets").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(report / "assets" / "a.png")
    html = report / "report.html"
    html.write_text(f'<html><head><title>t</title></head><body><p>hello</p><a href="assets/a.png">'
                    f'<img src="assets/a.png" alt="kept"></a><img src="{secret.as_uri()}" alt="refused"></body></html>',
                    encoding="utf-8")
    out = report / "out.pdf"
    assert pdf.main([str(html), str(out)]) == 0
    err = capsys.readouterr().err
    assert "refused to load" in err and str(secret) in err
    reader = pypdf.PdfReader(str(out))
    assert "hello" in reader.pages[0].extract_text()
    uris = [str(a.get_object()["/A"]["/URI"]) for a in reader.pages[0].get("/Annots") or []]
    assert uris and set(uris) == {"assets/a.png"}
    images = reader.pages[0].images
    assert len(images) == 1  # the report's own image; the outside file was not read
    monkeypatch.setattr(pdf, "die_with_parent", lambda: None)  # not on the test process itself
    monkeypatch.setattr(pdf.sys, "stdin", __import__("io").StringIO("cancel\n"))
    assert pdf.main(["--wait"]) == 3  # the parent cancelled: nothing printed
    monkeypatch.setattr(pdf.sys, "stdin", __import__("io").StringIO(f"go\t{report / 'none.html'}\t{out}\n"))
    assert pdf.main(["--wait"]) == 1 and "does not exist" in capsys.readouterr().err


def _fake_python(tmp_path: Path, body: str) -> str:
    fake = tmp_path / "fakepy"
    fake.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    fake.chmod(0o755)
    return str(fake)


def test_render_pdf_nonzero_exit(tmp_path, monkeypatch):
    """A child that fails gives RenderError with its stderr tail, and leaves an existing PDF alone."""
    html_path = tmp_path / "report.html"
    html_path.write_text("<p>x</p>", encoding="utf-8")
    pdf_path = tmp_path / "out.pdf"
    pdf_path.write_text("old", encoding="utf-8")
    fake = _fake_python(tmp_path, "echo 'line one' >&2\necho 'boom: printer exploded' >&2\nexit 3")
    monkeypatch.setattr(sys, "executable", fake)
    with pytest.raises(RenderError, match="(?s)status 3.*printer exploded"):
        render_pdf(html_path, pdf_path)
    assert pdf_path.read_text(encoding="utf-8") == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_render_pdf_timeout(tmp_path, monkeypatch):
    html_path = tmp_path / "report.html"
    html_path.write_text("<p>x</p>", encoding="utf-8")
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "exec sleep 30"))
    with pytest.raises(RenderError, match="timed out"):
        render_pdf(html_path, tmp_path / "out.pdf", timeout=0.5)
    assert not (tmp_path / "out.pdf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
