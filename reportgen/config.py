"""YAML config → frozen, validated ``RunConfig``.

Every problem of a config is collected and reported at once, one line each, as
``FILE:LINE: dotted.key: what is wrong`` (exit code 2, nothing written). Relative paths in a config are
resolved against the folder of the config file, so a scheduled job gives the same run from any working
directory. This is the only module that reads YAML.

Every key is declared once, as a ``Field`` (type, default, bounds or choices, help) in a ``Section`` of
``SECTIONS``; one generic reader applies the table, then a few functions check what spans keys (layers that need
methods, what each model source needs, output-folder placement). ``reportgen config-schema`` prints the table and
``reportgen validate --explain`` a config's resolved values; the frozen dataclasses below are what other modules
read (their defaults equal the table's: tests/test_config_schema.py checks it).

A hostile file is bounded before it costs anything: at most 1 MB of UTF-8, 100,000 values once YAML aliases are
expanded ("billion laughs"), 64 levels of nesting, no alias inside its own anchor; at most 20 problems are written
out (then a count), and a user's value is quoted in at most 80 characters.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import reprlib
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from reportgen.errors import ConfigError
from reportgen.names import close_matches  # re-exported: models and api import it from here

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
    "Field",
    "Section",
    "Computed",
    "SECTIONS",
    "load_config",
    "config_schema",
    "explain_config",
    "close_matches",
    "MODEL_SOURCES",
    "TARGET_KINDS",
]

log = logging.getLogger(__name__)

MODEL_SOURCES = ("timm", "torchvision", "torchscript", "export", "factory")  # export: a torch.export.save .pt2
TARGET_KINDS = ("predicted", "true", "predicted_and_true", "class", "topk")
_TARGET_WORDS = ("predicted", "true", "predicted_and_true", "topk")
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
    """The images, and the audit's side tables: ``metadata`` (CSV: a ``file`` column and grouping columns) and
    ``boxes`` (CSV or JSON: file, x0, y0, x1, y1, optional label), both read by ``reportgen.annotations``."""

    path: Path
    limit: int | None = None
    metadata: Path | None = None
    boxes: Path | None = None


METRIC_NAMES = ("deletion", "insertion", "average_drop", "increase", "road_morf", "road_lerf", "sanity")


@dataclass(frozen=True)
class MetricsConfig:
    """Trust metrics of the maps (``reportgen.metrics``): which, of which methods, and their passes' batching."""

    compute: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # empty: every method of cams.methods that explains a class
    steps: int = 20
    batch_size: int = 64
    bf16: bool = False
    sanity_stages: int = 4
    bootstrap: int = 1000
    seed: int = 0


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
    pdf: str | bool = "summary"  # "summary", "full" or False (true in a config reads as "summary")
    colormap: str = "jet"
    alpha: float = 0.45
    image_size: int = 384
    raw_maps: str = "reduced"  # "full": also the signed (3, H, W) attribution of input-level methods
    pdf_images: tuple[str, ...] = ("misclassified", "least_confident", "sample")
    pdf_max_images: int = 25
    self_contained: bool = False
    self_contained_budget_mb: float = 50.0
    redact_paths: bool = False
    normalize: str = "per_map"  # the colour scale of the maps: per_map, per_image, per_method or shared


@dataclass(frozen=True)
class FiguresGridConfig:
    """A paper figure of images (rows) x methods (columns)."""

    images: tuple[str, ...] = ()  # image files (paths under data.path)
    methods: tuple[str, ...] = ()  # default: every method of cams.methods
    layer: str | None = None  # default: the first of cams.layers


@dataclass(frozen=True)
class FiguresConfig:
    """Figures for papers (``reportgen.paperfigs``), written under ``<output>/figures/``."""

    strips: tuple[str, ...] = ()  # image files (paths under data.path): photo + one row of methods each
    methods: tuple[str, ...] = ()  # the strips' methods (default: every method of cams.methods)
    layer: str | None = None  # the strips' layer (default: the first of cams.layers)
    grid: FiguresGridConfig = field(default_factory=FiguresGridConfig)
    kernels: tuple[str, ...] = ()  # layers of kernels.layers whose gallery is redrawn
    class_averages: tuple[str, ...] = ()  # class names: their class-average map (the audit's) as a figure
    dpi: int = 300
    formats: tuple[str, ...] = ("png", "pdf", "svg")


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
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    checks: tuple[str, ...] = ()  # gate conditions (reportgen.checks); a failed one makes the run exit 3
    compare_to: Path | None = None  # a finished run this one is compared with (reportgen.compare)
    compare_checks: tuple[str, ...] = ()  # gate conditions on that comparison
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, dotted: str) -> str:
        """``FILE:LINE: dotted`` for an error message about ``dotted`` (line of the closest known parent key)."""
        return _where(self.path, self.lines, dotted)

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


def _suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    found = close_matches(word, candidates, n=1)
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?" if found else ""


# --- YAML with line numbers, bounded ----------------------------------------------------------------------------

_MAX_BYTES = 1_000_000  # a config is a few KB; this bounds the parse to a few seconds
_MAX_VALUES = 100_000  # values after YAML aliases are expanded (a 1 KB "billion laughs" file holds 10^9)
_MAX_DEPTH = 64  # nesting levels, also through aliases; a config needs five
_SHOW_CHARS = 80  # a user's value or key quoted in a message
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, _SHOW_CHARS, _SHOW_CHARS


def _show(value: Any) -> str:
    """``repr(value)`` in at most 80 characters (ending in "…" when cut), without walking all of a huge value."""
    text = repr(value[: _SHOW_CHARS + 1]) if isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"


def _key_text(key: str) -> str:
    """A mapping key as it appears in dotted names: cut to 80 characters (no valid key is that long)."""
    return key if len(key) <= _SHOW_CHARS else key[: _SHOW_CHARS - 1] + "…"


def _read_text(path: Path) -> str:
    """The config's text: a regular file of at most ``_MAX_BYTES`` bytes of UTF-8 (a leading BOM is dropped)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: not a regular file (a pipe, socket or device); give a YAML file")
    too_big = f"{path}: the config is {{:,}} bytes; the limit is {_MAX_BYTES:,} bytes (is it the right file?)"
    if info.st_size > _MAX_BYTES:
        raise ConfigError(too_big.format(info.st_size))
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_BYTES:  # it grew since stat()
        raise ConfigError(too_big.format(len(raw)))
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        hint = "; it looks like UTF-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else ""
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02X} at line {line}){hint}; "
                          "save the file as UTF-8") from exc


class _Alias(yaml.Node):
    """An alias ``*name`` where it is used: the anchored node it repeats, at the alias's own position."""

    def __init__(self, target: yaml.Node, anchor: str, mark: Any):
        super().__init__(target.tag, target.value, mark, mark)
        self.target = target
        self.anchor = anchor


