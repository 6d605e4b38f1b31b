"""Tests for reportgen.report: the index and per-image pages (escaping, relative lazy images, links, strictness),
the standalone file, and the PDF printed from its print HTML (summary and full)."""

from __future__ import annotations

import copy
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from reportgen.errors import RenderError
from reportgen.report import render_html, render_pdf, render_print_html, render_standalone

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


def _parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    context = build_context(out_dir, n_images=4)
    for im in context["images"]:  # the raw maps' files, linked from each image's page
        (out_dir / im["maps_file"]).parent.mkdir(exist_ok=True)
        (out_dir / im["maps_file"]).write_bytes(b"")
    html_path = render_html(context, out_dir)
    return out_dir, context, html_path, _parse(html_path)


def test_render_html_writes_the_index_and_one_page_per_image(rendered):
    out_dir, context, html_path, _ = rendered
    assert html_path == out_dir / "report.html"
    assert html_path.is_file()
    assert not [p for p in out_dir.rglob("*") if p.name.endswith(".tmp")], "temp file left behind"
    pages = sorted(p.name for p in (out_dir / "images").iterdir())
    assert pages == sorted(f"{im['id']}.html" for im in context["images"])
    for page in [html_path, *(out_dir / "images").iterdir()]:
        text = page.read_text(encoding="utf-8")
        assert text.lstrip().lower().startswith("<!doctype html>")
        assert "<style>" in text and "@page" in text, "report.css must be inlined"
        assert "<link" not in text.lower()


def _pages(out_dir: Path) -> list[Path]:
    return [out_dir / "report.html", *sorted((out_dir / "images").glob("*.html"))]


def test_images_are_lazy_relative_and_exist(rendered):
    out_dir, context, _, parser = rendered
    # the index: the kernel galleries and one thumbnail per image, no per-image figure
    assert len(parser.imgs) == len(context["kernels"]) + len(context["images"])
    by_page = {p.stem: _parse(p) for p in (out_dir / "images").glob("*.html")}
    for im in context["images"]:
        expected = 1 + len(im["feature_maps"]) + sum(len(g["panels"]) for g in im["cams"])
        assert len(by_page[im["id"]].imgs) == expected, im["id"]
    for page in _pages(out_dir):
        for attrs in _parse(page).imgs:
            assert attrs.get("loading") == "lazy", attrs
            assert attrs.get("alt"), attrs
            assert int(attrs["width"]) > 0 and int(attrs["height"]) > 0, attrs
            src = attrs["src"] or ""
            assert not src.startswith("data:"), src
            parts = urlsplit(src)
            assert not parts.scheme and not parts.netloc and not src.startswith("/"), src
            assert (page.parent / unquote(parts.path)).is_file(), (page, src)


def test_every_link_of_every_page_resolves(rendered):
    """Every href/src of the index and the image pages names an existing file (relative to the page), and every
    #fragment an id of its target page."""
    out_dir = rendered[0]
    ids = {p.resolve(): _parse(p).ids for p in _pages(out_dir)}
    checked = 0
    for page in _pages(out_dir):
        for tag, _, url in _parse(page).urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, (page, url)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            assert target.is_file(), (page.name, tag, url)
            if parts.fragment:
                assert parts.fragment in ids[target], (page.name, url)
            checked += 1
    assert checked > 50


def test_image_pages_have_prev_next_and_a_short_sidebar(tmp_path):
    context = build_context(tmp_path, n_images=30)
    render_html(context, tmp_path)
    ids = [im["id"] for im in context["images"]]
    middle = _parse(tmp_path / "images" / f"{ids[15]}.html")
    hrefs = [url for tag, name, url in middle.urls if tag == "a" and name == "href"]
    assert f"{ids[14]}.html" in hrefs and f"{ids[16]}.html" in hrefs and "../report.html#predictions" in hrefs
    sidebar = [h for h in hrefs if h.endswith(".html") and not h.startswith("..")]
    assert len(set(sidebar)) == 13  # itself and 6 on each side, not all 30
    first = _parse(tmp_path / "images" / f"{ids[0]}.html")
    assert f"{ids[1]}.html" in [u for _, _, u in first.urls] and "Image 1 of 30" in " ".join(" ".join(first.text).split())


