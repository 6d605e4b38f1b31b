"""Kernel galleries: a conv layer's weights, drawn as images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reportgen.errors import MethodError

__all__ = ["KernelSelection", "select_kernels"]



@dataclass(frozen=True)
class KernelSelection:
    """Kernels chosen for drawing.

    Attributes:
        kernels: (n, c, kh, kw) float32 on the CPU; c == 3 when ``rgb``, else 1.
        labels: one per kernel: ``"o"`` (RGB filter o) or ``"o/i"`` (output o, input channel i).
        rgb: the layer reads the RGB image, so each filter is drawn in colour.
        total: how many kernels the layer holds (filters when rgb, else output × input-per-group pairs).
    """

    kernels: torch.Tensor
    labels: list[str]
    rgb: bool
    total: int


def select_kernels(layer: nn.Module, max_kernels: int, name: str = "") -> KernelSelection:
    """The ``max_kernels`` kernels of largest L2 norm from a Conv2d, in decreasing order of norm."""
    weight = getattr(layer, "weight", None)
    kind = getattr(layer, "original_name", type(layer).__name__)  # TorchScript modules keep their class name here
    if not (isinstance(layer, nn.Conv2d) or kind == "Conv2d") or not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise MethodError(f"layer {name!r} is a {kind}, expected a Conv2d for a kernel gallery")
    w = weight.detach().float().cpu()
    out_ch, in_ch = w.shape[:2]
    if in_ch == 3 and getattr(layer, "groups", 1) == 1:
        norms = w.flatten(1).norm(dim=1)
        order = norms.argsort(descending=True, stable=True)[:max_kernels]
        return KernelSelection(w[order].contiguous(), [str(int(o)) for o in order], True, out_ch)
    flat = w.reshape(out_ch * in_ch, 1, *w.shape[2:])
    norms = flat.flatten(1).norm(dim=1)
    order = norms.argsort(descending=True, stable=True)[:max_kernels]
    labels = [f"{int(o) // in_ch}/{int(o) % in_ch}" for o in order]
    return KernelSelection(flat[order].contiguous(), labels, False, out_ch * in_ch)
