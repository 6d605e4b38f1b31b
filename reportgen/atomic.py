"""Atomic file-system steps, and the leftovers of processes that were killed half-way.

Every file reportgen writes for keeps (cache entries, model cards, reports) is first written under a temporary
name that carries its writer — the host name and the process id, ``.tmp-<host>-<pid>-...`` (``.partial-`` for a
report being built, ``.old-`` for the previous report set aside) — then renamed into place. A process killed with
SIGKILL can leave such temporaries behind; ``is_stale`` tells them apart from those of a run still going (the same
cache may be shared by concurrent runs, on several machines over a shared file system), so only a dead writer's
leftovers are removed: a process id is only asked about on its own host; another host's temporary (and an old
``.tmp-<pid>-...`` name without a host) is left alone until it is ``FOREIGN_STALE_AFTER_S`` old.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from reportgen import failpoints

__all__ = ["temp_file", "temp_name", "writer_tag", "parse_temp_name", "replace_atomically", "write_text_atomically",
           "is_stale", "sweep", "swap_into_place", "restore_old", "die_with_parent", "describe_os_error", "FOREIGN_STALE_AFTER_S"]

# A temporary of another host (whose processes we cannot ask about), or of an old reportgen that did not name
# its host, is judged by age alone: a day without a change (by mtime, of it or of what is directly inside it).
FOREIGN_STALE_AFTER_S = 24 * 3600

# .tmp-<host>-<pid>-rest (host: letters, digits, dots and underscores, no "-"), or the old .tmp-<pid>-rest
_NAME = re.compile(r"^\.(?P<kind>tmp|partial|old)-(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)-(?P<rest>.*)$", re.S)


@functools.cache
def _host() -> str:
    """This machine's name as it appears in temporary names: ``-`` and anything unusual become ``_``, at most 40
    characters (so a ``-`` after it always ends it, and ``<host>-<pid>`` parses back)."""
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "localhost")[:40]
    return name or "localhost"


def writer_tag(pid: int | None = None) -> str:
    """``<host>-<pid>`` of this process (or of ``pid`` on this host): the writer part of a temporary name."""
    return f"{_host()}-{os.getpid() if pid is None else pid}"


def temp_name(kind: str, rest: str) -> str:
    """``.<kind>-<host>-<pid>-<rest>`` for this process; ``kind`` is ``tmp``, ``partial`` or ``old``."""
    return f".{kind}-{writer_tag()}-{rest}"


def parse_temp_name(name: str) -> tuple[str, str | None, int, str] | None:
    """(kind, host or None for an old-style name, pid, rest) of a temporary's name, or None if it is not one."""
    m = _NAME.match(name)
    if m is None:
        return None
    return m.group("kind"), m.group("host"), int(m.group("pid")), m.group("rest")


