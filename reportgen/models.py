"""Build a model from its source, load local weights, and attach what travels with it.

A ``LoadedModel`` carries the module (in eval mode, on its device), the preprocessing it expects, its label
names, and a digest of its weights that keys the cache. Nothing here downloads anything: timm and
torchvision models are built with ``pretrained=False`` / ``weights=None`` and filled from a local file.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reportgen.config import ModelConfig, PreprocessConfig, close_matches
from reportgen.errors import ModelError
from reportgen.modelcard import MODEL_SEED, LayerInfo, ModelCard, Preprocess, label_names

__all__ = [
    "LoadedModel",
    "layer_infos",
    "load_model",
    "resolve_device",
    "weights_digest",
    "layer_table",
    "parse_model_spec",
]

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A built model ready for the methods: ``module`` in eval mode on ``device``, with its card and labels."""

    module: nn.Module
    card: ModelCard
    device: torch.device
    labels: list[str]
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def preprocess(self) -> Preprocess:
        return self.card.preprocess

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def digest(self) -> str:
        return self.card.digest


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU. An explicit CUDA device that is missing is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} was asked for but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return device


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``timm:NAME``, ``torchvision:NAME``, ``factory:pkg.mod:fn``, ``export:FILE``, ``torchscript:FILE``, or the
    path of a ``.pt2`` exported program (``torch.export.save``) or a ``.pt``/``.pth``/``.ts`` TorchScript file
    → (source, name)."""
    source, sep, name = spec.partition(":")
    if sep and source in ("timm", "torchvision", "factory", "torchscript", "export"):
        return source, name
    if spec.endswith(".pt2") and Path(spec).is_file():
        return "export", spec
    if spec.endswith((".pt", ".pth", ".ts")) and Path(spec).is_file():
        return "torchscript", spec
    raise ModelError(
        f"cannot read model spec {spec!r}: expected timm:NAME, torchvision:NAME, factory:package.module:function, "
        "the path of an exported program (.pt2, saved with torch.export.save) or of a TorchScript file"
    )


def _build(cfg: ModelConfig, device: torch.device) -> nn.Module:
    source, name = cfg.source, cfg.name
    kwargs = {} if cfg.num_classes is None else {"num_classes": cfg.num_classes}
    try:
        if source == "timm":
            import timm

            if not timm.is_model(name):
                hint = close_matches(name, timm.list_models())
                raise ModelError(f"unknown timm model {name!r}" + (f"; did you mean {' or '.join(hint)}?" if hint else ""))
            return timm.create_model(name, pretrained=False, **kwargs)
        if source == "torchvision":
            import torchvision

            names = torchvision.models.list_models()
            if name not in names:
                hint = close_matches(name, names)
                raise ModelError(f"unknown torchvision model {name!r}" + (f"; did you mean {' or '.join(hint)}?" if hint else ""))
            return torchvision.models.get_model(name, weights=None, **kwargs)
        if source == "torchscript":
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it still loads fine
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(name, map_location=device)
        if source == "export":
            from reportgen.exported import load_exported

            return load_exported(Path(name), device, size=cfg.preprocess.size, allow_pickle=cfg.allow_pickle)
        if source == "factory":
            module_name, _, func_name = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ModelError(f"factory {name!r}: cannot import module {module_name!r}: {exc}") from exc
            factory = getattr(module, func_name, None)
            if not callable(factory):
                raise ModelError(f"factory {name!r}: module {module_name!r} has no function {func_name!r}")
            model = factory(**kwargs)
            if not isinstance(model, nn.Module):
                raise ModelError(f"factory {name!r} returned {type(model).__name__}, expected a torch.nn.Module")
            return model
    except ModelError:
        raise
    except Exception as exc:  # a model constructor can fail in any way; say which model
        raise ModelError(f"could not build {source} model {name!r}: {type(exc).__name__}: {exc}") from exc
    raise ModelError(f"unknown model source {source!r}")


def _needs_full_pickle(exc: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused the file for holding more than tensors and containers.

    torch raises ``pickle.UnpicklingError`` (older versions: ``RuntimeError``) with a message about
    ``weights_only``; a file that is simply not a checkpoint fails with other errors and messages.
    """
    text = str(exc).lower()
    refused = "weights only" in text or "weights_only" in text
    return isinstance(exc, (pickle.UnpicklingError, RuntimeError)) and refused


