"""YAML config → frozen, validated ``RunConfig``.

Every problem of a config is collected and reported at once, one line each, as
``FILE:LINE: dotted.key: what is wrong`` (exit code 2, nothing written). Relative paths in a config are
resolved against the folder of the config file, so a scheduled job gives the same run from any working
directory. This is the only module that reads YAML.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from reportgen.errors import ConfigError

__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "DataConfig",
    "RunOptions",
    "KernelsConfig",
    "FeatureMapsConfig",
    "CamsConfig",
    "FiltersConfig",
    "ReportOptions",
    "RunConfig",
    "load_config",
    "close_matches",
    "MODEL_SOURCES",
    "TARGET_KINDS",
]

MODEL_SOURCES = ("timm", "torchvision", "torchscript", "factory")
TARGET_KINDS = ("predicted", "true", "class", "topk")
_RESIZE_MODES = ("squash", "crop")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the network's input. ``None`` fields are taken from the model's own defaults."""

    size: tuple[int, int] | None = None
    resize: str = "squash"
    crop_pct: float = 0.875
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which model to build and how to fill it.

    ``allow_pickle`` lets a ``.pt`` weights file that ``torch.load(weights_only=True)`` refuses be unpickled in
    full, which can run code in the file; it changes what loads, never the results, so it is in no cache key.
    """

    source: str
    name: str
    weights: Path | None = None
    num_classes: int | None = None
    labels: str | Path = "imagenet"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    allow_pickle: bool = False


@dataclass(frozen=True)
class DataConfig:
    path: Path
    limit: int | None = None


@dataclass(frozen=True)
class RunOptions:
    output: Path
    cache_dir: Path
    device: str = "auto"
    batch_size: int = 8
    workers: int = 0
    channels_last: bool = True
    draw_workers: int | str = "auto"  # processes drawing figures while the model works; "auto": see drawpool


@dataclass(frozen=True)
class KernelsConfig:
    layers: tuple[str, ...] = ()
    max_kernels: int = 64


@dataclass(frozen=True)
class FeatureMapsConfig:
    layers: tuple[str, ...] = ()
    top_k: int = 16


@dataclass(frozen=True)
class CamsConfig:
    """Per-image maps. ``params`` holds, for every selected method that has parameters, all of them (defaults
    filled in); ``layers`` apply to the methods that explain a layer, the others explain the input pixels."""

    methods: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    target: str = "predicted"
    class_index: int | None = None
    top_k: int = 1
    eigen_smooth: bool = False
    aug_smooth: bool = False
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class FiltersConfig:
    """Activation maximization: one image per (layer, channel)."""

    layers: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    size: int = 128
    steps: int = 256
    lr: float = 0.05
    parameterization: str = "fourier"
    transforms: bool = True
    seed: int = 0
    batch_size: int = 16


@dataclass(frozen=True)
class ReportOptions:
    pdf: bool = True
    colormap: str = "jet"
    alpha: float = 0.45
    image_size: int = 384


@dataclass(frozen=True)
class RunConfig:
    """A whole validated config. ``lines`` maps dotted keys to their line in ``path`` (for later errors)."""

    path: Path
    title: str
    model: ModelConfig
    data: DataConfig
    run: RunOptions
    kernels: KernelsConfig
    feature_maps: FeatureMapsConfig
    cams: CamsConfig
    filters: FiltersConfig
    report: ReportOptions
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, dotted: str) -> str:
        """``FILE:LINE: dotted`` for an error message about ``dotted`` (line of the closest known parent key)."""
        key = dotted
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        line = self.lines.get(key, 1)
        return f"{self.path}:{line}: {dotted}"

    def with_overrides(
        self,
        *,
        data: Path | None = None,
        output: Path | None = None,
        cache_dir: Path | None = None,
        device: str | None = None,
    ) -> RunConfig:
        """The same config with command-line overrides applied (paths already absolute or relative to cwd)."""
        run = self.run
        if output is not None:
            run = replace(run, output=Path(output).resolve())
        if cache_dir is not None:
            run = replace(run, cache_dir=Path(cache_dir).resolve())
        if device is not None:
            run = replace(run, device=device)
        cfg = replace(self, run=run)
        if data is not None:
            cfg = replace(cfg, data=replace(cfg.data, path=Path(data).resolve()))
        if output is not None or cache_dir is not None or data is not None:
            flags = {"run.output": "--output" if output is not None else None,
                     "run.cache_dir": "--cache-dir" if cache_dir is not None else None}
            problems = _placement(cfg.run.output, cfg.run.cache_dir, cfg.data.path, cfg.path, cfg.model,
                                  lambda key: flags.get(key) or cfg.where(key))
            if problems:
                raise ConfigError(problems)
        return cfg


def close_matches(word: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Up to ``n`` candidates close to ``word`` (typos, missing prefixes), best first."""
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        tail = word.rsplit(".", 1)[-1]
        for cand in candidates:
            if cand not in found and (cand.endswith("." + tail) or cand.startswith(word + ".")):
                found.append(cand)
            if len(found) >= n:
                break
    return found


