"""The report in a real browser (issue 12, item 7): headless Chromium opens it from ``file://`` with the network
blocked and checks what a reader would see: every image loads, no console or page error, every link resolves, the
triage table's "misclassified" filter shows exactly the manifest's misclassified images, and the index loads fast.

Three reports: the demo (the pretrained EfficientNet-Lite0 on the scikit-image photos, few methods, no PDF), 300
tiny images of a tiny CNN, and 1,000 of them for the index's load time. Screenshots and timings go to
``$REPORTGEN_TEST_ARTIFACTS/browser`` (default ``tests/.artifacts/browser``).

Without Chromium or Playwright the tests skip with the reason; under ``CI=true`` they fail instead (each one, with
the reason; the rest of the suite runs), since CI's ``make test`` installs Debian's chromium first (``make
browser-deps``) and the test extra installs Playwright: a skip there would hide that the report was never opened
in a browser.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import (
    Browser,
    find_chromium,
    link_problems,
    local_pages,
    misclassified_filter_check,
    static_refs,
    unavailable,
)
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("REPORTGEN_TEST_ARTIFACTS") or REPO / "tests" / ".artifacts") / "browser"
BROWSER_PAGES = 12  # per-image pages opened in the browser per report (all of them are checked statically)
INDEX_BUDGET_S = 2.0  # issue 12: the index of a 1,000-image run loads in under 2 s

# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the module; a skip saying why without one (a failure under ``CI=true``)."""
    why = unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, yet the browser tests cannot run: {why}", pytrace=False)
        pytest.skip(why)
    b = Browser(find_chromium())
    yield b
    b.close()


