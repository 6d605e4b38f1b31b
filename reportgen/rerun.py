"""``reportgen rerun OUTPUT_DIR``: repeat a finished run from its manifest and say what differs.

The manifest's ``provenance`` block holds the resolved config; the rerun loads it as a config (paths as recorded,
or ``--data`` for the image folder), writes a new report (default: ``OUTPUT_DIR-rerun`` beside it), and then lists
what differs between the two runs: config keys (none, unless ``--data`` moved the folder), weights, data files
added/removed/changed, library versions, the device — and, in the results, the images whose predictions or raw maps
are not the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from reportgen.errors import ConfigError, UsageError
from reportgen.provenance import config_text, differences
from reportgen.results import RunResult

__all__ = ["rerun", "Rerun"]


@dataclass(frozen=True)
class Rerun:
    """The new run, and what differs from the old one (``inputs``: recorded facts; ``results``: outputs)."""

    result: RunResult
    inputs: list[str]
    results: list[str]


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{folder}: not a finished reportgen run (no manifest.json)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the manifest: {exc}") from exc


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _result_differences(old_dir: Path, old: dict, new_dir: Path, new: dict) -> list[str]:
    """Images only in one run, and images whose top-5 predictions or maps file differ."""
    a = {e["path"]: e for e in old.get("images", [])}
    b = {e["path"]: e for e in new.get("images", [])}
    lines = []
    for what, names in (("only in the old run", sorted(set(a) - set(b))), ("only in the rerun", sorted(set(b) - set(a)))):
        if names:
            lines.append(f"{len(names)} image(s) {what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    common = sorted(set(a) & set(b))
    preds = [p for p in common if a[p].get("predictions") != b[p].get("predictions")]
    maps = [p for p in common if _sha(old_dir / a[p]["maps_file"]) != _sha(new_dir / b[p]["maps_file"])]
    if preds:
        lines.append(f"{len(preds)} of {len(common)} image(s) with other top-5 predictions: {', '.join(preds[:5])}")
    if maps:
        lines.append(f"{len(maps)} of {len(common)} image(s) whose raw maps differ: {', '.join(maps[:5])}")
    return lines


def rerun(folder: Path, *, output: Path | None = None, data: Path | None = None, force: bool = False,
          progress: bool = False) -> Rerun:
    """Repeat the run in ``folder`` (see the module docstring)."""
    from reportgen.config import load_config
    from reportgen.runner import run

    folder = Path(folder).resolve()
    old = _manifest(folder)
    block = old.get("provenance") or {}
    if "config" not in block:
        raise UsageError(f"{folder}/manifest.json records no config (written by reportgen "
                         f"{old.get('reportgen_version', '?')}, before provenance was kept): run its config instead")
    if block.get("redacted") and data is None:
        raise UsageError(f"{folder} was written with report.redact_paths: its image folder is not recorded; "
                         "give it with --data")
    anchor = folder.parent / f"{folder.name}.manifest"  # names the config in messages; beside the run, not in it
    try:
        cfg = load_config(anchor, text=config_text(block), data_dir=data)
    except ConfigError as exc:
        raise ConfigError([f"the config recorded in {folder}/manifest.json no longer loads: {p}"
                           for p in exc.problems]) from exc
    target = Path(output).resolve() if output is not None else folder.parent / f"{folder.name}-rerun"
    cfg = cfg.with_overrides(output=target)
    result = run(cfg, force=force, progress=progress)
    new = json.loads(result.manifest.read_text(encoding="utf-8"))
    return Rerun(result, differences(block, new.get("provenance") or {}),
                 _result_differences(folder, old, result.output, new))
