"""Feature-map panels: the channels of a layer's output that respond most to an image."""

from __future__ import annotations

from torch import Tensor

__all__ = ["top_channels"]


def top_channels(activations: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` channels with the highest mean activation, per image.

    Args:
        activations: (N, C, h, w) float.
        k: channels to keep (capped at C).

    Returns:
        (maps (N, k, h, w) float32, channel indices (N, k) int64 in decreasing order of mean, means (N, k) float32).
    """
    if activations.ndim != 4:
        raise ValueError(f"expected activations (N, C, h, w), got shape {tuple(activations.shape)}")
    a = activations.detach()
    means = a.float().mean(dim=(2, 3))
    k = min(k, a.shape[1])
    top = means.topk(k, dim=1)
    idx = top.indices
    maps = a.gather(1, idx[:, :, None, None].expand(-1, -1, a.shape[2], a.shape[3]))
    # float32: float16 turns activations past 65504 into inf and rounds the rest by 5e-4 relative
    return maps.float(), idx, top.values.float()
