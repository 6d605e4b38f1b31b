"""KPCA-CAM: a layer's activations projected on their first kernel principal component.

A formula of the activations alone (``uses_gradients=False``, class-agnostic) for the one-pass gradient engine
(``output="map"``). It matches pytorch-grad-cam 1.5.7's ``KPCA_CAM`` (``utils/svd_on_activations.
get_2d_projection_kernel``: scikit-learn's ``KernelPCA(n_components=1, kernel, gamma)`` per image on the centred
(h·w, C) activations, then the ReLU of ``BaseCAM``), computed for the whole batch on the tensors' device:

* the (h·w, h·w) kernel matrix of every image at once (a nonlinear kernel has no (C, C) dual), the kernels and
  defaults of scikit-learn's ``pairwise_kernels``: ``gamma`` 1/C when not given, ``coef0`` 1, ``degree`` 3;
* double centring of each kernel matrix (``KernelCenterer``), then one batched ``torch.linalg.eigh`` in
  float64; the peer's ``eigh`` (h·w <= 200) or ARPACK ``eigsh(which="LA")`` (h·w > 200) give the same largest
  eigenpair;
* the projection ``u₁ · sqrt(max(λ₁, 0))`` with scikit-learn's sign rule (``svd_flip``): the largest-|value|
  entry of u₁ is positive — the same rule as our Eigen-CAM, so the map is deterministic;
* images go through in chunks of at most ``_BUDGET`` kernel-matrix entries, so a 56×56 layer (3,136² entries,
  79 MB per image in float64) does not need the whole batch's matrices at once.

NaNs in the activations count as 0, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reportgen.errors import MethodError

__all__ = ["KERNELS", "kernel_matrix", "kpcacam"]

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")  # those scikit-learn's KernelPCA accepts by name
_COEF0 = 1.0  # scikit-learn's KernelPCA default for poly and sigmoid
_DEGREE = 3  # scikit-learn's KernelPCA default for poly
_BUDGET = 2**26  # kernel-matrix entries per chunk of images (512 MB in float64)


def kernel_matrix(x: Tensor, kernel: str, gamma: float) -> Tensor:
    """Each image's kernel matrix over positions, as scikit-learn's ``pairwise_kernels(X, metric=kernel)``.

    Args:
        x: (N, P, C) floating point, P positions of C features per image.
        kernel: one of ``KERNELS``.
        gamma: the kernel's scale (> 0).

    Returns:
        (N, P, P) in ``x``'s dtype.
    """
    if kernel == "cosine":
        norm = x.norm(dim=2, keepdim=True)
        x = x / torch.where(norm > 0, norm, 1.0)  # a zero row stays zero, as in scikit-learn
    dot = x @ x.transpose(1, 2)
    if kernel in ("linear", "cosine"):
        return dot
    if kernel == "poly":
        return (gamma * dot + _COEF0) ** _DEGREE
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + _COEF0)
    if kernel == "rbf":
        sq = dot.diagonal(dim1=1, dim2=2)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min(0)
        return torch.exp(-gamma * dist)
    raise MethodError(f"expected a KPCA kernel in {KERNELS}, got {kernel!r}")


def _first_component(k: Tensor) -> Tensor:
    """The first kernel principal component of each centred kernel matrix (N, P, P) → (N, P), signed."""
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    vals, vecs = torch.linalg.eigh(k)  # ascending
    u = vecs[:, :, -1]
    peak = u.abs().argmax(dim=1, keepdim=True)  # svd_flip: the largest |u| positive (the first of equal maxima)
    sign = torch.where(u.gather(1, peak) < 0, -1.0, 1.0).to(u.dtype)
    return u * sign * vals[:, -1:].clamp_min(0).sqrt()


def kpcacam(a: Tensor, g: Tensor, *, kernel: str = "sigmoid", gamma: float = 0.0) -> Tensor:
    """KPCA-CAM (Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel
    PCA", IEEE MMSP 2024).

    Formula: ``cam = relu(sqrt(λ₁) u₁)``, with (λ₁, u₁) the largest eigenpair of the centred kernel matrix
    ``K_ij = k(x_i, x_j)`` of the centred activations x_i (C,) at positions i, j.

    Args:
        a: (N, C, h, w) float32 activations.
        g: gradients, ignored (the engine passes them to every formula).
        kernel: ``sigmoid`` (the peer's default), ``rbf``, ``poly``, ``linear`` or ``cosine``.
        gamma: the kernel's scale; 0 means 1/C (scikit-learn's default).

    Returns:
        (N, h, w) float32 >= 0.
    """
    del g
    if a.ndim != 4:
        raise MethodError(f"expected activations of shape (N, C, h, w), got shape {tuple(a.shape)}")
    if kernel not in KERNELS:
        raise MethodError(f"expected a KPCA kernel in {KERNELS}, got {kernel!r}")
    n, c, h, w = a.shape
    if n == 0 or c == 0 or h * w == 0:
        return a.new_zeros((n, h, w), dtype=torch.float32)
    gamma = gamma if gamma > 0 else 1.0 / c
    x = a.double().nan_to_num(nan=0.0).reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    step = max(1, _BUDGET // (h * w) ** 2)
    p = torch.cat([_first_component(kernel_matrix(x[i : i + step], kernel, gamma)) for i in range(0, n, step)])
    return torch.relu(p).float().reshape(n, h, w)
