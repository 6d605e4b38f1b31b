"""``compare_to:`` in a config: a scheduled run compared with an earlier one as soon as it is published.

``previous_run(cfg)`` is called before any work: it checks that ``compare_to`` is a finished run (a config error
otherwise, so nothing is computed for nothing). The usual schedule writes each run over the last one
(``compare_to`` is ``run.output`` itself): the earlier report is then kept as hard links in a hidden folder beside it
(``.partial-<host>-<pid>-previous-<name>``: no data is copied; a killed run's is swept by the next run like its
staging folder) until the comparison is written, since publishing the new run replaces it; the first run of a schedule has nothing to compare with and says so. ``compare_after(cfg, previous)``
writes the comparison to ``<run.output>-compare`` (a previous comparison there is replaced) with
``compare_checks`` as its gate conditions, and returns their verdicts in the form of the run's own checks.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from reportgen.atomic import parse_temp_name, temp_name
from reportgen.config import RunConfig
from reportgen.errors import ConfigError

__all__ = ["previous_run", "compare_after", "discard_previous"]

log = logging.getLogger(__name__)


def _same(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def previous_run(cfg: RunConfig) -> Path | None:
    """The run to compare with once this one is published (a hard-linked copy when it is the output itself)."""
    if cfg.compare_to is None:
        return None
    target = Path(cfg.compare_to)
    if not (target / "manifest.json").is_file():
        if _same(target, cfg.run.output):
            log.warning("compare_to: %s holds no finished run yet: this run is not compared (the next one will be)",
                        target)
            return None
        raise ConfigError(f"{cfg.where('compare_to')}: {target} is not a finished reportgen run (no manifest.json)")
    if not _same(target, cfg.run.output):
        return target
    keep = target.parent / temp_name("partial", f"previous-{target.name}")  # ours alone: this host and pid
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(target, keep, copy_function=_link)
    return keep


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(src, dst)


def discard_previous(cfg: RunConfig, previous: Path | None) -> None:
    """Remove the hard-linked copy ``previous_run`` made (never the user's folder)."""
    parsed = parse_temp_name(previous.name) if previous is not None else None
    if parsed is not None and parsed[0] == "partial" and parsed[3].startswith("previous-"):
        shutil.rmtree(previous, ignore_errors=True)


def compare_after(cfg: RunConfig, previous: Path | None) -> tuple[Path | None, list[dict]]:
    """Compare ``previous`` with the run just published; (the comparison's folder, its gate verdicts)."""
    if previous is None:
        return None, []
    from reportgen.compare import compare_runs

    out = cfg.run.output.parent / f"{cfg.run.output.name}-compare"
    try:
        result = compare_runs(previous, cfg.run.output, out, fail_on=cfg.compare_checks, force=True,
                              pdf=bool(cfg.report.pdf))
    finally:
        discard_previous(cfg, previous)
    checks = [{"condition": f"compare: {c.condition}", "value": c.value, "failed": c.failed, "detail": c.detail}
              for c in result.checks]
    log.info("compared with %s: %s", cfg.compare_to, result.html)
    return result.output, checks