class _Limit(yaml.composer.ComposerError):
    """The YAML text itself holds more than a config may (too many values, too deep)."""


class _Composer(yaml.composer.Composer):
    """PyYAML's composer, keeping where each alias is used and refusing more than ``_MAX_VALUES`` nodes or
    nesting deeper than ``_MAX_DEPTH`` (the composer recurses: 500 ``[`` would end in a RecursionError)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return _Alias(super().compose_node(parent, index), event.anchor, event.start_mark)
        self._nodes += 1
        if self._nodes > _MAX_VALUES:
            raise _Limit(None, None, f"the config holds more than {_MAX_VALUES:,} values", event.start_mark)
        if self._depth >= _MAX_DEPTH:
            raise _Limit(None, None, f"nested more than {_MAX_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


try:  # libyaml's event parser is ~8x faster than the pure-Python one; the composing stays ours
    from yaml.cyaml import CParser as _Parser

    class _Loader(_Composer, _Parser, yaml.resolver.Resolver):  # type: ignore[misc]
        def __init__(self, text: str):
            _Parser.__init__(self, text)
            _Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    class _Loader(_Composer, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  yaml.resolver.Resolver):
        def __init__(self, text: str):
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)


def _compose(path: Path, text: str) -> yaml.Node | None:
    """The YAML node graph of ``text`` (aliases not expanded), or a ``ConfigError`` at the faulty line."""
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: find its line ourselves
        where = text.find(chr(exc.character)) if isinstance(exc.character, int) else -1
        line = text.count("\n", 0, where) + 1 if where >= 0 else 1
        raise ConfigError(f"{path}:{line}: YAML syntax error: character U+{exc.character:04X} is not allowed "
                          f"({exc.reason})") from exc
    except _Limit as exc:
        raise ConfigError(f"{path}:{exc.problem_mark.line + 1}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: YAML syntax error: {_shorten(reason)}") from exc
    finally:
        loader.dispose()


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Builder:
    """Plain data from the YAML node graph, recording each key's line and every key given twice in one mapping
    (PyYAML silently keeps the last one, which would hide a mistake).

    Aliases are expanded, but a file of a few lines can name 10^9 values that way ("billion laughs") or name
    itself (``&a [*a]``): expansion stops with a ``ConfigError`` at more than ``_MAX_VALUES`` values, more than
    ``_MAX_DEPTH`` levels, or a loop, naming the line of the outermost alias being expanded.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []
        self._values = 0
        self._aliases: list[tuple[_Alias, str]] = []  # the aliases being expanded and where, outermost first
        self._open: set[int] = set()  # the collections being built (a loop re-enters one)
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, dotted: str = "", depth: int = 0) -> Any:
        self.lines.setdefault(dotted, node.start_mark.line + 1)
        if isinstance(node, _Alias):
            if id(node.target) in self._open:
                self._fail(dotted, f"the alias *{_key_text(node.anchor)} is used inside the value it names (a loop)",
                           node, expanding=False)
            self._aliases.append((node, dotted))
            try:
                return self.build(node.target, dotted, depth)
            finally:
                self._aliases.pop()
        self._values += 1
        if self._values > _MAX_VALUES:
            self._fail(dotted, f"the config holds more than {_MAX_VALUES:,} values", node)
        if isinstance(node, yaml.ScalarNode):
            return self._constructor.construct_object(node, deep=True)
        if depth >= _MAX_DEPTH:
            self._fail(dotted, f"nested more than {_MAX_DEPTH} levels deep", node)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, f"{dotted}[{i}]", depth + 1) for i, item in enumerate(node.value)]
            return self._mapping(node, dotted, depth)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, dotted: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            scalar = key_node.target if isinstance(key_node, _Alias) else key_node
            if not isinstance(scalar, yaml.ScalarNode):
                kind = "list" if isinstance(scalar, yaml.SequenceNode) else "mapping"
                self._fail(dotted, f"a key must be plain text, got a {kind}", key_node)
            key = str(scalar.value)
            child = f"{dotted}.{_key_text(key)}" if dotted else _key_text(key)
            line = key_node.start_mark.line + 1
            if key in out:
                self.duplicates.append((child, line, self.lines.get(child, line)))
            self.lines[child] = line
            out[key] = self.build(value_node, child, depth + 1)
        return out

    def _fail(self, dotted: str, message: str, node: yaml.Node, *, expanding: bool = True) -> None:
        """Stop at ``node``, or, inside an alias's expansion, at the outermost alias being expanded."""
        if expanding and self._aliases:
            outer, dotted = self._aliases[0]
            node = outer
            message += f" once the alias *{_key_text(outer.anchor)} is expanded (an alias repeats its anchor's value)"
        key = f" {dotted}:" if dotted else ""
        raise ConfigError(f"{self.path}:{node.start_mark.line + 1}:{key} {message}")


def _where(file: Path, lines: Mapping[str, int], dotted: str) -> str:
    """``FILE:LINE: dotted``, with the line of the closest key given (``dotted`` itself, else a parent)."""
    key = dotted
    while key and key not in lines:
        key = key.rpartition(".")[0]
    return f"{file}:{lines.get(key, 1)}: {dotted}"


