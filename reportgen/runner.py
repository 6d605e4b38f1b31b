"""Stream batches through the model, the methods and the cache; hand plain results to drawing and the report.

One run: validate the config against the loaded model → find images → for each batch, look up every result
in the cache and run the model only for images that miss something (one forward, one backward per target
column) → draw each image's figures and write its raw maps → render the HTML, then the PDF → write
``manifest.json`` last. The run is built in a staging folder next to the output and moved into place at the
end, so an interrupted run never destroys a finished report. Nothing accumulates per image in memory but
the small plain-data entry the report needs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from reportgen import __version__, failpoints
from reportgen.atomic import describe_os_error, restore_old, swap_into_place, sweep
from reportgen.cache import TensorCache, cache_key
from reportgen.config import RunConfig, close_matches
from reportgen.drawing import draw_filters, draw_kernels
from reportgen.drawpool import DrawContext, Drawer
from reportgen.errors import ConfigError, DataError, ModelError, RenderError, UsageError
from reportgen.figcache import FigureStore, figure_key
from reportgen.images import IMAGE_EXTENSIONS, ImageRecord, Skipped, decode, discover, display_image
from reportgen.methods import get_method
from reportgen.modelcard import LayerInfo, ModelCard, label_names, read_card, recipe_key, source_problems, write_card
from reportgen.names import readable_data
from reportgen.outfolder import check_replaceable, new_run_id, placement_problems, write_marker

log = logging.getLogger(__name__)

__all__ = ["RunStats", "RunResult", "ModelHandle", "prepare", "check_layers", "run", "label_index"]


@dataclass
class RunStats:
    device: str = ""
    images_total: int = 0
    images_ok: int = 0
    images_skipped: int = 0
    batches: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    map_passes: int = 0
    oom_splits: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_writes: int = 0
    # draw: time spent drawing (summed over the drawing processes, if any); draw_wait: time the run itself spent
    # on drawing: all of it when drawing inline, else waiting for the workers to keep up or finish
    seconds: dict[str, float] = field(default_factory=lambda: {"compute": 0.0, "draw": 0.0, "draw_wait": 0.0,
                                                               "html": 0.0, "pdf": 0.0})
    draw_workers: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True)
class RunResult:
    output: Path
    html: Path
    pdf: Path | None
    manifest: Path
    stats: RunStats


class ModelHandle:
    """The model of a run: its card at once (from the cache when known), the built module only when needed."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.key = recipe_key(cfg.model)
        self._loaded = None
        self._fresh = False
        card = read_card(cfg.run.cache_dir, self.key)
        if card is None:
            self._loaded = self._build()
            self._fresh = True
            card = self._loaded.card
        self.card: ModelCard = card
        self.labels = label_names(cfg.model.labels, card.num_classes)

    def _build(self):
        from reportgen.models import load_model

        return load_model(self.cfg.model, self.cfg.run.device, channels_last=self.cfg.run.channels_last)

    @property
    def built(self) -> bool:
        return self._loaded is not None

    def loaded(self):
        """The built model (``reportgen.models.LoadedModel``), building it now if needed."""
        if self._loaded is None:
            lm = self._build()
            if lm.card.digest != self.card.digest:
                write_card(self.cfg.run.cache_dir, self.key, lm.card)
                raise ModelError(
                    f"model {self.cfg.model.name!r} was built with other weights than recorded for the same recipe "
                    f"(digest {lm.card.digest[:12]} vs {self.card.digest[:12]}); the record was refreshed: run again"
                )
            self._loaded = lm
        return self._loaded

    def remember(self) -> None:
        """Memoize a freshly built model's card, so the next fully cached run can skip building it."""
        if self._fresh:
            write_card(self.cfg.run.cache_dir, self.key, self.card)
            self._fresh = False

    def device_label(self) -> str:
        if self._loaded is not None:
            return str(self._loaded.device)
        return "not used (all cached)"


