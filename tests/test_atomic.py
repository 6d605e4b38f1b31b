"""reportgen.atomic in-process: temporaries, the sweep of a dead writer's leftovers, the one-step folder swap and
its two-rename fallback, the old report put back, OS errors in words. (Killed runs: tests/test_crash.py.)"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import exchange_supported

from reportgen import atomic


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "report.html").write_text(text, encoding="utf-8")
    return path


def test_temp_file_is_named_for_its_writer_and_empty(tmp_path):
    tmp = atomic.temp_file(tmp_path, ".bin")
    assert tmp.parent == tmp_path and tmp.name.startswith(f".tmp-{atomic.writer_tag()}-") and tmp.name.endswith(".bin")
    assert tmp.read_bytes() == b""
    assert not atomic.is_stale(tmp.name)  # this process is alive


def test_replace_atomically_writes_whole_file_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "a" / "b" / "entry.json"  # folders made as needed
    temps = []

    def write(p: Path) -> None:
        temps.append(p)
        p.write_text(str(len(temps)), encoding="utf-8")

    atomic.replace_atomically(target, write)
    atomic.replace_atomically(target, write)  # over an existing file, in an existing folder
    assert target.read_text(encoding="utf-8") == "2"
    assert all(t.parent == target.parent and t.suffix == ".json" and t.name.startswith(".tmp-") for t in temps)

    def fail(p: Path) -> None:
        p.write_text("half", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.replace_atomically(target, fail)
    assert target.read_text(encoding="utf-8") == "2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry.json"]  # the temporary is gone


def test_is_stale_only_for_temporaries_of_dead_writers():
    dead, me = _dead_pid(), os.getpid()
    for prefix in ("tmp", "partial", "old"):
        assert atomic.is_stale(f".{prefix}-{atomic.writer_tag(dead)}-x")
        assert not atomic.is_stale(f".{prefix}-{atomic.writer_tag(me)}-x")
    assert not atomic.is_stale(f".cache-{dead}-x") and not atomic.is_stale(f"tmp-{dead}-x")
    assert not atomic.is_stale(f".tmp-{dead}")  # no "-" after the id: not one of ours
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not atomic.is_stale(f".tmp-{atomic.writer_tag(live.pid)}-x")
        with pytest.raises(subprocess.TimeoutExpired):  # asked with signal 0, not signalled
            live.wait(timeout=0.5)
    finally:
        live.kill()
        live.wait()


def test_a_process_we_may_not_signal_counts_as_alive(monkeypatch):
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    assert not atomic.is_stale(f".tmp-{atomic.writer_tag(12345)}-x")


def test_sweep_removes_only_dead_writers_leftovers_with_the_suffix(tmp_path):
    dead, me = atomic.writer_tag(_dead_pid()), atomic.writer_tag()
    (tmp_path / f".tmp-{dead}-a.safetensors").write_text("x")
    (tmp_path / f".tmp-{dead}-b.json").write_text("x")
    (tmp_path / f".tmp-{me}-c.safetensors").write_text("x")
    (tmp_path / f".partial-{dead}-run").mkdir()
    (tmp_path / f".partial-{dead}-run" / "f").write_text("x")
    (tmp_path / "kept.safetensors").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photo.png").write_text("x")
    (tmp_path / f".tmp-{dead}-link").symlink_to(tmp_path / "data")  # the link goes, never what it points to
    assert atomic.sweep(tmp_path, ".safetensors") == 1
    assert atomic.sweep(tmp_path) == 3  # the .json, the folder and the link
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".tmp-{me}-c.safetensors", "data",
                                                                 "kept.safetensors"])
    assert (tmp_path / "data" / "photo.png").exists()
    assert atomic.sweep(tmp_path / "missing") == 0
    assert atomic.sweep(tmp_path / "kept.safetensors") == 0  # not a folder


def test_swap_into_place_first_time_and_over_a_previous_report(tmp_path, monkeypatch):
    target = tmp_path / "out"
    atomic.swap_into_place(_folder(tmp_path / ".partial-1-a", "first"), target)
    assert (target / "report.html").read_text(encoding="utf-8") == "first"
    atomic.swap_into_place(_folder(tmp_path / ".partial-1-b", "second"), target)
    assert (target / "report.html").read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the previous report is removed


def test_swap_uses_the_one_step_exchange_where_the_system_has_it(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / "new", "new")
    if not exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")

    def two_renames(name: str) -> None:
        raise AssertionError(f"reached the two-rename fail point {name!r}")

    monkeypatch.setattr(atomic.failpoints, "reached", two_renames)
    atomic.swap_into_place(new, target)
    assert (target / "report.html").read_text(encoding="utf-8") == "new"
    assert not new.exists()


def test_exchange_swaps_two_folders(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    assert atomic._exchange(a, b)
    assert (a / "report.html").read_text(encoding="utf-8") == "B" and (b / "report.html").read_text() == "A"
    with pytest.raises(OSError):  # a real failure (no such file) is an error, not "unsupported"
        atomic._exchange(tmp_path / "missing", a)


class _FailingRenameat2:
    """Stands in for libc's renameat2: fails with ``code``."""

    def __init__(self, code: int):
        self.code = code

    def __call__(self, *args) -> int:
        ctypes.set_errno(self.code)
        return -1


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL, errno.ENOTSUP])
def test_exchange_unsupported_by_kernel_or_file_system_is_false(tmp_path, monkeypatch, code):
    monkeypatch.setattr(atomic, "_renameat2", lambda: _FailingRenameat2(code))
    assert atomic._exchange(tmp_path / "a", tmp_path / "b") is False
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)  # no renameat2 at all (not Linux, old libc)
    assert atomic._exchange(tmp_path / "a", tmp_path / "b") is False


