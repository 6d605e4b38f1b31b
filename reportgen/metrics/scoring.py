"""What every trust metric shares: argument checks, map upsampling, and scoring perturbed copies in chunks.

A metric builds perturbed copies of the input images and asks the model for the target's score on each. ``Scorer``
pushes them through the model ``batch_size`` images at a time under ``torch.inference_mode()`` (and bfloat16
autocast when asked, as Score-CAM does in ``reportgen/methods/perturbation.py``), builds each chunk only when it is
scored (so no more than one chunk of perturbed copies exists at a time), keeps the input's memory format
(channels_last stays channels_last) and counts the images it pushed: the cost the caller reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError

__all__ = ["Scorer", "check_args", "upsample", "minmax"]

_EPS = 1e-8  # torchcam's CAM normalization: (cam - min) / (max + 1e-8), max taken after subtracting min


def check_args(x: Tensor, maps: Tensor | None, targets: Tensor, batch_size: int,
               autocast_dtype: torch.dtype | None) -> tuple[Tensor | None, Tensor]:
    """Validate the common arguments; return (maps as float32 on ``x``'s device, targets as int64 there).

    Raises:
        MethodError: naming what was expected and what was given.
    """
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise MethodError(f"expected input images of shape (N, C, H, W) with a floating dtype, got {got}")
    n = x.shape[0]
    bad_targets = not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool
    if bad_targets or targets.shape != (n,):
        got = f"{targets.dtype} of shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets)
        raise MethodError(f"expected targets of shape ({n},) with an integer dtype, got {got}")
    if maps is not None:
        if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != n or min(maps.shape[1:]) < 1:
            got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise MethodError(f"expected maps of shape ({n}, h, w), got {got}")
        maps = maps.detach().to(device=x.device, dtype=torch.float32)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MethodError(f"expected a batch_size >= 1, got {batch_size!r}")
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise MethodError(f"expected autocast_dtype None or torch.bfloat16, got {autocast_dtype!r}")
    return maps, targets.detach().to(device=x.device, dtype=torch.long)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) maps resized bilinearly (align_corners=False, as torchcam and cv2.resize) to ``size``: (N, H, W)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: Tensor) -> Tensor:
    """torchcam's CAM normalization of each (h, w) map: ``(m - min) / (max(m - min) + 1e-8)``, in [0, 1)."""
    low = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return low / (low.amax(dim=(-2, -1), keepdim=True) + _EPS)


class Scorer:
    """Scores images with a model in chunks and counts them.

    Args:
        model: in eval mode, on ``x``'s device; not modified.
        x: the (N, C, H, W) batch the perturbed copies come from (gives device and memory format).
        targets: (N,) int64 on ``x``'s device.
        batch_size: images per forward pass.
        autocast_dtype: None (float32) or torch.bfloat16: autocast for every pass of the metric, the unperturbed
            one included, so a difference of two scores is not a difference of precisions.
        softmax: score = the target's softmax probability (else its raw logit).
    """

    def __init__(self, model: nn.Module, x: Tensor, targets: Tensor, *, batch_size: int,
                 autocast_dtype: torch.dtype | None, softmax: bool):
        self.model = model
        self.targets = targets
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.softmax = softmax
        self.device = x.device
        self.channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.images = 0  # images pushed through the model so far

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def __call__(self, inputs: Tensor, rows: Tensor) -> Tensor:
        """Scores (B,) float32 of ``inputs`` (B, C, H, W) for the targets of images ``rows`` (B,)."""
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            logits = self.model(inputs)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != inputs.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise MethodError(f"expected the model to return logits of shape ({inputs.shape[0]}, K), got {got}")
        t = self.targets[rows]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= logits.shape[1]):
            raise MethodError(f"expected target classes in [0, {logits.shape[1]}), got values from {int(t.min())} "
                              f"to {int(t.max())}")
        self.images += inputs.shape[0]
        with torch.inference_mode():
            scores = logits.float()
            if self.softmax:
                scores = scores.softmax(dim=1)
            return scores.gather(1, t[:, None])[:, 0].clone()

    def chunks(self, total: int, make: Callable[[int, int], tuple[Tensor, Tensor]]) -> Tensor:
        """Scores (total,) of ``total`` perturbed images, ``make(start, stop)`` giving (inputs, rows) of one chunk."""
        out = torch.empty(total, dtype=torch.float32, device=self.device)
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            inputs, rows = make(start, stop)
            out[start:stop] = self(inputs, rows)
        return out
