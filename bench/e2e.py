"""End to end: ``reportgen run`` in a child process on synthetic JPEGs, against the seed recipe on the same files.

Every run here is ``python -m reportgen run CONFIG --quiet`` started by this process; its wall time is measured
from outside, its own split of the time (compute / draw / html / pdf) is read from ``manifest.json`` → ``stats``,
and its peak resident memory from ``os.wait4`` (the largest single process of its tree, PDF printer included).
The config does at least the seed recipe's work per image: a kernel gallery of ``conv1`` and ``layer1.0.conv1``,
a feature-map panel of ``layer2`` (top 16 channels), the five gradient CAMs at ``layer4`` for the predicted class,
and the HTML report (PDF only where said).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Bench, log, ratio

__all__ = ["run_e2e", "run_seed", "run_memory", "run_pdf", "make_images"]

REPO = Path(__file__).resolve().parents[1]
SEED_SCRIPT = Path(__file__).resolve().with_name("seed_pipeline.py")  # verbatim copy of shared/anchors/seed_pipeline.py
FIVE = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
CHILD_TIMEOUT_S = 1800


def make_images(root: Path, n: int, px: int) -> Path:
    """``n`` distinct px x px RGB JPEGs: a colour gradient, a few blobs and noise, seeded by index."""
    root.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * np.cos(i) + yy * np.sin(i)) % 1.0
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-120, 120, 3)
        img += rng.normal(0, 10, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"img{i:05d}.jpg", quality=90)
    return root


def workspace(bench: Bench, n: int, px: int) -> dict[str, Path]:
    """Images and a cache folder for ``n`` images of ``px`` pixels, made once per bench run."""
    spaces = bench.shared.setdefault("workspaces", {})
    if (n, px) not in spaces:
        base = bench.workdir / f"ws-{n}x{px}"
        t0 = time.perf_counter()
        images = make_images(base / "images", n, px)
        log(f"wrote {n} {px}x{px} JPEGs in {time.perf_counter() - t0:.1f}s")
        spaces[(n, px)] = {"base": base, "images": images, "cache": base / "cache"}
    return spaces[(n, px)]


def write_config(bench: Bench, path: Path, images: Path, output: Path, cache: Path, *, pdf: bool,
                 size: int | None = None) -> Path:
    import yaml

    s = bench.settings
    cfg = {
        "title": f"bench: {s.model} on {images.name}",
        "model": {"source": "torchvision", "name": s.model, "labels": "imagenet", "preprocess": {"size": size or s.size}},
        "data": {"path": str(images)},
        "run": {"output": str(output), "cache_dir": str(cache), "device": s.device, "batch_size": s.e2e_batch,
                "workers": s.workers},
        "kernels": {"layers": ["conv1", "layer1.0.conv1"], "max_kernels": 64},
        "feature_maps": {"layers": ["layer2"], "top_k": 16},
        "cams": {"methods": FIVE, "layers": ["layer4"], "target": "predicted"},
        "report": {"pdf": pdf},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


# A small launcher runs each measured child: a process forked from this (large) one starts with this one's peak RSS
# as its own (Linux carries ``hiwater_rss`` across fork + exec), so ``ru_maxrss`` must come from a grandchild of a
# fresh, small interpreter. RUSAGE_CHILDREN there covers the measured command and everything it waited for.
_LAUNCHER = """
import json, resource, subprocess, sys, time
report, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
t0 = time.perf_counter()
timed_out = False
try:
    rc = subprocess.call(cmd, timeout=timeout)
except subprocess.TimeoutExpired:
    rc, timed_out = -9, True
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(report, "w") as fh:
    json.dump({"rc": rc, "wall_s": wall, "maxrss_kb": usage.ru_maxrss, "timed_out": timed_out}, fh)
