"""Exported programs (``torch.export.save`` → ``.pt2``) as model sources: checked, loaded, unflattened.

``torch.export.unflatten`` turns the program back into a module tree with the original qualified names
(``layer4.1.conv2``), whose submodules run their part of the graph when called; forward hooks and autograd
work on them as on the eager model (tested: feature maps and Grad-CAM equal the eager ones). What does not
carry over is the modules' classes — they are all graph modules — so methods that look for ``nn.ReLU`` or
``nn.Conv2d`` instances are refused for this source (``reportgen.modelcard.unsupported``); the original class
names are put back as ``original_name`` (as TorchScript does) for the layer table and the kernel gallery.

What ``torch.export.load`` can run, and what is checked first (reading the zip with the standard library):

- weights, constants or sample inputs stored as pickles (tensor subclasses, opaque objects, or sample inputs
  that ``weights_only=True`` refuses, where torch falls back to full pickle): full unpickling can run code
  in the file, so it is refused unless ``model.allow_pickle: true``;
- AOTInductor code (``data/aotinductor/``): a native library torch would load; always refused;
- symbolic shape expressions, which torch parses with ``sympy.sympify`` (Python ``eval``): each must be
  arithmetic over shape symbols and sympy function names, or the file is refused;
- after loading, before the first forward: every graph node must call an operator (``torch.ops``,
  ``operator``, ``math``, ``torch.sym_*``), not an arbitrary torch function.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from reportgen.errors import ModelError

__all__ = ["load_exported", "check_archive"]

log = logging.getLogger(__name__)

# Shape expressions: integers, shape symbols (s0, u3, ...), operators, and the names of sympy / torch sympy
# functions torch writes; anything else (quotes, dots, underscores, other names) could reach Python's eval.
_EXPR_TOKEN = re.compile(r"""\s*(?:\d+(?:\.\d+)?|'[a-z]\d+'|"[a-z]\d+"|[a-z]\d+|[A-Za-z]+|\*\*|//|[-+*/%(),<>=!&|~]=?)""")
_EXPR_NAMES = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "IntTrueDiv", "FloatTrueDiv", "BitwiseFn", "Identity",
    "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Abs", "Piecewise", "ITE",
    "floor", "ceiling", "sqrt", "oo", "zoo", "nan", "True", "False", "Integer", "Rational", "Float", "Symbol",
    # assumptions, written as keyword arguments: Symbol('s77', positive=True, integer=True)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero", "even",
    "odd", "commutative", "evaluate",
})


def _expr_is_plain(text: str) -> bool:
    pos = 0
    while pos < len(text):
        match = _EXPR_TOKEN.match(text, pos)
        if match is None:
            return False
        token = match.group().strip()
        if token[:1].isalpha() and not re.fullmatch(r"[a-z]\d+", token) and token not in _EXPR_NAMES:
            return False
        pos = match.end()
    return True


def _expressions(node: object) -> list[str]:
    """Every ``expr_str`` string in the serialized program (a JSON tree)."""
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str" and isinstance(value, str):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _pickled_payloads(config: dict) -> list[str]:
    """Names of entries a payload config (weights or constants) stores as pickles or Python objects."""
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    return [name for name, meta in entries.items()
            if not isinstance(meta, dict) or meta.get("use_pickle") is not False
            or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))]


def check_archive(path: Path, *, allow_pickle: bool) -> None:
    """Refuse a ``.pt2`` whose loading would run code beyond deserializing tensors and a graph (module doc)."""
    try:
        with zipfile.ZipFile(path) as archive:
            files = {name.split("/", 1)[1]: name for name in archive.namelist() if "/" in name}
            if files.get("archive_format") is None or archive.read(files["archive_format"]).strip() != b"pt2":
                raise ModelError(f"{path}: not an exported program saved with torch.export.save "
                                 "(no archive_format 'pt2' in the archive)")
            if any(name.startswith("data/aotinductor/") for name in files):
                raise ModelError(f"{path}: holds AOTInductor code (data/aotinductor/), a native library that "
                                 "torch.export.load would load; save the exported program alone with torch.export.save")
            pickled: list[str] = []
            for name, full in files.items():
                if re.fullmatch(r"data/(weights|constants)/[^/]+\.pt", name):
                    pickled.append(name)  # the legacy layout: one pickled state dict
                elif re.fullmatch(r"data/(weights/[^/]+_weights|constants/[^/]+_constants)_config\.json", name):
                    pickled += _pickled_payloads(json.loads(archive.read(full)))
                elif re.fullmatch(r"data/sample_inputs/[^/]+\.pt", name):
                    try:
                        torch.load(io.BytesIO(archive.read(full)), map_location="cpu", weights_only=True)
                    except Exception:  # torch.export.load would retry this with full pickle
                        pickled.append(name)
                elif re.fullmatch(r"models/[^/]+\.json", name):
                    bad = [e for e in _expressions(json.loads(archive.read(full))) if not _expr_is_plain(e)]
                    if bad:
                        raise ModelError(f"{path}: a shape expression is not plain arithmetic ({bad[0][:80]!r}); "
                                         "torch.export.load would evaluate it as Python")
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read the exported program: {type(exc).__name__}: {exc}") from exc
    if pickled and not allow_pickle:
        raise ModelError(f"{path}: {len(pickled)} entries are stored as pickles (e.g. {', '.join(pickled[:3])}), "
                         "which torch.export.load unpickles in full and that can run code in the file; if you trust "
                         "the file, set `model.allow_pickle: true`")
    if pickled:
        log.warning("loading %s with full pickle for %d entries: this can run code in the file "
                    "(model.allow_pickle is true)", path, len(pickled))


