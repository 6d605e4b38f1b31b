"""Stage 4 of a run: the report's description — the plain data every page, the PDF and ``manifest.json`` read.

``describe(...) -> ReportContext`` gathers what the run knows (model, dataset, methods, skipped files, the stats
and every image's entry) into one frozen record. ``ReportContext.as_dict()`` is what the template reads and what
``manifest.json`` holds, so the two never disagree. New report sections are one more field and one function here.

Nothing of the author's machine is in the context but its ``provenance`` block: the data folder shows as its name
and files relative to it, the config and weights by their names, and any text that quotes an absolute folder of
the run (a decoder's message about a skipped file) has it cut to its name (``shareable``). ``report.redact_paths``
leaves them out of ``provenance`` too (``redacted: true``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reportgen import __version__
from reportgen.config import RunConfig
from reportgen.images import ImageRecord, Skipped
from reportgen.methods import get_method
from reportgen.modelcard import ModelCard
from reportgen.names import readable
from reportgen.overview import overview
from reportgen.pdfpick import pick_pdf_images
from reportgen.results import RunStats

__all__ = ["ReportContext", "describe", "shareable"]


@dataclass(frozen=True)
class ReportContext:
    """Everything the report shows, as plain JSON-ready data (see ``describe``)."""

    title: str
    generated_at: str
    config_path: str
    run: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    methods: list[dict[str, str]]
    skipped: list[dict[str, str]]
    kernels: list[dict]
    filters: list[dict]
    images: list[dict]
    reportgen_version: str = __version__
    overview: dict[str, Any] = field(default_factory=dict)  # reportgen.overview
    pdf: dict[str, Any] = field(default_factory=dict)  # mode, the summary's images with reasons (reportgen.pdfpick)
    standalone: dict[str, Any] = field(default_factory=dict)  # report.self_contained: write it, its budget
    provenance: dict[str, Any] = field(default_factory=dict)  # the run's absolute folders (none: redact_paths)
    audit: dict[str, Any] = field(default_factory=dict)  # groups, trust metrics, localization (reportgen.audit)
    checks: list[dict[str, Any]] = field(default_factory=list)  # gate conditions: condition, value, failed, detail

    def as_dict(self) -> dict[str, Any]:
        """The context as the template and ``manifest.json`` read it (same keys as the fields)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _run_facts(cfg: RunConfig, device: str, stats: RunStats) -> dict[str, Any]:
    return {
        "device": device, "duration_s": round(stats.duration_s, 2), "images_total": stats.images_total,
        "images_ok": stats.images_ok, "images_skipped": stats.images_skipped, "batches": stats.batches,
        "batch_size": cfg.run.batch_size, "cache_hits": stats.cache_hits, "cache_misses": stats.cache_misses,
        "forward_passes": stats.forward_passes, "backward_passes": stats.backward_passes,
    }


def _model_facts(card: ModelCard) -> dict[str, Any]:
    pre = card.preprocess
    return {
        "name": card.name, "source": card.source, "spec": card.spec, "weights": card.weights_source,
        "weights_digest": card.digest[:12], "input_size": list(pre.size), "resize": pre.resize, "mean": list(pre.mean),
        "std": list(pre.std), "num_parameters": card.num_parameters, "num_classes": card.num_classes,
    }


def _dataset_facts(cfg: RunConfig, records: list[ImageRecord]) -> dict[str, Any]:
    classes: dict[str, int] = {}
    for rec in records:
        if rec.label is not None:
            classes[rec.label] = classes.get(rec.label, 0) + 1
    return {"root": Path(cfg.data.path).name, "classes": [{"name": k, "count": v} for k, v in sorted(classes.items())],
            "unlabelled": sum(1 for r in records if r.label is None)}


def _methods_used(cfg: RunConfig) -> list[dict[str, str]]:
    used = (["kernels"] * bool(cfg.kernels.layers) + ["activation_max"] * bool(cfg.filters.layers)
            + ["feature_maps"] * bool(cfg.feature_maps.layers) + list(cfg.cams.methods))
    return [{"name": s.name, "title": s.title, "paper": s.paper, "description": s.description}
            for s in (get_method(m) for m in used)]