"""


def run_child(cmd: list[str], log_path: Path, timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``cmd`` (stdout+stderr to ``log_path``); wall seconds, exit code, peak RSS of its process tree (MB)."""
    report = log_path.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    with log_path.open("wb") as out:
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), str(timeout), *cmd], stdout=out,
                       stderr=subprocess.STDOUT, cwd=REPO, check=False)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if not report.exists():
        raise RuntimeError(f"launcher failed: {text[-1500:]}")
    info = json.loads(report.read_text(encoding="utf-8"))
    return {"rc": info["rc"], "wall_s": info["wall_s"], "peak_rss_mb": info["maxrss_kb"] / 1024,
            "timed_out": info["timed_out"], "log": text}


def reportgen_run(bench: Bench, config: Path, tag: str, *, force: bool) -> dict[str, Any]:
    """One ``reportgen run`` child; raises with its log tail when it fails."""
    cmd = [sys.executable, "-m", "reportgen", "run", str(config), "--quiet"] + (["--force"] if force else [])
    res = run_child(cmd, bench.workdir / f"{tag}.log")
    if res["rc"] != 0:
        raise RuntimeError(f"reportgen run exited {res['rc']}{' (timeout)' if res['timed_out'] else ''}: "
                           + res["log"][-1500:])
    output = _output_of(config)
    manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    res["stats"] = manifest["stats"]
    res["output"] = str(output)
    return res


def _output_of(config: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(config.read_text(encoding="utf-8"))["run"]["output"])


def _shares(stats: dict[str, Any]) -> dict[str, float]:
    """Shares of the run's own time: compute, drawing (the time the run itself spent on it: all of it inline,
    waiting for the workers otherwise), html, pdf, and the rest (start-up, model build, decoding, cache reads)."""
    total = stats["duration_s"]
    secs = stats["seconds"]
    parts = {"compute": secs.get("compute", 0.0), "draw": secs.get("draw_wait", secs.get("draw", 0.0)),
             "html": secs.get("html", 0.0), "pdf": secs.get("pdf", 0.0)}
    shares = {k: v / total for k, v in parts.items()} if total > 0 else {}
    shares["other"] = 1 - sum(shares.values()) if shares else None
    return shares


def _run_fields(res: dict[str, Any], n: int) -> dict[str, Any]:
    st = res["stats"]
    compute = st["seconds"].get("compute", 0.0)
    return {
        "images": n, "seconds": res["wall_s"], "images_per_s": n / res["wall_s"],
        "run_duration_s": st["duration_s"], "run_images_per_s": n / st["duration_s"] if st["duration_s"] else None,
        "stage_seconds": st["seconds"], "shares_of_run": _shares(st),
        "compute_images_per_s": n / compute if compute > 0 else None,
        "peak_rss_mb": res["peak_rss_mb"],
        "forward_passes": st.get("forward_passes"), "backward_passes": st.get("backward_passes"),
        "cache_hits": st.get("cache_hits"), "cache_misses": st.get("cache_misses"), "run_device": st.get("device"),
        "draw_workers": st.get("draw_workers"), "draw_seconds_in_workers": st["seconds"].get("draw"),
    }


def _pdf_facts(output: str) -> dict[str, Any]:
    pdf = Path(output) / "report.pdf"
    facts: dict[str, Any] = {"pdf_mb": pdf.stat().st_size / 1e6 if pdf.exists() else None}
    facts["figures"] = sum(1 for _ in (Path(output) / "assets").rglob("*.jpg"))
    try:
        from pypdf import PdfReader

        facts["pdf_pages"] = len(PdfReader(str(pdf)).pages)
    except Exception:  # pypdf is a test extra; pages are a nicety
        pass
    return facts


