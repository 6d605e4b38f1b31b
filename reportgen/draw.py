"""Stage 3 of a run: every image's figures and raw-maps file in the staging folder, and its plain-data report entry.

``DrawStage`` first links the figures of cached images drawn before from the figure cache (no decoding, no
drawing), then draws what ``gather`` hands it, inline or in worker processes (``drawpool.Drawer``), keeping each
newly drawn image's files in the figure cache for the next run.

With a dataset-wide colour scale (``report.normalize: per_method | shared``, see ``mapscales``) no panel can be
drawn before every map's range is known. Then the stage defers: while ``gather`` computes the cold images it only
notes their ranges (``ScaleTable``: two floats per method and layer), the cached images' ranges are read from the
tensor cache without decoding a photo, and ``finish`` draws every image in a second pass over the cache (figures
linked from the figure cache where the scales are unchanged). Memory stays flat; the cost is one more read of
each image's cached maps and, for the images computed in this run, a second decode of the photo.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from reportgen import failpoints
from reportgen.cache import TensorCache
from reportgen.config import RunConfig
from reportgen.drawing import DrawContext
from reportgen.drawpool import Drawer
from reportgen.figcache import FigureStore, figure_key
from reportgen.images import Skipped
from reportgen.mapscales import DATASET_WIDE, ScaleTable
from reportgen.methods import get_method
from reportgen.plan import RunPlan
from reportgen.results import ImageResult, ResultKey, RunStats

_CONCEPTS = "dff_concepts"  # concept maps (dff) are drawn on their own scale: not in the table

__all__ = ["DrawStage", "draw_workers"]


def draw_workers(cfg: RunConfig, device: str, cold: int) -> int:
    """Processes that draw while the model computes: ``run.draw_workers``, or for ``auto``:

    * none on the CPU: the model's threads use every core, and on this project's 2-core machine one drawing
      process made a 200-image run 17% slower (8.8 s -> 10.3 s), two as slow;
    * none when fewer than 32 images need the model (a process costs ~0.3 s to start) or none does;
    * on a GPU, the cores left after the run itself and its decoding workers, at most 8.
    """
    chosen = cfg.run.draw_workers
    if isinstance(chosen, int):
        return chosen
    if not device.startswith("cuda") or cold < 32:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 2 - cfg.run.workers))


class DrawStage:
    """Draws a run's images into ``staging``; ``finish`` returns the report entries in folder order.

    Args:
        on_image: called once per image done (drawn, linked or skipped), for the progress bar.
        cache, model: the tensor cache and the model, needed only with a dataset-wide ``report.normalize``
            (the second pass reads the maps back from the cache).
    """

    def __init__(self, cfg: RunConfig, class_names: list[str], plan: RunPlan, staging: Path, stats: RunStats,
                 on_image: Callable[[], None] = lambda: None, *, cache: TensorCache | None = None, model=None):
        cam_plan = [(m, get_method(m).title, get_method(m).needs_layer) for m in cfg.cams.methods]
        self.ctx = DrawContext(staging, class_names, cfg.report, cam_plan, cfg.cams.layers, cfg.feature_maps.layers,
                               plan.spec.target_name)
        self.cfg, self.plan, self.stats, self.on_image = cfg, plan, stats, on_image
        self.class_names, self.cam_plan = class_names, cam_plan
        self.cache, self.model = cache, model
        self.figures = FigureStore(cfg.run.cache_dir / "figures", stats)
        self.table = ScaleTable(cfg.report.normalize) if cfg.report.normalize in DATASET_WIDE else None
        if self.table is not None and (cache is None or model is None):
            raise ValueError(f"report.normalize {cfg.report.normalize} needs the tensor cache and the model")
        self.keys = {} if self.table is not None else {rec.index: self._key(p) for p, rec in enumerate(plan.records)}
        self.entries: dict[int, dict] = {}
        self.drawer: Drawer | None = None
        self.deferred: list[int] = []  # positions whose drawing waits for the dataset-wide scales
        self._position = {rec.index: p for p, rec in enumerate(plan.records)}
        self._device = "none"

    def _key(self, p: int, scales: dict | None = None) -> str:
        rec = self.plan.records[p]
        return figure_key(rec, self.plan.keys[p], self.cfg.report, self.class_names, self.cam_plan,
                          self.cfg.cams.layers, self.cfg.feature_maps.layers, self.plan.true_index[p], scales)

    def restore(self) -> list[int]:
        """Link the kept figures of the fully cached images; return the positions of those still to draw.

        With a dataset-wide scale: read the cached images' map ranges instead (no photo decoded) and return only
        those whose results could not be read (``gather`` recomputes them); all are drawn by ``finish``.
        """
        t0 = time.perf_counter()
        still = []
        for p in self.plan.warm:
            if self.table is not None:
                if self._note_cached(p):
                    self.deferred.append(p)
                else:
                    still.append(p)
                continue
            rec = self.plan.records[p]
            entry = self.figures.restore(self.keys[rec.index], self.ctx.root)
            if entry is None:
                still.append(p)
                continue
            self.entries[rec.index] = entry
            self.stats.cache_hits += len(self.plan.keys[p])  # the results the figures were drawn from, unread
            self.on_image()
        self.stats.seconds["draw_wait"] += time.perf_counter() - t0
        return still

    def undrawn(self, positions: list[int]) -> list[int]:
        """The positions among ``positions`` whose figures are not kept in the figure cache (none linked, nothing
        counted): what a torchrun rank draws for rank 0 to link (``distributed.py``)."""
        return [p for p in positions
                if not self.figures.has(self.keys[self.plan.records[p].index])]

    def _cam_keys(self, p: int) -> list[ResultKey]:
        return [k for k in self.plan.keys[p] if k.kind == "cam"]

    def _note_cached(self, p: int) -> bool:
        """Add a cached image's map ranges to the table; False when one of its entries cannot be read."""
        assert self.table is not None and self.cache is not None
        found = []
        for key in self._cam_keys(p):
            hit = self.cache.get(self.plan.keys[p][key])
            if hit is None:
                return False
            found.append((key, hit))
        for key, (tensors, meta) in found:
            if _CONCEPTS not in meta:
                self.table.add(key.method, key.layer, tensors["maps"])
        return True

    def start(self, device: str) -> None:
        """Start drawing (and the worker processes, if any) for a model on ``device`` ("none": all cached)."""
        self._device = device
        if self.table is None:
            self.stats.draw_workers = draw_workers(self.cfg, device, len(self.plan.cold))
            self.drawer = Drawer(self.ctx, self.stats.draw_workers, on_drawn=self._drawn)

    def _drawn(self, index: int, entry: dict) -> None:
        self.figures.store(self.keys[index], self.ctx.root, entry)
        failpoints.reached("draw")
        self.on_image()

    def submit(self, image: ImageResult) -> None:
        if self.table is not None:  # ranges only: drawn by finish, once every range is known
            for key, (tensors, meta) in image.results.items():
                if key.kind == "cam" and _CONCEPTS not in meta:
                    self.table.add(key.method, key.layer, tensors["maps"])
            self.deferred.append(self._position[image.record.index])
            return
        assert self.drawer is not None, "DrawStage.start was not called"
        self.drawer.submit(image)

    def finish(self) -> tuple[list[dict], list[Skipped]]:
        """Wait for every image; the entries in folder order, and the images whose files could not be written."""
        skipped: list[Skipped] = []
        if self.table is not None:
            skipped = self._draw_deferred()
        assert self.drawer is not None, "DrawStage.start was not called"
        self.entries.update(self.drawer.finish())
        self.stats.seconds["draw"] += self.drawer.draw_seconds
        self.stats.seconds["draw_wait"] += self.drawer.wait_seconds
        return [self.entries[i] for i in sorted(self.entries)], [*skipped, *self.drawer.skipped]

    def _draw_deferred(self) -> list[Skipped]:
        """The second pass of a dataset-wide scale: link or draw every image gathered, now that the scales are
        known. Returns the images that could not be read again."""
        from reportgen.gather import gather

        assert self.table is not None
        scales = self.table.scales()
        self.ctx = replace(self.ctx, scales=scales)
        self.stats.draw_workers = draw_workers(self.cfg, self._device, len(self.deferred))
        self.drawer = Drawer(self.ctx, self.stats.draw_workers, on_drawn=self._drawn)
        todo = []
        t0 = time.perf_counter()
        for p in sorted(self.deferred):
            rec = self.plan.records[p]
            self.keys[rec.index] = self._key(p, scales)
            entry = self.figures.restore(self.keys[rec.index], self.ctx.root)
            if entry is None:
                todo.append(p)
            else:
                self.entries[rec.index] = entry
                self.on_image()
        self.stats.seconds["draw_wait"] += time.perf_counter() - t0
        skipped = []
        again = replace(self.plan, cold_groups=())
        for item in gather(again, self.model, self.cache, self.stats, self.cfg.run,
                           display_size=self.cfg.report.image_size, warm=todo):
            if isinstance(item, Skipped):
                skipped.append(item)
                self.on_image()
            else:
                self.drawer.submit(item)
        return skipped

    def close(self) -> None:
        if self.drawer is not None:
            self.drawer.close()
