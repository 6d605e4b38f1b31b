"""Crash safety: a real ``reportgen run`` killed with SIGKILL, runs sharing one cache, a disk that fills up.

Each test runs the CLI in a child process over six images (three batches of two) of the tiny CNN, with the PDF on.
``REPORTGEN_FAILPOINT`` (reportgen/failpoints.py) makes the child kill itself with SIGKILL at a chosen point:
no ``finally`` runs, exactly as with ``kill -9``. The rerun must finish, reuse every cache entry the killed run
had finished, and write the same report as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, exchange_supported, make_images, write_config
from safetensors.numpy import load_file

from reportgen.cache import TensorCache

N_IMAGES = 6
ENTRIES = 2 + N_IMAGES * 12  # 2 kernel galleries; per image: predictions, 1 feature-map layer, 5 CAMs x 2 layers
# lines of the HTML that differ between any two runs: the time, and how much work the run found cached
# the run's own facts: time, device, work done, and the reproducibility panel's config (its file) and cache rows
_RUN_FACTS = re.compile(r"dcterms\.created|Generated <time|<dt>(Device|Duration|Batches|Cache|Passes)</dt>"
                        r"|<tr><th>(config|cache|device)</th>")


@pytest.fixture
def workspace(tmp_path: Path):
    make_images(tmp_path / "images", N_IMAGES)
    return tmp_path


def _config(ws: Path, name: str, cache: str = "cache", draw_workers: int = 0) -> Path:
    path = write_config(ws, ws / "images", report={"pdf": True, "image_size": 96})
    cfg = yaml.safe_load(path.read_text())
    cfg["run"].update(output=str(ws / name), cache_dir=str(ws / cache), batch_size=2, draw_workers=draw_workers)
    out = ws / f"{name}.yaml"
    out.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return out


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("REPORTGEN_FAILPOINT", None)
    return {**env, **extra}


def _start(config: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reportgen", "run", str(config), "--quiet", *args],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    proc = _start(config, *args, **env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stats(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())["stats"]


def _assert_same_report(got: Path, want: Path) -> None:
    """The same images, predictions, maps, figures and HTML (but for the time and the work done) and PDF pages."""
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (got, want))
    assert a["images"] == b["images"] and a["skipped"] == b["skipped"]
    for image in a["images"]:
        ma, mb = load_file(str(got / image["maps_file"])), load_file(str(want / image["maps_file"]))
        assert ma.keys() == mb.keys()
        for name in ma:
            np.testing.assert_array_equal(ma[name], mb[name], err_msg=f"{image['id']}: {name}")
    files = sorted(p.relative_to(want) for p in (want / "assets").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(got) for p in (got / "assets").rglob("*") if p.is_file())
    for rel in files:
        assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel
    html = [[line for line in (p / "report.html").read_text().splitlines() if not _RUN_FACTS.search(line)]
            for p in (got, want)]
    assert html[0] == html[1]
    from pypdf import PdfReader

    assert len(PdfReader(got / "report.pdf").pages) == len(PdfReader(want / "report.pdf").pages)


def _leftovers(ws: Path) -> list[str]:
    """Temporary files and half-built report folders anywhere under ``ws``."""
    return sorted(str(p.relative_to(ws)) for p in ws.rglob(".*") if re.match(r"\.(tmp|partial|old)-", p.name))


@pytest.fixture
def reference(workspace: Path) -> Path:
    """An uninterrupted run, with a cache of its own."""
    proc = _run(_config(workspace, "reference", cache="reference-cache"))
    assert proc.returncode == 0, proc.stderr
    return workspace / "reference"


@pytest.mark.parametrize(("point", "draw_workers"),
                         [("cache-put:20", 0), ("cache-put:40", 0), ("draw:3", 0), ("draw:3", 2), ("pdf", 0)])
def test_killed_run_is_finished_by_the_rerun_reusing_its_work(workspace, reference, point, draw_workers):
    config = _config(workspace, "out", draw_workers=draw_workers)
    killed = _run(config, REPORTGEN_FAILPOINT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    out = workspace / "out"
    assert not out.exists()  # nothing half-written where the report goes
    cache = TensorCache(workspace / "cache")
    finished = cache.info().entries
    assert 0 < finished <= ENTRIES
    if point.startswith("cache-put"):
        assert finished == int(point.split(":")[1])  # the entry written just before the kill is complete

    rerun = _run(config)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    s = _stats(out)
    assert (s["cache_hits"], s["cache_misses"]) == (finished, ENTRIES - finished)
    _assert_same_report(out, reference)
    assert _leftovers(workspace) == []  # the killed run's staging folder and temp files were swept


def test_killed_while_replacing_a_report_keeps_the_previous_one(workspace):
    """Where the two folders cannot be swapped in one step, a kill between the two renames loses nothing."""
    config = _config(workspace, "out")
    assert _run(config).returncode == 0
    before = (workspace / "out" / "manifest.json").read_text()
    code = ("import sys, reportgen.atomic as a; from reportgen.cli import main; "
            "a._renameat2 = lambda: None; sys.exit(main(['run', sys.argv[1], '--force', '--quiet']))")
    killed = subprocess.run([sys.executable, "-c", code, str(config)], env=_env(REPORTGEN_FAILPOINT="publish"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (workspace / "out").exists()  # the window this test aims at: old report aside, new not in place
    rerun = _run(config)  # no --force needed: the previous report is put back, then kept
    assert rerun.returncode == 2 and "holds a finished run" in rerun.stderr
    assert (workspace / "out" / "manifest.json").read_text() == before
    assert _leftovers(workspace) == []


def test_forced_rerun_swaps_the_whole_report_in_one_step(workspace):
    if not exchange_supported(workspace):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this system or file system")
    config = _config(workspace, "out")
    assert _run(config).returncode == 0
    first = _stats(workspace / "out")
    # the "publish" fail point lies only on the two-rename path: a swap in one step never reaches it
    forced = _run(config, "--force", REPORTGEN_FAILPOINT="publish")
    assert forced.returncode == 0, "the report was replaced by two renames, not swapped in one step"
    second = _stats(workspace / "out")
    assert first["cache_misses"] == ENTRIES and second["cache_hits"] == ENTRIES  # the new report is in place
    assert _leftovers(workspace) == []


def test_two_runs_sharing_one_cache_at_once_both_finish_correctly(workspace, reference):
    runs = [_start(_config(workspace, name)) for name in ("one", "two")]
    results = [(p, *p.communicate(timeout=300)) for p in runs]
    for proc, _, err in results:
        assert proc.returncode == 0, err
    for name in ("one", "two"):
        _assert_same_report(workspace / name, reference)
    cache = TensorCache(workspace / "cache")
    assert cache.info().entries == ENTRIES
    third = _run(_config(workspace, "three"))
    assert third.returncode == 0
    s = _stats(workspace / "three")
    assert (s["cache_hits"], s["cache_misses"]) == (ENTRIES, 0)  # every entry written by the pair is sound
    assert _leftovers(workspace) == []


@pytest.mark.parametrize("draw_workers", [0, 1])
def test_full_disk_is_a_clear_error_and_leaves_no_corrupt_entry(workspace, reference, draw_workers):
    """Files may not grow past 3 kB (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk)."""
    config = _config(workspace, "out", draw_workers=draw_workers)
    limit = 3000

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.Popen([sys.executable, "-m", "reportgen", "run", str(config), "--quiet"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert re.search(r"cannot write .*(disk full|file-size limit|File too large)", err), err
    assert not (workspace / "out").exists()
    assert _leftovers(workspace) == []
    cache = TensorCache(workspace / "cache")
    kept = cache.info().entries
    # every entry that was written is whole: the rerun (no limit) uses all of them and computes the rest
    rerun = _run(_config(workspace, "out"))
    assert rerun.returncode == 0, rerun.stderr
    s = _stats(workspace / "out")
    assert (s["cache_hits"], s["cache_misses"]) == (kept, ENTRIES - kept)
    assert "corrupt" not in rerun.stderr
    _assert_same_report(workspace / "out", reference)


_PDF_PARENT = r"""
import os, signal, subprocess, sys, time
from reportgen.report import PdfJob

job = PdfJob()
# a bystander keeps the child's stdin open, so only PR_SET_PDEATHSIG (not a closed pipe) can end the child
holder = subprocess.Popen(["sleep", "120"], pass_fds=[job.proc.stdin.fileno()], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # not our pipes to the test
deadline = time.monotonic() + 120
while time.monotonic() < deadline:  # until the child waits for its order: read(0, ...) after die_with_parent()
    try:
        with open(f"/proc/{job.proc.pid}/syscall") as f:
            if f.read().split()[:2] == ["0", "0x0"]:
                break
    except OSError:
        pass
    time.sleep(0.05)
print(job.proc.pid, holder.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_pdf_printer_dies_with_a_run_killed_by_sigkill():
    parent = subprocess.run([sys.executable, "-c", _PDF_PARENT], env=_env(), capture_output=True, text=True,
                            timeout=180)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child, holder = (int(p) for p in parent.stdout.split())
    try:
        for _ in range(100):  # up to 5 s; the kernel kills it at once
            if _gone(child):
                break
            time.sleep(0.05)
        assert _gone(child), "the PDF printer outlived its killed parent"
    finally:
        for pid in (child, holder):  # the processes this test started, by id
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
