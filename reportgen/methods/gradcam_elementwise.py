"""Grad-CAM ElementWise: the positive part of gradient × activation, element by element, summed over channels.

A formula of ``(A, G)`` for the one-pass gradient engine (``output="weighted"``): the engine sums the returned
(N, C, h, w) over channels and applies a ReLU (or, with ``eigen_smooth``, projects them on their first
principal component), exactly as pytorch-grad-cam 1.5.7's ``GradCAMElementWise.get_cam_image`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gradcam_elementwise"]


def gradcam_elementwise(a: Tensor, g: Tensor) -> Tensor:
    """Grad-CAM ElementWise (pytorch-grad-cam's variant of HiResCAM, Draelos & Carin 2020, and Grad-CAM).

    Formula: ``cam = relu(Σ_c relu(G_c ⊙ A_c))`` — unlike HiResCAM, a negative product at one channel cannot
    cancel a positive one at another.

    Args:
        a: (N, C, h, w) float32 activations of the layer.
        g: (N, C, h, w) float32 gradients of the target score w.r.t. ``a``.

    Returns:
        (N, C, h, w) float32 >= 0, the weighted activations the engine sums over channels.
    """
    return torch.relu(g * a)
