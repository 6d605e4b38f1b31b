"""Stage 1 of a run: what every image needs, under which cache key, and which images need the model.

``plan(cfg, card, labels, records, cache) -> RunPlan`` decides everything before any work: each image's results
(``ResultKey``) and their content-addressed cache keys, the fixed batch groups, which groups must go through the
model (anything missing) and which images are fully cached, and the images whose bytes are remembered as
undecodable. ``ComputeSpec`` is the small, frozen part of the config the compute engine reads, so the engine can be
called without a config file. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reportgen.cache import TensorCache, cache_key
from reportgen.config import RunConfig
from reportgen.images import ImageRecord, Skipped
from reportgen.methods import get_method
from reportgen.modelcard import ModelCard
from reportgen.results import PREDICTIONS, ResultKey

__all__ = ["ComputeSpec", "RunPlan", "plan", "label_index", "undecodable_key", "layout_name"]


@dataclass(frozen=True)
class ComputeSpec:
    """What the compute engine needs to know of a config: layers, methods, their parameters and the target rule.

    Attributes:
        fm_layers: layers whose top ``fm_top_k`` channels are kept as feature maps.
        methods: CAM/saliency method names, in config order; ``cam_layers`` the layers of the layer methods.
        target: ``predicted``, ``true``, ``topk`` or ``class`` (with ``class_index``); ``top_k`` for ``topk``.
        params: per method, its validated parameters (defaults filled in).
        raw_maps: ``full`` also keeps the signed per-channel attribution of input-gradient methods.
    """

    fm_layers: tuple[str, ...] = ()
    fm_top_k: int = 16
    methods: tuple[str, ...] = ()
    cam_layers: tuple[str, ...] = ()
    target: str = "predicted"
    class_index: int | None = None
    top_k: int = 1
    eigen_smooth: bool = False
    aug_smooth: bool = False
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    raw_maps: str = "reduced"
    metric_names: tuple[str, ...] = ()
    metric_methods: tuple[str, ...] = ()
    metric_steps: int = 20
    metric_batch_size: int = 64
    metric_bf16: bool = False
    metric_sanity_stages: int = 4
    metric_seed: int = 0

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ComputeSpec:
        c = cfg.cams
        return cls(fm_layers=tuple(cfg.feature_maps.layers), fm_top_k=cfg.feature_maps.top_k,
                   methods=tuple(c.methods), cam_layers=tuple(c.layers), target=c.target, class_index=c.class_index,
                   top_k=c.top_k, eigen_smooth=c.eigen_smooth, aug_smooth=c.aug_smooth,
                   params={m: dict(p) for m, p in c.params.items()}, raw_maps=cfg.report.raw_maps,
                   metric_names=tuple(cfg.metrics.compute),
                   metric_methods=tuple(cfg.metrics.methods) if cfg.metrics.compute else (),
                   metric_steps=cfg.metrics.steps, metric_batch_size=cfg.metrics.batch_size,
                   metric_bf16=cfg.metrics.bf16, metric_sanity_stages=cfg.metrics.sanity_stages,
                   metric_seed=cfg.metrics.seed)

    @property
    def target_name(self) -> str:
        """The target rule as ``ResultKey.target``: ``predicted``, ``true``, ``topk:K`` or ``class:I``."""
        if self.target == "topk":
            return f"topk:{self.top_k}"
        if self.target == "class":
            return f"class:{self.class_index}"
        return self.target

    def method_layers(self, method: str) -> tuple[str, ...]:
        """The layers ``method`` explains: the CAM layers, or ``("",)`` (the input) for input-level methods."""
        return self.cam_layers if get_method(method).needs_layer else ("",)

    def cam_key(self, method: str, layer: str = "") -> ResultKey:
        """The key of ``method``'s map at ``layer`` (empty: an input-level method) under this target rule."""
        return ResultKey.cam(method, layer, self.target_name)

    def cam_keys(self) -> list[ResultKey]:
        return [self.cam_key(m, layer) for m in self.methods for layer in self.method_layers(m)]

    def metric_keys(self) -> list[ResultKey]:
        """The trust scores of each scored method's map at each of its layers (none without ``metrics.compute``)."""
        return [ResultKey("metric", m, layer, self.target_name) for m in self.metric_methods
                for layer in self.method_layers(m)]

    def metric_params(self) -> dict[str, Any]:
        """What the scores depend on besides the map (part of their cache keys)."""
        return {"names": sorted(self.metric_names), "steps": self.metric_steps, "bf16": self.metric_bf16,
                "sanity_stages": self.metric_sanity_stages, "seed": self.metric_seed}

    def result_keys(self) -> list[ResultKey]:
        """Every result of one image, in report order."""
        return [PREDICTIONS, *(ResultKey.feature_maps(la) for la in self.fm_layers), *self.cam_keys(),
                *self.metric_keys()]