def test_exchange_failure_is_an_os_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_renameat2", lambda: _FailingRenameat2(errno.EACCES))
    with pytest.raises(OSError) as caught:
        atomic._exchange(tmp_path / "a", tmp_path / "b")
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "a"))


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def prctl(self, *args) -> int:
        self.calls.append(args)
        return 0


def test_die_with_parent_asks_for_sigkill_and_exits_if_the_parent_is_already_gone(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(atomic, "_libc", lambda: libc)
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    atomic.die_with_parent(os.getppid())
    assert libc.calls == [(1, signal.SIGKILL)] and exits == []  # PR_SET_PDEATHSIG = 1
    atomic.die_with_parent()
    assert exits == []
    atomic.die_with_parent(os.getppid() + 1)  # started by a process that is no longer our parent
    assert exits == [3] and len(libc.calls) == 3


def test_two_rename_fallback_keeps_the_old_report_aside_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "out", "old")
    seen = []

    def publish(name: str) -> None:  # between the two renames: the old report is aside, the new one not yet there
        seen.append((name, target.exists(), sorted(p.name for p in tmp_path.iterdir())))

    monkeypatch.setattr(atomic.failpoints, "reached", publish)
    atomic.swap_into_place(_folder(tmp_path / "new", "new"), target)
    assert seen == [("publish", False, sorted([f".old-{atomic.writer_tag()}-out", "new"]))]
    assert (target / "report.html").read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_restore_old_puts_back_only_a_dead_runs_report(tmp_path):
    target = tmp_path / "out"
    _folder(tmp_path / f".old-{atomic.writer_tag()}-out", "live")
    assert not atomic.restore_old(target)  # a run still going owns it
    dead = _folder(tmp_path / f".old-{atomic.writer_tag(_dead_pid())}-out", "previous")
    _folder(tmp_path / f".old-{atomic.writer_tag(_dead_pid())}-other", "not this target")
    assert atomic.restore_old(target)
    assert (target / "report.html").read_text(encoding="utf-8") == "previous" and not dead.exists()
    assert not atomic.restore_old(target)  # present: nothing to do
    assert (tmp_path / f".old-{atomic.writer_tag()}-out").exists()


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk is full"),
    (errno.EFBIG, "file-size limit"), (errno.EACCES, "Permission denied"),
])
def test_describe_os_error(code, words):
    text = atomic.describe_os_error(OSError(code, os.strerror(code), "/x"))
    assert words in text and os.strerror(code) in text