def _pickle_refusal(path: Path, exc: Exception) -> ModelError:
    """The error for a checkpoint that needs full pickle while ``model.allow_pickle`` is off: what, why, how."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    detail = f" (it holds the Python object {found.group(1)}, not only tensors)" if found else ""
    return ModelError(
        f"{path}: cannot load the weights with weights_only=True{detail}: the file needs full pickle, which can "
        "run arbitrary code; if you trust the file, set `model.allow_pickle: true`"
    )


def _read_checkpoint(path: Path, allow_pickle: bool) -> object:
    """The object stored in a weights file: safetensors, else ``torch.load`` with ``weights_only=True``.

    Only when that is refused for needing full pickle and ``allow_pickle`` is set is the file unpickled in
    full (which can run code in it), with a logged warning naming the file. A checkpoint of plain tensors
    never goes through full pickle, flag or not.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not _needs_full_pickle(exc):
            raise ModelError(f"{path}: cannot read weights: {type(exc).__name__}: {exc}") from exc
        if not allow_pickle:
            raise _pickle_refusal(path, exc) from exc
    log.warning("loading %s with full pickle: this can run code in the file (model.allow_pickle is true)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling can fail in any way, e.g. a class that no longer exists
        raise ModelError(f"{path}: cannot read weights with full pickle: {type(exc).__name__}: {exc}") from exc


def _state_dict_of(checkpoint: object, path: Path) -> dict:
    """The tensors of a checkpoint: a state dict, one wrapped under ``state_dict``/``model``/``model_state_dict``,
    or a whole pickled ``nn.Module`` (bare or wrapped, as full-pickle checkpoints often are)."""
    state = checkpoint
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), (dict, nn.Module)):
            state = state[wrapper]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _load_weights(model: nn.Module, path: Path, *, allow_pickle: bool = False) -> None:
    """Fill ``model`` from a local weights file; every mismatch of names or shapes is an error naming the file."""
    state = _state_dict_of(_read_checkpoint(path, allow_pickle), path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if wrong:
        raise ModelError(f"{path}: weights do not fit the model: {len(wrong)} tensors of another shape "
                         f"(e.g. {', '.join(wrong[:3])})")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing (e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise ModelError(f"{path}: weights do not fit the model: " + "; ".join(parts))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): changes whenever any weight does."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _resolve_preprocess(model: nn.Module, cfg: PreprocessConfig) -> Preprocess:
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.size
    if size is None:
        input_size = pretrained.get("input_size")
        size = (int(input_size[1]), int(input_size[2])) if input_size else (224, 224)
    return Preprocess(
        size=size,
        resize=cfg.resize,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation or pretrained.get("interpolation") or "bilinear",
        mean=cfg.mean or tuple(pretrained.get("mean", _IMAGENET_MEAN)),
        std=cfg.std or tuple(pretrained.get("std", _IMAGENET_STD)),
    )


def _probe(model: nn.Module, size: tuple[int, int], device: torch.device) -> object:
    """The model's output for one zero image of ``size``; any failure is a ``ModelError`` saying so."""
    try:
        with torch.no_grad():
            return model(torch.zeros(1, 3, *size, device=device))
    except Exception as exc:  # a model's forward can fail in any way (a wrong input size, a device mismatch)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ModelError(f"the model failed on a zero input of shape 1x3x{size[0]}x{size[1]}: "
                         f"{type(exc).__name__}: {first}") from exc


def _num_classes(model: nn.Module, preprocess: Preprocess, device: torch.device) -> int:
    out = _probe(model, preprocess.size, device)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"expected the model to return logits of shape (N, classes), got {shape}")
    return int(out.shape[1])