@dataclass(frozen=True)
class RunPlan:
    """Every decision made before the work.

    Attributes:
        records: the images that may be drawn (those remembered as undecodable are in ``known_bad`` instead).
        keys: per record, every ``ResultKey`` → its cache key.
        true_index: per record, its label's class index, or None.
        cold_groups: batch groups (positions in ``records``) with something missing: computed whole.
        warm: positions of records whose every result is cached.
        known_bad: files whose decoder failure was remembered by an earlier run.
        spec: what the compute engine reads.
    """

    records: tuple[ImageRecord, ...]
    keys: tuple[dict[ResultKey, str], ...]
    true_index: tuple[int | None, ...]
    cold_groups: tuple[tuple[int, ...], ...]
    warm: tuple[int, ...]
    known_bad: tuple[Skipped, ...]
    spec: ComputeSpec

    @property
    def cold(self) -> list[int]:
        return [i for group in self.cold_groups for i in group]


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


def layout_name(cfg: RunConfig) -> str:
    """The memory layout results are computed in: part of their keys, as it changes the float rounding."""
    return "channels_last" if cfg.run.channels_last else "contiguous"


def undecodable_key(rec: ImageRecord) -> str:
    """Where the reason an image's bytes could not be decoded is kept, so a rerun skips it without the model."""
    import PIL

    return cache_key({"image": rec.digest, "method": "decode-failure", "pillow": PIL.__version__})


def _image_keys(cfg: RunConfig, spec: ComputeSpec, model_id: dict, true_index: int | None,
                rec: ImageRecord) -> dict[ResultKey, str]:
    """The cache key of each result of ``rec``, from everything the result depends on."""
    base = {"model": model_id, "image": rec.digest, "layout": layout_name(cfg)}
    keys = {PREDICTIONS: cache_key({**base, "method": "predictions"})}
    for layer in spec.fm_layers:
        keys[ResultKey.feature_maps(layer)] = cache_key(
            {**base, "method": "feature_maps", "params": {"top_k": spec.fm_top_k}, "layer": layer})
    target: dict[str, Any] = {"kind": spec.target, "class": spec.class_index,
                              "top_k": spec.top_k if spec.target == "topk" else None}
    if spec.target in ("true", "predicted_and_true"):
        target["label"] = true_index
    for method in spec.methods:
        params = dict(spec.params.get(method, {}))
        if spec.raw_maps == "full" and get_method(method).signed:  # the entry holds the signed attribution too
            params["raw_maps"] = "full"
        if get_method(method).engine == "gradient":
            params.update({"eigen_smooth": True} if spec.eigen_smooth else {})
            params.update({"aug_smooth": True} if spec.aug_smooth else {})
        for layer in spec.method_layers(method):
            keys[ResultKey.cam(method, layer, spec.target_name)] = cache_key(
                {**base, "method": method, "params": params, "layer": layer, "target": target})
    for key in spec.metric_keys():  # the scores of a map: that map's key, and the metrics' own parameters
        keys[key] = cache_key({"map": keys[ResultKey.cam(key.method, key.layer, key.target)], "method": "metrics",
                               "params": spec.metric_params()})
    return keys


def plan(cfg: RunConfig, card: ModelCard, labels: list[str], records: list[ImageRecord],
         cache: TensorCache) -> RunPlan:
    """Decide each image's results and cache keys, and which batch groups need the model.

    Images are batched in fixed groups of ``batch_size`` in folder order: an image is always computed with the same
    batch-mates, so a rerun after a crash or a change gives bit-identical results. A group with anything missing
    is computed whole (the cached results of its other images are kept, not rewritten).
    """
    spec = ComputeSpec.from_config(cfg)
    model_id = card.identity()
    known_bad: list[Skipped] = []
    kept: list[ImageRecord] = []
    groups: list[list[ImageRecord]] = []
    for start in range(0, len(records), cfg.run.batch_size):
        group = []
        for rec in records[start:start + cfg.run.batch_size]:
            bad = cache.get(undecodable_key(rec)) if cache.has(undecodable_key(rec)) else None
            if bad is not None:  # its decoder failure was remembered: it took no place in the batch then either
                known_bad.append(Skipped(rec.rel, bad[1].get("reason", "cannot decode image")))
            else:
                group.append(rec)
        kept.extend(group)
        groups.append(group)
    true_index = tuple(label_index(rec.label, labels) for rec in kept)
    keys = tuple(_image_keys(cfg, spec, model_id, t, rec) for rec, t in zip(kept, true_index, strict=True))
    position = {rec.index: p for p, rec in enumerate(kept)}
    cold_groups, warm = [], []
    for group in groups:
        members = tuple(position[rec.index] for rec in group)
        if any(not all(cache.has(k) for k in keys[p].values()) for p in members):
            cold_groups.append(members)
        else:
            warm.extend(members)
    return RunPlan(tuple(kept), keys, true_index, tuple(g for g in cold_groups if g), tuple(warm), tuple(known_bad),
                   spec)
