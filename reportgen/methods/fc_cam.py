"""The original class activation map: the classifier's own weights on the last conv layer's channels.

CAM is defined only where the network ends ``conv features → global average pooling → one nn.Linear → logits``:
then ``y_c = Σ_k w_ck · mean_hw(A_k) + b_c`` and the map ``Σ_k w_ck · A_k`` is exactly what the score averages.
Anywhere else the fully connected weights do not describe the layer, so the method refuses (``MethodError``)
instead of drawing a map that means nothing. The structure is checked on the forward pass itself, numerically:
the linear layer's input must be the spatial mean of the layer's output and its output must be the model's
logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.hooks import capture, find_layer
from reportgen.methods.inputs import check_batch

__all__ = ["cam"]

_RTOL = 1e-4  # float32 pooling vs our mean over h·w values: a few ulps; a ReLU or max-pool in between: O(1)


def _linears(model: nn.Module, fc_layer: str) -> dict[str, nn.Linear]:
    """The candidate layers: the named one, or every ``nn.Linear`` of the model (in definition order)."""
    if fc_layer:
        module = find_layer(model, fc_layer)
        if not isinstance(module, nn.Linear):
            raise MethodError(f"cam: fc_layer {fc_layer!r} is a {type(module).__name__}, expected an nn.Linear")
        return {fc_layer: module}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _pick(linears: dict[str, nn.Linear], layer: str, channels: int) -> str:
    """The last candidate whose ``in_features`` equals the layer's channel count."""
    fits = [name for name, m in linears.items() if m.in_features == channels]
    if not fits:
        seen = ", ".join(f"{n!r} ({m.in_features} → {m.out_features})" for n, m in linears.items()) or "none"
        raise MethodError(
            f"cam: layer {layer!r} has {channels} channels and no nn.Linear takes {channels} inputs (nn.Linear "
            f"layers: {seen}); CAM explains the last conv layer before global average pooling and the classifier")
    return fits[-1]


def _verify(name: str, layer: str, a: Tensor, seen: list[tuple[Tensor, Tensor]], logits: Tensor) -> None:
    """Refuse unless ``name`` ran once, on the spatial mean of ``a`` (N, C, h, w), and produced ``logits``."""
    if len(seen) != 1:
        raise MethodError(f"cam: fc layer {name!r} ran {len(seen)} times in one forward pass, expected once")
    z, y = seen[0]
    pooled = a.double().mean(dim=(2, 3))
    tol = _RTOL * float(pooled.abs().max()) + 1e-6
    if z.shape != pooled.shape or float((z.double() - pooled).abs().max()) > tol:
        raise MethodError(
            f"cam: the input of fc layer {name!r} is not the global average pool of layer {layer!r} (something "
            "other than average pooling, flattening or dropout lies between them); name another layer or "
            "fc_layer, or use gradcam")
    if y.shape != logits.shape or not torch.allclose(y.float(), logits.float(), rtol=_RTOL, atol=1e-6):
        raise MethodError(f"cam: the output of fc layer {name!r} is not the model's output (layers follow it)")


def cam(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, fc_layer: str = "") -> Tensor:
    """CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).

    Formula: ``cam_c = relu(Σ_k W[c, k] · A_k)``, with W the weight of the fully connected layer that maps the
    global average pool of A to the logits. The ReLU is ours (the paper and torchcam's ``CAM`` keep negative
    values); every other CAM here is >= 0 and the figures draw the positive evidence.

    One forward pass for the whole batch under ``inference_mode``. The fully connected layer is ``fc_layer``
    or, when empty, the model's last ``nn.Linear`` with ``in_features`` equal to the layer's channel count;
    either way it must take the spatial mean of the layer's output and produce the model's logits.

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of the module whose output (N, C, h, w) is pooled into the classifier.
        fc_layer: qualified name of that classifier; empty: found automatically.

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.

    Raises:
        MethodError: no such classifier, or the network between the layer and the logits is not global
            average pooling followed by it.
    """
    targets = check_batch(x, targets)
    linears = _linears(model, fc_layer)
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in linears}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            seen[name].append((inputs[0].detach(), output.detach()))
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in linears.items()]
    try:
        with torch.inference_mode(), capture(model, [layer]) as caught:
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if layer not in caught:
        raise MethodError(f"cam: expected layer {layer!r} to run during the forward pass, got no output from it")
    a = caught[layer].float()
    name = _pick(linears, layer, a.shape[1])
    _verify(name, layer, a, seen[name], logits)
    k = logits.shape[1]
    if int(targets.min()) < 0 or int(targets.max()) >= k:
        raise MethodError(f"cam: expected target classes in [0, {k}), got {targets.min().item()}..{targets.max().item()}")
    weights = linears[name].weight.detach().float()[targets]  # (N, T, C)
    with torch.inference_mode():
        out = torch.relu(torch.einsum("ntc,nchw->nthw", weights, a))
    return out.clone()  # a normal tensor, not an inference tensor