def run_e2e(bench: Bench) -> None:
    """Cold cache, warm cache (``--force`` rerun), warm with the PDF: three lines."""
    s = bench.settings
    n = s.e2e_images
    ws = workspace(bench, n, s.e2e_image_px)
    base = ws["base"]
    if ws["cache"].exists():
        shutil.rmtree(ws["cache"])
    cfg = write_config(bench, base / "e2e.yaml", ws["images"], base / "out", ws["cache"], pdf=False)
    label = f"{n} images {s.e2e_image_px}x{s.e2e_image_px} -> {s.size}; kernels x2, feature maps layer2, 5 CAMs layer4"
    log(f"e2e: cold run, {n} images")
    try:
        cold = reportgen_run(bench, cfg, "e2e-cold", force=True)
    except Exception as exc:
        bench.emit("e2e_cold", batch=s.e2e_batch, error=str(exc))
        return
    fc = _run_fields(cold, n)
    st = cold["stats"]
    fc["ratios"] = {"run_vs_compute_only": ratio(st["seconds"]["compute"], st["duration_s"])}
    bench.emit("e2e_cold", batch=s.e2e_batch, work=label, pdf=False, workers=s.workers,
               timed="wall of `python -m reportgen run` (interpreter start, imports, model build included); "
                     "empty cache", **fc)
    log("e2e: warm run (--force)")
    try:
        warm = reportgen_run(bench, cfg, "e2e-warm", force=True)
        fw = _run_fields(warm, n)
        fw["ratios"] = {"warm_over_cold_seconds": ratio(warm["wall_s"], cold["wall_s"]),
                        "warm_over_cold_run_seconds": ratio(warm["stats"]["duration_s"], st["duration_s"])}
        bench.emit("e2e_warm", batch=s.e2e_batch, work=label, pdf=False, workers=s.workers,
                   timed="wall of the same run again with --force: every result from the cache", **fw)
    except Exception as exc:
        bench.emit("e2e_warm", batch=s.e2e_batch, error=str(exc))
    log("e2e: warm run with the PDF")
    try:
        cfg_pdf = write_config(bench, base / "e2e-pdf.yaml", ws["images"], base / "out-pdf", ws["cache"], pdf=True)
        wp = reportgen_run(bench, cfg_pdf, "e2e-pdf", force=True)
        fp = _run_fields(wp, n)
        fp.update(_pdf_facts(wp["output"]))
        fp["pdf_seconds"] = wp["stats"]["seconds"].get("pdf")
        bench.emit("e2e_warm_pdf", batch=s.e2e_batch, work=label, pdf=True, workers=s.workers,
                   timed="wall of the run from a warm cache with report.pdf: true", **fp)
    except Exception as exc:
        bench.emit("e2e_warm_pdf", batch=s.e2e_batch, error=str(exc))


def run_seed(bench: Bench, script: Path | None = None) -> None:
    """The seed recipe (one image at a time, matplotlib figures, pytorch-grad-cam) on the e2e images.

    ``seed_images`` (when smaller than ``e2e_images``) runs it on the first images of the same set only: it costs
    ~2 s per image, and works on each image alone, so its images/s does not depend on how many there are (but
    for its start-up, which then weighs more: that favours the seed).
    """
    s = bench.settings
    n = min(s.seed_images or s.e2e_images, s.e2e_images)
    ws = workspace(bench, n, s.e2e_image_px)  # the same generator: the first n images of the e2e set
    script = script or SEED_SCRIPT
    out = ws["base"] / "seed-out"
    cmd = [sys.executable, str(script), str(ws["images"]), str(out), "--arch", s.model, "--device", s.device,
           "--kernels", str(s.seed_kernels)]
    log(f"seed: {script.name} on {n} images (one at a time; slow by design)")
    res = run_child(cmd, bench.workdir / "seed.log")
    line = next((ln for ln in reversed(res["log"].splitlines()) if ln.startswith("{") and "seed_recipe" in ln), None)
    if res["rc"] != 0 or line is None:
        bench.emit("seed", batch=1, error=f"seed pipeline exited {res['rc']}: {res['log'][-1500:]}")
        return
    own = json.loads(line)
    ips = n / res["wall_s"]
    fields: dict[str, Any] = {
        "images": n, "e2e_images": s.e2e_images, "seconds": res["wall_s"], "images_per_s": ips,
        "seed_own_seconds": own["seconds"], "seed_own_images_per_s": own["images_per_s"],
        "seed_draw_share": own.get("draw_share"), "peak_rss_mb": res["peak_rss_mb"], "script": str(script),
        "seed_kernels": s.seed_kernels,
        "timed": "wall of the seed script as a child (interpreter start, imports, model build included); its own "
                 "clock starts after the model is built",
    }
    ratios: dict[str, float | None] = {}
    cold, warm = bench.results.get("e2e_cold"), bench.results.get("e2e_warm")
    if cold:
        ratios["e2e_cold_vs_seed"] = ratio(cold["images_per_s"], ips)
        ratios["e2e_cold_vs_seed_own_clocks"] = ratio(cold["run_images_per_s"], own["images_per_s"])
    if warm:
        ratios["e2e_warm_vs_seed"] = ratio(warm["images_per_s"], ips)
    if ratios:
        fields["ratios"] = ratios
    bench.emit("seed", batch=1, **fields)