def check_layers(cfg: RunConfig, layers: dict[str, LayerInfo]) -> list[str]:
    """One config-error line per requested layer that the model does not have (or that cannot serve its section)."""
    problems = []
    names_in_model = list(layers)
    sections = (("kernels.layers", cfg.kernels.layers), ("feature_maps.layers", cfg.feature_maps.layers),
                ("cams.layers", cfg.cams.layers), ("filters.layers", cfg.filters.layers))
    for key, names in sections:
        for i, name in enumerate(names):
            where = cfg.where(f"{key}[{i}]")
            info = layers.get(name)
            if info is None:
                # past the problems ConfigError shows, only the count matters: skip the costly search
                hint = close_matches(name, names_in_model) if len(problems) < ConfigError.MAX_PROBLEMS else []
                problems.append(f"{where}: no layer named {name!r}"
                                + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""))
            elif key == "kernels.layers" and not info.conv2d:
                problems.append(f"{where}: layer {name!r} is a {info.type}, expected a Conv2d")
            elif key == "filters.layers" and info.conv2d and info.weight_shape:
                out_channels = info.weight_shape[0]
                for j, c in enumerate(cfg.filters.channels):
                    if c >= out_channels:
                        problems.append(f"{cfg.where(f'filters.channels[{j}]')}: channel {c} is out of range for "
                                        f"layer {name!r} with {out_channels} channels")
    return problems


def prepare(cfg: RunConfig) -> ModelHandle:
    """The model's card (building the model if it is not known yet) with every layer name checked against it.

    Raises ``ConfigError`` listing every problem at once.
    """
    try:
        handle = ModelHandle(cfg)
    except ModelError as exc:
        raise ConfigError(f"{cfg.where('model')}: {exc}") from exc
    problems = check_layers(cfg, handle.card.layers) + source_problems(cfg, handle.card.layers)
    if problems:
        raise ConfigError(problems)
    return handle


def label_index(label: str | None, labels: list[str]) -> int | None:
    """Class index of a folder name: an integer, ``285_egyptian_cat``, or a class name (case, ``_`` and spaces ignored)."""
    if label is None:
        return None
    head = label.split("_", 1)[0].split("-", 1)[0]
    if head.isdigit():
        return int(head)
    norm = label.lower().replace("_", " ").strip()
    for i, name in enumerate(labels):
        if name.lower() == norm:
            return i
    return None


class _Planner:
    """Cache keys for one image's results, computed before any work."""

    def __init__(self, cfg: RunConfig, card: ModelCard, labels: list[str]):
        self.cfg = cfg
        self.model = card.identity()
        self.labels = labels

    def keys(self, rec: ImageRecord) -> dict[tuple, str]:
        base = {"model": self.model, "image": rec.digest, "layout": _layout(self.cfg)}
        keys: dict[tuple, str] = {("pred",): cache_key({**base, "method": "predictions"})}
        for layer in self.cfg.feature_maps.layers:
            params = {"top_k": self.cfg.feature_maps.top_k}
            keys[("fm", layer)] = cache_key({**base, "method": "feature_maps", "params": params, "layer": layer})
        cams = self.cfg.cams
        target = {"kind": cams.target, "class": cams.class_index, "top_k": cams.top_k if cams.target == "topk" else None}
        if cams.target == "true":
            target["label"] = label_index(rec.label, self.labels)
        for method in cams.methods:
            spec = get_method(method)
            params = dict(cams.params.get(method, {}))
            if spec.engine == "gradient" and cams.eigen_smooth:
                params["eigen_smooth"] = True
            if spec.engine == "gradient" and cams.aug_smooth:
                params["aug_smooth"] = True
            for layer in cams.layers if spec.needs_layer else ("",):
                parts = {**base, "method": method, "params": params, "layer": layer, "target": target}
                keys[("cam", method, layer)] = cache_key(parts)
        return keys


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


def _layout(cfg: RunConfig) -> str:
    """The memory layout the results were computed in: part of their keys, as it changes the float rounding."""
    return "channels_last" if cfg.run.channels_last else "contiguous"


def _model_level(cache: TensorCache, model: ModelHandle, method: str, params: dict, layer: str,
                 compute: Callable[[Any], tuple[dict, dict]]) -> tuple[dict, dict]:
    """A result of the model alone (no image): from the cache, or ``compute(built model)`` and stored."""
    key = cache_key({"model": model.card.identity(), "method": method, "params": params, "layer": layer})
    hit = cache.get(key)
    if hit is None:
        hit = compute(model.loaded())
        cache.put(key, *hit)
    return hit


