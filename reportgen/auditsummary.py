"""The audit's summaries over the dataset (``audit.audit_run`` collects the per-image rows; this adds them up).

Every dataset number is a mean with a seeded 95 % bootstrap interval (``reportgen.stats``). Class-average maps
are drawn as small heat maps into ``assets/audit/`` and kept as arrays in ``audit/class_average.safetensors``
(``class/<by>/<method>/<layer>/<class index>``, (h, w) float32 in [0, 1] on the squashed input frame). The
``facts`` are what the run's gate conditions (``checks:``) read; docs/AUDIT.md lists them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reportgen.audit import Annotations, Audit, _ClassMaps, metric_name
from reportgen.config import RunConfig
from reportgen.methods import get_method
from reportgen.names import file_part
from reportgen.plan import ComputeSpec
from reportgen.stats import summary
from reportgen.tensorfile import write_tensors

log = logging.getLogger(__name__)

__all__ = ["summarize", "check_classes", "SCORE_INFO"]

# Each per-image score: its title, whether higher is better, and what it measures (docs/AUDIT.md).
SCORE_INFO: dict[str, tuple[str, bool, str]] = {
    "deletion_auc": ("Deletion AUC", False, "target probability as the most salient pixels are removed first "
                     "(Petsiuk et al. 2018); lower: the map found what the prediction rests on"),
    "insertion_auc": ("Insertion AUC", True, "target probability as the most salient pixels are revealed first "
                      "into a blurred image (Petsiuk et al. 2018)"),
    "average_drop": ("Average drop", False, "relative fall of the target probability when only the map's region "
                     "is kept (Chattopadhay et al. 2018)"),
    "increase": ("Increase in confidence", True, "share of images whose target probability rises when only the "
                 "map's region is kept (Chattopadhay et al. 2018)"),
    "road_morf": ("ROAD, most relevant first", False, "target probability after the most relevant pixels are "
                  "imputed away, averaged over percentiles (Rong et al. 2022)"),
    "road_lerf": ("ROAD, least relevant first", True, "target probability after the least relevant pixels are "
                  "imputed away, averaged over percentiles (Rong et al. 2022)"),
    "pointing_game": ("Pointing game", True, "share of images whose map's peak lies in a box (within 15 input "
                      "pixels; Zhang et al. 2016)"),
    "box_energy": ("Energy in box", True, "share of the map's positive mass inside the boxes (Wang et al. 2020)"),
}


def _title(method: str) -> str:
    return get_method(method).title


def _group_rows(rows: list[dict], key, rng: np.random.Generator, resamples: int,
                metric_keys: list[tuple[str, str, str]], layers_of: dict[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Per value of ``key(row)``: images, accuracy, confidence and each metric's mean, with intervals."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by[key(row)].append(row)
    out = {}
    for value in sorted(by):
        members = by[value]
        labelled = [r for r in members if r["correct"] is not None]
        out[value] = {
            "value": value, "images": len(members), "labelled": len(labelled),
            "correct": sum(1 for r in labelled if r["correct"]),
            "accuracy": summary([float(r["correct"]) for r in labelled], rng, resamples),
            "confidence": summary([r["confidence"] for r in members], rng, resamples),
            "metrics": {metric_name(s, m, la, layers_of.get(m, ())): summary(
                [r["metrics"].get((s, m, la)) for r in members], rng, resamples)["mean"] for s, m, la in metric_keys},
        }
    return out


def _heat(unit: np.ndarray, cmap: str, side: int = 128) -> Image.Image:
    import matplotlib

    rgba = matplotlib.colormaps[cmap](np.clip(unit, 0.0, 1.0))
    img = Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))
    scale = side / max(img.width, img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)


_SHOWN_CLASSES = 12  # class-average maps drawn per method, layer and kind (the most images first); all are saved


def _class_maps(cfg: RunConfig, maps: _ClassMaps, class_names: Sequence[str], staging: Path) -> list[dict]:
    """Save every class-average map; draw those of classes with 2 or more images (one image's average is its own
    map), at most ``_SHOWN_CLASSES`` per block; methods whose averages are all equal share one block."""
    if not maps.sums:
        return []
    arrays: dict[str, np.ndarray] = {}
    means: dict[tuple[str, str, str], dict[int, np.ndarray]] = defaultdict(dict)
    for (method, layer, by, cls), total in sorted(maps.sums.items()):
        mean = (total / maps.counts[(method, layer, by, cls)]).astype(np.float32)
        arrays[f"class/{by}/{method}/{layer or 'input'}/{cls}"] = mean
        means[(method, layer, by)][cls] = mean
    (staging / "audit").mkdir(exist_ok=True)
    write_tensors(staging / "audit" / "class_average.safetensors", arrays,
                  {"frame": f"{maps.frame[0]}x{maps.frame[1]}"})
    blocks: list[dict] = []
    for (method, layer, by), per_class in means.items():
        shown = sorted((c for c in per_class if maps.counts[(method, layer, by, c)] >= 2),
                       key=lambda c: (-maps.counts[(method, layer, by, c)], c))
        if not shown:
            continue
        same = next((b for b in blocks if (b["layer"], b["by"]) == (layer, by) and b["_means"].keys() == per_class.keys()
                     and all(np.allclose(b["_means"][c], per_class[c], atol=1e-4) for c in per_class)), None)
        if same is not None:
            same["methods"].append(method)
            same["title"] += f" = {_title(method)}"
            continue
        items = []
        for cls in shown[:_SHOWN_CLASSES]:
            mean = per_class[cls]
            name = class_names[cls] if 0 <= cls < len(class_names) else f"class {cls}"
            rel = f"assets/audit/class-{by}-{method}-{file_part(layer) if layer else 'input'}-{cls}.png"
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            img = _heat(mean, cfg.report.colormap)
            img.save(staging / rel, optimize=False)
            peak = np.unravel_index(int(np.argmax(mean)), mean.shape)
            items.append({"class_index": cls, "class_name": name, "images": maps.counts[(method, layer, by, cls)],
                          "image": rel, "width": img.width, "height": img.height,
                          "peak": [round((peak[1] + 0.5) / mean.shape[1], 3), round((peak[0] + 0.5) / mean.shape[0], 3)]})
        blocks.append({"method": method, "methods": [method], "title": _title(method), "layer": layer, "by": by,
                       "classes": items, "omitted": len(per_class) - len(items), "_means": per_class})
    for b in blocks:
        del b["_means"]
    return blocks


def _class_average_figures(cfg: RunConfig, maps: _ClassMaps, class_names: Sequence[str], staging: Path) -> None:
    """``figures.class_averages``: each named class's average map (by true class) as a paper figure."""
    if not cfg.figures.class_averages:
        return
    from reportgen.paperfigs import write_class_average

    method = (cfg.figures.methods or tuple(m for m in cfg.cams.methods if get_method(m).explains_class))[0]
    layer = (cfg.figures.layer or (cfg.cams.layers[0] if cfg.cams.layers else "")) if get_method(
        method).needs_layer else ""
    for name in cfg.figures.class_averages:
        cls = list(class_names).index(name)  # checked against the model's classes before the run (check_classes)
        key = (method, layer, "true", cls)
        if key not in maps.sums:
            log.warning("figures.class_averages: no image of class %r was labelled; its figure is not written", name)
            continue
        count = maps.counts[key]
        write_class_average(staging, cfg, name, maps.sums[key] / count, None, method=get_method(method).title,
                            layer=layer or "the input", images=count)


