"""Draw each image's figures while the model works on the next batch: inline, or in worker processes.

``Drawer(workers=0)`` draws in the calling process, at once. With ``workers >= 1`` each image goes to a pool of
spawned processes (numpy + Pillow only: they never import torch), so drawing and writing the figures overlap
with the model's next batch instead of following it; on a GPU that keeps the device busy. Workers start when
the run starts (their start-up overlaps with loading the model), each receives the run's fixed drawing
context once, and at most ``2 x workers`` images wait for a worker at any time, so memory does not grow with
the folder. A worker dies with its run (``PR_SET_PDEATHSIG``), even when the run is killed. An image whose files
cannot be written (``drawing.ImageNotWritten``) is listed in ``Drawer.skipped`` with its reason; the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from reportgen.atomic import die_with_parent
from reportgen.drawing import DrawContext
from reportgen.images import ImageRecord, Skipped
from reportgen.results import ImageResult

__all__ = ["Drawer"]

log = logging.getLogger(__name__)


_context: DrawContext | None = None  # a worker's copy


def _init_worker(ctx: DrawContext, parent_pid: int) -> None:
    global _context
    die_with_parent(parent_pid)
    _context = ctx
    import reportgen.drawing  # noqa: F401  - pay the import before the first image arrives


def _draw(ctx: DrawContext, image: ImageResult) -> tuple[dict | None, float, str | None]:
    """(entry, seconds, None), or (None, seconds, why) when the image's files could not be written."""
    from reportgen.drawing import ImageNotWritten, draw_image

    t0 = time.perf_counter()
    try:
        entry = draw_image(ctx, image)
    except ImageNotWritten as exc:
        return None, time.perf_counter() - t0, str(exc)
    return entry, time.perf_counter() - t0, None


def _draw_in_worker(image: ImageResult) -> tuple[dict | None, float, str | None]:
    assert _context is not None, "worker started without its drawing context"
    return _draw(_context, image)


def _ready() -> bool:
    return True


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes without re-running the caller's main script in them.

    A spawned process normally imports the parent's ``__main__`` (its file, or ``-m`` module) first, which
    fails for a script read from stdin and re-runs any script without an ``if __name__ == "__main__"`` guard.
    The drawing workers need only reportgen's modules, so while they start, ``__main__`` shows no file or spec.
    """
    main = sys.modules["__main__"]
    missing = object()
    saved = {name: getattr(main, name, missing) for name in ("__file__", "__spec__")}
    main.__spec__ = None
    if saved["__file__"] is not missing:
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is not missing:
                setattr(main, name, value)


class Drawer:
    """Draws images as they come; ``finish`` returns every entry by record index, and ``skipped`` lists the
    images whose files could not be written, with the reason.

    Args:
        on_drawn: called in this process with (record index, entry) once per finished image (figure cache,
            progress bar, crash-test fail point); not for a skipped one.
    """

    def __init__(self, ctx: DrawContext, workers: int, on_drawn: Callable[[int, dict], None] = lambda i, e: None):
        self.ctx = ctx
        self.on_drawn = on_drawn
        self.entries: dict[int, dict] = {}
        self.skipped: list[Skipped] = []
        self.draw_seconds = 0.0  # time spent drawing (summed over the workers)
        self.wait_seconds = 0.0  # time this process spent on drawing: all of it inline, else waiting for workers
        self._pending: deque[tuple[ImageRecord, Future]] = deque()
        self._limit = 2 * workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(ctx, os.getpid()))
            with _main_module_hidden():
                for _ in range(workers):
                    self._pool.submit(_ready)  # starts one process each, now, while the model loads

    def submit(self, image: ImageResult) -> None:
        if self._pool is None:
            entry, seconds, why = _draw(self.ctx, image)
            self.wait_seconds += seconds
            self._done(image.record, entry, seconds, why)
            return
        self._collect(block=False)
        while len(self._pending) >= self._limit:
            self._collect(block=True)
        self._pending.append((image.record, self._pool.submit(_draw_in_worker, image)))

    def _done(self, rec: ImageRecord, entry: dict | None, seconds: float, why: str | None) -> None:
        self.draw_seconds += seconds
        if entry is None:
            log.warning("skipped %s: %s", rec.rel, why)
            self.skipped.append(Skipped(rec.rel, why or "cannot write its figures"))
            return
        self.entries[rec.index] = entry
        self.on_drawn(rec.index, entry)

    def _collect(self, block: bool) -> None:
        """Take finished images off the front of the queue (waiting for the first one if ``block``)."""
        while self._pending and (block or self._pending[0][1].done()):
            rec, future = self._pending.popleft()
            t0 = time.perf_counter()
            entry, seconds, why = future.result()  # a worker's exception is raised here
            self.wait_seconds += time.perf_counter() - t0
            self._done(rec, entry, seconds, why)
            block = False

    def finish(self) -> dict[int, dict]:
        """Wait for every image; return the entries by record index, and stop the workers."""
        while self._pending:
            self._collect(block=True)
        self.close()
        return self.entries

    def close(self) -> None:
        """Stop the workers (idempotent); images still waiting are dropped."""
        if self._pool is not None:
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
