"""Atomic file-system steps, and the leftovers of processes that were killed half-way.

Every file reportgen writes for keeps (cache entries, model cards, reports) is first written under a temporary
name that carries the writer's process id, then renamed into place. A process killed with SIGKILL can leave
such temporaries behind; ``is_stale`` tells them apart from those of a run still going (the same cache may be
shared by concurrent runs), so only a dead writer's leftovers are removed.
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
from collections.abc import Callable
from pathlib import Path

from reportgen import failpoints

__all__ = ["temp_file", "replace_atomically", "write_text_atomically", "is_stale", "sweep", "swap_into_place", "restore_old", "die_with_parent", "describe_os_error"]

_PID = re.compile(r"^\.(?:tmp|partial|old)-(\d+)-")


def temp_file(folder: Path, suffix: str) -> Path:
    """A new empty file in ``folder`` named ``.tmp-<pid>-<random><suffix>``, readable as the umask allows.

    (``tempfile.mkstemp`` would make it private to this user: a report or a shared cache is meant to be read.)
    """
    for _ in range(100):
        path = Path(folder) / f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"
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


def is_stale(name: str) -> bool:
    """Whether ``name`` is a temporary (``.tmp-``/``.partial-``/``.old-<pid>-...``) whose writer is gone."""
    m = _PID.match(name)
    return bool(m) and not _alive(int(m.group(1)))


def sweep(folder: Path, endswith: str = "") -> int:
    """Remove the stale temporaries directly inside ``folder`` whose name ends with ``endswith``; return how many.

    Only names of the form ``.tmp-<pid>-...``, ``.partial-<pid>-...`` and ``.old-<pid>-...`` whose process is
    gone are touched. (Process ids are this machine's: a cache shared over a network file system with a
    writer elsewhere could lose that writer's temporary, whose entry is then simply written again later.)
    """
    removed = 0
    try:
        names = [e for e in os.scandir(folder)
                 if e.name.startswith(".") and e.name.endswith(endswith) and is_stale(e.name)]
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
    (``.old-<pid>-...``); a crash between the two renames leaves it there, and ``restore_old`` puts it back.
    """
    if target.exists() and _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the previous report
        return
    old = target.parent / f".old-{os.getpid()}-{target.name}"
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
        if is_stale(entry.name):
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
