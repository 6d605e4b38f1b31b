"""What a run needs to know about its model without building it: the model card and its memo.

Building a model means importing torch and timm (about 3 s on a laptop core) before the first image; a rerun
whose every result is already cached should pay none of it. So the first build writes a *card* — name,
weights digest, preprocessing, label count, parameter count, and every layer with its type and weight shape
— to the cache, under the model's *recipe key*: a hash of what determines its weights (source, name, class
count, the bytes of the weights file or TorchScript file, the factory's source file and declared identity,
the versions of torch/timm/torchvision, the seed). A later run reads the card instead of building, checks the
config's layer names against it, and builds the model only when some result is missing, checking then that
the built weights have the card's digest.

A factory function is memoized only when it says what its weights depend on, with a ``reportgen_identity``
attribute (a callable returning JSON-able data); otherwise it is built every run, as a factory may read files
the recipe cannot see.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from reportgen.atomic import describe_os_error, replace_atomically
from reportgen.config import ModelConfig
from reportgen.errors import CacheError
from reportgen.methods import get_method, list_methods

__all__ = [
    "Preprocess",
    "LayerInfo",
    "ModelCard",
    "recipe_key",
    "read_card",
    "write_card",
    "label_names",
    "MODEL_SEED",
    "FILE_SOURCES",
    "unsupported",
    "source_problems",
    "source_summary",
]

MODEL_SEED = 0  # random-init weights are drawn with this seed, so a model without weights is still repeatable
_CARD_VERSION = 1
FILE_SOURCES = ("torchscript", "export")  # sources whose ``name`` is a model file

# Which sources serve which methods (README.md's table is this one). TorchScript modules take no hooks, so
# only what needs none runs on them: kernels (weights), input gradients. An exported program runs as
# torch.export.unflatten's module: hooks and gradients work on its submodules (same qualified names), but
# its layers are graph modules, not nn.ReLU / nn.Conv2d / nn.BatchNorm2d instances.
_HOOKLESS = ("kernels", "saliency", "smoothgrad", "integrated_gradients")
_NO_HOOKS = ("a TorchScript module takes no forward or backward hooks "
             "(register_forward_hook is not supported on ScriptModules)")
_EXPORT_LIMITS = {
    "guided_backprop": "guided backprop guides nn.ReLU modules, and an exported program's ReLUs are graph "
                       "nodes, not nn.ReLU modules: it would give plain gradients",
    "fullgrad": "FullGrad sums the bias gradients of Conv2d / BatchNorm modules, and an exported program's "
                "layers are graph modules: every bias term would be missing",
}
_HINTS = {
    "torchscript": "load the model from Python instead (model.source: factory, or timm / torchvision with "
                   "model.weights), or save it with torch.export.save and use model.source: export",
    "export": "load the model from Python for this method (model.source: factory, or timm / torchvision with "
              "model.weights)",
}


@dataclass(frozen=True)
class Preprocess:
    """Image → tensor recipe. ``size`` is (height, width) of the network input."""

    size: tuple[int, int]
    resize: str
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {
            "size": list(self.size),
            "resize": self.resize,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class LayerInfo:
    """A named submodule: its class name, whether it is a Conv2d, and its weight shape (if it has one)."""

    type: str
    conv2d: bool
    weight_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ModelCard:
    """Everything about a model that a fully cached run needs; written by the first build."""

    name: str
    source: str
    spec: str
    weights_source: str
    digest: str
    preprocess: Preprocess
    num_classes: int
    num_parameters: int
    layers: dict[str, LayerInfo]

    def identity(self) -> dict:
        """What makes this model's outputs what they are: the cache key's model part."""
        return {"arch": f"{self.source}:{self.spec}", "weights": self.digest, "preprocess": self.preprocess.as_dict()}

    def to_json(self) -> str:
        data = asdict(self)
        data["card_version"] = _CARD_VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        if data.pop("card_version", None) != _CARD_VERSION:
            raise ValueError("card version differs")
        pre = data.pop("preprocess")
        pre["size"] = tuple(pre["size"])
        pre["mean"] = tuple(pre["mean"])
        pre["std"] = tuple(pre["std"])
        layers = {
            name: LayerInfo(info["type"], info["conv2d"], tuple(info["weight_shape"]) if info["weight_shape"] else None)
            for name, info in data.pop("layers").items()
        }
        return cls(preprocess=Preprocess(**pre), layers=layers, **data)


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def recipe_key(cfg: ModelConfig) -> str | None:
    """Hash of everything that determines the model's weights and preprocessing, or None if that is unknowable.

    Cheap: reads files and package metadata; imports a factory's module only to read its ``reportgen_identity``.
    """
    parts: dict = {
        "card": _CARD_VERSION,
        "source": cfg.source,
        "name": cfg.name,
        "num_classes": cfg.num_classes,
        "preprocess": asdict(cfg.preprocess),
        "seed": MODEL_SEED,
        "versions": {d: _version(d) for d in ("torch", "torchvision", "timm", "reportgen")},
    }
    try:
        if cfg.weights is not None:
            parts["weights"] = _file_digest(cfg.weights)
        if cfg.source in FILE_SOURCES:
            parts["file"] = _file_digest(cfg.name)
        if cfg.source == "factory":
            module_name, _, func_name = cfg.name.partition(":")
            spec = importlib.util.find_spec(module_name)
            if spec is None or not spec.origin or not os.path.isfile(spec.origin):
                return None
            func = getattr(importlib.import_module(module_name), func_name, None)
            identity = getattr(func, "reportgen_identity", None)
            if not callable(identity):
                return None
            parts["factory"] = {"source": _file_digest(spec.origin), "identity": identity()}
    except (OSError, ImportError, ValueError):
        return None
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _card_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "models" / f"{key}.json"


def read_card(cache_dir: Path, key: str | None) -> ModelCard | None:
    """The memoized card for ``key``, or None (no key, no card, or an unreadable one)."""
    if key is None:
        return None
    path = _card_path(cache_dir, key)
    try:
        return ModelCard.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_card(cache_dir: Path, key: str | None, card: ModelCard) -> None:
    """Memoize ``card`` under ``key`` (atomically); nothing to do without a key."""
    if key is None:
        return
    path = _card_path(cache_dir, key)
    try:
        replace_atomically(path, lambda tmp: tmp.write_text(card.to_json(), encoding="utf-8"))
    except OSError as exc:
        raise CacheError(f"cannot write model card in {path.parent}: {describe_os_error(exc)}") from exc


def label_names(spec: str | Path, num_classes: int) -> list[str]:
    """Class names: ``imagenet`` (shipped with reportgen), ``none``, or a text file with one name per line."""
    if spec == "none":
        names: list[str] = []
    elif spec == "imagenet":
        text = resources.files("reportgen.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
        names = text.splitlines()
    else:
        names = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
    names = names[:num_classes]
    return names + [f"class {i}" for i in range(len(names), num_classes)]


def unsupported(source: str, method: str) -> str | None:
    """Why a model from ``source`` cannot serve ``method`` (a registry name, e.g. ``feature_maps``), or None."""
    if source == "torchscript" and method not in _HOOKLESS:
        return _NO_HOOKS
    if source == "export":
        return _EXPORT_LIMITS.get(method)
    return None


def source_summary(source: str, layers: dict[str, LayerInfo] | None = None) -> str | None:
    """One line on what a model from a limited source can run (and, given its layers, which are split), or None."""
    names = [m.name for m in list_methods()]
    refused = [m for m in names if unsupported(source, m)]
    if not refused:
        return None
    if source == "torchscript":
        line = (f"a TorchScript model runs only {', '.join(m for m in names if m not in refused)} "
                f"(no hooks on ScriptModules; layer output shapes unknown)")
    else:
        line = f"an exported program runs every method but {' and '.join(refused)}"
        split = sorted(name for name in layers or {} if "@" in name)
        if split:
            line += (f"; torch.export.unflatten split modules called more than once with different graphs "
                     f"({', '.join(split[:5])}{' ...' if len(split) > 5 else ''}): their layers cannot be hooked")
    return line


def _base_name(name: str) -> str:
    """``block@1.conv`` → ``block.conv``: torch.export.unflatten names a module's later calls ``name@N``."""
    return ".".join(part.split("@", 1)[0] for part in name.split("."))