def run_memory(bench: Bench) -> None:
    """Peak RSS of cold runs (PDF off) at each size of ``memory_images`` (64x64 JPEGs, own cache each)."""
    s = bench.settings
    runs = []
    for n in s.memory_images:
        ws = workspace(bench, n, s.memory_image_px)
        if ws["cache"].exists():
            shutil.rmtree(ws["cache"])
        cfg = write_config(bench, ws["base"] / "memory.yaml", ws["images"], ws["base"] / "out", ws["cache"], pdf=False,
                           size=s.memory_size)
        log(f"memory: cold run on {n} images")
        try:
            res = reportgen_run(bench, cfg, f"memory-{n}", force=True)
        except Exception as exc:
            bench.emit("memory", batch=s.e2e_batch, error=f"{n} images: {exc}")
            return
        st = res["stats"]
        runs.append({"images": n, "peak_rss_mb": res["peak_rss_mb"], "seconds": res["wall_s"],
                     "images_per_s": n / res["wall_s"], "run_duration_s": st["duration_s"],
                     "stage_seconds": st["seconds"]})
    first, last = runs[0], runs[-1]
    bench.emit("memory", batch=s.e2e_batch, seconds=last["seconds"], images_per_s=last["images_per_s"],
               peak_rss_mb=last["peak_rss_mb"], runs=runs, pdf=False, workers=s.workers,
               preprocess_size=s.memory_size,
               timed=f"cold `reportgen run` children, {s.memory_image_px}x{s.memory_image_px} JPEGs, PDF off; "
                     "peak RSS = ru_maxrss from os.wait4 (largest process of the tree)",
               ratios={f"rss_{last['images']}_over_{first['images']}": ratio(last["peak_rss_mb"], first["peak_rss_mb"]),
                       f"images_per_s_{last['images']}_over_{first['images']}":
                           ratio(last["images_per_s"], first["images_per_s"])})


def run_pdf(bench: Bench) -> None:
    """A report with every section for ``pdf_images`` images, PDF on (from the memory run's cache when warm)."""
    s = bench.settings
    n = s.pdf_images
    ws = workspace(bench, n, s.memory_image_px)
    warm = ws["cache"].exists()
    cfg = write_config(bench, ws["base"] / "pdf.yaml", ws["images"], ws["base"] / "out-pdf", ws["cache"], pdf=True,
                       size=s.memory_size)
    log(f"pdf: {n} images, {'warm' if warm else 'cold'} cache")
    try:
        res = reportgen_run(bench, cfg, "pdf", force=True)
    except Exception as exc:
        bench.emit("pdf", batch=s.e2e_batch, error=str(exc))
        return
    st = res["stats"]
    facts = _pdf_facts(res["output"])
    pdf_s = st["seconds"].get("pdf") or 0.0
    bench.emit("pdf", batch=s.e2e_batch, images=n, seconds=pdf_s,
               images_per_s=n / pdf_s if pdf_s > 0 else None, pdf_seconds=pdf_s, html_seconds=st["seconds"].get("html"),
               run_duration_s=st["duration_s"], wall_s=res["wall_s"], cache="warm" if warm else "cold",
               preprocess_size=s.memory_size,
               peak_rss_mb=res["peak_rss_mb"], **facts,
               timed="stats.seconds.pdf of the run (WeasyPrint child, after the HTML is written); size of report.pdf; "
                     "peak RSS of the whole run's process tree")