def test_sections_and_anchors(rendered):
    out_dir, context, _, parser = rendered
    for section in ("overview", "kernels", "predictions", "skipped", "alerts", "glance"):
        assert section in parser.ids
    hrefs = {url for tag, name, url in parser.urls if tag == "a" and name == "href"}
    for image in context["images"]:
        assert f"images/{image['id']}.html" in hrefs
        page = _parse(out_dir / "images" / f"{image['id']}.html")
        assert image["id"] in page.ids
        assert f"../{image['maps_file']}" in {u for _, _, u in page.urls}
    text = " ".join(parser.text)
    assert "Grad-CAM++" in text and "Selvaraju et al., ICCV 2017" in text
    assert "cannot identify image file" in text
    page_text = " ".join(_parse(out_dir / "images" / f"{context['images'][0]['id']}.html").text)
    assert "layer bn2 · target" in " ".join(page_text.split())


def test_values_are_escaped(rendered):
    out_dir, _, html_path, parser = rendered
    for page in _pages(out_dir):
        raw = page.read_text(encoding="utf-8")
        assert "<script>alert(1)</script>" not in raw
    raw = html_path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in raw
    assert "coffee &amp; cream.png" in raw
    assert parser.scripts == 1  # the triage table's own, inlined
    assert MALICIOUS_PATH in "".join(parser.text)


