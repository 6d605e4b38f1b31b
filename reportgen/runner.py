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
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from reportgen import __version__
from reportgen.cache import TensorCache, cache_key
from reportgen.config import RunConfig
from reportgen.drawing import draw_image, draw_kernels
from reportgen.errors import ConfigError, ModelError, UsageError
from reportgen.hooks import borrowed, capture
from reportgen.images import ImageRecord, Skipped, discover, iter_batches
from reportgen.methods import get_method
from reportgen.methods.cam import gradient_cams, resolve_targets
from reportgen.methods.feature_maps import top_channels
from reportgen.methods.kernels import select_kernels
from reportgen.models import LoadedModel, find_layer, load_model

__all__ = ["RunStats", "RunResult", "prepare", "check_layers", "run", "label_index"]


@dataclass
class RunStats:
    device: str = ""
    images_total: int = 0
    images_ok: int = 0
    images_skipped: int = 0
    batches: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_writes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"compute": 0.0, "draw": 0.0, "html": 0.0, "pdf": 0.0})
    duration_s: float = 0.0


@dataclass(frozen=True)
class RunResult:
    output: Path
    html: Path
    pdf: Path | None
    manifest: Path
    stats: RunStats


def check_layers(cfg: RunConfig, model: torch.nn.Module) -> list[str]:
    """One config-error line per requested layer that the model does not have (or that cannot serve its section)."""
    problems = []
    sections = (("kernels.layers", cfg.kernels.layers), ("feature_maps.layers", cfg.feature_maps.layers),
                ("cams.layers", cfg.cams.layers))
    for key, names in sections:
        for i, name in enumerate(names):
            try:
                layer = find_layer(model, name)
            except ModelError as exc:
                problems.append(f"{cfg.where(f'{key}[{i}]')}: {exc}")
                continue
            if key == "kernels.layers" and not isinstance(layer, torch.nn.Conv2d):
                problems.append(f"{cfg.where(f'{key}[{i}]')}: layer {name!r} is a {type(layer).__name__}, expected a Conv2d")
    return problems


def prepare(cfg: RunConfig) -> LoadedModel:
    """Load the model and check every layer name against it; ``ConfigError`` lists every problem at once."""
    try:
        lm = load_model(cfg.model, cfg.run.device)
    except ModelError as exc:
        raise ConfigError(f"{cfg.where('model')}: {exc}") from exc
    problems = check_layers(cfg, lm.module)
    if problems:
        raise ConfigError(problems)
    return lm


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

    def __init__(self, cfg: RunConfig, lm: LoadedModel):
        self.cfg = cfg
        self.model = lm.identity()
        self.labels = lm.labels

    def keys(self, rec: ImageRecord) -> dict[tuple, str]:
        base = {"model": self.model, "image": rec.digest}
        keys: dict[tuple, str] = {("pred",): cache_key({**base, "method": "predictions"})}
        for layer in self.cfg.feature_maps.layers:
            params = {"top_k": self.cfg.feature_maps.top_k}
            keys[("fm", layer)] = cache_key({**base, "method": "feature_maps", "params": params, "layer": layer})
        cams = self.cfg.cams
        target = {"kind": cams.target, "class": cams.class_index, "top_k": cams.top_k if cams.target == "topk" else None}
        if cams.target == "true":
            target["label"] = label_index(rec.label, self.labels)
        for method in cams.methods:
            for layer in cams.layers:
                parts = {**base, "method": method, "params": {}, "layer": layer, "target": target}
                keys[("cam", method, layer)] = cache_key(parts)
        return keys


