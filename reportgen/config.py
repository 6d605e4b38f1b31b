"""YAML config → frozen, validated ``RunConfig``.

Every problem of a config is collected and reported at once, one line each, as
``FILE:LINE: dotted.key: what is wrong`` (exit code 2, nothing written). Relative paths in a config are
resolved against the folder of the config file, so a scheduled job gives the same run from any working
directory. This is the only module that reads YAML.

A hostile file is bounded before it costs anything: at most 1 MB of UTF-8, 100,000 values once YAML aliases are
expanded ("billion laughs"), 64 levels of nesting, no alias inside its own anchor; at most 20 problems are written
out (then a count), and a user's value is quoted in at most 80 characters.
"""

from __future__ import annotations

import codecs
import difflib
import logging
import math
import os
import reprlib
import stat
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

log = logging.getLogger(__name__)

MODEL_SOURCES = ("timm", "torchvision", "torchscript", "export", "factory")  # export: a torch.export.save .pt2
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
    if len(word) > _SHOW_CHARS:  # no name is that long; and difflib's work grows with it
        return []
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


class _Reader:
    """Reads typed values out of the parsed YAML, recording every problem instead of stopping at the first.

    Only the first ``ConfigError.MAX_PROBLEMS`` are written out; the rest are counted in ``more``, and a message
    given as a function (one that searches for close matches) is then not even composed.
    """

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[str, int]):
        self.file = path
        self.data = data
        self.lines = lines
        self.problems: list[str] = []
        self.more = 0

    def where(self, dotted: str) -> str:
        """``FILE:LINE: dotted`` (the line of the closest key given)."""
        key = dotted
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        return f"{self.file}:{self.lines.get(key, 1)}: {dotted}"

    def problem(self, dotted: str, message: str | Callable[[], str], *, line: int | None = None) -> None:
        if len(self.problems) >= ConfigError.MAX_PROBLEMS:
            self.more += 1
            return
        text = message() if callable(message) else message
        where = f"{self.file}:{line}: {dotted}" if line is not None else self.where(dotted)
        self.problems.append(f"{where}: {text}")

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
                short = _key_text(key)
                self.problem(f"{dotted}.{short}" if dotted else short, lambda k=key: "unknown key" + _suggest(k, allowed))
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


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a mapping"}


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _triple(value: list) -> str | None:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"expected a list of 3 numbers, got {_show(value)}"
    return None


def _size(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if len(items) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in items):
        return f"expected an integer >= 8 or a list [height, width], got {_show(value)}"
    return None


def _read_model(r: _Reader) -> ModelConfig | None:
    r.section("model", ("source", "name", "weights", "allow_pickle", "num_classes", "labels", "preprocess"),
              required=True)
    r.section("model.preprocess", ("size", "resize", "crop_pct", "interpolation", "mean", "std"))
    source = r.get("model.source", str, required=True, choices=MODEL_SOURCES)
    name = r.get("model.name", str, required=True)
    if source in ("torchscript", "export") and name is not None:
        name = str(r.path("model.name", must="file"))
    elif source == "factory" and name is not None and ":" not in name:
        r.problem("model.name", f"expected 'package.module:function' for a factory, got {_show(name)}")
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
        r.problem("model.preprocess.std", f"expected non-zero values, got {_show(std)}")
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
        return None if value == "auto" else f"expected 'auto' or a number of processes, got {_show(value)}"
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
        r.problem("cams.target", lambda: f"expected predicted, true, topk or a class index, got {_show(raw)}"
                  + _suggest(raw, ("predicted", "true", "topk")))
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
    text = _read_text(path)
    from reportgen.methods import get_method

    if method_names is None:
        from reportgen.methods import cam_method_names

        method_names = cam_method_names()
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
    lines = builder.lines
    r = _Reader(path, data, lines)
    for dotted, line, first in builder.duplicates:
        r.problem(dotted, f"duplicate key (first given on line {first}); give it once", line=line)
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
        raise ConfigError(r.problems, source=path, more=r.more)
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


def _read_filters(r: _Reader) -> FiltersConfig:
    r.section("filters", ("layers", "channels", "size", "steps", "lr", "parameterization", "transforms", "seed",
                          "batch_size"))
    layers = r.names("filters.layers")
    raw = r.get("filters.channels", list, [])
    channels: list[int] = []
    for i, c in enumerate(raw):
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            r.problem(f"filters.channels[{i}]", f"expected a channel index >= 0, got {_show(c)}")
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
    return f"expected auto, cpu, cuda, cuda:N or mps, got {_show(value)}"


def _colormap_check(value: str) -> str | None:
    import matplotlib

    if value in matplotlib.colormaps:
        return None
    return f"unknown colormap {_show(value)}" + _suggest(value, tuple(matplotlib.colormaps))
