"""Average drop and increase in confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018), per image.

The image is multiplied by its normalized map and the model's confidence in the target class is compared with its
confidence on the image itself. Same definition as torchcam 0.5.0's ``ClassificationMetric`` (with
``logits_fn=softmax``), which averages these per-image values over a dataset.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reportgen.metrics.scoring import Scorer, check_args, minmax, upsample

__all__ = ["confidence_change"]

_DROP_EPS = 1e-7  # torchcam: relu(Y - O) / (Y + 1e-7)


def confidence_change(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, batch_size: int = 64,
                      autocast_dtype: torch.dtype | None = None, softmax: bool = True) -> dict[str, Tensor | int]:
    """Average drop ``max(0, Y - O) / Y`` and increase ``[O > Y]`` of each image.

    ``Y`` is the target's score on ``x``, ``O`` its score on ``x ⊙ E``, where ``E`` is the map normalized as torchcam
    normalizes a CAM (``(m - min) / (max(m - min) + 1e-8)``, at the map's resolution) and then resized bilinearly to
    the input (align_corners=False). The product is with the network input ``x`` (normalized pixels), as torchcam
    does, and ``Y + 1e-7`` is the denominator. A constant map becomes all zeros (the score of an all-zero input);
    a map holding NaN gives NaN scores (torchcam leaves such images out of its average).

    Args:
        model: in eval mode, on ``x``'s device (channels_last or not); not modified.
        x: (N, C, H, W) float normalized network inputs.
        maps: (N, h, w) non-negative saliency maps of one target column, any resolution.
        targets: (N,) int64 class indices.
        batch_size: images per forward pass.
        autocast_dtype: None (float32) or torch.bfloat16 (both passes run under it).
        softmax: scores are softmax probabilities (torchcam's ``logits_fn``); False: raw logits.

    Returns:
        ``average_drop`` and ``increase``: (N,) float32 on the CPU; ``forward_images``: 2N.
    """
    maps, targets = check_args(x, maps, targets, batch_size, autocast_dtype)
    n = x.shape[0]
    score = Scorer(model, x, targets, batch_size=batch_size, autocast_dtype=autocast_dtype, softmax=softmax)
    rows = torch.arange(n, device=x.device)
    with torch.inference_mode():
        weights = upsample(minmax(maps), x.shape[-2:])[:, None]  # (N, 1, H, W)
        y = score.chunks(n, lambda a, b: (x[a:b], rows[a:b]))
        o = score.chunks(n, lambda a, b: (x[a:b] * weights[a:b].to(x.dtype), rows[a:b]))
        drop = torch.relu(y - o) / (y + _DROP_EPS)
        increase = (y < o).float()
        nan = torch.isnan(maps).flatten(1).any(dim=1)
        drop[nan] = float("nan")
        increase[nan] = float("nan")
    return {"average_drop": drop.cpu().clone(), "increase": increase.cpu().clone(), "forward_images": score.images}