def _suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    found = close_matches(word, candidates, n=1)
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?" if found else ""


# --- YAML with line numbers -------------------------------------------------------------------------------------


def _to_python(node: yaml.Node, dotted: str, lines: dict[str, int], duplicates: list[tuple[str, int, int]]) -> Any:
    """Plain data from a YAML node, recording each key's line and every key given twice in one mapping
    (PyYAML silently keeps the last one, which would hide a mistake)."""
    lines.setdefault(dotted, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{dotted}.{key}" if dotted else key
            if key in out:
                duplicates.append((child, key_node.start_mark.line + 1, lines[child]))
            lines[child] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, child, lines, duplicates)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, f"{dotted}[{i}]", lines, duplicates) for i, item in enumerate(node.value)]
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


class _Reader:
    """Reads typed values out of the parsed YAML, recording every problem instead of stopping at the first."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[str, int]):
        self.file = path
        self.data = data
        self.lines = lines
        self.problems: list[str] = []

    def where(self, dotted: str) -> str:
        """``FILE:LINE: dotted`` (the line of the closest key given)."""
        key = dotted
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        return f"{self.file}:{self.lines.get(key, 1)}: {dotted}"

    def problem(self, dotted: str, message: str) -> None:
        self.problems.append(f"{self.where(dotted)}: {message}")

    def section(self, dotted: str, allowed: tuple[str, ...], required: bool = False) -> dict[str, Any]:
        value = self._lookup(dotted)
        if value is None:
            if required:
                self.problem(dotted, "required section is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(dotted, f"expected a mapping, got {_type_name(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem(f"{dotted}.{key}" if dotted else key, "unknown key" + _suggest(key, allowed))
        return value

    def _lookup(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split(".") if dotted else []:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def get(
        self,
        dotted: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
        choices: tuple[str, ...] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        parent, _, key = dotted.rpartition(".")
        container = self._lookup(parent) if parent else self.data
        if not isinstance(container, dict) or key not in container or container[key] is None:
            if required:
                self.problem(dotted, "required key is missing")
            return default
        value = container[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            hint = ""
            if isinstance(value, bool) and str in kinds:
                hint = " (YAML reads yes/no/on/off/true/false as booleans: put the text in quotes)"
            self.problem(dotted, f"expected {expected}, got {_type_name(value)} {value!r}{hint}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(dotted, f"expected a finite number, got {value!r}")
            return default
        if choices is not None and value not in choices:
            self.problem(dotted, f"expected one of {', '.join(choices)}, got {value!r}" + _suggest(str(value), choices))
            return default
        if minimum is not None and value < minimum:
            self.problem(dotted, f"expected a value >= {minimum}, got {value!r}")
            return default
        if maximum is not None and value > maximum:
            self.problem(dotted, f"expected a value <= {maximum}, got {value!r}")
            return default
        if check is not None:
            message = check(value)
            if message:
                self.problem(dotted, message)
                return default
        return value

    def path(self, dotted: str, *, required: bool = False, must: str | None = None) -> Path | None:
        """A path relative to the config file's folder; ``must`` = "file" or "dir" checks that it exists."""
        raw = self.get(dotted, str, required=required)
        if raw is None:
            return None
        resolved = (self.file.parent / Path(raw).expanduser()).resolve()
        if must == "file" and not resolved.is_file():
            self.problem(dotted, f"file not found: {resolved}")
        elif must == "dir" and not resolved.is_dir():
            self.problem(dotted, f"folder not found: {resolved}")
        return resolved

    def names(self, dotted: str, *, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.get(dotted, (list, str), [])
        items = [value] if isinstance(value, str) else value
        out: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                self.problem(f"{dotted}[{i}]", f"expected a non-empty string, got {_type_name(item)} {item!r}")
            elif choices is not None and item not in choices:
                self.problem(f"{dotted}[{i}]", f"unknown name {item!r}; expected one of {', '.join(choices)}" + _suggest(item, choices))
            elif item in out:
                self.problem(f"{dotted}[{i}]", f"{item!r} is listed twice")
            else:
                out.append(item)
        return tuple(out)


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a mapping"}


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _triple(value: list) -> str | None:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"expected a list of 3 numbers, got {value!r}"
    return None


def _size(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if len(items) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in items):
        return f"expected an integer >= 8 or a list [height, width], got {value!r}"
    return None


def _read_model(r: _Reader) -> ModelConfig | None:
    r.section("model", ("source", "name", "weights", "allow_pickle", "num_classes", "labels", "preprocess"),
              required=True)
    r.section("model.preprocess", ("size", "resize", "crop_pct", "interpolation", "mean", "std"))
    source = r.get("model.source", str, required=True, choices=MODEL_SOURCES)
    name = r.get("model.name", str, required=True)
    if source == "torchscript" and name is not None:
        name = str(r.path("model.name", must="file"))
    elif source == "factory" and name is not None and ":" not in name:
        r.problem("model.name", f"expected 'package.module:function' for a factory, got {name!r}")
    weights = r.path("model.weights", must="file")
    allow_pickle = r.get("model.allow_pickle", bool, False)
    num_classes = r.get("model.num_classes", int, minimum=1)
    labels: str | Path = r.get("model.labels", str, "imagenet")
    if labels not in ("imagenet", "none"):
        labels = r.path("model.labels", must="file") or labels
    size = r.get("model.preprocess.size", (int, list), check=_size)
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size * 2 if len(size) == 1 else size)
    mean = r.get("model.preprocess.mean", list, check=_triple)
    std = r.get("model.preprocess.std", list, check=_triple)
    if std is not None and any(s == 0 for s in std):
        r.problem("model.preprocess.std", f"expected non-zero values, got {std!r}")
    pre = PreprocessConfig(
        size=size,
        resize=r.get("model.preprocess.resize", str, "squash", choices=_RESIZE_MODES),
        crop_pct=r.get("model.preprocess.crop_pct", float, 0.875, minimum=0.1, maximum=1.0),
        interpolation=r.get("model.preprocess.interpolation", str, choices=_INTERPOLATIONS),
        mean=tuple(float(v) for v in mean) if mean else None,
        std=tuple(float(v) for v in std) if std else None,
    )
    if source is None or name is None:
        return None
    return ModelConfig(source=source, name=name, weights=weights, num_classes=num_classes, labels=labels,
                       preprocess=pre, allow_pickle=allow_pickle)


