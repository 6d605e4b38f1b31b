"""Argument checks shared by the methods that take an image batch and its targets."""

from __future__ import annotations

import torch
from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["check_batch", "check_logits", "check_caught"]


def check_batch(x: Tensor, targets: Tensor) -> Tensor:
    """Validate an input batch and its targets; return the targets as int64 on ``x``'s device.

    Args:
        x: (N, 3, H, W) floating-point images.
        targets: (N, T) integer class indices, T >= 1.

    Raises:
        MethodError: naming what was expected and what was given.
    """
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise MethodError(f"expected input images of shape (N, 3, H, W) with a floating dtype, got {got}")
    integer = isinstance(targets, Tensor) and not (
        targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
    if not integer or targets.ndim != 2:
        got = f"{targets.dtype} of shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
        raise MethodError(f"expected targets of shape (N, T) with an integer dtype, got {got}")
    if targets.shape[0] != x.shape[0]:
        raise MethodError(f"expected one target row per image ({x.shape[0]}), got {targets.shape[0]}")
    if targets.shape[1] == 0:
        raise MethodError("expected at least one target column, got T = 0")
    return targets.to(device=x.device, dtype=torch.long)


def check_logits(logits: object, rows: int, targets: Tensor) -> Tensor:
    """Check a model's output is (rows, K) logits and every target is one of its K classes; return the logits.

    Raises:
        MethodError: naming the shape returned, or the range of the targets given.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MethodError(f"expected the model to return logits of shape ({rows}, K), got {got}")
    k = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= k):
        raise MethodError(f"expected target classes in [0, {k}), got values from {int(targets.min())} to "
                          f"{int(targets.max())}")
    return logits


def check_caught(caught: dict[str, Tensor], layer: str) -> Tensor:
    """The output a forward hook caught at ``layer``; ``MethodError`` when the layer did not run."""
    if layer not in caught:
        raise MethodError(f"expected layer {layer!r} to run during the forward pass, got no output from it")
    return caught[layer]