def _type_name(module: nn.Module) -> str:
    """The module's class name; TorchScript modules (and exported programs' graph modules, see
    ``reportgen.exported``) keep the original one in ``original_name``."""
    return getattr(module, "original_name", None) or type(module).__name__


def _is_conv2d(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    kind = _type_name(module)
    return isinstance(module, nn.Conv2d) or (kind == "Conv2d" and isinstance(weight, torch.Tensor) and weight.ndim == 4)


def layer_infos(model: nn.Module) -> dict[str, LayerInfo]:
    """Every named submodule: class name, Conv2d or not, weight shape."""
    out = {}
    for name, module in model.named_modules():
        if not name:
            continue
        weight = getattr(module, "weight", None)
        shape = tuple(int(d) for d in weight.shape) if isinstance(weight, torch.Tensor) else None
        out[name] = LayerInfo(_type_name(module), _is_conv2d(module), shape)
    return out


def _weights_source(cfg: ModelConfig) -> str:
    if cfg.weights is not None:
        return str(cfg.weights)
    if cfg.source == "factory":
        return f"set by the factory {cfg.name}"
    if cfg.source == "torchscript":
        return f"inside the TorchScript file {cfg.name}"
    if cfg.source == "export":
        return f"inside the exported program {cfg.name}"
    return f"none: random initialisation (seed {MODEL_SEED}, no weights file given)"


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu", *, channels_last: bool = False) -> LoadedModel:
    """Build, fill and move the model; return it in eval mode with its card and labels.

    ``channels_last`` stores the 4-d weights (and asks inputs to be) in NHWC order: the same numbers up to
    float rounding, and about 1.6× faster forward + backward for ResNets on this CPU (oneDNN), the layout
    cuDNN's tensor-core kernels prefer on the GPU. The digest is of the values, so it does not change.

    Random initialisation is drawn under a fixed seed (without touching the global RNG), so a model with no
    weights file is the same model on every run, and its cache entries are reused.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        module = _build(cfg, dev)
    if cfg.weights is not None:
        _load_weights(module, cfg.weights, allow_pickle=cfg.allow_pickle)
    digest = weights_digest(module)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(dev).eval()
    if channels_last:
        module = module.to(memory_format=memory_format)
    preprocess = _resolve_preprocess(module, cfg.preprocess)
    classes = cfg.num_classes or getattr(module, "num_classes", None)
    if not isinstance(classes, int) or classes <= 0:
        classes = _num_classes(module, preprocess, dev)
    name = Path(cfg.name).name if cfg.source in ("torchscript", "export") else cfg.name.rsplit(":", 1)[-1]
    card = ModelCard(
        name=name,
        source=cfg.source,
        spec=cfg.name,
        weights_source=_weights_source(cfg),
        digest=digest,
        preprocess=preprocess,
        num_classes=classes,
        num_parameters=sum(p.numel() for p in module.parameters()),
        layers=layer_infos(module),
    )
    return LoadedModel(module=module, card=card, device=dev, labels=label_names(cfg.labels, classes),
                       memory_format=memory_format)


def layer_table(model: nn.Module, size: tuple[int, int], device: torch.device) -> Iterator[tuple[str, str, str]]:
    """(qualified name, module type, output shape for one input) for every named submodule, in call order.

    A TorchScript module takes no hooks: its layers are listed in definition order with shape ``-``. A model
    that fails on the probe input raises ``ModelError``.
    """
    shapes: dict[str, str] = {}
    handles = []

    def hook(name: str):
        def fn(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, "x".join(str(s) for s in output.shape[1:]))
            else:
                shapes.setdefault(name, type(output).__name__)

        return fn

    named = [(n, m) for n, m in model.named_modules() if n]
    if not isinstance(model, torch.jit.ScriptModule):
        try:
            for name, module in named:
                handles.append(module.register_forward_hook(hook(name)))
            _probe(model, size, device)
        finally:
            for handle in handles:
                handle.remove()
    order = {name: i for i, name in enumerate(shapes)}
    for name, module in sorted(named, key=lambda nm: order.get(nm[0], len(order))):
        yield name, _type_name(module), shapes.get(name, "-")
