"""One run across processes with torchrun (reportgen/distributed.py), and the host-safe sweep of temporaries.

The slow tests launch real ``torchrun`` processes (gloo on the CPU) over ten tiny images in five batch groups of two
and compare what they write with a one-process run of the same config: the maps and figures byte for byte, the HTML
but for the lines that tell the time and the work done, the manifest but for its timings, stats and paths. A rank is
killed with SIGKILL by a failpoint (``REPORTGEN_FAILPOINT=cache-put:30@1``: rank 1, at its 30th cache write, in its
second group), and the error must name it and its groups; the rerun must compute only what is missing.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_images, write_config

from reportgen import atomic, distributed, failpoints
from reportgen.results import RunStats

N_IMAGES, BATCH = 10, 2
GROUPS = (N_IMAGES + BATCH - 1) // BATCH
ENTRIES = 2 + N_IMAGES * 12  # 2 kernel galleries; per image: predictions, 1 feature-map layer, 5 CAMs x 2 layers
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# lines of the HTML that differ between any two runs: the time, how much work the run found cached, and (in the
# provenance) the name of the run's config file
_RUN_FACTS = re.compile(r"dcterms\.created|Generated <time|<dt>(Device|Duration|Batches|Cache|Passes)</dt>|\.yaml|hits")
# manifest keys that differ between any two runs (or name the run's own folders)
_VARYING = {"generated_at", "run_id", "stats", "run", "provenance", "config_path", "cache_dir"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REPORTGEN_FAILPOINT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **extra}


def _config(ws: Path, name: str, cache: str) -> Path:
    path = write_config(ws, ws / "images", report={"pdf": False, "image_size": 96})
    cfg = yaml.safe_load(path.read_text())
    cfg["run"].update(output=str(ws / name), cache_dir=str(ws / cache), batch_size=BATCH)
    out = ws / f"{name}.yaml"
    out.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return out


def _one_process(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reportgen", "run", str(config), "--quiet"], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _torchrun(config: Path, *launch: str, **env: str) -> subprocess.CompletedProcess:
    launch = launch or ("--standalone", "--nproc_per_node=2")
    return subprocess.run([TORCHRUN, *launch, "-m", "reportgen", "run", str(config), "--quiet"], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def _cache_entries(cache: Path) -> int:
    return sum(1 for _ in cache.glob("??/[!.]*.safetensors"))


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    _, mismatch, errors = filecmp.cmpfiles(a, b, files_a, shallow=False)
    assert mismatch == [] and errors == []


def _assert_same_report(got: Path, want: Path, processes: int) -> None:
    """The maps and figures byte for byte; the HTML and the manifest but for the time and the work done."""
    _same_tree(got / "maps", want / "maps")
    _same_tree(got / "assets", want / "assets")
    html = [(p / "report.html").read_text(encoding="utf-8").splitlines() for p in (got, want)]
    assert [line for line in html[0] if not _RUN_FACTS.search(line)] == \
        [line for line in html[1] if not _RUN_FACTS.search(line)]
    a, b = _manifest(got), _manifest(want)
    assert {k: v for k, v in a.items() if k not in _VARYING} == {k: v for k, v in b.items() if k not in _VARYING}
    assert a["images"] and len(a["images"]) == N_IMAGES
    same_facts = ("device", "images_total", "images_ok", "images_skipped", "batch_size")
    assert {k: a["run"][k] for k in same_facts} == {k: b["run"][k] for k in same_facts}
    assert a["stats"]["processes"] == processes and b["stats"]["processes"] == 1


def _no_leftovers(ws: Path, cache: str) -> None:
    """No rank's scratch folder in the figure cache, no staging folder beside the outputs."""
    assert not [p.name for p in (ws / cache / "figures").iterdir() if p.name.startswith(".")]
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".partial-")]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Ten images and the one-process reference run (``one``) every torchrun run is compared with."""
    ws = tmp_path_factory.mktemp("dist")
    make_images(ws / "images", N_IMAGES)
    proc = _one_process(_config(ws, "one", "cache-one"))
    assert proc.returncode == 0, proc.stderr
    return ws


# ------------------------------------------------------------------------------------------ torchrun, slow


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(ws):
    proc = _torchrun(_config(ws, "two", "cache-two"))
    assert proc.returncode == 0, proc.stderr
    _assert_same_report(ws / "two", ws / "one", processes=2)
    a, b = _manifest(ws / "two")["stats"], _manifest(ws / "one")["stats"]
    # the ranks' work summed: the five groups once each, every result written once, every image drawn once
    assert a["batches"] == b["batches"] == GROUPS
    assert a["forward_passes"] == b["forward_passes"] and a["cache_writes"] == b["cache_writes"] == ENTRIES
    assert a["figures_stored"] == N_IMAGES and a["figures_restored"] == N_IMAGES  # rank 0 linked every image
    assert proc.stdout.count("report: ") == 1  # the summary once, by rank 0
    _no_leftovers(ws, "cache-two")


@pytest.mark.slow
def test_a_killed_rank_is_named_with_its_groups_and_the_rerun_computes_only_the_rest(ws):
    config = _config(ws, "killed", "cache-killed")
    proc = _torchrun(config, REPORTGEN_FAILPOINT="cache-put:30@1")
    assert proc.returncode != 0 and not (ws / "killed").exists()
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, proc.stderr  # said once, by rank 0
    # rank 1 holds groups 2 and 4 (round-robin from 1): images 3-4 and 7-8 in folder order
    assert "rank 1 " in ours[0] and "image groups 2, 4 of 5" in ours[0] and "died" in ours[0], ours[0]
    before = _cache_entries(ws / "cache-killed")
    assert 24 <= before < ENTRIES  # rank 1's first group was finished, not everything
    rerun = _one_process(config)
    assert rerun.returncode == 0, rerun.stderr
    stats = _manifest(ws / "killed")["stats"]
    assert stats["cache_writes"] == ENTRIES - before == _cache_entries(ws / "cache-killed") - before
    assert stats["batches"] < GROUPS  # the finished groups were not computed again
    _assert_same_report(ws / "killed", ws / "one", processes=1)
    _no_leftovers(ws, "cache-killed")  # the dead rank's scratch folder was swept


@pytest.mark.slow
def test_a_worker_restarted_by_torchrun_recomputes_only_what_is_missing(ws):
    config = _config(ws, "restarted", "cache-restarted")
    proc = _torchrun(config, "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                     REPORTGEN_FAILPOINT="cache-put:30@1")  # the restarted rank 1 has fewer than 30 left to write
    assert proc.returncode == 0, proc.stderr
    stats = _manifest(ws / "restarted")["stats"]
    assert stats["processes"] == 2 and 0 < stats["cache_writes"] <= ENTRIES - 24 and stats["batches"] < GROUPS
    _assert_same_report(ws / "restarted", ws / "one", processes=2)


@pytest.mark.slow
def test_two_nodes_meeting_through_a_c10d_rendezvous(ws):
    config = _config(ws, "nodes", "cache-nodes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=reportgen-test"]
    nodes = [subprocess.Popen([TORCHRUN, *launch, f"--node_rank={n}", "-m", "reportgen", "run", str(config),
                               "--quiet"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (0, 1)]
    outs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err for _, err in outs]
    assert sum(out.count("report: ") for out, _ in outs) == 1  # one node's rank 0 published
    _assert_same_report(ws / "nodes", ws / "one", processes=2)


@pytest.mark.slow
def test_a_config_error_is_printed_once(ws):
    config = _config(ws, "bad", "cache-bad")
    config.write_text(config.read_text().replace("features.5", "features.55"), encoding="utf-8")
    proc = _torchrun(config)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(ours) == 1 and "no layer named 'features.55'" in ours[0], proc.stderr
    assert not re.search(r'File ".*/reportgen/', proc.stderr)  # no traceback of ours (torchrun prints its own)


# ------------------------------------------------------------------------------------------ the split, fast


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("groups", [1, 5, 10, 64])
def test_round_robin_split_gives_every_group_to_one_rank_and_balances_them(world, groups):
    owners = [distributed.share_of(g, world) for g in range(groups)]
    counts = [owners.count(r) for r in range(world)]
    assert sum(counts) == groups and max(counts) - min(counts) <= 1
    assert owners == [distributed.share_of(g, world) for g in range(groups)]  # a function of the numbers only
    assert owners[:world] == list(range(min(world, groups)))


def test_not_under_torchrun_agreed_just_runs_the_step(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.requested() and distributed.rank() == 0
    assert distributed.agreed(lambda: 41 + 1) == 42
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.requested()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.requested() and distributed.rank() == 1


def test_the_ranks_stats_are_summed_and_their_seconds_are_the_slowest():
    a = RunStats(batches=3, forward_passes=3, cache_writes=36, cache_misses=36, figures_stored=6, images_ok=99,
                 seconds={"compute": 1.0, "draw": 0.5, "draw_wait": 0.5, "html": 0.0, "pdf": 0.0})
    b = RunStats(batches=2, forward_passes=2, cache_writes=24, cache_misses=24, figures_stored=4, draw_workers=2,
                 seconds={"compute": 2.0, "draw": 0.25, "draw_wait": 0.25, "html": 0.0, "pdf": 0.0})
    from dataclasses import asdict

    m = distributed._merged([asdict(a), asdict(b)], world=2)
    assert (m.batches, m.forward_passes, m.cache_writes, m.cache_misses, m.figures_stored) == (5, 5, 60, 60, 10)
    assert m.seconds["compute"] == 2.0 and m.seconds["draw"] == 0.5 and m.draw_workers == 2
    assert m.processes == 2 and m.images_ok == 0  # the image counts are rank 0's to make, from the whole folder


def test_a_failpoint_for_one_rank_spares_the_others(monkeypatch):
    killed = []
    monkeypatch.setattr(failpoints.os, "kill", lambda pid, sig: killed.append(pid))
    monkeypatch.setattr(failpoints, "_seen", {})
    monkeypatch.setenv("REPORTGEN_FAILPOINT", "draw@1")
    monkeypatch.setenv("RANK", "0")
    failpoints.reached("draw")
    assert killed == []
    monkeypatch.setenv("RANK", "1")
    failpoints.reached("draw")
    assert killed == [os.getpid()]


# ------------------------------------------------------------------------------------------ the sweep, fast


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_the_sweep_never_removes_another_hosts_temporary_while_it_may_be_live(tmp_path):
    dead = _dead_pid()
    day = atomic.FOREIGN_STALE_AFTER_S
    mine = tmp_path / f".tmp-{atomic.writer_tag(dead)}-a.safetensors"
    theirs = tmp_path / f".tmp-othernode-{dead}-b.safetensors"  # that pid means nothing here
    theirs_old = tmp_path / f".tmp-othernode-{dead}-c.safetensors"
    legacy = tmp_path / f".tmp-{dead}-d.safetensors"  # an old reportgen's name: no host
    legacy_old = tmp_path / f".tmp-{dead}-e.safetensors"
    for p in (mine, theirs, theirs_old, legacy, legacy_old):
        p.write_text("x")
    _age(theirs, day - 600)
    _age(theirs_old, day + 600)
    _age(legacy_old, day + 600)
    assert atomic.sweep(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, legacy.name])


def test_another_hosts_report_being_built_is_live_while_anything_directly_in_it_changes(tmp_path):
    day = atomic.FOREIGN_STALE_AFTER_S
    staging = tmp_path / ".partial-othernode-4242-out"
    (staging / "maps").mkdir(parents=True)
    _age(staging, 2 * day)  # the folder itself unchanged for two days ...
    assert not atomic.is_stale(staging.name, staging)  # ... but its maps/ folder changed just now
    _age(staging / "maps", 2 * day)
    assert atomic.is_stale(staging.name, staging)
    assert not atomic.is_stale(staging.name)  # without a path, another host's name is never judged stale


def test_restore_old_leaves_another_hosts_report_aside_until_it_is_a_day_old(tmp_path):
    target = tmp_path / "out"
    aside = tmp_path / ".old-othernode-4242-out"
    aside.mkdir()
    (aside / "report.html").write_text("previous", encoding="utf-8")
    assert not atomic.restore_old(target)
    _age(aside / "report.html", 2 * atomic.FOREIGN_STALE_AFTER_S)
    _age(aside, 2 * atomic.FOREIGN_STALE_AFTER_S)
    assert atomic.restore_old(target) and (target / "report.html").read_text(encoding="utf-8") == "previous"


def test_temporary_names_carry_the_host_and_parse_back():
    name = atomic.temp_name("partial", "my-report")
    kind, host, pid, rest = atomic.parse_temp_name(name)
    assert (kind, pid, rest) == ("partial", os.getpid(), "my-report") and "-" not in host
    assert f"{host}-{pid}" == atomic.writer_tag()
    assert atomic.parse_temp_name(".tmp-123-abc") == ("tmp", None, 123, "abc")  # old names are still read
    assert atomic.parse_temp_name(".tmp-12345-678-abc") == ("tmp", "12345", 678, "abc")  # a numeric host name
    assert atomic.parse_temp_name(".cache-1-x") is None and atomic.parse_temp_name(".tmp-1") is None