def _split_layer(name: str, layers: dict[str, LayerInfo]) -> str | None:
    """Why hooks on layer ``name`` of an unflattened exported program would not see what they see eagerly."""
    if "@" in name:
        return (f"layer {name!r} is a copy torch.export.unflatten made for a later call of "
                f"{_base_name(name)!r}, not a layer of the model")
    copies = [other for other in layers if other != name and _base_name(other) == name]
    if copies:
        return (f"layer {name!r} is called more than once with different graphs; torch.export.unflatten splits it "
                f"into {name!r} and {', '.join(repr(c) for c in copies)}, so a hook on it would see only its first "
                "call: choose another layer, or load the model from Python (model.source: factory)")
    return None


def source_problems(cfg, layers: dict[str, LayerInfo]) -> list[str]:
    """One config-error line (``FILE:LINE: key: what``) per requested method or layer the model source cannot serve.

    ``cfg`` is a ``RunConfig``; ``layers`` the model card's. Only ``torchscript`` and ``export`` have limits.
    """
    source = cfg.model.source
    if source not in FILE_SOURCES:
        return []
    wanted = [("kernels.layers", "kernels", bool(cfg.kernels.layers)),
              ("feature_maps.layers", "feature_maps", bool(cfg.feature_maps.layers)),
              ("filters.layers", "activation_max", bool(cfg.filters.layers))]
    wanted += [(f"cams.methods[{i}]", m, True) for i, m in enumerate(cfg.cams.methods)]
    problems = [f"{cfg.where(key)}: {method} cannot run on a {source} model: {why}; {_HINTS[source]}"
                for key, method, asked in wanted if asked and (why := unsupported(source, method))]
    if source == "export":
        layered = any(get_method(m).needs_layer for m in cfg.cams.methods)
        sections = (("feature_maps.layers", cfg.feature_maps.layers), ("filters.layers", cfg.filters.layers),
                    ("cams.layers", cfg.cams.layers if layered else ()))
        problems += [f"{cfg.where(f'{key}[{i}]')}: {why}" for key, names in sections
                     for i, name in enumerate(names) if (why := _split_layer(name, layers))]
    return problems