def temp_file(folder: Path, suffix: str) -> Path:
    """A new empty file in ``folder`` named ``.tmp-<host>-<pid>-<random><suffix>``, readable as the umask allows.

    (``tempfile.mkstemp`` would make it private to this user: a report or a shared cache is meant to be read.)
    """
    for _ in range(100):
        path = Path(folder) / temp_name("tmp", f"{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path``'s folder, ``write`` a temporary beside it (``temp_file``), then rename it onto ``path``.

    The one way reportgen writes a file for keeps (cache entries, model cards, figures, the HTML, the PDF, the
    manifest): readers see the old file or the whole new one; the temporary is removed if anything fails, and a
    process killed mid-way leaves it for ``sweep``, which recognises the name. Errors (``OSError``) are the
    caller's to word.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomically(path: Path, text: str) -> None:
    """``replace_atomically`` for UTF-8 text (``\n`` line ends)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _last_change(path: Path) -> float | None:
    """The newest mtime of ``path`` and (for a folder) of what is directly inside it; None if it is gone."""
    try:
        newest = os.lstat(path).st_mtime
    except OSError:
        return None
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue
        except OSError:
            pass
    return newest


def is_stale(name: str, path: Path | None = None) -> bool:
    """Whether ``name`` is a temporary (``.tmp-``/``.partial-``/``.old-<host>-<pid>-...``) whose writer is gone.

    A name of this host is judged by its process id. A name of another host, or an old-style name without a host
    (``.tmp-<pid>-...``), is stale only once ``path`` (where it is) has not changed for ``FOREIGN_STALE_AFTER_S``;
    without ``path`` such a name is never stale.
    """
    parsed = parse_temp_name(name)
    if parsed is None:
        return False
    _kind, host, pid, _rest = parsed
    if host == _host():
        return not _alive(pid)
    if path is None:
        return False
    changed = _last_change(Path(path))
    return changed is not None and time.time() - changed > FOREIGN_STALE_AFTER_S


def sweep(folder: Path, endswith: str = "") -> int:
    """Remove the stale temporaries directly inside ``folder`` whose name ends with ``endswith``; return how many.

    Only names of the form ``.tmp-<host>-<pid>-...``, ``.partial-...`` and ``.old-...`` are touched: this host's
    whose process is gone, and another host's (or old-style ones without a host) untouched for a day
    (``is_stale``), so a live writer on another machine sharing the folder never loses its temporary.
    """
    removed = 0
    try:
        names = [e for e in os.scandir(folder)
                 if e.name.startswith(".") and e.name.endswith(endswith) and is_stale(e.name, Path(e.path))]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in names:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:  # another run swept it first, or it is not ours to remove: leave it
            continue
        removed += not os.path.lexists(entry.path)
    return removed


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once per process and without a compiler.

    ``ctypes.util.find_library`` runs ``gcc``/``ldconfig`` in a subprocess (~0.1 s each, 16 times a run); the
    symbols of the libc this interpreter is linked against are already in its own namespace (``CDLL(None)``).
    """
    for name in (None, "libc.so.6", "libc.dylib"):
        try:
            libc = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        if hasattr(libc, "rename"):  # every C library has it; a statically linked interpreter may not export it
            return libc
    return None


def _renameat2():
    libc = _libc()
    if libc is None:
        return None
    try:
        fn = libc.renameat2
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_into_place(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``; a previous ``target`` is removed only once ``new`` is in place.

    On Linux the two folders are exchanged in one atomic step, so a reader (or a crash) sees either the whole
    old report or the whole new one, never neither. Elsewhere the old folder is first renamed aside
    (``.old-<host>-<pid>-...``); a crash between the two renames leaves it there, and ``restore_old`` puts it back.
    """
    if target.exists() and _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the previous report
        return
    old = target.parent / temp_name("old", target.name)
    if target.exists():
        os.replace(target, old)
    failpoints.reached("publish")
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def restore_old(target: Path) -> bool:
    """If ``target`` is missing but a dead run left the previous report aside, move it back; True if so."""
    if target.exists():
        return False
    for entry in sorted(target.parent.glob(f".old-*-{target.name}")):
        parsed = parse_temp_name(entry.name)
        if parsed is not None and parsed[3] == target.name and is_stale(entry.name, entry):
            os.replace(entry, target)
            return True
    return False


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: have the kernel kill this (child) process when the process that started it dies, even by SIGKILL.

    For the PDF printer and the drawing workers: otherwise a run killed mid-way would leave them writing into
    a half-built report folder. Elsewhere nothing happens (a waiting child still stops when its pipe closes).
    ``parent_pid``, when known, catches a parent that died before the request took effect.
    """
    libc = _libc()
    try:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except AttributeError:  # no libc found, or not Linux
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)


def describe_os_error(exc: OSError) -> str:
    """``exc`` in words, with a plain hint when the disk (or the process's file-size limit) is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.strerror})"
    if exc.errno == errno.EFBIG:
        return f"the file grew past the allowed size: disk full or a file-size limit ({exc.strerror})"
    return str(exc)
