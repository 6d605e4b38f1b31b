"""What every measurement shares: the run's settings, the JSON line writer, timing and progress helpers."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Settings", "Bench", "median_time", "interleaved", "pearson", "ratio", "log"]

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress to stderr, with seconds since start."""
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Settings:
    """Sizes of one run. ``for_device`` gives the defaults; command-line options override single fields."""

    device: str
    quick: bool
    model: str
    batch: int
    size: int = 224
    reps: int = 5  # timed rounds after warm-up (median reported)
    warmup: int = 1
    score_images: int = 2
    score_batch: int = 32
    score_size: int = 224  # input side for ScoreCAM (quick: 64, so C forwards stay cheap)
    draw_overlays: int = 200
    draw_matplotlib: int = 20
    e2e_images: int = 200  # 200+: the warm-cache target is about runs of that size
    seed_images: int | None = None  # images of the seed recipe run (the first ones of the same folder); None: all
    e2e_image_px: int = 96
    e2e_batch: int = 16
    workers: int = 0
    seed_kernels: int = 8  # the seed script's --kernels (its default)
    memory_images: tuple[int, ...] = (100, 1000)
    memory_image_px: int = 64
    memory_size: int = 224  # preprocess size of the memory/pdf runs (CPU: 112, to keep 1,000 images affordable)
    pdf_images: int = 100

    @classmethod
    def for_device(cls, device: str, quick: bool) -> Settings:
        if device.startswith("cuda"):
            s = cls(device=device, quick=quick, model="resnet50", batch=64, reps=10, warmup=3, score_images=4,
                    score_batch=64, e2e_images=512, seed_images=64, e2e_batch=64, workers=4)
        else:
            s = cls(device=device, quick=quick, model="resnet18", batch=16, memory_size=112)
        if quick:  # a smoke test of every code path, not a measurement: small inputs, few reps
            s.batch, s.size = min(s.batch, 4), 112
            s.reps, s.warmup = 2, 1
            s.score_images, s.score_batch, s.score_size = 1, min(s.score_batch, 32), 64
            s.draw_overlays, s.draw_matplotlib = 30, 4
            s.e2e_images, s.seed_images, s.e2e_batch, s.seed_kernels = 2, None, 4, 1
            s.memory_images, s.memory_size = (3, 6), 64
            s.pdf_images = 3
        return s


@dataclass
class Bench:
    """One benchmark run: settings, where lines go, the results so far (for ratios), scratch space."""

    settings: Settings
    out: Path | None
    workdir: Path
    env: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)  # state handed between measurements (model, batch, dirs)

    def emit(self, what: str, *, model: str | None = None, batch: int | None = None, **fields: Any) -> dict[str, Any]:
        """Write one JSON line (stdout, and ``--out``) and remember it under ``what``."""
        s = self.settings
        rec: dict[str, Any] = {"what": what, "device": s.device, "model": model or s.model,
                               "batch": s.batch if batch is None else batch}
        for key, value in fields.items():
            rec[key] = _clean(value)
        rec["load1"] = round(os.getloadavg()[0], 2)
        line = json.dumps(rec)
        print(line, flush=True)
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if "error" in rec or "skipped" in rec:
            self.problems.append({"what": what, "why": str(rec.get("error") or rec.get("skipped"))[:300]})
        else:
            self.results[what] = rec
        return rec

    def ips(self, what: str) -> float | None:
        """images/s of an earlier measurement of this process, if it succeeded."""
        rec = self.results.get(what)
        return None if rec is None else rec.get("images_per_s")


def _clean(value: Any) -> Any:
    """Round floats for the JSON line; NaN/inf become None (JSON has neither)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, 6) if abs(value) < 1 else round(value, 4)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def median_time(fn: Callable[[], Any], *, reps: int, warmup: int, sync: Callable[[], None]) -> dict[str, Any]:
    """Median wall time of ``fn`` over ``reps`` calls after ``warmup`` calls (``sync`` after each)."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return _stats(times)


def _stats(times: list[float]) -> dict[str, Any]:
    med = statistics.median(times)
    return {"seconds": med, "reps": len(times), "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / med if med > 0 else None}


def interleaved(steps: dict[str, Callable[[], Any]], *, reps: int, warmup: int,
                sync: Callable[[], None]) -> tuple[dict[str, dict[str, Any]], dict[str, BaseException], dict[str, Any]]:
    """Time several steps round-robin (one call of each per round), so slow drift of the machine hits all alike.

    Returns (timing per step, the exception of each step that failed, the last output of each step). A step that
    raises is dropped from later rounds; the others go on.
    """
    failed: dict[str, BaseException] = {}
    last: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}

    def call(name: str, timed: bool) -> None:
        try:
            t0 = time.perf_counter()
            out = steps[name]()
            sync()
            dt = time.perf_counter() - t0
        except Exception as exc:  # one broken peer must not stop the others
            failed[name] = exc
            return
        last[name] = out
        if timed:
            times[name].append(dt)

    for _ in range(warmup):
        for name in steps:
            if name not in failed:
                call(name, False)
    for r in range(reps):
        for name in steps:
            if name not in failed:
                call(name, True)
        log(f"  round {r + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in steps if n not in failed))
    return {name: _stats(t) for name, t in times.items() if name not in failed and t}, failed, last


def pearson(a, b) -> float | None:
    """Mean over images of the Pearson correlation of two stacks of maps (N, ...) of equal shape."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"expected maps of equal shape, got {a.shape} and {b.shape}")
    rs = []
    for x, y in zip(a, b, strict=True):
        x = x - x.mean()
        y = y - y.mean()
        den = math.sqrt(float((x * x).sum() * (y * y).sum()))
        if den > 0:
            rs.append(float((x * y).sum()) / den)
    return float(np.mean(rs)) if rs else None
