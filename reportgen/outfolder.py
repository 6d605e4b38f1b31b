"""Where a report may be written, and which existing folder ``--force`` may replace.

Two rules keep user files safe:

* **Placement** (checked by ``validate`` and before a run): the output folder must not be, contain or lie inside
  the image folder or the cache; must not be or contain the config's folder, the working folder, the home folder
  or ``/``; and nothing the run reads (weights, labels) may lie inside it. The cache must not lie inside the output
  either (the next ``--force`` would delete it).
* **Ownership** (checked before a run writes anything): an existing, non-empty output folder is replaced only when
  reportgen wrote it — it holds the marker file ``.reportgen-run.json`` written with every report (or, for reports
  of earlier versions, a ``manifest.json`` naming a reportgen version) and nothing but the entries that run wrote.
  Anything else is refused, whatever the flags: ``--force`` never deletes a folder of user files.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from reportgen.atomic import write_text_atomically
from reportgen.errors import UsageError

__all__ = ["MARKER", "placement_problems", "check_replaceable", "write_marker", "new_run_id"]

MARKER = ".reportgen-run.json"
# What a report of reportgen 0.x wrote at the top of its folder before the marker existed.
_LEGACY_ENTRIES = frozenset({"report.html", "report.pdf", "manifest.json", "assets", "maps"})
_MAX_LISTED = 5


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies somewhere below it (both absolute, resolved)."""
    return path == folder or folder in path.parents


def _real(path: Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a link loop: compare the path as given
        return Path(os.path.abspath(path))


def placement_problems(*, output: Path, cache_dir: Path, data: Path | None, config: Path | None,
                       inputs: Iterable[tuple[str, Path]] = (), where: Callable[[str], str] = str) -> list[str]:
    """One message per way the output (or cache) folder could overwrite or delete something it must not.

    Args:
        output, cache_dir, data: the run's folders.
        config: the config file (its folder is protected).
        inputs: ``(key, file)`` pairs of other files the run reads (weights, labels).
        where: turns a key (``run.output``) into the place to name in the message (``FILE:LINE: run.output``).
    """
    out, cache = _real(output), _real(cache_dir)
    problems: list[str] = []

    def refuse(key: str, what: str) -> None:
        problems.append(f"{where(key)}: {what}; choose a folder of its own for the report")

    if data is not None:
        d = _real(data)
        if _inside(out, d):
            refuse("run.output", f"the output folder {out} {'is' if out == d else 'lies inside'} the image folder {d}")
        elif _inside(d, out):
            refuse("run.output", f"the output folder {out} contains the image folder {d}")
    protected = [("the home folder", _real(Path.home())), ("the working folder", _real(Path.cwd())),
                 ("the root folder", Path(out.anchor or "/"))]
    if config is not None:
        protected.insert(0, ("the config's folder", _real(config).parent))
    for name, folder in protected:
        if _inside(folder, out):
            refuse("run.output", f"the output folder {out} {'is' if out == folder else 'contains'} {name} {folder}")
    if _inside(out, cache):
        refuse("run.output", f"the output folder {out} {'is' if out == cache else 'lies inside'} the cache {cache} "
                             f"(clearing the cache would delete the report)")
    elif _inside(cache, out):
        problems.append(f"{where('run.cache_dir')}: the cache {cache} lies inside the output folder {out} (the next "
                        f"--force run would delete it); choose a cache folder outside the report")
    for key, path in inputs:
        p = _real(path)
        if _inside(p, out):
            refuse("run.output", f"the output folder {out} contains {key} {p}, which the run reads")
    return problems


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _written_by_us(folder: Path, names: list[str]) -> tuple[bool, list[str]]:
    """Whether ``folder`` is a report reportgen wrote, and the entries in it that reportgen did not write."""
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            ours = info.get("tool") == "reportgen" and isinstance(info.get("entries"), list)
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            known = {str(e) for e in info["entries"]} | {MARKER}
            return True, sorted(n for n in names if n not in known)
    manifest = folder / "manifest.json"
    if manifest.is_file() and not manifest.is_symlink():
        try:
            ours = "reportgen_version" in json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if ours:
            return True, sorted(n for n in names if n not in _LEGACY_ENTRIES)
    return False, []


def check_replaceable(output: Path, force: bool) -> None:
    """Raise ``UsageError`` unless a run may write its report at ``output``.

    A missing or empty folder may always be used. A finished report of reportgen may be replaced with ``force``.
    Anything else — a file, a folder reportgen did not write, or a report folder holding files it did not write —
    is refused with or without ``force``.
    """
    if output.is_symlink():
        raise UsageError(f"output path {output} is a symbolic link; give the folder it points to, or another one")
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"output path {output} exists and is not a folder; choose another output folder")
    names = sorted(os.listdir(output))
    if not names:
        return
    ours, foreign = _written_by_us(output, names)
    if not ours:
        raise UsageError(
            f"output folder {output} is not empty and was not written by reportgen ({len(names)} entries, e.g. "
            f"{_listed(names)}); reportgen only replaces a report folder it wrote: choose an empty or new folder")
    if foreign:
        raise UsageError(
            f"output folder {output} holds a reportgen report and also files reportgen did not write "
            f"({_listed(foreign)}); move them out or choose another output folder")
    if not force:
        raise UsageError(f"output folder {output} holds a finished run; pass --force to replace it")


def new_run_id() -> str:
    return uuid.uuid4().hex


def write_marker(folder: Path, version: str, also: Iterable[str] = ()) -> None:
    """Mark ``folder`` (a staging folder) as a report reportgen wrote, listing what it holds and ``also`` will.

    The marker holds no time or run id (those are in ``manifest.json``): two runs of the same config write the
    same bytes in every file but the manifest.
    """
    entries = sorted({n for n in os.listdir(folder) if n != MARKER} | set(also))
    marker = {"tool": "reportgen", "version": version, "entries": entries}
    write_text_atomically(folder / MARKER, json.dumps(marker, indent=2) + "\n")