def _provenance(cfg: RunConfig) -> dict[str, Any]:
    if cfg.report.redact_paths:
        return {"redacted": True}
    return {"redacted": False, "data_root": str(cfg.data.path), "output": str(cfg.run.output),
            "cache_dir": str(cfg.run.cache_dir)}


def _private_folders(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(absolute folder, what a path under it starts with instead, what the folder alone shows as) for every folder
    of this machine the report could quote, the longest first: the data folder's files show relative to it, the
    other folders by their names, the home folder as ``~``."""
    rows = []
    for folder in (cfg.data.path, cfg.run.output, cfg.run.cache_dir, Path(cfg.path).parent):
        try:
            folder = Path(folder).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if len(folder.parts) > 1:
            under = "" if folder == Path(cfg.data.path).resolve() else f"{readable(folder.name)}/"
            for text in {str(folder), readable(str(folder))}:  # as given, and as a readable text quotes it
                rows.append((text, under, readable(folder.name)))
    home = str(Path.home())
    if home not in ("", "/"):
        rows.append((home, "~/", "~"))
    seen: dict[str, tuple[str, str, str]] = {}
    for row in rows:
        seen.setdefault(row[0], row)
    return sorted(seen.values(), key=lambda r: -len(r[0]))


def shareable(value: Any, folders: list[tuple[str, str, str]]) -> Any:
    """``value`` (plain data) with every absolute folder of ``folders`` cut out of its strings (see
    ``_private_folders``): ``/abs/data/cats/x.jpg`` → ``cats/x.jpg``, ``/abs/data`` → ``data``."""
    if isinstance(value, str):
        if "/" not in value:
            return value
        for folder, under, alone in folders:
            if folder in value:
                value = value.replace(folder + "/", under).replace(folder, alone)
        return value
    if isinstance(value, dict):
        return {k: shareable(v, folders) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shareable(v, folders) for v in value]
    return value


def describe(cfg: RunConfig, card: ModelCard, device: str, stats: RunStats, records: list[ImageRecord],
             skipped: list[Skipped], kernels: list[dict], filters: list[dict], images: list[dict],
             started: datetime, maps_root: Path | None = None) -> ReportContext:
    """The report's description of a finished run (``records``: every image found, drawn or skipped).

    Args:
        maps_root: the folder the images' ``maps_file`` paths are relative to (the staging folder): the overview
            reads the maps there for its alerts (maps that repeat or are constant); None leaves those out.
    """
    methods = _methods_used(cfg)
    skipped_rows = [{"path": s.rel, "reason": s.reason} for s in skipped]
    folders = _private_folders(cfg)
    pdf = {"mode": cfg.report.pdf or False, "lists": list(cfg.report.pdf_images),
           "max_images": cfg.report.pdf_max_images, "images": [], "left_out": []}
    if cfg.report.pdf == "summary":
        pdf.update(pick_pdf_images(images, cfg.report.pdf_images, cfg.report.pdf_max_images))
    model = _model_facts(card)
    if model.get("weights") and Path(model["weights"]).is_absolute():  # a weights file: its name
        model["weights"] = Path(model["weights"]).name
    shared = shareable({
        "model": model, "skipped": skipped_rows, "kernels": kernels, "filters": filters, "images": images,
        "overview": overview(images, skipped_rows, maps_root, {m["name"]: m["title"] for m in methods}),
    }, folders)
    return ReportContext(
        title=cfg.title, generated_at=started.isoformat(timespec="seconds"), config_path=Path(cfg.path).name,
        run=_run_facts(cfg, device, stats), model=shared["model"], dataset=_dataset_facts(cfg, records),
        methods=methods, skipped=shared["skipped"], kernels=shared["kernels"], filters=shared["filters"],
        images=shared["images"], overview=shared["overview"], pdf=pdf,
        standalone={"write": cfg.report.self_contained, "budget_mb": cfg.report.self_contained_budget_mb},
        provenance=_provenance(cfg),
    )