def _compute_kernels(lm, *, layer: str, max_kernels: int) -> tuple[dict, dict]:
    from reportgen.compute import kernel_entry  # torch: only when the cache misses

    return kernel_entry(lm, layer, max_kernels)


def _compute_filters(lm, *, layer: str, cfg: RunConfig) -> tuple[dict, dict]:
    from reportgen.compute import filter_entry  # torch: only when the cache misses

    return filter_entry(lm, layer, cfg)


def _kernel_entries(cfg: RunConfig, model: ModelHandle, cache: TensorCache, staging: Path) -> list[dict]:
    entries = []
    for layer in cfg.kernels.layers:
        from_model = partial(_compute_kernels, layer=layer, max_kernels=cfg.kernels.max_kernels)
        arrays, meta = _model_level(cache, model, "kernels", {"max_kernels": cfg.kernels.max_kernels}, layer, from_model)
        shape = list(model.card.layers[layer].weight_shape or ())
        entries.append(draw_kernels(staging, layer, np.asarray(arrays["kernels"], dtype=np.float32),
                                    json.loads(meta["labels"]), meta["rgb"] == "True", int(meta["total"]), shape=shape))
    return entries


def _filter_entries(cfg: RunConfig, model: ModelHandle, cache: TensorCache, staging: Path) -> list[dict]:
    f = cfg.filters
    params = {"channels": list(f.channels), "size": f.size, "steps": f.steps, "lr": f.lr,
              "parameterization": f.parameterization, "transforms": f.transforms, "seed": f.seed,
              "layout": _layout(cfg)}
    entries = []
    for layer in f.layers:
        arrays, _ = _model_level(cache, model, "activation_max", params, layer,
                                 partial(_compute_filters, layer=layer, cfg=cfg))
        how = ("Fourier-space image, decorrelated colour" if f.parameterization == "fourier" else "pixel-space image")
        caption = (f"channels {', '.join(str(c) for c in f.channels)}: {how}, "
                   f"{'jitter/scale/rotation, ' if f.transforms else ''}{f.steps} Adam steps, lr {f.lr}, seed {f.seed}")
        entries.append(draw_filters(staging, layer, np.asarray(arrays["images"]), f.channels, caption))
    return entries


def _prepare_output(output: Path, force: bool) -> Path:
    """Check the output folder may be written; tidy what killed runs left beside it; make the staging folder.

    Only a folder reportgen wrote is ever replaced (``outfolder.check_replaceable``), with or without ``force``.
    """
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if restore_old(output):  # a run killed while publishing had moved the previous report aside
            log.warning("put back the previous report in %s, left aside by a run that was killed", output)
        swept = sweep(output.parent, endswith=f"-{output.name}")
        if swept:
            log.info("removed %d half-built report folder(s) of killed runs beside %s", swept, output)
        check_replaceable(output, force)
        staging = output.parent / f".partial-{os.getpid()}-{output.name}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise UsageError(f"cannot write the report to {output}: {describe_os_error(exc)}") from exc
    return staging


Found = dict[tuple, tuple[dict[str, np.ndarray], dict[str, str]]]


def _undecodable_key(rec: ImageRecord) -> str:
    """Where the reason an image's bytes could not be decoded is kept, so a rerun skips it without the model."""
    import PIL

    return cache_key({"image": rec.digest, "method": "decode-failure", "pillow": PIL.__version__})


def _skip(cache: TensorCache, skipped: list[Skipped], rec: ImageRecord, reason: str) -> None:
    skipped.append(Skipped(rec.rel, reason))
    cache.put(_undecodable_key(rec), {}, {"reason": reason})


def _lookup(cache: TensorCache, keys: dict[tuple, str]) -> Found:
    found = {}
    for name, key in keys.items():
        hit = cache.get(key)
        if hit is not None:
            found[name] = hit
    return found


