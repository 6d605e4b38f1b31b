"""Stage 3 of a run: every image's figures and raw-maps file in the staging folder, and its plain-data report entry.

``DrawStage`` first links the figures of cached images drawn before from the figure cache (no decoding, no
drawing), then draws what ``gather`` hands it, inline or in worker processes (``drawpool.Drawer``), keeping each
newly drawn image's files in the figure cache for the next run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from reportgen import failpoints
from reportgen.config import RunConfig
from reportgen.drawing import DrawContext
from reportgen.drawpool import Drawer
from reportgen.figcache import FigureStore, figure_key
from reportgen.images import Skipped
from reportgen.methods import get_method
from reportgen.plan import RunPlan
from reportgen.results import ImageResult, RunStats

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
    """

    def __init__(self, cfg: RunConfig, class_names: list[str], plan: RunPlan, staging: Path, stats: RunStats,
                 on_image: Callable[[], None] = lambda: None):
        cam_plan = [(m, get_method(m).title, get_method(m).needs_layer) for m in cfg.cams.methods]
        self.ctx = DrawContext(staging, class_names, cfg.report, cam_plan, cfg.cams.layers, cfg.feature_maps.layers,
                               plan.spec.target_name)
        self.cfg, self.plan, self.stats, self.on_image = cfg, plan, stats, on_image
        self.figures = FigureStore(cfg.run.cache_dir / "figures", stats)
        self.keys = {rec.index: figure_key(rec, plan.keys[p], cfg.report, class_names, cam_plan, cfg.cams.layers,
                                           cfg.feature_maps.layers, plan.true_index[p])
                     for p, rec in enumerate(plan.records)}
        self.entries: dict[int, dict] = {}
        self.drawer: Drawer | None = None

    def restore(self) -> list[int]:
        """Link the kept figures of the fully cached images; return the positions of those still to draw."""
        t0 = time.perf_counter()
        still = []
        for p in self.plan.warm:
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

    def start(self, device: str) -> None:
        """Start drawing (and the worker processes, if any) for a model on ``device`` ("none": all cached)."""
        self.stats.draw_workers = draw_workers(self.cfg, device, len(self.plan.cold))
        self.drawer = Drawer(self.ctx, self.stats.draw_workers, on_drawn=self._drawn)

    def _drawn(self, index: int, entry: dict) -> None:
        self.figures.store(self.keys[index], self.ctx.root, entry)
        failpoints.reached("draw")
        self.on_image()

    def submit(self, image: ImageResult) -> None:
        assert self.drawer is not None, "DrawStage.start was not called"
        self.drawer.submit(image)

    def finish(self) -> tuple[list[dict], list[Skipped]]:
        """Wait for every image; the entries in folder order, and the images whose files could not be written."""
        assert self.drawer is not None, "DrawStage.start was not called"
        self.entries.update(self.drawer.finish())
        self.stats.seconds["draw"] = self.drawer.draw_seconds
        self.stats.seconds["draw_wait"] += self.drawer.wait_seconds
        return [self.entries[i] for i in sorted(self.entries)], list(self.drawer.skipped)

    def close(self) -> None:
        if self.drawer is not None:
            self.drawer.close()
