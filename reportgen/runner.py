"""One run, as its list of stages; each stage is a module named for what it does, with typed hand-offs.

    prepare  (prepare.py)   config → the model's card, every layer name checked
    discover (images.py)    the image folder → ImageRecords, and the files skipped with their reasons
    plan     (plan.py)      → RunPlan: each image's ResultKeys and cache keys, the batch groups that need the model
    gather   (gather.py)    → ImageResult per image: from the cache, or batch by batch through the model (compute.py)
    draw     (draw.py)      → each image's figures and raw maps in the staging folder, and its report entry
    describe (describe.py)  → ReportContext: the plain data the pages and the manifest read
    publish  (publish.py)   → report.html, report.pdf, manifest.json (last), swapped into place in one step

No stage imports a later one. The run is built in a staging folder beside the output, so an interrupted run never
destroys a finished report; nothing accumulates per image in memory but the small report entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone

from tqdm import tqdm

from reportgen import distributed
from reportgen.atomic import describe_os_error
from reportgen.audit import Annotations, audit_run, check_gates, load_annotations
from reportgen.auditsummary import check_classes
from reportgen.cache import TensorCache
from reportgen.compare_to import compare_after, discard_previous, previous_run
from reportgen.config import RunConfig
from reportgen.describe import describe
from reportgen.draw import DrawStage
from reportgen.errors import ConfigError, DataError, RenderError
from reportgen.figcache import FigureStore
from reportgen.gather import gather
from reportgen.images import IMAGE_EXTENSIONS, Skipped, discover
from reportgen.layerfigs import filter_figures, kernel_arrays, kernel_galleries
from reportgen.outfolder import new_run_id, placement_problems
from reportgen.paperfigs import check_figures, write_paper_figures
from reportgen.plan import plan
from reportgen.prepare import ModelHandle, prepare
from reportgen.provenance import provenance
from reportgen.publish import discard, open_staging, publish
from reportgen.results import RunResult, RunStats

log = logging.getLogger(__name__)

__all__ = ["run", "prepare", "RunResult", "RunStats"]


def run(cfg: RunConfig, *, force: bool = False, progress: bool = False, model: ModelHandle | None = None,
        pdf_job=None, prior: distributed.Prior | None = None) -> RunResult:
    """Run ``cfg`` end to end and return where the report is.

    Args:
        model: the prepared model, when the caller has it.
        pdf_job: a ``report.PdfJob`` the caller started early (the CLI does, before loading anything); the run
            finishes or cancels it. Without one the run starts its own, so its start-up overlaps with the drawing.
        prior: under torchrun, what every rank did before rank 0 publishes (``distributed.py``): the run's
            clock and the ranks' summed stats. Internal.
    """
    if prior is None and distributed.requested():  # torchrun: the batch groups split over the ranks, then this
        return distributed.run(cfg, force=force, progress=progress, model=model, pdf_job=pdf_job, publish=run)
    t_start, started = (prior.t_start, prior.started) if prior else (time.perf_counter(), datetime.now(timezone.utc))
    _check_placement(cfg)
    previous = previous_run(cfg)  # compare_to: checked now; kept aside when this run replaces it
    model = model or prepare(cfg)
    records, skipped = _discover(cfg)
    notes = early_checks(cfg, model, records)
    stats = prior.stats if prior else RunStats()
    stats.images_total = len(records) + len(skipped)
    staging = open_staging(cfg.run.output, force)
    cache = TensorCache(cfg.run.cache_dir, stats)
    if cache.sweep() + FigureStore(cfg.run.cache_dir / "figures").sweep():
        log.info("removed temporary files of killed runs from the cache %s", cfg.run.cache_dir)
    bar = tqdm(total=len(records), desc="images", unit="img", disable=not progress, leave=False)
    pdf_job, drawing = _pdf_job(cfg, pdf_job), None
    try:
        the_plan = plan(cfg, model.card, model.labels, records, cache)
        skipped.extend(the_plan.known_bad)
        model.remember()
        kernels, filters = kernel_galleries(cfg, model, cache, staging), filter_figures(cfg, model, cache, staging)
        drawing = DrawStage(cfg, model.labels, the_plan, staging, stats, on_image=lambda: bar.update(1),
                            cache=cache, model=model)
        still_warm = drawing.restore()
        drawing.start(model.loaded().device.type if the_plan.cold_groups else "none")
        for item in gather(the_plan, model, cache, stats, cfg.run, display_size=cfg.report.image_size,
                           warm=still_warm):
            if isinstance(item, Skipped):
                skipped.append(item)
                bar.update(1)
            else:
                drawing.submit(item)
        images, unwritten = drawing.finish()
        skipped = sorted([*skipped, *unwritten], key=lambda sk: sk.rel)
        bar.close()
        _check_some_drawn(cfg, images, records, skipped)
        write_paper_figures(staging, cfg, images, kernels=kernel_arrays(cfg, model, cache))
        stats.device, stats.images_ok, stats.images_skipped = model.device_label(), len(images), len(skipped)
        stats.duration_s = time.perf_counter() - t_start
        audit = audit_run(cfg, the_plan, cache, images, model.labels, model.card.preprocess, notes, staging,
                          len(skipped))
        checks = check_gates(cfg.checks, audit.facts)
        context = describe(cfg, model.card, stats.device, stats, records, skipped, kernels, filters, images, started,
                           maps_root=staging)
        context = replace(context, audit=audit.section, checks=checks,
                          provenance={**context.provenance, **provenance(cfg, model.card, records, stats)})
        result = publish(staging, context, cfg.run.output, stats, run_id=new_run_id(), cache_dir=cfg.run.cache_dir,
                         pdf_job=pdf_job, progress=progress, started=t_start)
        result = replace(result, checks=tuple(checks))
    except BaseException as exc:
        discard_previous(cfg, previous)
        _abandon(bar, drawing, pdf_job, staging)
        if isinstance(exc, OSError):  # writing a figure, the HTML or the manifest failed (e.g. the disk is full)
            raise RenderError(f"cannot write the report for {cfg.run.output}: {describe_os_error(exc)}; "
                              f"the previous report and every finished cache entry are kept") from exc
        raise
    compared, gates = compare_after(cfg, previous)
    return replace(result, checks=(*result.checks, *gates), comparison=compared)


def early_checks(cfg: RunConfig, model: ModelHandle, records: list) -> Annotations:
    """What can be wrong before any model work, checked then (every rank of a torchrun run too): the metadata and
    boxes files (returned, read), the images and classes ``figures:`` names."""
    notes = load_annotations(cfg)
    check_figures(cfg, (rec.rel for rec in records))
    check_classes(cfg, model.labels)
    return notes


def _check_placement(cfg: RunConfig) -> None:
    """The output/cache rules again (the config checked them; a config built in code may not have been)."""
    misplaced = placement_problems(output=cfg.run.output, cache_dir=cfg.run.cache_dir, data=cfg.data.path,
                                   config=cfg.path, where=cfg.where)
    if misplaced:
        raise ConfigError(misplaced)


def _discover(cfg: RunConfig):
    records, skipped = discover(cfg.data.path, cfg.data.limit)
    if not records:
        what = f"; {len(skipped)} could not be read" if skipped else ""
        raise DataError(f"no image files found in {cfg.data.path}{what} "
                        f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return records, skipped


def _pdf_job(cfg: RunConfig, pdf_job):
    """The PDF printer for this run: the caller's, a new one, or none (``report.pdf: false``)."""
    if not cfg.report.pdf:
        if pdf_job is not None:
            pdf_job.cancel()
        return None
    if pdf_job is None:
        from reportgen.report import PdfJob

        pdf_job = PdfJob()
    return pdf_job


def _check_some_drawn(cfg: RunConfig, images: list[dict], records: list, skipped: list[Skipped]) -> None:
    if not images:
        raise DataError(f"none of the {len(records)} image files in {cfg.data.path} could be decoded; "
                        f"first: {skipped[0].rel}: {skipped[0].reason}")


def _abandon(bar, drawing: DrawStage | None, pdf_job, staging) -> None:
    """A failed or interrupted run: stop its helpers and remove its staging folder; the previous report stays."""
    bar.close()
    if drawing is not None:
        drawing.close()
    if pdf_job is not None:
        pdf_job.cancel()
    discard(staging)
