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

__all__ = ["Preprocess", "LayerInfo", "ModelCard", "recipe_key", "read_card", "write_card", "label_names", "MODEL_SEED"]

MODEL_SEED = 0  # random-init weights are drawn with this seed, so a model without weights is still repeatable
_CARD_VERSION = 1


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
        if cfg.source == "torchscript":
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
