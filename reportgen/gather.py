"""Stage 2 of a run: every image's results, from the cache or through the model, one ``ImageResult`` at a time.

``gather(plan, model, cache, stats, ...)`` yields, in order, the images of the cold batch groups (decoded in
batches, missing results computed by ``compute.fill_batch`` and stored) and then the fully cached images (decoded
for display only; the model and torch are not touched). An image that cannot be decoded is yielded as a
``Skipped`` with its reason, and the reason is remembered by the image's bytes so a rerun skips it at once.
Nothing accumulates per image: memory does not grow with the folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from reportgen.cache import TensorCache
from reportgen.config import RunOptions
from reportgen.images import ImageRecord, Skipped, decode, display_image
from reportgen.plan import RunPlan, undecodable_key
from reportgen.prepare import ModelHandle
from reportgen.results import Entry, ImageResult, ResultKey, RunStats

__all__ = ["gather"]


def _lookup(cache: TensorCache, keys: dict[ResultKey, str]) -> dict[ResultKey, Entry]:
    found = {}
    for name, key in keys.items():
        hit = cache.get(key)
        if hit is not None:
            found[name] = hit
    return found


def _skip(cache: TensorCache, rec: ImageRecord, reason: str) -> Skipped:
    cache.put(undecodable_key(rec), {}, {"reason": reason})
    return Skipped(rec.rel, reason)


def _computed(plan: RunPlan, model: ModelHandle, cache: TensorCache, stats: RunStats, run: RunOptions,
              display_size: int) -> Iterator[ImageResult | Skipped]:
    """The images of the groups with something missing from the cache, batch by batch through the model."""
    from reportgen.batches import iter_batches
    from reportgen.compute import fill_batch

    lm = model.loaded()
    cold = plan.cold
    at = {p: i for i, p in enumerate(cold)}
    records = [plan.records[p] for p in cold]
    groups = [[at[p] for p in group] for group in plan.cold_groups]
    by_index = {rec.index: p for rec, p in zip(records, cold, strict=True)}  # batches name images by record index
    for batch in iter_batches(records, lm.preprocess, batch_size=run.batch_size, workers=run.workers,
                              display_size=display_size, groups=groups):
        stats.batches += 1
        for index, reason in batch.failures:
            yield _skip(cache, plan.records[by_index[index]], reason)
        if not batch.indices:
            continue
        positions = [by_index[i] for i in batch.indices]
        t0 = time.perf_counter()
        keys = [plan.keys[p] for p in positions]
        found = [_lookup(cache, k) for k in keys]
        fill_batch(plan.spec, lm, cache, keys, found, batch.tensor, [plan.true_index[p] for p in positions], stats)
        stats.seconds["compute"] += time.perf_counter() - t0
        for p, results, display, box in zip(positions, found, batch.displays, batch.boxes, strict=True):
            yield ImageResult(plan.records[p], results, display, box, plan.true_index[p])


def _cached(plan: RunPlan, positions: list[int], model: ModelHandle, cache: TensorCache, stats: RunStats,
            display_size: int) -> Iterator[ImageResult | Skipped]:
    """Images whose every result is cached: decoded for display only; the model (and torch) is not touched."""
    for p in positions:
        rec = plan.records[p]
        try:
            img = decode(rec.path)
        except Exception as exc:  # the file changed since its results were cached; skip it like any bad file
            yield _skip(cache, rec, f"cannot decode image: {exc}")
            continue
        display, box = display_image(img, model.card.preprocess, display_size)
        found = _lookup(cache, plan.keys[p])
        if len(found) < len(plan.keys[p]):  # an entry vanished or was corrupt: compute this image alone
            from reportgen.batches import to_tensor
            from reportgen.compute import fill_batch

            t0 = time.perf_counter()
            fill_batch(plan.spec, model.loaded(), cache, [plan.keys[p]], [found],
                       to_tensor(img, model.card.preprocess)[None], [plan.true_index[p]], stats)
            stats.batches += 1
            stats.seconds["compute"] += time.perf_counter() - t0
        yield ImageResult(rec, found, display, box, plan.true_index[p])


def gather(plan: RunPlan, model: ModelHandle, cache: TensorCache, stats: RunStats, run: RunOptions, *,
           display_size: int, warm: list[int] | None = None) -> Iterator[ImageResult | Skipped]:
    """Every image of ``plan`` with its results (cold groups first, then the cached images), or why it was skipped.

    Args:
        warm: the cached images still to gather (default: all of ``plan.warm``; the drawing stage passes fewer
            when it linked some images' figures from the figure cache instead).
    """
    if plan.cold_groups:
        yield from _computed(plan, model, cache, stats, run, display_size)
    yield from _cached(plan, list(plan.warm if warm is None else warm), model, cache, stats, display_size)