def check_classes(cfg: RunConfig, class_names: Sequence[str]) -> None:
    """``figures.class_averages`` must name classes of the model (a config error before any work)."""
    from reportgen.errors import ConfigError
    from reportgen.names import close_matches

    problems = []
    for i, name in enumerate(cfg.figures.class_averages):
        if name not in class_names:
            near = close_matches(name, list(class_names))
            hint = f"; close matches: {', '.join(repr(n) for n in near)}" if near else ""
            problems.append(f"{cfg.where(f'figures.class_averages[{i}]')}: the model has no class {name!r}{hint}")
    if problems:
        raise ConfigError(problems)


def _ranking(rows: list[dict], metric_keys: list[tuple[str, str, str]], rng, resamples: int) -> list[dict]:
    """Per score, the methods (and layers) ranked best first by their dataset mean."""
    out = []
    for score in [s for s in SCORE_INFO if any(k[0] == s for k in metric_keys)]:
        title, higher, what = SCORE_INFO[score]
        ranked = []
        for s, m, la in metric_keys:
            if s == score:
                stat = summary([r["metrics"].get((s, m, la)) for r in rows], rng, resamples)
                ranked.append({"method": m, "title": _title(m), "layer": la, **stat})
        ranked.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0) if higher else (r["mean"] or 0)))
        out.append({"score": score, "title": title, "higher_is_better": higher, "description": what, "rows": ranked})
    return out


