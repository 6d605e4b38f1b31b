"""FullGrad saliency: input-gradient x input plus the bias-gradients of every conv and BatchNorm layer.

Aggregated as pytorch-grad-cam's ``FullGrad`` does, batched: one forward pass for the whole batch and one
backward pass per target column, with ``torch.autograd.grad`` w.r.t. the input leaf and the layers' outputs
(caught by forward hooks that are removed in ``finally``). The per-channel normalisation and the bilinear
resize are done in torch on the model's device, so nothing leaves it until the maps do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.methods.inputs import check_batch

__all__ = ["bias_layers", "fullgrad"]

_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (v - min) / (1e-7 + max(v - min))
_BIAS_TYPES = (nn.Conv2d, nn.BatchNorm2d)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The layers FullGrad takes biases from: modules of type exactly ``nn.Conv2d`` or ``nn.BatchNorm2d`` with a
    bias, as pytorch-grad-cam selects them (subclasses such as timm's ``BatchNormAct2d``, whose output is past
    an activation, are left out)."""
    return [m for m in model.modules() if type(m) in _BIAS_TYPES and m.bias is not None]


def _effective_bias(layer: nn.Module) -> Tensor:
    """(C,) the layer's bias term; for BatchNorm in eval mode ``beta - mean * gamma / sqrt(var + eps)``
    (FullGrad's official code). A BatchNorm without running statistics contributes its ``beta`` alone."""
    bias = layer.bias.detach()
    if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None and layer.running_var is not None:
        scale = layer.weight.detach() if layer.weight is not None else torch.ones_like(bias)
        bias = bias - layer.running_mean * scale / torch.sqrt(layer.running_var + layer.eps)
    return bias


def _normalised_channel_sum(v: Tensor) -> Tensor:
    """(N, C, h, w) >= 0 → (N, h, w): each (image, channel) min-max scaled to [0, 1], then summed over channels."""
    flat = v.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    flat = flat - low
    flat = flat / (_EPS + flat.amax(dim=2, keepdim=True))
    return flat.sum(dim=1).view(v.shape[0], *v.shape[2:])


def _bias_term(grad: Tensor, bias: Tensor) -> Tensor:
    """(N, C, h, w) dy/dA and (C,) b → (N, h, w) ``sum_c minmax_hw(|dy/dA_c * b_c|)``, in fewer passes.

    With ``v = |b_c| |g|``: ``(v - min v) / (eps + max v - min v) = (|g| - min|g|) * |b_c| / (eps + |b_c| (max|g| -
    min|g|))``, so one abs, one min/max pass, one in-place subtraction and one batched matrix product do it.
    """
    a = grad.float().abs().flatten(2)  # a new tensor: safe to modify in place
    low, high = torch.aminmax(a, dim=2, keepdim=True)
    b = bias.float().abs().view(1, -1, 1)
    scale = b / (_EPS + b * (high - low))  # (N, C, 1)
    a.sub_(low)
    return torch.bmm(scale.transpose(1, 2), a).view(grad.shape[0], *grad.shape[2:])


def fullgrad(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """FullGrad (Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS 2019).

    Formula: ``S = sum_c psi(|dy/dx_c * x_c|) + sum_layers sum_c up(psi(|dy/dA_lc * b_lc|))``, ``psi`` = min-max
    per image and channel, ``up`` = bilinear resize to the input (pytorch-grad-cam's aggregation).

    ``b_lc`` is the bias of every ``nn.Conv2d`` / ``nn.BatchNorm2d`` (exact types, with a bias) and ``A_l`` that
    layer's output (each call of a reused layer counts as a layer). Each channel is normalised at the layer's own
    resolution and the channel sum is resized once per resolution; since bilinear resizing is linear this equals
    resizing every channel first. The map is not min-max scaled at the end (pytorch-grad-cam's last step): the
    figure code does that.

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, 3, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.

    Returns:
        (N, T, H, W) float32 >= 0 on x's device, detached.
    """
    targets = check_batch(x, targets)
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodError(f"expected an eager nn.Module for FullGrad's hooks, got TorchScript {type(model).__name__}")
    targets = targets.to(x.device)
    n, _, height, width = x.shape
    if n == 0:
        return torch.zeros((0, targets.shape[1], height, width), dtype=torch.float32, device=x.device)
    layers = bias_layers(model)
    biases = {id(layer): _effective_bias(layer) for layer in layers}
    caught: list[tuple[Tensor, Tensor]] = []  # (layer output, its bias (C,)), one per call

    def hook(module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor | None:
        if not isinstance(output, Tensor) or output.ndim != 4 or not output.requires_grad:
            return None
        caught.append((output, biases[id(module)]))
        # The next module gets a copy, so an in-place op after the layer (ReLU, residual +=) cannot alter it.
        return output.clone()

    handles = []
    leaf = x.detach().clone().requires_grad_(True)
    columns = targets.shape[1]
    maps = []
    try:
        for layer in layers:
            handles.append(layer.register_forward_hook(hook))
        with torch.enable_grad():
            logits = model(leaf)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise MethodError(f"expected the model to return logits of shape ({n}, K), got {got}")
            k = logits.shape[1]
            if int(targets.min()) < 0 or int(targets.max()) >= k:
                low, high = targets.min().item(), targets.max().item()
                raise MethodError(f"expected target classes in [0, {k}), got {low}..{high}")
            outputs = [out for out, _ in caught]
            for t in range(columns):
                score = logits.gather(1, targets[:, t : t + 1]).float().sum()
                grads = torch.autograd.grad(score, [leaf, *outputs], retain_graph=t < columns - 1, allow_unused=True)
                maps.append(_aggregate(leaf.detach(), grads[0], caught, grads[1:], (height, width)))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(maps, dim=1)


def _aggregate(
    x: Tensor, input_grad: Tensor | None, caught: list[tuple[Tensor, Tensor]], grads: tuple, size: tuple[int, int]
) -> Tensor:
    """One target column's FullGrad map (N, H, W) float32 >= 0 from the input and bias gradients."""
    n = x.shape[0]
    total = torch.zeros((n, *size), dtype=torch.float32, device=x.device)
    if input_grad is not None:
        total += _normalised_channel_sum((input_grad.float() * x.float()).abs())
    by_size: dict[tuple[int, int], Tensor] = {}
    for (_, bias), g in zip(caught, grads, strict=True):
        if g is None:  # a layer off the path to the target scores contributes an all-zero map
            continue
        part = _bias_term(g, bias)
        key = (part.shape[-2], part.shape[-1])
        by_size[key] = by_size[key] + part if key in by_size else part
    for key, part in by_size.items():
        if key != size:  # cv2.resize(INTER_LINEAR) as pytorch-grad-cam: half-pixel centres, no antialiasing
            part = F.interpolate(part[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        total += part
    return total.detach()