class _Reader:
    """Reads typed values out of the parsed YAML, recording every problem instead of stopping at the first.

    Only the first ``ConfigError.MAX_PROBLEMS`` are written out; the rest are counted in ``more``, and a message
    given as a function (one that searches for close matches) is then not even composed.

    Args:
        choices: the lists a ``Field.choices_from`` names (``methods``: the registry's cam methods).
        unchecked: dotted path keys whose file or folder need not exist (``data.path`` when ``--data`` replaces it).
    """

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[str, int], *,
                 choices: Mapping[str, tuple[str, ...]] | None = None, unchecked: tuple[str, ...] = ()):
        self.file = path
        self.data = data
        self.lines = lines
        self.choices = choices or {}
        self.unchecked = unchecked
        self.problems: list[str] = []
        self.more = 0

    def where(self, dotted: str) -> str:
        return _where(self.file, self.lines, dotted)

    def problem(self, dotted: str, message: str | Callable[[], str], *, line: int | None = None) -> None:
        if len(self.problems) >= ConfigError.MAX_PROBLEMS:
            self.more += 1
            return
        text = message() if callable(message) else message
        where = f"{self.file}:{line}: {dotted}" if line is not None else self.where(dotted)
        self.problems.append(f"{where}: {text}")

    def section(self, dotted: str, allowed: tuple[str, ...], required: bool = False) -> dict[str, Any]:
        value = self.lookup(dotted)
        if value is None:
            if required:
                self.problem(dotted, "required section is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(dotted, f"expected a mapping, got {_type_name(value)}")
            return {}
        for key in value:
            if key not in allowed:
                short = _key_text(key)
                self.problem(f"{dotted}.{short}" if dotted else short, lambda k=key: "unknown key" + _suggest(k, allowed))
        return value

    def lookup(self, dotted: str) -> Any:
        """The raw value at ``dotted`` (None when absent or under a non-mapping)."""
        node: Any = self.data
        for part in dotted.split(".") if dotted else []:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def field(self, dotted: str, f: Field, section: dict[str, Any]) -> Any:
        """The value of the declared key ``f`` at ``dotted`` in ``section``: checked, converted, or its default."""
        if f.form == "names":
            return self.names(dotted, choices=self.choices.get(f.choices_from or "", f.choices), section=section)
        if f.form == "indices":
            return self.indices(dotted, section)
        if f.form == "path":
            must = None if dotted in self.unchecked else f.must
            value = self.path(dotted, required=f.required, must=must, section=section)
        else:
            value = self.get(dotted, f.kind, None, required=f.required, choices=f.choices, minimum=f.minimum,
                             maximum=f.maximum, check=f.check, section=section)
        if value is None:  # absent, null or wrong: the default, computed only now (it may resolve a path)
            return f.default.of(self.file) if isinstance(f.default, Computed) else f.default
        return f.convert(value) if f.convert is not None else value

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
        section: dict[str, Any] | None = None,
    ) -> Any:
        """The value at ``dotted`` (looked up in ``section``, its parent mapping, when given), or ``default``."""
        parent, _, key = dotted.rpartition(".")
        container = section if section is not None else self.lookup(parent) if parent else self.data
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
            self.problem(dotted, f"expected {expected}, got {_type_name(value)} {_show(value)}{hint}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(dotted, f"expected a finite number, got {_show(value)}")
            return default
        if choices is not None and value not in choices:
            self.problem(dotted, lambda: f"expected one of {', '.join(choices)}, got {_show(value)}"
                         + _suggest(str(value), choices))
            return default
        if minimum is not None and value < minimum:
            self.problem(dotted, f"expected a value >= {minimum}, got {_show(value)}")
            return default
        if maximum is not None and value > maximum:
            self.problem(dotted, f"expected a value <= {maximum}, got {_show(value)}")
            return default
        if check is not None:
            message = check(value)
            if message:
                self.problem(dotted, message)
                return default
        return value

    def path(self, dotted: str, *, required: bool = False, must: str | None = None,
             section: dict[str, Any] | None = None) -> Path | None:
        """A path relative to the config file's folder; ``must`` = "file" or "dir" checks that it exists."""
        raw = self.get(dotted, str, required=required, section=section)
        return None if raw is None else self.resolve(dotted, raw, must)

    def resolve(self, dotted: str, raw: str, must: str | None) -> Path:
        resolved = (self.file.parent / Path(raw).expanduser()).resolve()
        if must == "file" and not resolved.is_file():
            self.problem(dotted, f"file not found: {resolved}")
        elif must == "dir" and not resolved.is_dir():
            self.problem(dotted, f"folder not found: {resolved}")
        return resolved

    def names(self, dotted: str, *, choices: tuple[str, ...] | None = None,
              section: dict[str, Any] | None = None) -> tuple[str, ...]:
        value = self.get(dotted, (list, str), [], section=section)
        items = [value] if isinstance(value, str) else value
        out: dict[str, None] = {}  # ordered, and a set: a list of 10^5 names is checked in linear time
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                self.problem(f"{dotted}[{i}]", f"expected a non-empty string, got {_type_name(item)} {_show(item)}")
            elif choices is not None and item not in choices:
                self.problem(f"{dotted}[{i}]", lambda item=item: f"unknown name {_show(item)}; expected one of "
                             f"{', '.join(choices)}" + _suggest(item, choices))
            elif item in out:
                self.problem(f"{dotted}[{i}]", f"{_show(item)} is listed twice")
            else:
                out[item] = None
        return tuple(out)

    def indices(self, dotted: str, section: dict[str, Any] | None = None) -> tuple[int, ...]:
        out = []
        for i, c in enumerate(self.get(dotted, list, [], section=section)):
            if not isinstance(c, int) or isinstance(c, bool) or c < 0:
                self.problem(f"{dotted}[{i}]", f"expected a channel index >= 0, got {_show(c)}")
            else:
                out.append(c)
        return tuple(out)


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a mapping"}


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


# --- per-value checks and conversions named in the table ---------------------------------------------------------


def _triple(value: list) -> str | None:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"expected a list of 3 numbers, got {_show(value)}"
    return None


def _floats(value: list) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _size(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if len(items) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in items):
        return f"expected an integer >= 8 or a list [height, width], got {_show(value)}"
    return None


def _size_pair(value: int | list) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value * 2 if len(value) == 1 else value)