def summarize(cfg: RunConfig, rows: list[dict], class_names: Sequence[str], class_maps: _ClassMaps,
              sanity: dict[tuple[str, str], dict[str, Any]], notes: Annotations, staging: Path,
              images_skipped: int) -> Audit:
    """The audit section and the run's facts (see the module docstring)."""
    rng = np.random.default_rng(cfg.metrics.seed)
    resamples = cfg.metrics.bootstrap
    metric_keys = sorted({k for r in rows for k in r["metrics"]}, key=lambda k: (list(SCORE_INFO).index(k[0])
                                                                                 if k[0] in SCORE_INFO else 99, k))
    local_keys = sorted({k for r in rows for k in r["local"]})
    spec = ComputeSpec.from_config(cfg)
    layers_of = {m: spec.method_layers(m) for m in spec.methods}
    labelled = [r for r in rows if r["correct"] is not None]
    section: dict[str, Any] = {
        "images": len(rows), "labelled": len(labelled),
        "accuracy": summary([float(r["correct"]) for r in labelled], rng, resamples),
        "confidence": summary([r["confidence"] for r in rows], rng, resamples),
        "bootstrap": resamples, "seed": cfg.metrics.seed, "colormap": cfg.report.colormap,
        "metadata_file": notes.metadata_file, "boxes_file": notes.boxes_file,
    }
    facts: dict[str, Any] = {"images": len(rows), "images_skipped": images_skipped,
                             "accuracy": section["accuracy"]["mean"], "confidence": section["confidence"]["mean"]}
    classes = _group_rows([r for r in rows if r["label"] is not None], lambda r: r["label"], rng, resamples, metric_keys,
                          layers_of)
    section["classes"] = list(classes.values())
    facts["class_accuracy"] = {v: g["accuracy"]["mean"] for v, g in classes.items()}
    section["groups"], facts["group_accuracy"], facts["group_confidence"] = [], {}, {}
    for column in notes.columns:  # facts name a group column=value (reportgen.checks also takes a bare value)
        per = _group_rows(rows, lambda r, c=column: r["groups"].get(c, ""), rng, resamples, metric_keys, layers_of)
        section["groups"].append({"column": column, "rows": list(per.values())})
        for value, g in per.items():
            facts["group_accuracy"][f"{column}={value}"] = g["accuracy"]["mean"]
            facts["group_confidence"][f"{column}={value}"] = g["confidence"]["mean"]
    section["metrics"] = _ranking(rows, metric_keys, rng, resamples)
    for block in section["metrics"]:
        facts[block["score"]] = {metric_name(block["score"], r["method"], r["layer"], layers_of.get(r["method"], ()))
                                 .partition("[")[2][:-1]: r["mean"] for r in block["rows"]}
    section["sanity"] = []
    facts["sanity_similarity"], facts["sanity_ssim"] = {}, {}
    for (method, layer), s in sorted(sanity.items()):
        sp, ss = np.stack(s["spearman"]), np.stack(s["ssim"])
        stages = [{"layers": s["stage_layers"][i] if i < len(s["stage_layers"]) else [],
                   "spearman": summary(sp[:, i], rng, resamples), "ssim": summary(ss[:, i], rng, resamples)}
                  for i in range(sp.shape[1])]
        section["sanity"].append({"method": method, "title": _title(method), "layer": layer, "stages": stages})
        name = metric_name("x", method, layer, layers_of.get(method, ())).partition("[")[2][:-1]
        facts["sanity_similarity"][name] = stages[-1]["spearman"]["mean"] if stages else None
        facts["sanity_ssim"][name] = stages[-1]["ssim"]["mean"] if stages else None
    section["localization"] = []
    facts["pointing_game"], facts["box_energy"] = {}, {}
    for method, layer in local_keys:
        hits = [r["local"][(method, layer)][0] for r in rows if (method, layer) in r["local"]]
        energy = [r["local"][(method, layer)][1] for r in rows if (method, layer) in r["local"]]
        item = {"method": method, "title": _title(method), "layer": layer,
                "pointing_game": summary(hits, rng, resamples), "box_energy": summary(energy, rng, resamples)}
        section["localization"].append(item)
        name = metric_name("x", method, layer, layers_of.get(method, ())).partition("[")[2][:-1]
        facts["pointing_game"][name] = item["pointing_game"]["mean"]
        facts["box_energy"][name] = item["box_energy"]["mean"]
    section["class_maps"] = _class_maps(cfg, class_maps, class_names, staging)
    _class_average_figures(cfg, class_maps, class_names, staging)
    section["score_info"] = {k: {"title": t, "higher_is_better": h, "description": d}
                             for k, (t, h, d) in SCORE_INFO.items()}
    return Audit(section, facts)