def test_the_index_table_is_complete_without_javascript(rendered):
    """Every image is a row of the table in the HTML itself (the script only sorts and filters), and the
    "misclassified" filter's rows are exactly the images whose top-1 differs from the label."""
    _, context, html_path, _ = rendered
    raw = html_path.read_text(encoding="utf-8")
    table = raw[raw.index('<table class="preds" id="triage">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr data-outcome=") == len(context["images"])
    wrong = [im for im in context["images"] if im["correct"] is False]
    assert table.count('data-outcome="wrong"') == len(wrong) > 0
    assert 'id="triage-controls" hidden' in raw  # shown by the script only


def test_group_and_metric_columns_appear_only_when_the_entries_carry_them(tmp_path):
    context = build_context(tmp_path, n_images=3)
    plain = render_html(context, tmp_path).read_text(encoding="utf-8")
    for n, im in enumerate(context["images"]):
        im["groups"] = {"site": ["north", "south"][n % 2]}
        im["metrics"] = {"deletion": 0.25 + n}
    raw = render_html(context, tmp_path).read_text(encoding="utf-8")
    start = raw.index('<table class="preds" id="triage">')
    head = raw[start:raw.index("</thead>", start)]
    assert ">site</th>" in head and ">deletion</th>" in head
    start = plain.index('<table class="preds" id="triage">')
    assert "site" not in plain[start:plain.index("</thead>", start)] and "deletion" not in plain
    assert raw.count('data-g1="north"') == 2 and raw.count('data-g1="south"') == 1
    assert '<option value="north">north</option>' in raw and 'data-v="2.25">2.25</td>' in raw


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


def test_failed_checks_come_first_in_red_and_nothing_without_them(tmp_path):
    context = build_context(tmp_path, n_images=2)
    context["checks"] = [{"condition": "accuracy < 0.9", "value": 0.5, "failed": True, "detail": "0.5 < 0.9"},
                         {"condition": "flips > 10", "value": 2, "failed": False, "detail": ""}]
    raw = render_html(context, tmp_path).read_text(encoding="utf-8")
    main = raw[raw.index("<main>"):]
    assert main.index('id="verdict"') < main.index('id="overview"')
    assert "accuracy &lt; 0.9" in main and "flips &gt; 10" not in main and "1 check failed" in main
    for checks in ([], None):
        if checks is None:
            context.pop("checks")
        else:
            context["checks"] = checks
        assert 'id="verdict"' not in render_html(context, tmp_path).read_text(encoding="utf-8")


def _print(context: dict, out_dir: Path, mode: str, chosen: list[str] = ()) -> Path:
    context = {**context, "pdf": {"mode": mode, "images": [{"id": i, "reason": "sample"} for i in chosen],
                                  "lists": ["sample"], "max_images": 25, "left_out": []}}
    return render_print_html(context, out_dir)


def _titles(items):
    for item in items:
        if isinstance(item, list):
            yield from _titles(item)
        else:
            yield item.title


@pytest.fixture(scope="module")
def printed_full(rendered, tmp_path_factory):
    out_dir, context, _, _ = rendered
    html = _print(context, out_dir, "full").replace(out_dir / "print-full.html")  # the summary's uses the name
    pdf_path = tmp_path_factory.mktemp("pdf") / "sub" / "report.pdf"
    render_pdf(html, pdf_path, timeout=300)
    return context, html, pdf_path


def test_render_pdf(printed_full):
    pypdf = pytest.importorskip("pypdf")
    context, html_path, pdf_path = printed_full
    assert pdf_path.read_bytes()[:5] == b"%PDF-"
    assert not [p for p in pdf_path.parent.iterdir() if p.name != "report.pdf"], "temp file left behind"
    reader = pypdf.PdfReader(str(pdf_path))
    assert len(reader.pages) >= 3
    names = list(_titles(reader.outline))
    assert "Overview" in names and "Kernel gallery" in names and "Appendix: every image" in names
    assert all(any(im["path"] in n for n in names) for im in context["images"])  # every image, bookmarked
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


def test_summary_pdf_shows_only_the_chosen_images(rendered, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    out_dir, context, _, _ = rendered
    chosen = context["images"][2]
    pdf_path = render_pdf(_print(context, out_dir, "summary", [chosen["id"]]), tmp_path / "summary.pdf", timeout=300)
    names = list(_titles(pypdf.PdfReader(str(pdf_path)).outline))
    shown = [im["path"] for im in context["images"] if any(im["path"] in n for n in names)]
    assert shown == [chosen["path"]]
    assert "Images in this summary" in names


def test_no_figure_is_split_across_pdf_pages(printed_full):
    """Every <figure> (kernel gallery, thumbnail, panels, CAM groups) lies on one page of the printed report.

    Reads WeasyPrint's layout (``page._page_box``, internal API): a figure split by a page break has boxes on two
    pages. Without the print CSS's ``break-inside: avoid`` one figure of this report is split.
    """
    weasyprint = pytest.importorskip("weasyprint")
    _, html_path, _ = printed_full
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


def test_standalone_is_one_file_with_every_figure_embedded(rendered, tmp_path, caplog):
    import logging

    out_dir, context, _, _ = rendered
    with caplog.at_level(logging.INFO, logger="reportgen.report"):
        path = render_standalone(context, out_dir, budget_mb=0.001)
    assert path.name == "report-standalone.html"
    assert any("about" in r.message and "MB" in r.message for r in caplog.records if r.levelno == logging.INFO)
    assert any("above report.self_contained_budget_mb" in r.message for r in caplog.records
               if r.levelno == logging.WARNING)
    page = _parse(path)
    path.unlink()
    assert page.imgs and all((a["src"] or "").startswith("data:image/") for a in page.imgs)
    for tag, name, url in page.urls:
        if tag != "img":
            assert url.startswith("#") and url[1:] in page.ids, (tag, name, url)
    for im in context["images"]:
        assert im["id"] in page.ids


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


# ---------------------------------------------------------------------------------------------------------------
# A real run of the tiny CNN: the overview against a hand count, the summary PDF, links, paths of this machine.
# ---------------------------------------------------------------------------------------------------------------

LABELS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]  # the tiny CNN's 10 classes, named like the folders


def _real_config(tmp: Path, **report):
    from conftest import make_images, write_config

    from reportgen.config import load_config

    data = tmp / "photos"
    make_images(tmp / "raw", 8)
    for n, path in enumerate(sorted((tmp / "raw").rglob("*.png"))):  # folders a, b and c: labels the model knows
        target = data / LABELS[n % 3] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    cfg = write_config(tmp, data, model={"source": "factory", "name": "tinynets:tiny_cnn",
                                         "labels": str(tmp / "labels.txt"), "preprocess": {"size": 32}},
                       cams={"methods": ["gradcam", "xgradcam", "layercam"], "layers": ["features.5"]},
                       kernels={"layers": ["features.0"], "max_kernels": 8},
                       report={"image_size": 64, "pdf": "summary", "pdf_images": ["misclassified", "sample"],
                               "pdf_max_images": 3, "self_contained": True, **report})
    return load_config(cfg), data


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from reportgen.runner import run

    cfg, data = _real_config(tmp_path_factory.mktemp("real"))
    run(cfg)
    out = cfg.run.output
    return out, data, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_overview_of_a_run_matches_a_hand_count(real_run):
    _, _, manifest = real_run
    images = manifest["images"]
    right = [e for e in images if e["predictions"][0]["class_name"] == e["label"]]
    ov = manifest["overview"]
    assert (ov["judged"], ov["correct"], ov["mistakes"]) == (8, len(right), 8 - len(right))
    for row in ov["per_class"]:
        of = [e for e in images if e["label"] == row["name"]]
        assert (row["total"], row["correct"]) == (len(of), sum(e in right for e in of))
    assert sum(map(sum, ov["confusion"]["cells"])) == 8
    assert any(a["kind"] == "skipped" for a in ov["alerts"])


def test_summary_pdf_holds_the_chosen_images_one_page_each(real_run):
    pypdf = pytest.importorskip("pypdf")
    out, _, manifest = real_run
    chosen = manifest["pdf"]["images"]
    assert len(chosen) == 3 and not (out / ".report-print.html").exists()
    wrong = {e["id"] for e in manifest["images"] if e["correct"] is False}
    assert sum(c["reason"].startswith("misclassified") for c in chosen) == min(2, len(wrong))
    reader = pypdf.PdfReader(str(out / "report.pdf"))
    names = list(_titles(reader.outline))
    by_id = {e["id"]: e for e in manifest["images"]}
    shown = [e["path"] for e in manifest["images"] if any(n.endswith(" " + e["path"]) for n in names)]
    assert shown == [by_id[c["id"]]["path"] for c in chosen]
    texts = [page.extract_text() for page in reader.pages]
    for c in chosen:  # the running header names the image on every page its section reaches: one page each
        number = [e["id"] for e in manifest["images"]].index(c["id"]) + 1
        assert sum(f"{number}. {by_id[c['id']]['path']}" in t for t in texts) == 1


def _text_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and p.suffix in (".html", ".json", ".js", ".css", ".txt")]


def test_nothing_of_the_authors_machine_is_in_what_is_shared(real_run):
    pypdf = pytest.importorskip("pypdf")
    out, data, manifest = real_run
    secret = str(data.resolve())
    files = _text_files(out)
    assert len(files) >= 10
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.name == "manifest.json":
            assert manifest["provenance"]["data_root"] == secret
            text = json.dumps({k: v for k, v in manifest.items() if k != "provenance"})
        assert secret not in text, path
    assert manifest["dataset"]["root"] == "photos" and manifest["skipped"][0]["path"] == "broken.jpg"
    reader = pypdf.PdfReader(str(out / "report.pdf"))
    assert not [n for n, page in enumerate(reader.pages) if secret in page.extract_text()]
    assert secret.encode() not in (out / "report.pdf").read_bytes()


def test_redact_paths_leaves_the_data_folder_out_of_the_manifest(tmp_path):
    from reportgen.runner import run

    cfg, data = _real_config(tmp_path, pdf=False, self_contained=False, redact_paths=True)
    run(cfg)
    manifest = (cfg.run.output / "manifest.json").read_text(encoding="utf-8")
    assert str(data.resolve()) not in manifest and str(tmp_path) not in manifest
    assert json.loads(manifest)["provenance"]["redacted"] is True


def test_every_page_of_a_run_links_to_files_that_exist(real_run):
    out, _, manifest = real_run
    pages = [out / "report.html", *sorted((out / "images").glob("*.html"))]
    assert len(pages) == 1 + len(manifest["images"])
    ids = {p.resolve(): _parse(p).ids for p in pages}
    for page in pages:
        for tag, _, url in _parse(page).urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, (page.name, url)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            assert target.is_file() and out.resolve() in target.parents, (page.name, tag, url)
            if parts.fragment and target in ids:
                assert parts.fragment in ids[target], (page.name, url)
    standalone = _parse(out / "report-standalone.html")
    assert standalone.imgs and all((a["src"] or "").startswith("data:image/") for a in standalone.imgs)
    assert all(u.startswith(("#", "data:")) for _, _, u in standalone.urls)
