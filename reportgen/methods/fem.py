"""FEM, the Feature Explanation Method: channels weighted by the share of their positions above a k-sigma threshold.

A formula of the activations alone (``uses_gradients=False``, class-agnostic) for the one-pass gradient engine
(``output="weighted"``), as pytorch-grad-cam 1.5.7's ``FEM.get_cam_image``: per image and channel the threshold
is ``mean_hw(A_c) + k · std_hw(A_c)`` with the population standard deviation (numpy's ``np.std``, ddof = 0),
the comparison is strict, and the engine ReLUs the channel sum.
"""

from __future__ import annotations

from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["fem"]


def fem(a: Tensor, g: Tensor, *, k: float = 2.0) -> Tensor:
    """FEM (Fuad et al., "Features understanding in 3D CNNs for actions recognition in video", IPTA 2020).

    Formula: ``cam = relu(Σ_c mean_hw(A_c > mean_hw(A_c) + k·std_hw(A_c)) · A_c)``.

    Args:
        a: (N, C, h, w) float32 activations of the layer.
        g: gradients, ignored (the engine passes them to every formula; zeros when no method needs them).
        k: the threshold in standard deviations above each channel's mean (the peer's default: 2).

    Returns:
        (N, C, h, w) float32, the weighted activations the engine sums over channels and ReLUs.
    """
    del g
    if a.ndim != 4:
        raise MethodError(f"expected activations of shape (N, C, h, w), got shape {tuple(a.shape)}")
    mean = a.mean(dim=(2, 3), keepdim=True)
    std = a.std(dim=(2, 3), keepdim=True, correction=0)
    weights = (a > mean + k * std).float().mean(dim=(2, 3), keepdim=True)
    return weights * a
