"""The report a reader gets (issue 12): the PDF of 300 images in full, and the index of 1,000 in a browser.

``report_pdf``: ``reportgen run`` (a child, as in ``bench.e2e``) on 300 small synthetic JPEGs in three class folders
with a tiny seeded CNN and the demo's methods, panels and image size (``configs/demo.yaml``: its report pages are
the ones issue 12 measured at 636 pages and 87 MB), ``report.pdf: full``; or ``true`` where the config does not
know ``full`` yet. Measures the PDF printing seconds (the run's ``stats.seconds.pdf``), the PDF's size and pages.

``report_index``: a run of 1,000 such images with a light config (the index holds no per-image figures: its size
and load time depend on the image count, not on the methods), PDF off; the index's size and its load time in
headless Chromium from ``file://`` with the network blocked (Playwright driving the system's ``chromium``; the
median of three loads after a warm-up). Targets (issue 12): PDF under 60 s and 40 MB; index under 5 MB and 2 s.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Bench, log
from bench.e2e import REPO, _pdf_facts, make_images, reportgen_run

__all__ = ["run_report", "index_load_times", "chromium"]

PDF_IMAGES, INDEX_IMAGES, QUICK_IMAGES = 300, 1000, (3, 6)  # --quick: a smoke test, light config
IMAGE_PX = 64
TARGETS = {"pdf_seconds": 60.0, "pdf_mb": 40.0, "index_mb": 5.0, "index_load_s": 2.0}
DEMO_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "ablationcam",
                "fullgrad", "saliency", "smoothgrad", "integrated_gradients"]


def _images(bench: Bench, n: int) -> Path:
    """``n`` JPEGs of ``IMAGE_PX`` px in class folders ``0_a``, ``1_b``, ``2_c`` (made once per bench run)."""
    root = bench.workdir / f"report-{n}" / "images"
    if not root.exists():
        flat = make_images(root.parent / "flat", n, IMAGE_PX)
        for i, path in enumerate(sorted(flat.iterdir())):
            folder = root / f"{i % 3}_{'abc'[i % 3]}"
            folder.mkdir(parents=True, exist_ok=True)
            path.rename(folder / path.name)
        flat.rmdir()
    return root


def _config(bench: Bench, name: str, images: Path, *, pdf: str | bool, full: bool) -> Path:
    """A config of the tiny CNN (``tests/tinynets.py``): the demo's sections (``full``) or a light one."""
    import yaml

    base = images.parent
    cfg: dict[str, Any] = {
        "title": f"bench: report of {images.parent.name}",
        "model": {"source": "factory", "name": "tinynets:tiny_cnn", "labels": "none",
                  "preprocess": {"size": IMAGE_PX}},
        "data": {"path": str(images)},
        "run": {"output": str(base / f"out-{name}"), "cache_dir": str(base / "cache"), "device": bench.settings.device,
                "batch_size": 50, "workers": bench.settings.workers},
    }
    if full:  # the demo's sections, layer for layer (two CAM layers, two feature-map layers, three kernel layers)
        cfg.update({
            "kernels": {"layers": ["features.0", "features.2", "features.5"], "max_kernels": 64},
            "feature_maps": {"layers": ["features.2", "features.5"], "top_k": 16},
            "cams": {"methods": DEMO_METHODS, "layers": ["features.5", "features.2"], "target": "predicted",
                     "params": {"smoothgrad": {"samples": 16}, "integrated_gradients": {"steps": 16}}},
            "report": {"pdf": pdf, "image_size": 384},
        })
    else:
        cfg.update({
            "kernels": {"layers": ["features.0"], "max_kernels": 16},
            "feature_maps": {"layers": ["features.5"], "top_k": 8},
            "cams": {"methods": ["gradcam", "saliency"], "layers": ["features.5"], "target": "predicted"},
            "report": {"pdf": pdf, "image_size": 128},
        })
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def chromium() -> str | None:
    """The system's Chromium (``$REPORTGEN_CHROMIUM`` or ``chromium`` on ``PATH``), as the browser tests find it."""
    env = os.environ.get("REPORTGEN_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def index_load_times(html: Path, executable: str, *, reps: int = 3) -> dict[str, Any]:
    """Load ``html`` from ``file://`` in headless Chromium, network blocked: one warm-up, then ``reps`` timed loads
    (each in a fresh context). Seconds until the load event, seen from Python, and the page's own navigation
    timing (``loadEventEnd``); requests that tried the network."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort("blockedbyclient")

    walls, navs = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            for i in range(reps + 1):
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                ctx.route("**/*", route)
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(html.resolve().as_uri(), wait_until="load", timeout=60_000)
                wall = time.perf_counter() - t0
                nav = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0]; "
                                    "return n ? n.loadEventEnd - n.startTime : null; }")
                ctx.close()
                if i:
                    walls.append(wall)
                    navs.append(nav)
            version = browser.version
        finally:
            browser.close()
    return {"load_s": statistics.median(walls), "load_s_runs": walls,
            "nav_ms": statistics.median(n for n in navs if n is not None) if any(n is not None for n in navs) else None,
            "browser": f"Chromium {version}", "blocked_requests": blocked}


def run_report(bench: Bench, wanted: list[str]) -> None:
    """The ``report_pdf`` and ``report_index`` lines (those in ``wanted``)."""
    tests = str(REPO / "tests")  # the children import the tiny CNN from tests/tinynets.py
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests, old] if old else [tests])
    try:
        if "report_pdf" in wanted:
            _run_pdf(bench)
        if "report_index" in wanted:
            _run_index(bench)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _run_pdf(bench: Bench) -> None:
    n = QUICK_IMAGES[0] if bench.settings.quick else PDF_IMAGES
    images = _images(bench, n)
    demo_like = not bench.settings.quick
    cfg, mode = _config(bench, "pdf", images, pdf="full", full=demo_like), "full"
    log(f"report_pdf: {n} images, report.pdf {mode}")
    try:
        res = reportgen_run(bench, cfg, "report-pdf", force=True)
    except Exception as exc:
        bench.emit("report_pdf", model="tiny_cnn", batch=50, error=str(exc))
        return
    st = res["stats"]
    facts = _pdf_facts(res["output"])
    pdf_s = st["seconds"].get("pdf")
    pages = facts.get("pdf_pages")
    bench.emit("report_pdf", model="tiny_cnn", batch=50, images=n, pdf_mode=mode, seconds=pdf_s, pdf_seconds=pdf_s,
               pdf_mb=facts["pdf_mb"], pdf_pages=pages, pages_per_image=pages / n if pages else None,
               html_seconds=st["seconds"].get("html"), run_duration_s=st["duration_s"], wall_s=res["wall_s"],
               peak_rss_mb=res["peak_rss_mb"], figures=facts["figures"], targets=TARGETS,
               within_targets={"pdf_seconds": pdf_s is not None and pdf_s < TARGETS["pdf_seconds"],
                               "pdf_mb": facts["pdf_mb"] is not None and facts["pdf_mb"] < TARGETS["pdf_mb"]},
               work=f"{n} {IMAGE_PX}x{IMAGE_PX} JPEGs, 3 classes, tiny CNN; " + (
                   "the demo's 12 methods at 2 layers, feature maps at 2 layers, kernels of 3 layers, image_size 384"
                   if demo_like else "quick: Grad-CAM and saliency at 1 layer, image_size 128"),
               timed="stats.seconds.pdf of the run (printing the PDF, after the HTML); size and pages of report.pdf")


def _run_index(bench: Bench) -> None:
    n = QUICK_IMAGES[1] if bench.settings.quick else INDEX_IMAGES
    images = _images(bench, n)
    cfg = _config(bench, "index", images, pdf=False, full=False)
    log(f"report_index: {n} images, PDF off")
    try:
        res = reportgen_run(bench, cfg, "report-index", force=True)
    except Exception as exc:
        bench.emit("report_index", model="tiny_cnn", batch=50, error=str(exc))
        return
    out = Path(res["output"])
    index = out / "report.html"
    html = list(out.rglob("*.html"))
    fields: dict[str, Any] = {
        "images": n, "index_bytes": index.stat().st_size, "index_mb": index.stat().st_size / 1e6,
        "html_files": len(html), "html_mb_total": sum(p.stat().st_size for p in html) / 1e6,
        "per_image_pages": (out / "images").is_dir(), "run_duration_s": res["stats"]["duration_s"],
        "targets": TARGETS,
    }
    exe = chromium()
    try:
        import playwright  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        bench.emit("report_index", model="tiny_cnn", batch=50, **fields,
                   skipped="no Chromium or no playwright package: `make browser-deps`, pip install -e '.[bench]'")
        return
    try:
        load = index_load_times(index, exe)
    except Exception as exc:
        bench.emit("report_index", model="tiny_cnn", batch=50, **fields, error=f"browser: {exc}")
        return
    fields["within_targets"] = {"index_mb": fields["index_mb"] < TARGETS["index_mb"],
                                "index_load_s": load["load_s"] < TARGETS["index_load_s"]}
    bench.emit("report_index", model="tiny_cnn", batch=50, seconds=load["load_s"], **load, **fields,
               timed="headless Chromium, file://, network blocked: seconds from goto to the load event (median of "
                     "3 after a warm-up, a fresh context each); nav_ms = the page's loadEventEnd")
