"""Random-CAM: activations weighted by random numbers, the baseline a sanity check compares a method with.

A formula of the activations alone for the one-pass gradient engine (``output="weighted"``, ``uses_gradients``
False). pytorch-grad-cam 1.5.7's ``RandomCAM`` draws ``np.random.uniform(-1, 1)`` per (image, channel) from
numpy's global state, so two runs differ. Here the weights come from a ``torch.Generator`` seeded with ``seed``
and are the same for every image and target: the same seed always gives the same map for the same image,
whatever the batch it sits in, the device or the order of the images. The map does not depend on the class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["random_weights", "randomcam"]


def random_weights(channels: int, seed: int) -> Tensor:
    """Uniform(-1, 1) weights, one per channel, drawn on the CPU (the same numbers on every device).

    Args:
        channels: C.
        seed: seed of the generator.

    Returns:
        (C,) float32 on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(channels, generator=generator, dtype=torch.float64).mul(2).sub(1).float()


def randomcam(a: Tensor, g: Tensor, *, seed: int = 0) -> Tensor:
    """Random-CAM (pytorch-grad-cam's sanity-check baseline; Adebayo et al., "Sanity Checks for Saliency Maps",
    NeurIPS 2018, for why a method must beat random).

    Formula: ``cam = relu(Σ_c w_c · A_c)``, ``w_c ~ U(-1, 1)`` drawn from ``seed``.

    Args:
        a: (N, C, h, w) float32 activations of the layer.
        g: gradients, ignored (the engine passes them to every formula).
        seed: seed of the weights.

    Returns:
        (N, C, h, w) float32, the weighted activations the engine sums over channels and ReLUs.
    """
    del g
    if a.ndim != 4:
        raise MethodError(f"expected activations of shape (N, C, h, w), got shape {tuple(a.shape)}")
    w = random_weights(a.shape[1], seed).to(device=a.device, dtype=a.dtype)
    return w.view(1, -1, 1, 1) * a
