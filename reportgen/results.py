"""The typed hand-offs between the stages of a run: what a result is called, what an image carries, what a run did.

* ``ResultKey`` names one result of one image everywhere — the planner's cache keys, the compute engine's
  output, the drawing code, the maps file (``ResultKey.maps_name``) and ``reportgen.open_run``.
* ``ImageResult`` is one image with all its results, as the compute stage hands it to the drawing stage.
* ``RunStats`` is the one record of the work a run did: every stage adds to the same object.

Torch-free: a fully cached run never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports nothing at run time: the API reads FORMAT_VERSION without numpy
    import numpy as np

    from reportgen.images import ImageRecord

__all__ = ["FORMAT_VERSION", "ResultKey", "PREDICTIONS", "Entry", "ImageResult", "RunStats", "RunResult"]

# The version of the output folder's format (docs/FORMAT.md): in each maps file's metadata and in manifest.json.
FORMAT_VERSION = 1

# A cached result: named arrays and string metadata (what a safetensors file holds).
Entry = tuple["dict[str, np.ndarray]", "dict[str, str]"]

_KINDS = ("predictions", "feature_maps", "cam", "metric")


@dataclass(frozen=True, order=True)
class ResultKey:
    """One result of one image.

    Attributes:
        kind: ``predictions`` (the logits), ``feature_maps`` (top-k channels of a layer), ``cam`` (a map of a
            method at a layer, or at the input when ``layer`` is empty) or ``metric`` (the trust scores of that
            map, ``reportgen.trust``).
        method: the registered method name (``cam`` only).
        layer: the layer's qualified name; empty for predictions and input-level maps.
        target: which class a ``cam`` explains: ``predicted``, ``true``, ``topk:K`` or ``class:I``.
    """

    kind: str
    method: str = ""
    layer: str = ""
    target: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"expected a result kind in {_KINDS}, got {self.kind!r}")

    @property
    def maps_name(self) -> str:
        """The tensor's name in ``maps/<image>.safetensors`` (docs/FORMAT.md)."""
        if self.kind == "predictions":
            return "logits"
        if self.kind == "feature_maps":
            return f"feature_maps/{self.layer}"
        if self.kind == "metric":
            return f"metric/{self.method}/{self.layer}" if self.layer else f"metric/{self.method}"
        return f"cam/{self.method}/{self.layer}" if self.layer else f"cam/{self.method}"

    @staticmethod
    def feature_maps(layer: str) -> ResultKey:
        return ResultKey("feature_maps", layer=layer)

    @staticmethod
    def cam(method: str, layer: str = "", target: str = "predicted") -> ResultKey:
        return ResultKey("cam", method, layer, target)


PREDICTIONS = ResultKey("predictions")


@dataclass(frozen=True)
class ImageResult:
    """One image and every result asked of it, ready to draw.

    Attributes:
        record: the image file.
        results: every requested ``ResultKey`` → its cached entry.
        display: the photo (h, w, 3) uint8 at the report's display size.
        box: (left, top, right, bottom) of the region the network saw, in display pixels.
        true_index: the class index of the image's label, when it has one the model knows.
    """

    record: ImageRecord
    results: dict[ResultKey, Entry]
    display: np.ndarray
    box: tuple[int, int, int, int]
    true_index: int | None


@dataclass
class RunStats:
    """What a run did, filled in by every stage (the summary line, the report's footer and ``manifest.json``)."""

    device: str = ""
    images_total: int = 0
    images_ok: int = 0
    images_skipped: int = 0
    batches: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    map_passes: int = 0  # method calls that run passes of their own (perturbations, input gradients)
    metric_images: int = 0  # images pushed through the model by the trust metrics (perturbed copies)
    oom_splits: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_writes: int = 0
    figures_restored: int = 0  # images whose figures were linked from the figure cache, not drawn
    figures_stored: int = 0
    # draw: time spent drawing (summed over the drawing processes, if any); draw_wait: time the run itself spent
    # on drawing: all of it when drawing inline, else waiting for the workers to keep up or finish
    seconds: dict[str, float] = field(default_factory=lambda: {"compute": 0.0, "draw": 0.0, "draw_wait": 0.0,
                                                               "html": 0.0, "pdf": 0.0})
    draw_workers: int = 0
    processes: int = 1  # processes of the run: more under torchrun (reportgen/distributed.py)
    duration_s: float = 0.0


@dataclass(frozen=True)
class RunResult:
    """Where a finished run's report is, and what the run did."""

    output: Path
    html: Path
    pdf: Path | None
    manifest: Path
    stats: RunStats
    checks: tuple[dict, ...] = ()  # the gate conditions of ``checks:``: {condition, value, failed, detail}
    comparison: Path | None = None  # the comparison with ``compare_to`` (its folder), when there was one

    @property
    def failed_checks(self) -> list[dict]:
        return [c for c in self.checks if c["failed"]]
