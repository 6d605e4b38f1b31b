"""Argument checks shared by the methods that take an image batch and its targets."""

from __future__ import annotations

import torch
from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["check_batch"]


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