def _placement(output: Path, cache_dir: Path, data: Path | None, config: Path, model: ModelConfig | None,
               where: Callable[[str], str]) -> list[str]:
    """Output/cache folders that could overwrite or delete user files (see ``reportgen.outfolder``)."""
    from reportgen.outfolder import placement_problems

    files = (("weights", model.weights), ("labels", model.labels)) if model is not None else ()
    inputs = [(f"model.{key}", value) for key, value in files if isinstance(value, Path)]
    return placement_problems(output=output, cache_dir=cache_dir, data=data, config=config, inputs=inputs,
                              where=where)


def _draw_workers_check(value: int | str) -> str | None:
    if isinstance(value, str):
        return None if value == "auto" else f"expected 'auto' or a number of processes, got {value!r}"
    return None if 0 <= value <= 64 else f"expected 'auto' or 0..64 processes, got {value}"


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` could not be created or written (its nearest existing ancestor decides), else None."""
    probe = folder
    try:
        while not probe.exists():
            if probe.parent == probe:
                return None
            probe = probe.parent
    except (OSError, ValueError):  # a name the OS refuses; creating the folder will say so
        return None
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _read_targets(r: _Reader) -> tuple[str, int | None]:
    raw = r.get("cams.target", (str, int), "predicted")
    if isinstance(raw, int):
        if raw < 0:
            r.problem("cams.target", f"expected a class index >= 0, got {raw}")
        return "class", raw
    if raw not in ("predicted", "true", "topk"):
        r.problem("cams.target", f"expected predicted, true, topk or a class index, got {raw!r}" + _suggest(raw, ("predicted", "true", "topk")))
        return "predicted", None
    return raw, None


def load_config(path: str | Path, *, method_names: tuple[str, ...] | None = None,
                data_dir: Path | None = None) -> RunConfig:
    """Read and validate a YAML config; raise ``ConfigError`` listing every problem found.

    Args:
        path: the YAML file.
        method_names: the CAM method names to accept (defaults to the method registry's).
        data_dir: an image folder that replaces ``data.path`` (``--data``); the config's own folder then need not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    from reportgen.methods import get_method

    if method_names is None:
        from reportgen.methods import cam_method_names

        method_names = cam_method_names()
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: YAML syntax error: {reason}") from exc
    if node is None:
        raise ConfigError(f"{path}:1: the config is empty")
    lines: dict[str, int] = {}
    duplicates: list[tuple[str, int, int]] = []
    try:
        data = _to_python(node, "", lines, duplicates)
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. an impossible date, a non-hashable key
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: YAML value error: {reason}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level, got {_type_name(data)}")
    r = _Reader(path, data, lines)
    for dotted, line, first in duplicates:
        r.problems.append(f"{path}:{line}: {dotted}: duplicate key (first given on line {first}); give it once")
    r.section("", ("title", "model", "data", "run", "kernels", "feature_maps", "cams", "filters", "report"))
    title = r.get("title", str, f"reportgen: {path.stem}")
    model = _read_model(r)

    r.section("data", ("path", "limit"), required=True)
    data_path = r.path("data.path", required=True, must=None if data_dir is not None else "dir")
    if data_dir is not None:
        data_path = Path(data_dir).resolve()
    limit = r.get("data.limit", int, minimum=1)

    r.section("run", ("output", "cache_dir", "device", "batch_size", "workers", "channels_last",
                      "draw_workers"))
    output = r.path("run.output") or (path.parent / "outputs" / path.stem).resolve()
    cache_dir = r.path("run.cache_dir") or (Path.home() / ".cache" / "reportgen").resolve()
    for key, folder in (("run.output", output), ("run.cache_dir", cache_dir)):
        why = _unwritable(folder)
        if why:
            r.problem(key, f"cannot write to {folder}: {why}")
    device = r.get("run.device", str, "auto", check=_device_check)
    batch_size = r.get("run.batch_size", int, 8, minimum=1)
    workers = r.get("run.workers", int, 0, minimum=0)
    channels_last = r.get("run.channels_last", bool, True)
    draw_workers = r.get("run.draw_workers", (int, str), "auto", check=_draw_workers_check)

    r.section("kernels", ("layers", "max_kernels"))
    kernels = KernelsConfig(r.names("kernels.layers"), r.get("kernels.max_kernels", int, 64, minimum=1, maximum=65536))
    r.section("feature_maps", ("layers", "top_k"))
    fmaps = FeatureMapsConfig(r.names("feature_maps.layers"), r.get("feature_maps.top_k", int, 16, minimum=1, maximum=256))
    r.section("cams", ("methods", "layers", "target", "top_k", "eigen_smooth", "aug_smooth", "params"))
    methods = r.names("cams.methods", choices=method_names)
    cam_layers = r.names("cams.layers")
    raw_cams = data.get("cams") if isinstance(data.get("cams"), dict) else {}
    layered = [m for m in methods if get_method(m).needs_layer]
    if layered and not raw_cams.get("layers"):
        r.problem("cams.layers", f"required for {', '.join(layered)}: name at least one layer")
    if raw_cams.get("layers") and not raw_cams.get("methods"):
        r.problem("cams.methods", "required when cams.layers is given: name at least one method")
    params = _read_params(r, methods)
    target, class_index = _read_targets(r)
    top_k = r.get("cams.top_k", int, 1, minimum=1, maximum=20)
    eigen_smooth = r.get("cams.eigen_smooth", bool, False)
    aug_smooth = r.get("cams.aug_smooth", bool, False)
    filters = _read_filters(r)
    r.section("report", ("pdf", "colormap", "alpha", "image_size"))
    report = ReportOptions(
        pdf=r.get("report.pdf", bool, True),
        colormap=r.get("report.colormap", str, "jet", check=_colormap_check),
        alpha=r.get("report.alpha", float, 0.45, minimum=0.0, maximum=1.0),
        image_size=r.get("report.image_size", int, 384, minimum=64, maximum=4096),
    )
    r.problems.extend(_placement(output, cache_dir, data_path, path, model, r.where))
    if r.problems:
        raise ConfigError(r.problems)
    assert model is not None and data_path is not None  # guaranteed when no problem was recorded
    return RunConfig(
        path=path,
        title=title,
        model=model,
        data=DataConfig(path=data_path, limit=limit),
        run=RunOptions(output=output, cache_dir=cache_dir, device=device, batch_size=batch_size, workers=workers,
                       channels_last=channels_last, draw_workers=draw_workers),
        kernels=kernels,
        feature_maps=fmaps,
        cams=CamsConfig(methods=methods, layers=cam_layers, target=target, class_index=class_index, top_k=top_k,
                        eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, params=params),
        filters=filters,
        report=report,
        lines=dict(lines),
    )


def _read_params(r: _Reader, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``cams.params.<method>.<name>``, checked against each method's declared parameters; defaults filled in."""
    from reportgen.methods import get_method, list_methods

    known = tuple(s.name for s in list_methods("cam"))
    raw = r.section("cams.params", known)
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in known:
            continue
        if not get_method(name).params:
            r.problem(f"cams.params.{name}", f"{name} takes no parameters")
        elif name not in methods:
            r.problem(f"cams.params.{name}", f"parameters for {name!r}, which is not in cams.methods")
        elif value is not None and not isinstance(value, dict):
            r.problem(f"cams.params.{name}", f"expected a mapping of parameter names to values, got {value!r}")
    for method in methods:
        spec = get_method(method)
        if not spec.params:
            continue
        r.section(f"cams.params.{method}", tuple(p.name for p in spec.params))
        out[method] = {
            p.name: r.get(f"cams.params.{method}.{p.name}", p.kind, p.default, minimum=p.minimum, maximum=p.maximum,
                          choices=p.choices)
            for p in spec.params
        }
    return out


def _read_filters(r: _Reader) -> FiltersConfig:
    r.section("filters", ("layers", "channels", "size", "steps", "lr", "parameterization", "transforms", "seed",
                          "batch_size"))
    layers = r.names("filters.layers")
    raw = r.get("filters.channels", list, [])
    channels: list[int] = []
    for i, c in enumerate(raw):
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            r.problem(f"filters.channels[{i}]", f"expected a channel index >= 0, got {c!r}")
        else:
            channels.append(c)
    if layers and not raw:
        r.problem("filters.channels", "required when filters.layers is given: name at least one channel")
    return FiltersConfig(
        layers=layers,
        channels=tuple(channels),
        size=r.get("filters.size", int, 128, minimum=16, maximum=1024),
        steps=r.get("filters.steps", int, 256, minimum=1, maximum=100000),
        lr=r.get("filters.lr", float, 0.05, minimum=1e-6, maximum=10.0),
        parameterization=r.get("filters.parameterization", str, "fourier", choices=("fourier", "pixel")),
        transforms=r.get("filters.transforms", bool, True),
        seed=r.get("filters.seed", int, 0, minimum=0),
        batch_size=r.get("filters.batch_size", int, 16, minimum=1, maximum=4096),
    )


def _device_check(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:") and value[5:].isdigit():
        return None
    return f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}"


def _colormap_check(value: str) -> str | None:
    import matplotlib

    if value in matplotlib.colormaps:
        return None
    return f"unknown colormap {value!r}" + _suggest(value, tuple(matplotlib.colormaps))