def _computed_images(cfg: RunConfig, model: ModelHandle, records: list[ImageRecord], keys: list[dict[tuple, str]],
                     groups: list[list[int]], cache: TensorCache, counters, skipped: list[Skipped], stats: RunStats,
                     bar: tqdm) -> Iterator[tuple[ImageRecord, Found, np.ndarray, tuple]]:
    """Images of the groups with something missing from the cache, batch by batch through the model."""
    from reportgen.batches import iter_batches
    from reportgen.compute import fill_batch

    lm = model.loaded()
    by_index = {rec.index: (rec, k) for rec, k in zip(records, keys, strict=True)}  # batches name records by index
    for batch in iter_batches(records, lm.preprocess, batch_size=cfg.run.batch_size, workers=cfg.run.workers,
                              display_size=cfg.report.image_size, groups=groups):
        stats.batches += 1
        for index, reason in batch.failures:
            _skip(cache, skipped, by_index[index][0], reason)
        bar.update(len(batch.failures))
        if not batch.indices:
            continue
        recs = [by_index[i][0] for i in batch.indices]
        t0 = time.perf_counter()
        batch_keys = [by_index[i][1] for i in batch.indices]
        found = [_lookup(cache, k) for k in batch_keys]
        labels = [label_index(r.label, model.labels) for r in recs]
        fill_batch(cfg, lm, cache, batch_keys, found, batch.tensor, labels, counters)
        stats.seconds["compute"] += time.perf_counter() - t0
        yield from zip(recs, found, batch.displays, batch.boxes, strict=True)


def _cached_images(cfg: RunConfig, model: ModelHandle, records: list[ImageRecord], keys: list[dict[tuple, str]],
                   cache: TensorCache, counters, skipped: list[Skipped], stats: RunStats,
                   bar: tqdm) -> Iterator[tuple[ImageRecord, Found, np.ndarray, tuple]]:
    """Images whose every result is cached: decoded for display only; the model (and torch) is not touched."""
    for i, rec in enumerate(records):
        try:
            img = decode(rec.path)
        except Exception as exc:  # the file changed since its results were cached; skip it like any bad file
            _skip(cache, skipped, rec, f"cannot decode image: {exc}")
            bar.update(1)
            continue
        display, box = display_image(img, model.card.preprocess, cfg.report.image_size)
        found = _lookup(cache, keys[i])
        if len(found) < len(keys[i]):  # an entry vanished or was corrupt: compute this image alone
            from reportgen.batches import to_tensor
            from reportgen.compute import fill_batch

            t0 = time.perf_counter()
            holder = [found]
            fill_batch(cfg, model.loaded(), cache, [keys[i]], holder, to_tensor(img, model.card.preprocess)[None],
                       [label_index(rec.label, model.labels)], counters)
            stats.batches += 1
            stats.seconds["compute"] += time.perf_counter() - t0
        yield rec, found, display, box


def _summary(cfg: RunConfig, model: ModelHandle, stats: RunStats, records: list[ImageRecord], skipped: list[Skipped],
             kernels: list[dict], images: list[dict], started: datetime) -> dict:
    card = model.card
    classes: dict[str, int] = {}
    for rec in records:
        if rec.label is not None:
            classes[rec.label] = classes.get(rec.label, 0) + 1
    used = (["kernels"] * bool(cfg.kernels.layers) + ["activation_max"] * bool(cfg.filters.layers)
            + ["feature_maps"] * bool(cfg.feature_maps.layers) + list(cfg.cams.methods))
    return {
        "title": cfg.title,
        "generated_at": started.isoformat(timespec="seconds"),
        "reportgen_version": __version__,
        "config_path": str(cfg.path),
        "run": {
            "device": model.device_label(),
            "duration_s": round(stats.duration_s, 2),
            "images_total": stats.images_total,
            "images_ok": stats.images_ok,
            "images_skipped": stats.images_skipped,
            "batches": stats.batches,
            "batch_size": cfg.run.batch_size,
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "forward_passes": stats.forward_passes,
            "backward_passes": stats.backward_passes,
        },
        "model": {
            "name": card.name,
            "source": card.source,
            "spec": card.spec,
            "weights": card.weights_source,
            "weights_digest": card.digest[:12],
            "input_size": list(card.preprocess.size),
            "resize": card.preprocess.resize,
            "mean": list(card.preprocess.mean),
            "std": list(card.preprocess.std),
            "num_parameters": card.num_parameters,
            "num_classes": card.num_classes,
        },
        "dataset": {
            "root": str(cfg.data.path),
            "classes": [{"name": k, "count": v} for k, v in sorted(classes.items())],
            "unlabelled": sum(1 for r in records if r.label is None),
        },
        "methods": [
            {"name": s.name, "title": s.title, "paper": s.paper, "description": s.description}
            for s in (get_method(m) for m in used)
        ],
        "skipped": [{"path": s.rel, "reason": s.reason} for s in skipped],
        "kernels": kernels,
        "images": images,
    }