@pytest.fixture(scope="module")
def timings():
    """Load times of this module's runs, written to the artefacts folder at the end."""
    record: dict[str, dict] = {}
    yield record
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def tiny_run(root: Path, n: int, *, light: bool = False) -> Path:
    """A run of ``n`` 32-px images with the tiny CNN, no PDF. ``light``: Grad-CAM only (what the index shows does
    not depend on the figures of the image pages).

    Each image is noise around a random colour, which the tiny CNN calls class 1, 4 or (rarely) 3; each sits in
    a random one of the folders ``1_b``, ``3_d``, ``4_e``: every class has right and wrong images, so a filter
    by class or by prediction cannot pass for the "misclassified" one.
    """
    import reportgen

    rng = np.random.default_rng(n)
    data = root / "images"
    for i in range(n):
        folder = data / ["1_b", "3_d", "4_e"][rng.integers(3)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.uniform(0, 255, 3) + rng.normal(0, rng.uniform(5, 80), (32, 32, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{i:04d}.png")
    cfg = {
        "title": f"{n} tiny images in a browser",
        "model": {"source": "factory", "name": "tinynets:tiny_cnn", "labels": "none",
                  "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
        "data": {"path": str(data)},
        "run": {"output": str(root / "out"), "cache_dir": str(root / "cache"), "device": "cpu", "batch_size": 100},
        "kernels": {"layers": ["features.0"], "max_kernels": 8},
        "feature_maps": {"layers": ["features.4"], "top_k": 4},
        "cams": {"methods": ["gradcam", "saliency"], "layers": ["features.5"], "target": "predicted"},
        "report": {"pdf": False, "image_size": 64},
    }
    if light:
        cfg.update(kernels={"layers": []}, feature_maps={"layers": []},
                   cams={"methods": ["gradcam"], "layers": ["features.5"], "target": "predicted"})
    return reportgen.run(cfg, name=f"tiny{n}.yaml").output


@pytest.fixture(scope="module")
def tiny300(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("tiny300"), 300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo config on the demo photos with a few of its methods (the full set costs a minute) and no PDF."""
    import yaml

    import reportgen
    from reportgen.demo import write_demo_images

    root = tmp_path_factory.mktemp("demo")
    write_demo_images(root / "demo-images")
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["data"]["path"] = str(root / "demo-images")
    cfg["run"].update(output=str(root / "out"), cache_dir=str(root / "cache"), device="cpu")
    cfg["kernels"]["layers"] = cfg["kernels"]["layers"][:1]
    cfg["cams"].update(methods=["gradcam", "eigencam", "saliency"], layers=["bn2"], params={})
    cfg["report"]["pdf"] = False
    return reportgen.run(cfg, name="demo.yaml").output


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def misclassified(out: Path) -> set[str]:
    return {i["id"] for i in manifest_of(out)["images"] if i["correct"] is False}


# ------------------------------------------------------------------------------------------------- checks


def check_report(browser: Browser, out: Path, tag: str, timings: dict) -> None:
    """Open the index and a spread of the pages it links to; check every page of the report statically too."""
    index = out / "report.html"
    blocked_before = len(browser.blocked)
    first = browser.visit(index, screenshot=ARTIFACTS / f"{tag}-index.png")
    pages = [p for p in local_pages(first.links, out) if p != index.resolve()]
    chosen = pages if len(pages) <= BROWSER_PAGES else [pages[round(i * (len(pages) - 1) / (BROWSER_PAGES - 1))]
                                                         for i in range(BROWSER_PAGES)]
    visits = [first] + [browser.visit(p, screenshot=ARTIFACTS / f"{tag}-page{k}.png" if k < 2 else None)
                        for k, p in enumerate(chosen)]
    problems = []
    for v in visits:
        name = Path(v.url).name
        problems += [f"{name}: image did not load: {src}" for src in v.broken_images]
        problems += [f"{name}: console error: {e}" for e in v.console_errors]
        problems += [f"{name}: page error: {e}" for e in v.page_errors]
        problems += [f"{name}: request failed: {e}" for e in v.failed_requests]
        problems += [f"{name}: link: {p}" for p in link_problems(v.links, out)[0]]
    # every HTML page of the report, opened or not: its links and resources resolve inside the folder
    html = sorted(out.rglob("*.html"))
    for path in html:
        hrefs, srcs = static_refs(path)
        problems += [f"{path.relative_to(out)}: link: {p}" for p in link_problems(hrefs, out)[0]]
        bad, web = link_problems(srcs, out)
        problems += [f"{path.relative_to(out)}: resource: {p}" for p in bad]
        problems += [f"{path.relative_to(out)}: resource from the network: {p}" for p in web]
    blocked = browser.blocked[blocked_before:]
    timings[tag] = {"index_load_s": first.load_s, "index_nav_ms": first.nav_ms, "index_bytes": first.html_bytes,
                    "index_images": len(first.images),
                    "index_images_not_laid_out": sum(not i["rendered"] for i in first.images), "pages_linked": len(pages), "pages_opened": len(visits),
                    "html_files": len(html), "page_load_s_max": max(v.load_s for v in visits),
                    "browser": browser.version}
    print(f"{tag}: {timings[tag]}")
    assert not blocked, f"the report tried to reach the network: {blocked[:10]}"
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:25])
    assert first.images, "the index shows no image"


def check_filter(found: dict | None, out: Path, tag: str) -> None:
    if found is None:
        pytest.skip(f"{tag}: report.html has no triage table yet (rows linking to images/<id>.html)")
    ids = [i["id"] for i in manifest_of(out)["images"]]
    assert sorted(found["rows"]) == sorted(ids), "the triage table lists each image of the manifest once"
    assert found["control"], "a triage table without a 'misclassified' filter (select option, radio, checkbox, button)"
    shown = found["visible_after"]
    assert len(shown) == len(set(shown))
    assert set(shown) == misclassified(out), (
        f"the filter ({found['control']}) shows {len(shown)} rows; the manifest has {len(misclassified(out))} "
        f"misclassified images; extra {sorted(set(shown) - misclassified(out))[:5]}, "
        f"missing {sorted(misclassified(out) - set(shown))[:5]}")


# ------------------------------------------------------------------------------------------------- tests


def test_checks_catch_a_broken_page(browser, tmp_path):
    """The checks can fail: a page with a missing image, a dead link and anchor, a link out of the folder, a
    script error, a console error and a request to the network; and a filter that lets a wrong row through."""
    out = tmp_path / "report"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(out / "ok.png")
    (out / "images" / "a.html").write_text("<p id=top>a</p>", encoding="utf-8")
    (tmp_path / "outside.html").write_text("<p>x</p>", encoding="utf-8")
    (out / "report.html").write_text("""<!DOCTYPE html><html><head><meta charset=utf-8><title>t</title></head><body>
<img src="ok.png"><img src="missing.png"><img src="https://example.invalid/x.png">
<details><summary>more</summary><img src="ok.png?closed" loading="lazy"></details>
<a href="images/a.html#top">ok</a> <a href="images/a.html#nope">dead anchor</a> <a href="gone.html">dead</a>
<a href="../outside.html">outside</a> <a href="#here">dead in-page</a> <a href="https://arxiv.org/abs/1610.02391">paper</a>
<select id=f><option value=all>all</option><option value=wrong>misclassified</option></select>
<table><tr data-id=a><td>a</td></tr><tr data-id=b><td>b</td></tr><tr data-id=c><td>c</td></tr></table>
<script>
document.getElementById('f').addEventListener('change', e => {
  for (const tr of document.querySelectorAll('tr')) tr.hidden = e.target.value === 'wrong' && tr.dataset.id === 'c';
});
console.error('boom'); undefinedFunction();
</script></body></html>""", encoding="utf-8")
    v = browser.visit(out / "report.html", then=misclassified_filter_check)
    assert [Path(s).name for s in v.broken_images] == ["missing.png", "x.png"]
    assert [i["rendered"] for i in v.images] == [True, True, True, False]  # the closed <details> one is not laid out
    assert any("boom" in e for e in v.console_errors)
    assert any("undefinedFunction" in e for e in v.page_errors)
    assert "https://example.invalid/x.png" in browser.blocked
    problems, external = link_problems(v.links, out)
    assert external == ["https://arxiv.org/abs/1610.02391"]
    assert len(problems) == 4 and all(any(w in p for p in problems) for w in ("'nope'", "gone.html", "outside",
                                                                               "'here'"))
    assert v.extra["control"] == "select option 'misclassified'"
    assert v.extra["rows"] == ["a", "b", "c"] and v.extra["visible_after"] == ["a", "b"]
    manifest = {"images": [{"id": i, "correct": i != "a"} for i in "abc"]}  # only "a" is misclassified
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(AssertionError, match=r"shows 2 rows.*extra \['b'\]"):
        check_filter(v.extra, out, "broken")


def test_tiny_report_in_browser(browser, tiny300, timings):
    check_report(browser, tiny300, "tiny300", timings)


def test_demo_report_in_browser(browser, demo, timings):
    assert {i["path"] for i in manifest_of(demo)["images"]} >= {"Egyptian cat/chelsea.png", "espresso/coffee.png"}
    check_report(browser, demo, "demo", timings)


@pytest.mark.parametrize("report", ["tiny300", "demo"])
def test_misclassified_filter(browser, report, request):
    """The triage table's "misclassified" filter, used as a reader would, shows exactly the manifest's."""
    out = request.getfixturevalue(report)

    def filtered(page):
        found = misclassified_filter_check(page)
        page.evaluate("() => { const t = document.querySelector('table#triage') || document.querySelector('select');"
                      " if (t) { t.scrollIntoView(); window.scrollBy(0, -120); } }")
        page.screenshot(path=str(ARTIFACTS / f"{report}-misclassified.png"))
        return found

    visit = browser.visit(out / "report.html", load_images=False, then=filtered)
    if report == "tiny300":  # the run is one where the filter is tested: right and wrong images in every class
        images = manifest_of(out)["images"]
        assert all({i["correct"] for i in images if i["label"] == c} == {True, False} for c in ("1_b", "4_e"))
    check_filter(visit.extra, out, report)
    assert not visit.console_errors and not visit.page_errors


def test_triage_table_complete_without_javascript(browser, tiny300):
    """With scripting off, the index still lists every image of the manifest, each row visible."""
    from browser import triage_rows

    visit = browser.visit(tiny300 / "report.html", load_images=False, javascript=False, then=triage_rows)
    if not visit.extra:
        with_js = browser.visit(tiny300 / "report.html", load_images=False, then=triage_rows)
        assert not with_js.extra, "the triage table is built by JavaScript: without it the index lists no image"
        pytest.skip("report.html has no triage table yet (rows linking to images/<id>.html)")
    assert sorted(i for i, seen in visit.extra if seen) == sorted(i["id"] for i in manifest_of(tiny300)["images"])


def test_index_of_1000_images_loads_fast(browser, tmp_path_factory, timings):
    out = tiny_run(tmp_path_factory.mktemp("tiny1000"), 1000, light=True)
    index = out / "report.html"
    loads = [browser.visit(index, load_images=False) for _ in range(2)]  # the first pays for a cold file cache
    best = min(v.load_s for v in loads)
    timings["tiny1000"] = {"index_load_s": [v.load_s for v in loads], "index_nav_ms": [v.nav_ms for v in loads],
                           "index_bytes": index.stat().st_size, "browser": browser.version}
    print(f"tiny1000: {timings['tiny1000']}")
    assert not any(v.console_errors or v.page_errors for v in loads)
    if not (out / "images").is_dir() and best >= INDEX_BUDGET_S:
        pytest.xfail(f"single-page report (index + per-image pages not landed): index loads in {best:.2f} s")
    assert best < INDEX_BUDGET_S, f"the index of 1,000 images took {best:.2f} s to load (budget {INDEX_BUDGET_S} s)"
    shutil.rmtree(out.parent / "cache", ignore_errors=True)


def test_bench_report_lines(browser, tmp_path):
    """``python -m bench --only report --quick``: its figures are those of the files it leaves (pages by pypdf,
    bytes by stat), and its index loads with nothing blocked."""
    import subprocess
    import sys

    from pypdf import PdfReader

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--only", "report",
                           "--workdir", str(tmp_path), "--keep"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {rec["what"]: rec for rec in map(json.loads, proc.stdout.splitlines())}
    pdf, index, summary = lines["report_pdf"], lines["report_index"], lines["summary"]
    assert "error" not in pdf and "error" not in index, (pdf, index)
    (pdf_file,) = tmp_path.glob("report-*/out-pdf/report.pdf")
    assert pdf["pdf_pages"] == len(PdfReader(str(pdf_file)).pages) > 0
    assert pdf["pdf_mb"] == pytest.approx(pdf_file.stat().st_size / 1e6, rel=1e-3)
    assert pdf["pdf_mode"] == "full" and pdf["pdf_seconds"] > 0
    (index_file,) = tmp_path.glob("report-*/out-index/report.html")
    assert index["index_bytes"] == index_file.stat().st_size
    assert index["html_files"] == len(list(index_file.parent.rglob("*.html")))
    assert index["blocked_requests"] == [] and 0 < index["load_s"] < 30
    assert (summary["report_pdf_pages"], summary["report_index_load_s"]) == (pdf["pdf_pages"], index["load_s"])
