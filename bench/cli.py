"""``python -m bench``: run the selected measurements, one JSON line each, then a ``summary`` line."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import ALIASES, CAM_GROUP, MEASUREMENTS
from bench.common import Bench, Settings, log

__all__ = ["main", "build_parser", "select"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="shrink everything (smoke test: under 2 minutes on 2 cores)")
    p.add_argument("--only", default="all", help=f"comma-separated: {', '.join(MEASUREMENTS)}; or {', '.join(ALIASES)}")
    p.add_argument("--out", type=Path, default=None, help="also append every line to this .jsonl file")
    p.add_argument("--model", default=None, help="torchvision architecture (default resnet18 on CPU, resnet50 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch of the in-process measurements (16 CPU / 64 CUDA)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds after warm-up (median reported)")
    p.add_argument("--score-images", type=int, default=None, help="images for ScoreCAM (2 CPU / 4 CUDA)")
    p.add_argument("--e2e-images", type=int, default=None, help="images of the e2e runs (200 CPU / 512 CUDA)")
    p.add_argument("--seed-images", type=int, default=None,
                   help="images of the seed recipe run, the first of the e2e set (default: all on CPU, 64 on CUDA)")
    p.add_argument("--memory-images", default=None, help="image counts of the memory runs (default 100,1000)")
    p.add_argument("--seed-script", type=Path, default=None, help="seed recipe script (default: bench/seed_pipeline.py)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (reports, logs)")
    return p


def select(only: str) -> list[str]:
    """Measurement names in run order from ``--only`` (names and aliases); ValueError on an unknown name."""
    chosen: set[str] = set()
    for part in (p.strip() for p in only.split(",")):
        if not part:
            continue
        if part in ALIASES:
            chosen.update(ALIASES[part])
        elif part in MEASUREMENTS:
            chosen.add(part)
        else:
            raise ValueError(f"unknown measurement {part!r}; expected one of {', '.join([*MEASUREMENTS, *ALIASES])}")
    return [m for m in MEASUREMENTS if m in chosen]


def _versions() -> dict[str, Any]:
    from importlib import metadata

    out = {}
    for dist in ("torch", "torchvision", "grad-cam", "torchcam", "captum", "reportgen", "weasyprint", "matplotlib",
                 "pillow", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _env(bench: Bench) -> dict[str, Any]:
    import torch

    s = bench.settings
    cuda = s.device.startswith("cuda")
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name() if cuda else None,
            "versions": _versions(), "settings": {k: v for k, v in vars(s).items()}}


def _get(bench: Bench, what: str, *path: str) -> Any:
    value: Any = bench.results.get(what)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ips_ratio(bench: Bench, a: str, b: str) -> float | None:
    x, y = _get(bench, a, "images_per_s"), _get(bench, b, "images_per_s")
    return x / y if x and y else None


def _best(bench: Bench, a: str, b: str) -> float | None:
    """a/b from each step's fastest round; ``floor`` is the faster of the two layouts' floors."""
    x = _get(bench, a, "images_per_s_best")
    floors = [v for v in (_get(bench, f, "images_per_s_best") for f in ("floor", "floor_cl")) if v]
    y = max(floors, default=None) if b == "floor" else _get(bench, b, "images_per_s_best")
    return x / y if x and y else None


def summary(bench: Bench, elapsed: float) -> dict[str, Any]:
    """The ratios the project's targets are about, from this run's lines (None where a measurement is missing)."""
    g = lambda *a: _get(bench, *a)  # noqa: E731
    mem_runs = g("memory", "runs") or []
    out = {
        "five_cams_vs_floor": g("ours_five_cams", "ratios", "vs_floor"),
        "gradcam_vs_floor": g("ours_gradcam", "ratios", "vs_floor"),
        "ours_gradcam_vs_torchcam": g("torchcam", "ratios", "ours_gradcam_vs_this"),
        "ours_gradcam_vs_pytorch_grad_cam": g("pytorch_grad_cam", "ratios", "ours_gradcam_vs_this"),
        "ours_gradcam_vs_captum": g("captum", "ratios", "ours_gradcam_vs_this"),
        "ours_gradcam_vs_torchcam_channels_last": g("torchcam_cl", "ratios", "ours_gradcam_vs_this"),
        "floor_channels_last_vs_contiguous": _ips_ratio(bench, "floor_cl", "floor"),
        "ours_five_cams_vs_pytorch_grad_cam": g("pytorch_grad_cam", "ratios", "ours_five_cams_vs_this"),
        "gradcam_pearson_vs": {"pytorch_grad_cam": g("pytorch_grad_cam", "pearson_vs_ours"),
                               "torchcam": g("torchcam", "pearson_vs_ours"), "captum": g("captum", "pearson_vs_ours")},
        "best_of_reps": {  # the same ratios from each step's fastest round: less sensitive to a busy machine
            "five_cams_vs_floor": _best(bench, "ours_five_cams", "floor"),
            "gradcam_vs_floor": _best(bench, "ours_gradcam", "floor"),
            "ours_gradcam_vs_torchcam": _best(bench, "ours_gradcam", "torchcam"),
            "ours_gradcam_vs_pytorch_grad_cam": _best(bench, "ours_gradcam", "pytorch_grad_cam"),
            "ours_gradcam_vs_captum": _best(bench, "ours_gradcam", "captum"),
        },
        "scorecam_ours_vs_peer": g("scorecam", "ratios", "ours_vs_peer"),
        "scorecam_ours_vs_peer_channels_last": g("scorecam", "ratios", "ours_vs_peer_channels_last"),
        "scorecam_pearson_vs_peer": g("scorecam", "pearson_vs_peer"),
        "scorecam_bf16_vs_peer": g("scorecam", "bf16", "bf16_vs_peer"),
        "scorecam_bf16_vs_fp32": g("scorecam", "bf16", "bf16_vs_fp32"),
        "scorecam_bf16_pearson_vs_fp32": g("scorecam", "bf16", "pearson_vs_ours_fp32"),
        "overlays_per_s": g("draw", "images_per_s"),
        "draw_ours_vs_matplotlib": g("draw", "ratios", "ours_vs_matplotlib"),
        "e2e_cold_images_per_s": g("e2e_cold", "images_per_s"),
        "e2e_run_vs_compute_only": g("e2e_cold", "ratios", "run_vs_compute_only"),
        "e2e_cold_shares": g("e2e_cold", "shares_of_run"),
        "e2e_vs_seed": g("seed", "ratios", "e2e_cold_vs_seed"),
        "e2e_vs_seed_own_clocks": g("seed", "ratios", "e2e_cold_vs_seed_own_clocks"),
        "e2e_warm_vs_seed": g("seed", "ratios", "e2e_warm_vs_seed"),
        "warm_over_cold_seconds": g("e2e_warm", "ratios", "warm_over_cold_seconds"),
        "rss_mb": {str(r["images"]): r["peak_rss_mb"] for r in mem_runs},
        "rss_ratio": next(iter((g("memory", "ratios") or {}).values()), None),
        "pdf_seconds": g("pdf", "pdf_seconds"),
        "pdf_mb": g("pdf", "pdf_mb"),
        "pdf_images": g("pdf", "images"),
        "pdf_pages": g("pdf", "pdf_pages"),
        "report_pdf_mode": g("report_pdf", "pdf_mode"),
        "report_pdf_seconds": g("report_pdf", "pdf_seconds"),
        "report_pdf_mb": g("report_pdf", "pdf_mb"),
        "report_pdf_pages": g("report_pdf", "pdf_pages"),
        "report_index_mb": g("report_index", "index_mb"),
        "report_index_load_s": g("report_index", "load_s"),
        "problems": bench.problems,
        "bench_seconds": elapsed,
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        wanted = select(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    s = Settings.for_device(device, args.quick)
    if args.model:
        s.model = args.model
    for field, value in (("batch", args.batch), ("reps", args.reps), ("score_images", args.score_images),
                         ("e2e_images", args.e2e_images), ("seed_images", args.seed_images)):
        if value is not None:
            setattr(s, field, value)
    if args.memory_images:
        s.memory_images = tuple(int(v) for v in args.memory_images.split(","))
    s.pdf_images = min(s.pdf_images, s.memory_images[0]) if s.quick else s.pdf_images
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reportgen-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(settings=s, out=args.out, workdir=workdir)
    t0 = time.perf_counter()
    log(f"{', '.join(wanted)} on {device} ({s.model}, batch {s.batch}{', quick' if s.quick else ''}); scratch {workdir}")
    bench.emit("env", **_env(bench))
    try:
        cams = [m for m in wanted if m in CAM_GROUP]
        if cams:
            from bench.cams import run_cams

            _guard(bench, "cams", lambda: run_cams(bench, cams), names=cams)
        if "scorecam" in wanted:
            from bench.scorecam import run_scorecam

            _guard(bench, "scorecam", lambda: run_scorecam(bench))
        if "metrics" in wanted:
            from bench.metrics import run_metrics

            _guard(bench, "metrics", lambda: run_metrics(bench))
        if "draw" in wanted:
            from bench.draw import run_draw

            _guard(bench, "draw", lambda: run_draw(bench))
        if device.startswith("cuda") and bench.shared:
            bench.shared.clear()
            torch.cuda.empty_cache()  # the report runs below are child processes on the same GPU
        from bench import e2e

        for name, fn in (("e2e", e2e.run_e2e), ("seed", lambda b: e2e.run_seed(b, args.seed_script)),
                         ("memory", e2e.run_memory), ("pdf", e2e.run_pdf)):
            if name in wanted:
                _guard(bench, name, lambda fn=fn: fn(bench))
        reports = [m for m in wanted if m in ("report_pdf", "report_index")]
        if reports:
            from bench.report import run_report

            _guard(bench, "report", lambda: run_report(bench, reports), names=reports)
        bench.emit("summary", **summary(bench, time.perf_counter() - t0))
    finally:
        if not args.keep and args.workdir is None:
            t1 = time.perf_counter()
            shutil.rmtree(workdir, ignore_errors=True)
            log(f"removed the scratch folder in {time.perf_counter() - t1:.1f}s")
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


def _guard(bench: Bench, name: str, fn, names: Sequence[str] = ()) -> None:
    """Run one measurement; an unexpected failure becomes an ``error`` line and the run goes on."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sys.stderr)
        for what in names or [name]:
            if what not in bench.results:
                bench.emit(what, error=f"{type(exc).__name__}: {exc}")