def _check_targets(program: torch.export.ExportedProgram, path: Path) -> None:
    """Every graph node calls an operator, not an arbitrary function named in the file."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
                continue
            owner = getattr(target, "__module__", None)
            if owner in ("_operator", "operator", "math") or getattr(target, "__name__", "").startswith("sym_"):
                continue
            raise ModelError(f"{path}: graph node {node.name!r} calls {target!r}, which is not an operator; "
                             "reportgen runs only graphs of operators")


def _training_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Operators called in training mode (batch norm with batch statistics, active dropout)."""
    found = []
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.name in ("training", "train"):
                value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
                if value is True:
                    found.append(str(node.target))
    return found


def _input_shape(program: torch.export.ExportedProgram, path: Path) -> tuple:
    """The shape of the one image input: ints where fixed, None where dynamic."""
    users = program.graph_signature.user_inputs
    if len(users) != 1:
        raise ModelError(f"{path}: the exported program takes {len(users)} inputs, expected one image batch (N, 3, H, W)")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.ndim != 4:
        raise ModelError(f"{path}: the exported program's input is {type(val).__name__} "
                         f"{tuple(val.shape) if isinstance(val, torch.Tensor) else ''}, expected (N, 3, H, W)")
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def _restore_class_names(module: nn.Module, program: torch.export.ExportedProgram) -> None:
    """Put each submodule's original class name back as ``original_name`` (from the graph's module stacks)."""
    kinds: dict[str, str] = {}
    for node in program.graph.nodes:
        for fqn, kind in (node.meta.get("nn_module_stack") or {}).values():
            kinds.setdefault(re.sub(r"@\d+", "", fqn), str(kind).rsplit(".", 1)[-1])
    for name, sub in module.named_modules():
        kind = kinds.get(re.sub(r"@\d+", "", name))
        if name and kind:
            sub.original_name = kind


def load_exported(path: Path, device: torch.device, *, size: tuple[int, int] | None, allow_pickle: bool) -> nn.Module:
    """The unflattened module of the exported program at ``path``, on ``device``; ``ModelError`` naming the file.

    The program must take one (N, 3, H, W) batch with a dynamic batch dimension and be exported in eval mode.
    A fixed H×W becomes the model's default input size (``pretrained_cfg``); a different ``size`` is refused.
    """
    check_archive(path, allow_pickle=allow_pickle)
    try:
        program = torch.export.load(path)
    except Exception as exc:  # deserialization can fail in many ways (version skew, a truncated file)
        raise ModelError(f"{path}: torch.export.load failed: {type(exc).__name__}: {exc}") from exc
    _check_targets(program, path)
    batch, channels, height, width = _input_shape(program, path)
    if batch is not None:
        raise ModelError(f"{path}: exported with a fixed batch size of {batch}; export with a dynamic batch dimension: "
                         "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))")
    if channels not in (None, 3):
        raise ModelError(f"{path}: the exported program takes {channels} input channels, expected 3 (RGB)")
    if height is not None and width is not None and size is not None and tuple(size) != (height, width):
        raise ModelError(f"{path}: exported for {height}x{width} inputs, but model.preprocess.size asks for "
                         f"{size[0]}x{size[1]}; remove it or export with dynamic height and width")
    training = _training_ops(program)
    if training:
        raise ModelError(f"{path}: exported in training mode ({training[0]} uses batch statistics or drops units); "
                         "call model.eval() before torch.export.export")
    if device.type != "cpu":
        program = torch.export.passes.move_to_device_pass(program, device)
    module = torch.export.unflatten(program)
    _restore_class_names(module, program)
    if height is not None and width is not None:
        module.pretrained_cfg = {"input_size": (3, height, width)}
    return module
