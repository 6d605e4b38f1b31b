"""FullGrad saliency: input-gradient x input plus the bias-gradients of every conv and BatchNorm layer.

Aggregated as pytorch-grad-cam's ``FullGrad`` does, batched: one forward pass for the whole batch and one
backward pass per target column, with ``torch.autograd.grad`` w.r.t. the input leaf and the layers' outputs
(caught by forward hooks that are removed in ``finally``). The per-channel normalisation and the bilinear
resize are done in torch on the model's device, so nothing leaves it until the maps do.
"""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.methods.inputs import check_batch, check_logits

__all__ = ["bias_layers", "fullgrad", "fullgrad_with_notes"]

log = logging.getLogger(__name__)
_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (v - min) / (1e-7 + max(v - min))
_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)  # subclasses too: timm's Conv2dSame, StdConv2d, ScaledStdConv2d, ...
_warned: set[tuple[str, ...]] = set()


def _is_batchnorm(module: nn.Module) -> bool:
    """A per-channel affine map with running statistics: ``nn.BatchNorm*`` and ``nn.SyncBatchNorm`` (any
    subclass, timm's ``BatchNormAct2d`` included), torchvision's ``FrozenBatchNorm2d`` and timm's
    ``FrozenBatchNormAct2d`` (plain modules holding the same four tensors)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return all(isinstance(getattr(module, name, None), Tensor) for name in ("bias", "running_mean", "running_var"))


def _tap(module: nn.Module) -> tuple[nn.Module, str] | None:
    """Where the tensor that carries ``module``'s bias can be caught: (module, "output") or, for a norm followed
    by its own dropout/activation (timm's ``*NormAct*`` layers: norm → ``drop`` → ``act``), (that child, "input").
    None when the module has no bias FullGrad can take."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, Tensor) or bias.ndim != 1:
        return None
    if isinstance(module, _CONV_TYPES):
        return module, "output"
    if _is_batchnorm(module):
        for child in ("drop", "act"):
            after = getattr(module, child, None)
            if isinstance(after, nn.Module):
                return after, "input"
        return module, "output"
    return None


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The layers FullGrad takes biases from: every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (subclasses included)
    with a bias, and every BatchNorm-like layer with a bias (``_is_batchnorm``), in ``model.modules()`` order."""
    return [m for m in model.modules() if _tap(m) is not None]


def _spy_unused(model: nn.Module, found: list[str]) -> list:
    """Forward hooks that append to ``found`` the qualified name of each module whose bias FullGrad leaves out
    although it is added at several positions of a feature map (GroupNorm, LayerNorm, a Linear applied
    channels-last, ...). A bias added once per image (a classifier's Linear) has no spatial layout: not listed.
    Returns the handles, for the caller to remove."""
    used = {id(m) for m in bias_layers(model)}

    def spy(name: str, bias: Tensor):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, Tensor) and output.ndim >= 3 and name not in found:
                if output.numel() > output.shape[0] * bias.numel():  # more than one position per bias value
                    found.append(name)
        return hook

    handles = []
    for name, module in model.named_modules():
        bias = getattr(module, "bias", None)
        if id(module) not in used and isinstance(bias, Tensor) and bias.numel():
            handles.append(module.register_forward_hook(spy(name, bias)))
    return handles


def _effective_bias(layer: nn.Module) -> Tensor:
    """(C,) the layer's bias term; for BatchNorm in eval mode ``beta - mean * gamma / sqrt(var + eps)``
    (FullGrad's official code). A BatchNorm without running statistics contributes its ``beta`` alone."""
    bias = layer.bias.detach()
    mean, var = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if _is_batchnorm(layer) and isinstance(mean, Tensor) and isinstance(var, Tensor):
        weight = getattr(layer, "weight", None)
        scale = weight.detach() if isinstance(weight, Tensor) else torch.ones_like(bias)
        bias = bias - mean * scale / torch.sqrt(var + layer.eps)
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

    ``b_lc`` is the bias of every conv and BatchNorm-like layer (``bias_layers``: subclasses, SyncBatchNorm and
    frozen BatchNorms included) and ``A_l`` the tensor it is added to: the layer's output, or for timm's
    ``BatchNormAct2d`` family the norm's output before its activation (each call of a reused layer counts as a
    layer). pytorch-grad-cam takes exactly ``nn.Conv2d`` / ``nn.BatchNorm2d`` and so drops, for instance, all
    49 BatchNorm biases of timm's EfficientNet-Lite0. Each channel is normalised at the layer's own
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
    return _fullgrad(model, x, targets, None)


def _fullgrad(model: nn.Module, x: Tensor, targets: Tensor, ignored: list[str] | None) -> Tensor:
    """``fullgrad``; with a list ``ignored``, also append to it the modules whose bias it leaves out."""
    targets = check_batch(x, targets)
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodError(f"expected an eager nn.Module for FullGrad's hooks, got TorchScript {type(model).__name__}")
    targets = targets.to(x.device)
    n, _, height, width = x.shape
    if n == 0:
        return torch.zeros((0, targets.shape[1], height, width), dtype=torch.float32, device=x.device)
    taps = [(_tap(layer), _effective_bias(layer)) for layer in bias_layers(model)]
    caught: list[tuple[Tensor, Tensor]] = []  # (the tensor the bias is added to, that bias (C,)), one per call

    def catch(value: object, bias: Tensor) -> Tensor | None:
        if not isinstance(value, Tensor) or value.ndim != 4 or not value.requires_grad:
            return None
        caught.append((value, bias))
        # The next module gets a copy, so an in-place op after the layer (ReLU, residual +=) cannot alter it.
        return value.clone()

    def output_hook(bias: Tensor):
        return lambda _module, _inputs, output: catch(output, bias)

    def input_hook(bias: Tensor):
        def hook(_module: nn.Module, args: tuple) -> tuple | None:
            copy = catch(args[0], bias) if len(args) == 1 else None
            return None if copy is None else (copy,)
        return hook

    handles = []
    leaf = x.detach().clone().requires_grad_(True)
    columns = targets.shape[1]
    maps = []
    try:
        if ignored is not None:
            handles.extend(_spy_unused(model, ignored))
        for (module, where), bias in taps:
            if where == "output":
                handles.append(module.register_forward_hook(output_hook(bias)))
            else:
                handles.append(module.register_forward_pre_hook(input_hook(bias)))
        with torch.enable_grad():
            logits = check_logits(model(leaf), n, targets)
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


def fullgrad_with_notes(model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, str]]:
    """``fullgrad``, and what the map leaves out, as string metadata for the report: ``bias_layers`` (how many
    layers' biases it holds) and ``ignored_biases`` (a JSON list of the qualified names of the modules whose bias
    is added at several positions of a feature map but is not a conv's or a BatchNorm's: GroupNorm, LayerNorm, a
    Linear applied channels-last, ...). Modules left out are logged once per process and model class."""
    ignored: list[str] = []
    maps = _fullgrad(model, x, targets, ignored)
    key = (type(model).__name__, *ignored)
    if ignored and key not in _warned:
        _warned.add(key)
        shown = ", ".join(ignored[:8]) + (f" and {len(ignored) - 8} more" if len(ignored) > 8 else "")
        log.warning("FullGrad leaves out the biases of %d module(s) of %s it cannot use (not a conv or BatchNorm): "
                    "%s", len(ignored), type(model).__name__, shown)
    return maps, {"bias_layers": str(len(bias_layers(model))), "ignored_biases": json.dumps(ignored)}
