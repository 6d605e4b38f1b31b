"""Stage 5 of a run: the report's files written into the staging folder, then moved into place in one step.

``open_staging(output, force)`` checks the output folder may be written (only a folder reportgen wrote is ever
replaced: ``outfolder.check_replaceable``), tidies what killed runs left beside it and makes the staging folder the
run builds in. ``publish(staging, context, ...)`` renders the pages (``report.html``, ``images/<id>.html``, with
``report.self_contained`` also ``report-standalone.html``), prints the PDF from its own print HTML (removed after),
writes the marker and
``manifest.json`` last, and swaps the staging folder into place, so an interrupted run never destroys a finished
report. ``discard(staging)`` removes a failed run's staging folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from reportgen import __version__
from reportgen.atomic import describe_os_error, restore_old, swap_into_place, sweep, temp_name, write_text_atomically
from reportgen.describe import ReportContext
from reportgen.errors import UsageError
from reportgen.names import readable_data
from reportgen.outfolder import check_replaceable, write_marker
from reportgen.results import FORMAT_VERSION, RunResult, RunStats

__all__ = ["open_staging", "publish", "discard"]

log = logging.getLogger(__name__)


def open_staging(output: Path, force: bool) -> Path:
    """Check ``output`` may be written; tidy what killed runs left beside it; make and return the staging folder."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if restore_old(output):  # a run killed while publishing had moved the previous report aside
            log.warning("put back the previous report in %s, left aside by a run that was killed", output)
        swept = sweep(output.parent, endswith=f"-{output.name}")
        if swept:
            log.info("removed %d half-built report folder(s) of killed runs beside %s", swept, output)
        check_replaceable(output, force)
        staging = output.parent / temp_name("partial", output.name)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise UsageError(f"cannot write the report to {output}: {describe_os_error(exc)}") from exc
    return staging


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, context: ReportContext, output: Path, stats: RunStats, *, run_id: str, cache_dir: Path,
            pdf_job=None, progress: bool = False, started: float) -> RunResult:
    """Write the pages, ``report.pdf`` (when ``pdf_job``), the marker and ``manifest.json`` into ``staging``,
    then put it at ``output`` (replacing the previous report in one step).

    Args:
        pdf_job: a started ``report.PdfJob``; finished here (its ownership passes to this call).
        started: ``time.perf_counter()`` at the start of the run, for the durations.
    """
    from reportgen.report import remove_print_files, render_html, render_print_html, render_standalone

    data = context.as_dict()
    t0 = time.perf_counter()
    render_html(data, staging)
    if data["standalone"].get("write"):
        render_standalone(data, staging, budget_mb=float(data["standalone"].get("budget_mb", 50.0)))
    stats.seconds["html"] = time.perf_counter() - t0
    pdf = None
    if pdf_job is not None:
        t0 = time.perf_counter()
        if progress:
            tqdm.write("writing PDF ...")
        printed = render_print_html(data, staging)
        try:
            pdf = pdf_job.finish(printed, staging / "report.pdf")
        finally:
            remove_print_files(staging)
        stats.seconds["pdf"] = time.perf_counter() - t0
    stats.duration_s = time.perf_counter() - started
    data["run"] = {**data["run"], "duration_s": round(stats.duration_s, 2)}
    redacted = bool((data.get("provenance") or {}).get("redacted"))
    shown_cache = Path(cache_dir).name if redacted else str(cache_dir)  # report.redact_paths: its name only
    manifest = readable_data({**data, "format": FORMAT_VERSION, "run_id": run_id, "stats": asdict(stats),
                              "cache_dir": shown_cache})
    write_marker(staging, __version__, also=("manifest.json",))
    write_text_atomically(staging / "manifest.json", json.dumps(manifest, indent=2))  # last: the run is complete
    swap_into_place(staging, output)
    return RunResult(output, output / "report.html", output / "report.pdf" if pdf else None, output / "manifest.json",
                     stats)