def _compute(cfg: RunConfig, lm: LoadedModel, x: torch.Tensor, wanted: set[tuple], labels: list[int | None],
             stats: RunStats) -> dict[tuple, list[tuple[dict[str, torch.Tensor], dict[str, str]]]]:
    """Run the model once on ``x`` and produce every wanted entry, per image, as (tensors, metadata)."""
    fm_layers = sorted({w[1] for w in wanted if w[0] == "fm"})
    cam_methods = [m for m in cfg.cams.methods if any(w[0] == "cam" and w[1] == m for w in wanted)]
    cam_layers = [la for la in cfg.cams.layers if any(w[0] == "cam" and w[2] == la for w in wanted)] if cam_methods else []
    n = x.shape[0]
    out: dict[tuple, list] = {}
    model = lm.module
    with borrowed(model), capture(model, [*fm_layers, *cam_layers], grad=bool(cam_layers)) as caught:
        with torch.enable_grad() if cam_layers else torch.inference_mode():
            logits = model(x)
        stats.forward_passes += 1
        probs_src = logits.detach().float()
        out[("pred",)] = [({"logits": probs_src[i].cpu()}, {}) for i in range(n)]
        for layer in fm_layers:
            maps, idx, means = top_channels(caught[layer], cfg.feature_maps.top_k)
            maps, idx, means = maps.cpu(), idx.cpu(), means.cpu()
            out[("fm", layer)] = [({"maps": maps[i], "channels": idx[i], "means": means[i]}, {}) for i in range(n)]
        if cam_layers:
            targets, kinds = resolve_targets(probs_src, cfg.cams.target, class_index=cfg.cams.class_index,
                                             top_k=cfg.cams.top_k, labels=labels)
            maps = gradient_cams(logits, {la: caught[la] for la in cam_layers}, targets, cam_methods)
            stats.backward_passes += targets.shape[1]
            targets_cpu = targets.cpu()
            for (layer, method), m in maps.items():
                m = m.cpu()
                out[("cam", method, layer)] = [
                    ({"maps": m[i], "targets": targets_cpu[i]}, {"target_kinds": json.dumps(kinds[i])}) for i in range(n)
                ]
    return out


def _results_for_batch(cfg: RunConfig, lm: LoadedModel, cache: TensorCache, planner: _Planner,
                       recs: list[ImageRecord], x: torch.Tensor, stats: RunStats) -> list[dict[tuple, tuple]]:
    """Per image of the batch: result name → (tensors, metadata), from the cache or computed now."""
    keys = [planner.keys(rec) for rec in recs]
    found: list[dict[tuple, tuple]] = [{} for _ in recs]
    missing_rows: list[int] = []
    wanted: set[tuple] = set()
    for row, image_keys in enumerate(keys):
        for name, key in image_keys.items():
            hit = cache.get(key)
            if hit is None:
                wanted.add(name)
                if not missing_rows or missing_rows[-1] != row:
                    missing_rows.append(row)
            else:
                found[row][name] = hit
    if missing_rows:
        labels = [label_index(recs[r].label, lm.labels) for r in missing_rows]
        sub = x[missing_rows].to(lm.device, non_blocking=True)
        computed = _compute(cfg, lm, sub, wanted | {("pred",)}, labels, stats)
        for j, row in enumerate(missing_rows):
            for name, per_image in computed.items():
                if name not in found[row] and name in keys[row]:
                    tensors, meta = per_image[j]
                    cache.put(keys[row][name], tensors, meta)
                    found[row][name] = (tensors, meta)
    return found


def _kernel_entries(cfg: RunConfig, lm: LoadedModel, cache: TensorCache, staging: Path) -> list[dict]:
    entries = []
    for layer in cfg.kernels.layers:
        params = {"max_kernels": cfg.kernels.max_kernels}
        key = cache_key({"model": lm.identity(), "method": "kernels", "params": params, "layer": layer})
        hit = cache.get(key)
        if hit is None:
            sel = select_kernels(find_layer(lm.module, layer), cfg.kernels.max_kernels, layer)
            meta = {"labels": json.dumps(sel.labels), "rgb": str(sel.rgb), "total": str(sel.total)}
            cache.put(key, {"kernels": sel.kernels}, meta)
            hit = ({"kernels": sel.kernels}, meta)
        tensors, meta = hit
        kernels = tensors["kernels"]
        entries.append(draw_kernels(
            staging, layer, kernels.numpy(), json.loads(meta["labels"]), meta["rgb"] == "True", int(meta["total"]),
            shape=list(find_layer(lm.module, layer).weight.shape)))
    return entries


