"""Stage 4 of a run: the report's description — the plain data every page, the PDF and ``manifest.json`` read.

``describe(...) -> ReportContext`` gathers what the run knows (model, dataset, methods, skipped files, the stats
and every image's entry) into one frozen record. ``ReportContext.as_dict()`` is what the template reads and what
``manifest.json`` holds, so the two never disagree. New report sections are one more field and one function here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reportgen import __version__
from reportgen.config import RunConfig
from reportgen.images import ImageRecord, Skipped
from reportgen.methods import get_method
from reportgen.modelcard import ModelCard
from reportgen.results import RunStats

__all__ = ["ReportContext", "describe"]


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
    return {"root": str(cfg.data.path), "classes": [{"name": k, "count": v} for k, v in sorted(classes.items())],
            "unlabelled": sum(1 for r in records if r.label is None)}


def _methods_used(cfg: RunConfig) -> list[dict[str, str]]:
    used = (["kernels"] * bool(cfg.kernels.layers) + ["activation_max"] * bool(cfg.filters.layers)
            + ["feature_maps"] * bool(cfg.feature_maps.layers) + list(cfg.cams.methods))
    return [{"name": s.name, "title": s.title, "paper": s.paper, "description": s.description}
            for s in (get_method(m) for m in used)]


def describe(cfg: RunConfig, card: ModelCard, device: str, stats: RunStats, records: list[ImageRecord],
             skipped: list[Skipped], kernels: list[dict], filters: list[dict], images: list[dict],
             started: datetime) -> ReportContext:
    """The report's description of a finished run (``records``: every image found, drawn or skipped)."""
    return ReportContext(
        title=cfg.title, generated_at=started.isoformat(timespec="seconds"), config_path=str(cfg.path),
        run=_run_facts(cfg, device, stats), model=_model_facts(card), dataset=_dataset_facts(cfg, records),
        methods=_methods_used(cfg), skipped=[{"path": s.rel, "reason": s.reason} for s in skipped],
        kernels=kernels, filters=filters, images=images,
    )