def _device_check(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:") and value[5:].isdigit():
        return None
    return f"expected auto, cpu, cuda, cuda:N or mps, got {_show(value)}"


def _draw_workers_check(value: int | str) -> str | None:
    if isinstance(value, str):
        return None if value == "auto" else f"expected 'auto' or a number of processes, got {_show(value)}"
    return None if 0 <= value <= 64 else f"expected 'auto' or 0..64 processes, got {value}"


PDF_IMAGE_KINDS = ("misclassified", "least_confident", "lowest_trust", "largest_change", "sample")


def _pdf_check(value: bool | str) -> str | None:
    if isinstance(value, bool) or value in ("summary", "full"):
        return None
    return f"expected summary, full, true or false, got {_show(value)}"


def _pdf_mode(value: bool | str) -> str | bool:
    return "summary" if value is True else value


def _pdf_images_check(value: list) -> str | None:
    for item in value:
        if item not in PDF_IMAGE_KINDS:
            return f"unknown image list {_show(item)}; expected some of {', '.join(PDF_IMAGE_KINDS)}"
    if len(set(value)) != len(value):
        return "a list is named twice"
    return None


def _colormap_check(value: str) -> str | None:
    import matplotlib

    if value in matplotlib.colormaps:
        return None
    return f"unknown colormap {_show(value)}" + _suggest(value, tuple(matplotlib.colormaps))


# --- the table: every key of a config, declared once -------------------------------------------------------------


class Computed(NamedTuple):
    """A default that depends on where the config file is: ``text`` for people, ``of(config_path)`` for the reader."""

    text: str
    of: Callable[[Path], Any]


class Field(NamedTuple):  # a NamedTuple, not a dataclass: the table is built at import, and this is ~6x cheaper
    """One config key: what it accepts, its default, bounds and help (the reader, ``config-schema`` and
    ``validate --explain`` all read this).

    Attributes:
        name: the key inside its section.
        kind: the YAML type(s) accepted (``float`` also takes an integer).
        default: the value when the key is absent or null; a ``Computed`` one depends on the config's path.
        help: one line for people.
        minimum, maximum, choices, check: bounds; ``check(value)`` returns what is wrong, or None.
        required: a missing key is a problem.
        form: ``value``; ``path`` (text resolved against the config's folder; ``must`` = "file"/"dir" must exist);
            ``names`` (a name or a list of distinct names, from ``choices`` or the list ``choices_from`` names);
            ``indices`` (a list of integers >= 0); ``section`` (a mapping read by its own ``Section`` or function).
        convert: turns a valid value into the dataclass's (``[224]`` → ``(224, 224)``).
        type_text, allowed_text, default_text: how the schema shows them where ``kind`` and ``default`` would
            mislead.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False
    form: str = "value"
    must: str | None = None
    choices_from: str | None = None
    convert: Callable[[Any], Any] | None = None
    type_text: str | None = None
    allowed_text: str | None = None
    default_text: str | None = None


class Section(NamedTuple):
    """A mapping of the config (``""``: the top level), the dataclass it becomes, and its keys in reading order."""

    name: str
    help: str
    fields: tuple[Field, ...]
    required: bool = False


def _sub(name: str, help: str, **kw: Any) -> Field:
    return Field(name, dict, None, help, form="section", type_text="mapping", **kw)


def _names(name: str, help: str, **kw: Any) -> Field:
    return Field(name, list, (), help, form="names", type_text="list of names", **kw)


_MODELS = "the model's (timm) or ImageNet's"
SECTIONS: tuple[Section, ...] = (
    Section("", "keys outside any section", (
        Field("title", str, Computed("reportgen: <config stem>", lambda p: f"reportgen: {p.stem}"),
              "the report's title"),
        _sub("model", "which network, and how to fill it", required=True),
        Field("checks", list, (), "gate conditions such as 'accuracy < 0.9' or 'group_accuracy[marked] < 0.8': a "
              "condition that holds fails the run (exit 3, everything still written); see docs/AUDIT.md",
              form="names", type_text="list of conditions"),
        Field("compare_to", str, None, "a finished run folder this run is compared with (reportgen compare); the "
              "comparison is written into this run's compare/ folder and its conditions are --fail-on ones: "
              "compare_checks", form="path", must="dir", type_text="path to a run folder", default_text="none"),
        Field("compare_checks", list, (), "gate conditions on the comparison with compare_to, such as "
              "'accuracy_drop > 0.02' or 'flips > 10'", form="names", type_text="list of conditions"),
        _sub("data", "the images", required=True),
        _sub("run", "where results go and where the work runs"),
        _sub("kernels", "conv weights drawn as images"),
        _sub("feature_maps", "activations per image and layer"),
        _sub("cams", "class activation maps and saliency, per image"),
        _sub("filters", "activation maximization"),
        _sub("metrics", "trust metrics of the maps"),
        _sub("report", "how the report is drawn"),
        _sub("figures", "figures for papers, under <output>/figures/"),
    )),
    Section("model", "which network to build and how to fill it", (
        Field("source", str, None, "where the model comes from", choices=MODEL_SOURCES, required=True),
        Field("name", str, None, "timm/torchvision name; a .pt (torchscript) or .pt2 (export) file; "
              "package.module:function (factory)", required=True),
        Field("weights", str, None, "local weights: .pt/.pth (loaded with weights_only=True) or .safetensors; "
              "nothing is downloaded", form="path", must="file", type_text="path to a file",
              default_text="none: set by the factory or file, else a seeded random initialisation"),
        Field("allow_pickle", bool, False, "true: a .pt that weights_only=True refuses is unpickled in full "
              "(that can run code in the file: only for files you trust)"),
        Field("num_classes", int, None, "passed to the model's constructor", minimum=1,
              default_text="the constructor's"),
        Field("labels", str, "imagenet", "class names: ImageNet's, none, or a text file with one name per line",
              type_text="imagenet, none or a path to a file"),
        _sub("preprocess", "how an image becomes the network's input"),
    ), required=True),
    Section("model.preprocess", f"how an image becomes the network's input; unset keys are {_MODELS}", (
        Field("size", (int, list), None, "input size in pixels", check=_size, convert=_size_pair,
              type_text="integer >= 8 or [height, width]", default_text=_MODELS),
        Field("resize", str, "squash", "squash: the whole image (overlays cover the photo); crop: timm's centre "
              "crop", choices=_RESIZE_MODES),
        Field("crop_pct", float, 0.875, "share of the resized image that resize: crop keeps", minimum=0.1,
              maximum=1.0),
        Field("interpolation", str, None, "resampling filter of the resize", choices=_INTERPOLATIONS,
              default_text=_MODELS),
        Field("mean", list, None, "per-channel mean subtracted from the RGB input (0..1 scale)", check=_triple,
              convert=_floats, type_text="list of 3 numbers", default_text=_MODELS),
        Field("std", list, None, "per-channel divisor of the RGB input (non-zero)", check=_triple, convert=_floats,
              type_text="list of 3 numbers", default_text=_MODELS),
    )),
    Section("data", "the images", (
        Field("path", str, None, "image folder, walked recursively; class subfolders become labels (ImageFolder "
              "layout)", required=True, form="path", must="dir", type_text="path to a folder"),
        Field("limit", int, None, "read at most this many images", minimum=1, default_text="all"),
        Field("metadata", str, None, "CSV with a file column (paths under data.path) and any other columns: each "
              "becomes a grouping of accuracy, confidence and metrics", form="path", must="file",
              type_text="path to a .csv file", default_text="none"),
        Field("boxes", str, None, "CSV or JSON of boxes (file, x0, y0, x1, y1 in the image's pixels, optional "
              "label): pointing game and map energy inside the box per method", form="path", must="file",
              type_text="path to a .csv or .json file", default_text="none"),
    ), required=True),
    Section("run", "where results go and where the work runs", (
        Field("output", str, Computed("<config dir>/outputs/<config stem>",
                                      lambda p: (p.parent / "outputs" / p.stem).resolve()),
              "the report folder; a finished run there is replaced only with --force", form="path",
              type_text="path to a folder"),
        Field("cache_dir", str, Computed("~/.cache/reportgen", lambda p: (Path.home() / ".cache" / "reportgen").resolve()),
              "tensor and figure cache, shared by runs", form="path", type_text="path to a folder"),
        Field("device", str, "auto", "auto picks CUDA when present", check=_device_check,
              allowed_text="auto, cpu, cuda, cuda:N, mps"),
        Field("batch_size", int, 8, "images per forward pass", minimum=1),
        Field("workers", int, 0, "image-decoding processes (DataLoader workers)", minimum=0),
        Field("channels_last", bool, True, "NHWC weights and inputs: ~1.5x faster on CPU, maps equal to float32 "
              "rounding; part of the cache key"),
        Field("draw_workers", (int, str), "auto", "processes drawing figures while the model works (auto: 0 on "
              "CPU, the cores left on CUDA)", check=_draw_workers_check, allowed_text="auto or 0..64"),
    )),
    Section("kernels", "conv weights drawn as images, per layer", (
        _names("layers", "conv layers (qualified names: see reportgen layers)"),
        Field("max_kernels", int, 64, "kernels drawn per layer: those of largest L2 norm", minimum=1, maximum=65536),
    )),
    Section("feature_maps", "activations per image and layer", (
        _names("layers", "layers whose outputs are drawn"),
        Field("top_k", int, 16, "channels drawn per image: highest mean activation", minimum=1, maximum=256),
    )),
    Section("cams", "class activation maps and saliency, per image, target and layer", (
        _names("methods", "methods to run (see reportgen methods)", choices_from="methods",
               allowed_text="the cam methods of reportgen methods"),
        _names("layers", "layers the layer methods explain (required with them); input-level methods ignore it"),
        Field("target", (str, int), "predicted", "the class explained: the prediction, the folder label, both "
              "(predicted_and_true: a misclassified image shows its label's map beside the prediction's), the "
              "top_k predictions, or a fixed class index", type_text="string or integer",
              allowed_text="predicted, true, predicted_and_true, topk, or a class index >= 0"),
        Field("top_k", int, 1, "classes explained with target: topk", minimum=1, maximum=20),
        Field("eigen_smooth", bool, False, "first principal component instead of the channel sum (gradient CAMs)"),
        Field("aug_smooth", bool, False, "average over flips and brightness factors (gradient CAMs)"),
        _sub("params", "per method: cams.params.METHOD.NAME; reportgen methods lists them with defaults and bounds",
             allowed_text="the parameters of reportgen methods", default_text="each parameter's default"),
    )),
    Section("filters", "activation maximization: one image per (layer, channel), beside the kernel gallery", (
        _names("layers", "layers whose channels are optimised"),
        Field("channels", list, (), "channel indices optimised in each layer (required with layers)",
              form="indices", type_text="list of integers >= 0"),
        Field("size", int, 128, "image side in pixels", minimum=16, maximum=1024),
        Field("steps", int, 256, "Adam steps", minimum=1, maximum=100000),
        Field("lr", float, 0.05, "Adam learning rate", minimum=1e-6, maximum=10.0),
        Field("parameterization", str, "fourier", "fourier: decorrelated colour (lucent-style); pixel: "
              "FlashTorch-style", choices=("fourier", "pixel")),
        Field("transforms", bool, True, "random jitter, scale and rotation at each step"),
        Field("seed", int, 0, "seed of the start image and the transforms", minimum=0),
        Field("batch_size", int, 16, "channels optimised together", minimum=1, maximum=4096),
    )),
    Section("metrics", "trust metrics of the maps, per image, method and layer (extra model passes; docs/AUDIT.md)", (
        Field("compute", list, (), "metrics to compute", form="names", choices=METRIC_NAMES,
              type_text="list of names"),
        _names("methods", "methods whose maps are scored (default: every method of cams.methods that explains a "
               "class)", choices_from="methods", allowed_text="methods of cams.methods"),
        Field("steps", int, 20, "deletion/insertion: pixels removed or revealed in this many equal steps",
              minimum=2, maximum=1000),
        Field("batch_size", int, 64, "perturbed images per forward pass", minimum=1, maximum=4096),
        Field("bf16", bool, False, "perturbed passes under bfloat16 autocast (as Score-CAM's bf16 option)"),
        Field("sanity_stages", int, 4, "sanity check: maps recomputed after randomizing this many cumulative "
              "blocks of layers from the top", minimum=1, maximum=64),
        Field("bootstrap", int, 1000, "bootstrap resamples for the confidence intervals of dataset means",
              minimum=0, maximum=100000),
        Field("seed", int, 0, "seed of the bootstrap and the sanity check's re-initialization", minimum=0),
    )),
    Section("report", "how the report is drawn", (
        Field("pdf", (bool, str), "summary", "report.pdf: summary (the overview and report.pdf_images), full "
              "(every image as an appendix) or false; true reads as summary", check=_pdf_check, convert=_pdf_mode,
              allowed_text="summary, full, true (= summary), false", type_text="summary, full or a boolean"),
        Field("pdf_images", list, PDF_IMAGE_KINDS[:2] + PDF_IMAGE_KINDS[-1:], "which images the summary PDF shows, "
              "taken in turn from each list", check=_pdf_images_check, convert=tuple,
              allowed_text=", ".join(PDF_IMAGE_KINDS), type_text="list of names"),
        Field("pdf_max_images", int, 25, "at most this many images in the summary PDF", minimum=0, maximum=100000),
        Field("self_contained", bool, False, "also write report-standalone.html: one file, every figure embedded"),
        Field("self_contained_budget_mb", float, 50.0, "warn when report-standalone.html would be larger (MB)",
              minimum=0.0),
        Field("redact_paths", bool, False, "leave the absolute data, config, output and cache folders out of "
              "manifest.json too (the pages never show them)"),
        Field("colormap", str, "jet", "colormap of the overlays and feature maps", check=_colormap_check,
              allowed_text="a matplotlib colormap name"),
        Field("alpha", float, 0.45, "opacity of a CAM over its photo", minimum=0.0, maximum=1.0),
        Field("image_size", int, 384, "long side of the photos drawn, in pixels", minimum=64, maximum=4096),
        Field("raw_maps", str, "reduced", "full also stores the signed per-channel (3, H, W) attribution of "
              "input-level methods in maps/, for comparison with captum", choices=("reduced", "full")),
        Field("normalize", str, "per_map", "the colours' scale, said on every colour bar: per_map (each map "
              "min-max), per_image (one scale over an image's maps), per_method (one per method and layer over the "
              "whole run), shared (one over every map of the run); layer-level and input-level maps never share one",
              choices=("per_map", "per_image", "per_method", "shared")),
    )),
    Section("figures", "figures for papers: PNG, vector PDF and SVG with real text, and a caption file each, "
            "under <output>/figures/ (reportgen.paperfigs)", (
        _names("strips", "image files (paths under data.path): the photo and one row of methods each"),
        _names("methods", "the strips' methods (default: all of cams.methods)", choices_from="methods",
               allowed_text="methods of cams.methods"),
        Field("layer", str, None, "the strips' layer (default: the first of cams.layers)",
              default_text="the first of cams.layers"),
        _sub("grid", "a grid of images x methods: figures.grid.images, .methods, .layer"),
        _names("kernels", "layers of kernels.layers whose kernel gallery is redrawn"),
        _names("class_averages", "class names (as the model names them): the class-average map of the images of "
               "that true class, by the first of figures.methods at figures.layer"),
        Field("dpi", int, 300, "resolution of the PNG files", minimum=50, maximum=1200),
        Field("formats", list, ("png", "pdf", "svg"), "files written per figure", form="names",
              choices=("png", "pdf", "svg"), type_text="list of names"),
    )),
    Section("figures.grid", "a grid of images (rows) x methods (columns) at one layer", (
        _names("images", "image files (paths under data.path), one row each"),
        _names("methods", "one column each (default: all of cams.methods)", choices_from="methods",
               allowed_text="methods of cams.methods"),
        Field("layer", str, None, "the layer of the layer-level methods (default: the first of cams.layers)",
              default_text="the first of cams.layers"),
    )),
)
_SECTION = {s.name: s for s in SECTIONS}
_KEYS = {s.name: tuple(f.name for f in s.fields) for s in SECTIONS}


def _read_section(r: _Reader, section: Section) -> dict[str, Any]:
    """Every key of ``section``: unknown keys reported (with close matches), each value checked or defaulted."""
    given = r.section(section.name, _KEYS[section.name], required=section.required)  # {} when absent or wrong
    prefix = f"{section.name}." if section.name else ""
    return {f.name: r.field(prefix + f.name, f, given) for f in section.fields if f.form != "section"}


# --- reading a whole config: the generic read, then the rules that span keys -------------------------------------


def _parse(path: Path, text: str | None) -> tuple[dict[str, Any], _Builder]:
    """The config's plain data and its builder (key lines, duplicate keys); every hostile-input bound applies."""
    if text is None:
        text = _read_text(path)
    elif len(text) > _MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > _MAX_BYTES:
        raise ConfigError(f"{path}: the config is over the limit of {_MAX_BYTES:,} bytes")
    node = _compose(path, text)
    if node is None:
        raise ConfigError(f"{path}:1: the config is empty")
    builder = _Builder(path)
    try:
        data = builder.build(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. an impossible date, a 5,000-digit integer
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: YAML value error: {_shorten(reason)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level, got {_type_name(data)}")
    return data, builder


def load_config(path: str | Path, *, method_names: tuple[str, ...] | None = None,
                data_dir: Path | None = None, text: str | None = None) -> RunConfig:
    """Read and validate a YAML config; raise ``ConfigError`` listing every problem found.

    Args:
        path: the YAML file.
        method_names: the CAM method names to accept (defaults to the method registry's).
        data_dir: an image folder that replaces ``data.path`` (``--data``); the config's own folder then need not exist.
        text: the YAML itself (the Python API's dict config); ``path`` then only names it in messages and anchors
            its relative paths.
    """
    path = Path(path)
    data, builder = _parse(path, text)
    if method_names is None:
        from reportgen.methods import cam_method_names

        method_names = cam_method_names()
    r = _Reader(path, data, builder.lines, choices={"methods": method_names},
                unchecked=("data.path",) if data_dir is not None else ())
    for dotted, line, first in builder.duplicates:
        r.problem(dotted, f"duplicate key (first given on line {first}); give it once", line=line)
    v = {section.name: _read_section(r, section) for section in SECTIONS}
    model = _model_rules(r, v["model"], v["model.preprocess"])
    if data_dir is not None:
        v["data"]["path"] = Path(data_dir).resolve()
    for key in ("output", "cache_dir"):
        why = _unwritable(v["run"][key])
        if why:
            r.problem(f"run.{key}", f"cannot write to {v['run'][key]}: {why}")
    cams = _cams_rules(r, v["cams"])
    metrics = _metrics_rules(r, v["metrics"], cams)
    figures = _figures_rules(r, v["figures"], v["figures.grid"], cams, v["kernels"]["layers"])
    for key in ("checks", "compare_checks"):
        _check_conditions(r, key, v[""][key])
    filters, channels = v["filters"], r.lookup("filters.channels")  # as given: a wrong item is its own problem
    if filters["layers"] and not (isinstance(channels, list) and channels):
        r.problem("filters.channels", "required when filters.layers is given: name at least one channel")
    r.problems.extend(_placement(v["run"]["output"], v["run"]["cache_dir"], v["data"]["path"], path, model, r.where))
    if r.problems:
        raise ConfigError(r.problems, source=path, more=r.more)
    assert model is not None  # guaranteed when no problem was recorded
    return RunConfig(path=path, title=v[""]["title"], model=model, data=DataConfig(**v["data"]),
                     run=RunOptions(**v["run"]), kernels=KernelsConfig(**v["kernels"]),
                     feature_maps=FeatureMapsConfig(**v["feature_maps"]), cams=cams,
                     filters=FiltersConfig(**filters), report=ReportOptions(**v["report"]), figures=figures, metrics=metrics,
                     checks=v[""]["checks"], compare_to=v[""]["compare_to"], compare_checks=v[""]["compare_checks"],
                     lines=dict(builder.lines))


def _model_rules(r: _Reader, values: dict[str, Any], pre: dict[str, Any]) -> ModelConfig | None:
    """What each model source needs of ``model.name``, a labels file that exists, a std that divides."""
    source, name = values["source"], values["name"]
    if source in ("torchscript", "export") and name is not None:
        name = str(r.resolve("model.name", name, must="file"))
    elif source == "factory" and name is not None and ":" not in name:
        r.problem("model.name", f"expected 'package.module:function' for a factory, got {_show(name)}")
    if values["labels"] not in ("imagenet", "none"):
        values["labels"] = r.resolve("model.labels", values["labels"], must="file")
    if pre["std"] is not None and any(s == 0 for s in pre["std"]):
        r.problem("model.preprocess.std", f"expected non-zero values, got {_show(r.lookup('model.preprocess.std'))}")
    if source is None or name is None:
        return None
    return ModelConfig(**{**values, "name": name}, preprocess=PreprocessConfig(**pre))


def _cams_rules(r: _Reader, values: dict[str, Any]) -> CamsConfig:
    """Layers for the methods that explain one, methods for the layers, each method's parameters, the target."""
    from reportgen.methods import get_method

    methods = values["methods"]
    layered = [m for m in methods if get_method(m).needs_layer]
    if layered and not r.lookup("cams.layers"):
        r.problem("cams.layers", f"required for {', '.join(layered)}: name at least one layer")
    if r.lookup("cams.layers") and not r.lookup("cams.methods"):
        r.problem("cams.methods", "required when cams.layers is given: name at least one method")
    params = _read_params(r, methods)
    target, class_index = _target(r, values.pop("target"))
    return CamsConfig(**values, target=target, class_index=class_index, params=params)


def _metrics_rules(r: _Reader, values: dict[str, Any], cams: CamsConfig) -> MetricsConfig:
    """Metrics need maps: the methods they score must be chosen in cams.methods and explain a class."""
    from reportgen.methods import get_method

    scored = [m for m in cams.methods if get_method(m).explains_class]
    if values["compute"] and not values["methods"]:
        values["methods"] = tuple(scored)
        if not scored:
            r.problem("metrics.compute", "needs maps to score: choose a method in cams.methods")
    for i, m in enumerate(values["methods"]):
        if m not in cams.methods:
            r.problem(f"metrics.methods[{i}]", f"{_show(m)} is not in cams.methods; choose it there too")
        elif m not in scored:
            r.problem(f"metrics.methods[{i}]", f"{_show(m)} does not explain a class (its maps have no target to "
                      "score against)")
    return MetricsConfig(**values)


def _figures_rules(r: _Reader, values: dict[str, Any], grid: dict[str, Any], cams: CamsConfig,
                   kernel_layers: tuple[str, ...]) -> FiguresConfig:
    """Paper figures redraw the run's own maps: their methods, layers and kernel galleries must be in the run.
    The image files are checked against the run's images when it starts (``paperfigs.check_figures``)."""
    for where, methods in (("figures.methods", values["methods"]), ("figures.grid.methods", grid["methods"])):
        for i, m in enumerate(methods):
            if m not in cams.methods:
                r.problem(f"{where}[{i}]", f"{_show(m)} is not in cams.methods; choose it there too")
    for where, layer in (("figures.layer", values["layer"]), ("figures.grid.layer", grid["layer"])):
        if layer is not None and layer not in cams.layers:
            r.problem(where, f"{_show(layer)} is not in cams.layers" + _suggest(layer, cams.layers))
    for i, layer in enumerate(values["kernels"]):
        if layer not in kernel_layers:
            r.problem(f"figures.kernels[{i}]", f"{_show(layer)} is not in kernels.layers (the figure redraws the "
                      "report's gallery)" + _suggest(layer, kernel_layers))
    return FiguresConfig(**{**values, "formats": values["formats"] or ("png", "pdf", "svg")},
                         grid=FiguresGridConfig(**grid))


def _check_conditions(r: _Reader, key: str, conditions: tuple[str, ...]) -> None:
    """Each gate condition must parse (``reportgen.checks.parse_condition``)."""
    if not conditions:
        return
    from reportgen.checks import parse_condition

    for i, text in enumerate(conditions):
        try:
            parse_condition(text)
        except ValueError as exc:
            r.problem(f"{key}[{i}]", str(exc))


def _target(r: _Reader, raw: str | int) -> tuple[str, int | None]:
    """``cams.target`` as (kind, class index): a class index means kind ``class``."""
    if isinstance(raw, int):
        if raw < 0:
            r.problem("cams.target", f"expected a class index >= 0, got {raw}")
        return "class", raw
    if raw not in _TARGET_WORDS:
        r.problem("cams.target", lambda: f"expected {', '.join(_TARGET_WORDS)} or a class index, got {_show(raw)}"
                  + _suggest(raw, _TARGET_WORDS))
        return "predicted", None
    return raw, None


def _read_params(r: _Reader, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``cams.params.<method>.<name>``, checked against each method's declared parameters; defaults filled in."""
    from reportgen.methods import get_method, list_methods

    known = tuple(s.name for s in list_methods("cam"))
    raw = r.section("cams.params", known)
    out: dict[str, dict[str, Any]] = {}
    unused: list[str] = []  # blocks of methods not chosen: one config template serves several models
    for name, value in raw.items():
        if name not in known:
            continue
        if not get_method(name).params:
            r.problem(f"cams.params.{name}", f"{name} takes no parameters")
        elif value is not None and not isinstance(value, dict):
            r.problem(f"cams.params.{name}", f"expected a mapping of parameter names to values, got {_show(value)}")
        elif name not in methods:
            unused.append(name)
            log.warning("%s: parameters for %s, which is not in cams.methods: checked, then ignored",
                        r.where(f"cams.params.{name}"), name)
    for method in (*methods, *unused):  # an unused block is checked too, so a typo in it shows now
        spec = get_method(method)
        if not spec.params:
            continue
        r.section(f"cams.params.{method}", tuple(p.name for p in spec.params))
        values = {
            p.name: r.get(f"cams.params.{method}.{p.name}", p.kind, p.default, minimum=p.minimum, maximum=p.maximum,
                          choices=p.choices)
            for p in spec.params
        }
        if method in methods:
            out[method] = values
    return out


def _placement(output: Path, cache_dir: Path, data: Path | None, config: Path, model: ModelConfig | None,
               where: Callable[[str], str]) -> list[str]:
    """Output/cache folders that could overwrite or delete user files (see ``reportgen.outfolder``)."""
    from reportgen.outfolder import placement_problems

    files = (("weights", model.weights), ("labels", model.labels)) if model is not None else ()
    inputs = [(f"model.{key}", value) for key, value in files if isinstance(value, Path)]
    return placement_problems(output=output, cache_dir=cache_dir, data=data, config=config, inputs=inputs,
                              where=where)


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


# --- the table for people: `reportgen config-schema` and `reportgen validate --explain` ---------------------------

_SCHEMA_KINDS = {str: "string", int: "integer", float: "number", bool: "true or false", list: "list", dict: "mapping"}


def _plain(value: Any) -> Any:
    """``value`` as JSON data: tuples become lists, paths text, mappings keep their order."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def _value_text(value: Any, limit: int = 200) -> str:
    """JSON text of ``value``, with characters a terminal would act on escaped, cut to ``limit`` characters."""
    text = json.dumps(_plain(value), ensure_ascii=False)
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_rows(section: Section) -> list[tuple[Field, dict[str, Any]]]:
    """Each key of ``section`` with its plain record (a mapping read by a ``Section`` of its own is listed there)."""
    prefix = f"{section.name}." if section.name else ""
    rows = []
    for f in section.fields:
        if prefix + f.name in _SECTION:
            continue
        kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
        if f.default_text is not None:
            shown = f.default_text
        elif isinstance(f.default, Computed):
            shown = f.default.text
        else:
            shown = "required" if f.required else _value_text(f.default)
        if f.allowed_text is not None or f.choices is not None:
            allowed = f.allowed_text or ", ".join(f.choices or ())
        else:
            low = "" if f.minimum is None else f"{f.minimum:g}"
            allowed = f"{low}..{f.maximum:g}" if f.maximum is not None else f">= {low}" if low else ""
        rows.append((f, {
            "key": prefix + f.name, "type": f.type_text or " or ".join(_SCHEMA_KINDS[k] for k in kinds),
            "required": f.required, "default": None if isinstance(f.default, Computed) else _plain(f.default),
            "default_text": shown, "minimum": f.minimum, "maximum": f.maximum,
            "choices": list(f.choices) if f.choices else None, "allowed": allowed, "help": f.help,
        }))
    return rows


def config_schema(fmt: str = "text") -> str:
    """Every config key with its type, default, bounds or choices and help, by section, from ``SECTIONS``.

    Args:
        fmt: ``text`` (for people), ``json`` (for tools) or ``markdown`` (docs/CONFIG.md is this output).
    """
    sections = [(s, _schema_rows(s)) for s in SECTIONS]
    if fmt == "json":
        return json.dumps({"sections": [{"name": s.name, "help": s.help, "required": s.required,
                                         "keys": [row for _, row in rows]} for s, rows in sections]}, indent=2) + "\n"
    if fmt == "markdown":
        return _schema_markdown(sections)
    if fmt != "text":
        raise ValueError(f"expected text, json or markdown, got {fmt!r}")
    out = ["Config keys (relative paths are relative to the config file's folder; per-method parameters: "
           "reportgen methods)"]
    for s, rows in sections:
        out.append(f"\n{s.name or '(top level)'}: {s.help}" + (" [required section]" if s.required else ""))
        for _, row in rows:
            detail = "; ".join(x for x in (row["type"], row["allowed"]) if x)
            out.append(f"  {row['key']} = {row['default_text']}  ({detail})\n      {row['help']}")
    return "\n".join(out) + "\n"


def _schema_markdown(sections: list[tuple[Section, list[tuple[Field, dict[str, Any]]]]]) -> str:
    def cell(text: str, code: bool = False) -> str:
        text = text.replace("|", "\\|")
        return f"`{text}`" if code and text else text

    out = ["# Config keys", "",
           "Generated by `reportgen config-schema --format markdown` from the table in `reportgen/config.py` "
           "(`SECTIONS`); do not edit by hand: `tests/test_config_schema.py` checks that this file equals the "
           "command's output. Relative paths are relative to the config file's folder. `reportgen validate "
           "CONFIG --explain` shows a config's resolved values and where each came from; `reportgen methods` "
           "lists the parameters under `cams.params`."]
    for s, rows in sections:
        required = " (required)" if s.required else ""
        title = f"`{s.name}`" if s.name else "Top level"
        out += ["", f"## {title}{required}", "", s.help[:1].upper() + s.help[1:] + ".", "",
                "| key | type | default | allowed | help |", "| --- | --- | --- | --- | --- |"]
        for f, row in rows:
            literal = f.default_text is None and not f.required  # a value, not words about one
            out.append(f"| `{row['key']}` | {cell(row['type'])} | {cell(row['default_text'], literal)} | "
                       f"{cell(row['allowed'])} | {cell(row['help'])} |")
    return "\n".join(out) + "\n"


def explain_config(cfg: RunConfig) -> list[str]:
    """One line per key of a loaded config (each chosen method's parameters too): its resolved value as JSON and
    where it came from, ``# line N`` of ``cfg.path`` or ``# default``."""
    rows: list[tuple[str, Any, str]] = []
    for section in SECTIONS:
        obj: Any = cfg
        for part in section.name.split(".") if section.name else ():
            obj = getattr(obj, part)
        prefix = f"{section.name}." if section.name else ""
        for f in section.fields:
            if prefix + f.name == "cams.params":  # the chosen methods' parameters, all of them
                rows += [(f"cams.params.{method}.{name}", value, "") for method, params in cfg.cams.params.items()
                         for name, value in params.items()]
            if f.form == "section":
                continue
            value = getattr(obj, f.name)
            if prefix + f.name == "cams.target" and value == "class":  # stored as kind + index
                value = cfg.cams.class_index
            rows.append((prefix + f.name, value, f.default_text or ""))
    width = max(len(key) for key, _, _ in rows)
    out = []
    for key, value, note in rows:
        line = cfg.lines.get(key)
        origin = f"line {line}" if line is not None else f"default: {note}" if note else "default"
        out.append(f"{key:<{width}} = {_value_text(value)}  # {origin}")
    return out