def _prepare_output(output: Path, force: bool) -> Path:
    if output.exists() and not output.is_dir():
        raise UsageError(f"output path {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        what = "holds a finished run" if (output / "manifest.json").exists() else "is not empty"
        raise UsageError(f"output folder {output} {what}; pass --force to replace it")
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, output: Path) -> None:
    """Move the finished staging folder into place; the previous run is removed only after that succeeded."""
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _iter_images(cfg: RunConfig, lm: LoadedModel, records: list[ImageRecord], skipped: list[Skipped],
                 cache: TensorCache, stats: RunStats, progress: bool) -> Iterator[tuple[ImageRecord, dict, object, tuple]]:
    planner = _Planner(cfg, lm)
    bar = tqdm(total=len(records), desc="images", unit="img", disable=not progress, leave=False)
    try:
        for batch in iter_batches(records, lm.preprocess, batch_size=cfg.run.batch_size, workers=cfg.run.workers,
                                  display_size=cfg.report.image_size):
            stats.batches += 1
            for index, reason in batch.failures:
                skipped.append(Skipped(records[index].rel, reason))
            bar.update(len(batch.failures))
            if not batch.indices:
                continue
            recs = [records[i] for i in batch.indices]
            t0 = time.perf_counter()
            results = _results_for_batch(cfg, lm, cache, planner, recs, batch.tensor, stats)
            stats.seconds["compute"] += time.perf_counter() - t0
            yield from zip(recs, results, batch.displays, batch.boxes, strict=True)
            bar.update(len(recs))
    finally:
        bar.close()


def _summary(cfg: RunConfig, lm: LoadedModel, stats: RunStats, records: list[ImageRecord], skipped: list[Skipped],
             kernels: list[dict], images: list[dict], started: datetime) -> dict:
    classes: dict[str, int] = {}
    for rec in records:
        if rec.label is not None:
            classes[rec.label] = classes.get(rec.label, 0) + 1
    used = ["kernels"] * bool(cfg.kernels.layers) + ["feature_maps"] * bool(cfg.feature_maps.layers) + list(cfg.cams.methods)
    return {
        "title": cfg.title,
        "generated_at": started.isoformat(timespec="seconds"),
        "reportgen_version": __version__,
        "config_path": str(cfg.path),
        "run": {
            "device": str(lm.device),
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
            "name": lm.name,
            "source": lm.source,
            "spec": lm.spec,
            "weights": lm.weights_source,
            "weights_digest": lm.digest[:12],
            "input_size": list(lm.preprocess.size),
            "resize": lm.preprocess.resize,
            "mean": list(lm.preprocess.mean),
            "std": list(lm.preprocess.std),
            "num_parameters": lm.num_parameters,
            "num_classes": len(lm.labels),
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


def run(cfg: RunConfig, *, force: bool = False, progress: bool = False, lm: LoadedModel | None = None) -> RunResult:
    """Run ``cfg`` end to end and return where the report is. ``lm`` skips loading when the caller has it."""
    from reportgen.report import render_html, render_pdf

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    lm = lm or prepare(cfg)
    output = cfg.run.output
    records, skipped = discover(cfg.data.path, cfg.data.limit)
    staging = _prepare_output(output, force)
    stats = RunStats(device=str(lm.device), images_total=len(records) + len(skipped))
    cache = TensorCache(cfg.run.cache_dir)
    try:
        kernels = _kernel_entries(cfg, lm, cache, staging)
        images: list[dict] = []
        for rec, res, display, box in _iter_images(cfg, lm, records, skipped, cache, stats, progress):
            t0 = time.perf_counter()
            images.append(draw_image(staging, rec, res, display, box, lm.labels, cfg.report, label_index(rec.label, lm.labels),
                                     [get_method(m).title for m in cfg.cams.methods], cfg.cams.methods, cfg.cams.layers,
                                     cfg.feature_maps.layers))
            stats.seconds["draw"] += time.perf_counter() - t0
        stats.images_ok = len(images)
        stats.images_skipped = len(skipped)
        stats.cache_hits, stats.cache_misses, stats.cache_writes = cache.hits, cache.misses, cache.writes
        stats.duration_s = time.perf_counter() - t_start
        context = _summary(cfg, lm, stats, records, skipped, kernels, images, started)
        t0 = time.perf_counter()
        html = render_html(context, staging)
        stats.seconds["html"] = time.perf_counter() - t0
        pdf = None
        if cfg.report.pdf:
            t0 = time.perf_counter()
            if progress:
                tqdm.write("writing PDF ...")
            pdf = render_pdf(html, staging / "report.pdf")
            stats.seconds["pdf"] = time.perf_counter() - t0
        stats.duration_s = time.perf_counter() - t_start
        context["run"]["duration_s"] = round(stats.duration_s, 2)
        manifest = {**context, "stats": asdict(stats), "cache_dir": str(cfg.run.cache_dir)}
        tmp = staging / ".manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, staging / "manifest.json")
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(output, output / "report.html", output / "report.pdf" if pdf else None, output / "manifest.json", stats)