def run(cfg: RunConfig, *, force: bool = False, progress: bool = False, model: ModelHandle | None = None,
        pdf_job=None) -> RunResult:
    """Run ``cfg`` end to end and return where the report is.

    Args:
        model: the prepared model, when the caller has it.
        pdf_job: a ``report.PdfJob`` the caller started early (the CLI does, before loading anything); the run
            finishes or cancels it. Without one the run starts its own.
    """
    from reportgen.report import PdfJob, render_html

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    output = cfg.run.output
    misplaced = placement_problems(output=output, cache_dir=cfg.run.cache_dir, data=cfg.data.path, config=cfg.path,
                                   where=cfg.where)
    if misplaced:
        raise ConfigError(misplaced)
    model = model or prepare(cfg)
    run_id = new_run_id()
    records, skipped = discover(cfg.data.path, cfg.data.limit)
    if not records:
        what = f"; {len(skipped)} could not be read" if skipped else ""
        raise DataError(f"no image files found in {cfg.data.path}{what} "
                        f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    staging = _prepare_output(output, force)
    stats = RunStats(images_total=len(records) + len(skipped))
    cache = TensorCache(cfg.run.cache_dir)
    if cache.sweep() + FigureStore(cfg.run.cache_dir / "figures").sweep():
        log.info("removed temporary files of killed runs from the cache %s", cfg.run.cache_dir)
    planner = _Planner(cfg, model.card, model.labels)
    keys = [planner.keys(rec) for rec in records]
    # Images are batched in fixed groups of batch_size (in folder order): an image is always computed with the
    # same batch-mates, so a rerun after a crash or a change gives bit-identical results. A group with anything
    # missing is computed whole (the cached results of its other images are kept, not rewritten).
    cold_groups: list[list[int]] = []
    warm: list[int] = []
    for start in range(0, len(records), cfg.run.batch_size):
        group = []
        for i in range(start, min(start + cfg.run.batch_size, len(records))):
            known_bad = cache.get(_undecodable_key(records[i])) if cache.has(_undecodable_key(records[i])) else None
            if known_bad is not None:  # its decoder failure was remembered: it took no place in the batch then either
                skipped.append(Skipped(records[i].rel, known_bad[1].get("reason", "cannot decode image")))
            else:
                group.append(i)
        if any(not all(cache.has(key) for key in keys[i].values()) for i in group):
            cold_groups.append(group)
        else:
            warm.extend(group)
    cold = [i for g in cold_groups for i in g]

    class _NoWork:
        forward_passes = backward_passes = map_passes = oom_splits = 0

    counters = _NoWork()
    if cold:
        from reportgen.compute import Counters

        counters = Counters()
    bar = tqdm(total=len(records), desc="images", unit="img", disable=not progress, leave=False)
    drawer: Drawer | None = None
    if pdf_job is not None and not cfg.report.pdf:
        pdf_job.cancel()
        pdf_job = None
    try:
        # the PDF printer starts now (if the caller has not), so its start-up overlaps with the drawing
        if cfg.report.pdf and pdf_job is None:
            pdf_job = PdfJob()
        model.remember()
        kernels = _kernel_entries(cfg, model, cache, staging)
        filters = _filter_entries(cfg, model, cache, staging)
        cam_plan = [(m, get_method(m).title, get_method(m).needs_layer) for m in cfg.cams.methods]
        context = DrawContext(staging, model.labels, cfg.report, cam_plan, cfg.cams.layers, cfg.feature_maps.layers)

        figures = FigureStore(cfg.run.cache_dir / "figures")
        fig_keys = {records[i].index: figure_key(records[i], keys[i], cfg.report, model.labels, cam_plan,
                                                 cfg.cams.layers, cfg.feature_maps.layers,
                                                 label_index(records[i].label, model.labels)) for i in cold + warm}
        restored: dict[int, dict] = {}
        if warm:  # figures drawn before from the same results: copied, not drawn (nor the image decoded)
            t0 = time.perf_counter()
            still = []
            for i in warm:
                entry = figures.restore(fig_keys[records[i].index], staging)
                if entry is None:
                    still.append(i)
                    continue
                restored[records[i].index] = entry
                cache.hits += len(keys[i])  # the results the figures were drawn from are reused, unread
                bar.update(1)
            warm = still
            stats.seconds["draw_wait"] += time.perf_counter() - t0

        def drawn(index: int, entry: dict) -> None:
            figures.store(fig_keys[index], staging, entry)
            failpoints.reached("draw")
            bar.update(1)

        device = model.loaded().device.type if cold else "none"  # the model is needed at once when anything is cold
        stats.draw_workers = draw_workers(cfg, device, len(cold))
        drawer = Drawer(context, stats.draw_workers, on_drawn=drawn)
        streams = []
        if cold:
            positions = {i: p for p, i in enumerate(cold)}
            groups = [[positions[i] for i in g] for g in cold_groups]
            streams.append(_computed_images(cfg, model, [records[i] for i in cold], [keys[i] for i in cold], groups,
                                            cache, counters, skipped, stats, bar))
        if warm:
            streams.append(_cached_images(cfg, model, [records[i] for i in warm], [keys[i] for i in warm], cache,
                                          counters, skipped, stats, bar))
        for stream in streams:
            for rec, found, display, box in stream:
                drawer.submit(rec, found, display, box, label_index(rec.label, model.labels))
        entries = {**restored, **drawer.finish()}
        skipped.extend(drawer.skipped)  # images whose files could not be written (e.g. a name the disk refuses)
        stats.seconds["draw"] = drawer.draw_seconds
        stats.seconds["draw_wait"] += drawer.wait_seconds
        bar.close()
        images = [entries[i] for i in sorted(entries)]
        if not images:
            raise DataError(f"none of the {len(records)} image files in {cfg.data.path} could be decoded; "
                            f"first: {skipped[0].rel}: {skipped[0].reason}")
        skipped.sort(key=lambda sk: sk.rel)
        stats.device = model.device_label()
        stats.forward_passes, stats.backward_passes = counters.forward_passes, counters.backward_passes
        stats.map_passes, stats.oom_splits = counters.map_passes, counters.oom_splits
        stats.images_ok = len(images)
        stats.images_skipped = len(skipped)
        stats.cache_hits, stats.cache_misses, stats.cache_writes = cache.hits, cache.misses, cache.writes
        stats.duration_s = time.perf_counter() - t_start
        context = _summary(cfg, model, stats, records, skipped, kernels, images, started)
        context["filters"] = filters
        t0 = time.perf_counter()
        render_html(context, staging)
        stats.seconds["html"] = time.perf_counter() - t0
        pdf = None
        if pdf_job is not None:
            t0 = time.perf_counter()
            if progress:
                tqdm.write("writing PDF ...")
            pdf, pdf_job = pdf_job.finish(staging / "report.html", staging / "report.pdf"), None
            stats.seconds["pdf"] = time.perf_counter() - t0
        stats.duration_s = time.perf_counter() - t_start
        context["run"]["duration_s"] = round(stats.duration_s, 2)
        manifest = readable_data({**context, "run_id": run_id, "stats": asdict(stats),
                                  "cache_dir": str(cfg.run.cache_dir)})  # undecodable bytes in a name as \xNN
        write_marker(staging, __version__, also=("manifest.json",))
        tmp = staging / ".manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, staging / "manifest.json")
        swap_into_place(staging, output)
    except BaseException as exc:
        bar.close()
        if drawer is not None:
            drawer.close()
        if pdf_job is not None:
            pdf_job.cancel()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # writing a figure, the HTML or the manifest failed (e.g. the disk is full)
            raise RenderError(f"cannot write the report for {output}: {describe_os_error(exc)}; "
                              f"the previous report and every finished cache entry are kept") from exc
        raise
    return RunResult(output, output / "report.html", output / "report.pdf" if pdf else None, output / "manifest.json", stats)
