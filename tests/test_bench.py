"""Smoke test of the benchmark (``python -m bench``): it runs and prints well-formed JSON lines. No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ONLY = ["floor", "ours_gradcam", "draw"]


def test_select_names_and_aliases(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.cli import select

    assert select("draw,floor") == ["floor", "draw"]  # run order, not command-line order
    assert select("peers") == ["pytorch_grad_cam", "torchcam", "torchcam_cl", "captum"]
    with pytest.raises(ValueError, match="unknown measurement"):
        select("nope")


def test_quick_bench_prints_json_lines(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # ~15 s on 2 idle cores; the timeout keeps a wedged run from hanging the suite
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--only", ",".join(ONLY),
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    by_what = {rec["what"]: rec for rec in lines}
    assert [rec["what"] for rec in lines] == ["env", *ONLY, "summary"]
    for name in ONLY:
        rec = by_what[name]
        assert "error" not in rec, rec
        assert rec["device"] == "cpu" and rec["model"] == "resnet18"
        assert rec["seconds"] > 0 and rec["images_per_s"] > 0
    assert by_what["ours_gradcam"]["ratios"]["vs_floor"] > 0
    assert by_what["draw"]["ratios"]["ours_vs_matplotlib"] > 0
    summary = by_what["summary"]
    assert summary["problems"] == []
    assert summary["gradcam_vs_floor"] == by_what["ours_gradcam"]["ratios"]["vs_floor"]
    # --out holds the same lines
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
