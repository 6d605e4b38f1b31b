"""Perturbation CAMs: channel weights measured with extra forward passes instead of gradients.

Score-CAM masks the input with each activation channel; Ablation-CAM removes each channel from the layer's
output. Both need one forward pass per (image, channel) pair, so they are built for throughput:

* the pairs of all images are chunked together, ``batch_size`` inputs per forward pass, and no more than one
  chunk of masked or ablated inputs exists at a time;
* the passes run under ``torch.inference_mode()``, and, with ``bf16=True``, under bfloat16 autocast
  (the first pass that catches the activations always runs in float32);
* each forward pass serves every target column: the passes do not depend on the class, only the logits
  gathered from them do;
* a pair whose channel is all zero is never run: Score-CAM's mask is then zero everywhere, so its score is
  the score of an all-zero input, computed once; in Ablation-CAM the channel adds ``w · 0`` to the map whatever
  its weight;
* Ablation-CAM runs the layers before the target layer once per chunk on a single image, not once per row,
  where that is sound (see ``ablationcam``).

Semantics follow pytorch-grad-cam 1.5.7 (``score_cam.py``, ``ablation_cam.py``, ``ablation_layer.py``); the
differences are listed in each function. Maps are returned unnormalised at the layer's resolution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.hooks import capture, find_layer
from reportgen.methods.inputs import check_batch, check_caught, check_logits

__all__ = ["ablationcam", "scorecam"]

_SCORE_EPS = 1e-8  # pytorch-grad-cam's ScoreCAM: (up - min) / (max - min + 1e-8)
_ABLATION_VALUE = 1e7  # pytorch-grad-cam's AblationLayer: a channel of a layer with values != 0 is set to min - 1e7


def _check(x: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """Validate the arguments; return ``targets`` as int64 on ``x``'s device."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MethodError(f"expected a batch_size >= 1, got {batch_size!r}")
    return check_batch(x, targets)


def _autocast(x: Tensor, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``x``'s device (CUDA, or a CPU: fast only where it has native bf16, e.g. AVX512-BF16)."""
    if bf16:
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _first_pass(model: nn.Module, x: Tensor, layer: str, targets: Tensor) -> tuple[Tensor, Tensor, int]:
    """One float32 forward pass: (logits (N, K), the layer's output (N, C, h, w) float32, calls of the layer)."""
    module = find_layer(model, layer)
    calls = [0]

    def count(_module: nn.Module, _inputs: tuple, _output: object) -> None:
        calls[0] += 1

    handle = module.register_forward_hook(count)
    try:
        with capture(model, [layer]) as caught:
            logits = model(x)
    finally:
        handle.remove()
    a = check_caught(caught, layer)
    return check_logits(logits, x.shape[0], targets).float(), a.float(), calls[0]


def _spans(images: Tensor, batch_size: int, per_image: bool) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of at most ``batch_size`` rows; with ``per_image``, within one image."""
    total = images.numel()
    if not per_image:
        for start in range(0, total, batch_size):
            yield start, min(start + batch_size, total)
        return
    _, counts = torch.unique_consecutive(images.cpu(), return_counts=True)
    start = 0
    for count in counts.tolist():
        stop = start + count
        for s in range(start, stop, batch_size):
            yield s, min(s + batch_size, stop)
        start = stop


def _combine(weights: Tensor, a: Tensor) -> Tensor:
    """relu(Σ_k w_k A_k): weights (N, C, T), activations (N, C, h, w) → (N, T, h, w)."""
    return torch.relu(torch.einsum("nct,nchw->nthw", weights, a))


def scorecam(
    model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, batch_size: int = 64, bf16: bool = False
) -> Tensor:
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPRW 2020).

    Formula: ``cam_c = relu(Σ_k softmax_k(y_c(x ⊙ norm(up(A_k)))) · A_k)``, with ``up`` the bilinear upsampling
    of channel k to the input size (align_corners=True, as ``nn.UpsamplingBilinear2d``) and ``norm`` its min-max
    scaling ``(M - min) / (max - min + 1e-8)``; the softmax runs over the channels of each image.

    Same as pytorch-grad-cam's ``ScoreCAM`` but batched across images and channels. The score of an all-zero
    channel (mask zero everywhere) is the model's score of an all-zero input, computed once instead of once per
    channel: the same number up to the rounding of a different batch composition.

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of a module whose output is (N, C, h, w).
        batch_size: masked inputs per forward pass. 64 suits a GPU; on a CPU smaller batches run faster (resnet18
            at 224×224 on 2 cores: 85 images/s in batches of 8, 64 in batches of 16, 50 in batches of 64).
        bf16: run the masked passes under bfloat16 autocast (off: exact float32), on CUDA or on the CPU.

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = _check(x, targets, batch_size)
    with torch.inference_mode():
        _, a, _ = _first_pass(model, x, layer, targets)
        n, c, h, w = a.shape
        t = targets.shape[1]
        flat = a.reshape(n * c, 1, h, w)
        images = torch.arange(n, device=x.device).repeat_interleave(c)  # image of each (image, channel) row
        scores = torch.empty(n * c, t, device=x.device, dtype=torch.float32)
        zero = flat.flatten(1).eq(0).all(dim=1)
        active = (~zero).nonzero().squeeze(1)
        if active.numel() < n * c:
            with _autocast(x, bf16):
                blank = model(x.new_zeros((1, *x.shape[1:]))).float()[0]  # (K,)
            scores[zero] = blank[targets[images[zero]]]
        for start, stop in _spans(active, batch_size, per_image=False):
            rows = active[start:stop]
            img = images[rows]
            up = F.interpolate(flat[rows], size=x.shape[-2:], mode="bilinear", align_corners=True)  # (B, 1, H, W)
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            masked = x[img] * ((up - lo) / (hi - lo + _SCORE_EPS))
            with _autocast(x, bf16):
                logits = model(masked)
            scores[rows] = logits.float().gather(1, targets[img])
        weights = torch.softmax(scores.view(n, c, t), dim=1)
        cam = _combine(weights, a)
    return cam.clone()  # a normal tensor, not an inference tensor


class _Ablation:
    """A forward hook that replaces the layer's output on its ``calls``-th call of a pass by ``out``.

    ``seen`` counts the calls of the current pass; ``run`` resets it, so a pass that raised leaves no trace.
    """

    def __init__(self, model: nn.Module, calls: int):
        self.model = model
        self.calls = calls
        self.seen = 0
        self.out: Tensor | None = None

    def __call__(self, _module: nn.Module, _inputs: tuple, _output: object) -> Tensor | None:
        self.seen += 1
        return self.out if self.seen == self.calls else None

    def run(self, inputs: Tensor, out: Tensor) -> Tensor:
        """The model's output on ``inputs`` with the layer's output replaced by ``out`` (B, C, h, w)."""
        self.seen, self.out = 0, out
        try:
            return self.model(inputs)
        finally:
            self.out = None


def _suffix_is_sound(ablation: _Ablation, x: Tensor, a: Tensor, logits: Tensor) -> bool:
    """Whether the network gives the right logits for B rows of one image when only one copy of it enters.

    With the hook installed, the layers before the target layer then run once for the chunk instead of once per
    row, and a tensor that bypasses the layer (a residual input) has batch 1 and broadcasts against the B rows;
    the values are right because every row is the same image. Where broadcasting is not possible (a
    concatenation with a bypass, an in-place update of a bypass tensor) the pass raises, and where the model
    sizes something by the input's batch the logits come out wrong: both are caught here, in float32, with two
    unablated rows of image 0, and the caller then feeds every row its own copy of the input.
    """
    try:
        out = ablation.run(x[:1], a[:1].expand(2, -1, -1, -1).clone())
    except Exception:  # any failure means the shortcut does not apply; the full passes will show real errors
        return False
    if not isinstance(out, Tensor) or out.shape != (2, logits.shape[1]):
        return False
    ref = logits[:1].expand(2, -1)
    tol = 1e-4 * float(ref.abs().max()) + 1e-6
    return bool(torch.isfinite(out).all()) and float((out.float() - ref).abs().max()) <= tol


def ablationcam(
    model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, batch_size: int = 64, bf16: bool = False
) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization", WACV 2020).

    Formula: ``cam_c = relu(Σ_k ((y_c - y_c^{k}) / y_c) · A_k)``, with ``y_c^{k}`` the score when channel k of
    the layer's output is ablated and the rest of the network runs from there.

    Ablation as in pytorch-grad-cam's ``AblationLayer``: where the image's activations at the layer have minimum
    0 the channel is set to 0, otherwise to ``min - 1e7``. Differences from pytorch-grad-cam's ``AblationCAM``,
    all deliberate:

    * the ablated value does not drift: pytorch-grad-cam re-reads the minimum of the whole chunk after ablating
      each row, so in the ``min - 1e7`` case row i of a chunk gets ``min - (i+1)·1e7`` and the weights depend on
      its ``batch_size``; here every row gets ``min - 1e7``. Where the layer is followed by a ReLU (the usual
      case) both give the same maps;
    * ``y_c`` is taken from an unablated row that runs through the same path and precision as the ablated rows
      (so bfloat16 rounding does not bias ``y_c - y_c^{k}``); in float32 it equals the plain forward's score up
      to rounding;
    * a weight whose ``y_c`` is exactly 0 is 0 (pytorch-grad-cam divides by zero);
    * only the layer's last call in a pass is ablated if the module runs more than once (the output ``capture``
      keeps); pytorch-grad-cam replaces every call.

    The prefix shortcut: each chunk holds rows of one image, that image enters the network once, and a forward
    hook replaces the layer's output by the chunk's B ablated copies of the activations. This is used only after
    a check pass shows it reproduces the logits (``_suffix_is_sound``); otherwise every row gets its own copy of
    the input (the layers before the target then run B times, as in pytorch-grad-cam) and chunks mix images.

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of a module whose output is (N, C, h, w).
        batch_size: ablated rows per forward pass.
        bf16: run the ablated passes under bfloat16 autocast (off: exact float32), on CUDA or on the CPU. In
            bfloat16 the weights are differences of logits rounded to about 3 significant digits: coarse.

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = _check(x, targets, batch_size)
    module = find_layer(model, layer)
    with torch.inference_mode():
        logits, a, calls = _first_pass(model, x, layer, targets)
        n, c, h, w = a.shape
        t = targets.shape[1]
        low = a.flatten(1).amin(dim=1)  # (N,)
        value = torch.where(low == 0, torch.zeros_like(low), low - _ABLATION_VALUE)  # per image
        # Rows: per image with any non-zero channel, one unablated row (channel -1) then its non-zero channels.
        live = a.flatten(2).ne(0).any(dim=2)  # (N, C)
        img_k, ch_k = live.nonzero(as_tuple=True)
        base_img = live.any(dim=1).nonzero().squeeze(1)
        img = torch.cat([base_img, img_k])
        ch = torch.cat([torch.full_like(base_img, -1), ch_k])
        order = torch.argsort(img * (c + 1) + ch + 1)
        img, ch = img[order], ch[order]
        scores = torch.zeros(img.numel(), t, device=x.device, dtype=torch.float32)
        channels = torch.arange(c, device=x.device)

        ablation = _Ablation(model, calls)
        handle = module.register_forward_hook(ablation)
        try:
            suffix = img.numel() > 0 and _suffix_is_sound(ablation, x, a, logits)
            for start, stop in _spans(img, batch_size, per_image=suffix):
                rows_img, rows_ch = img[start:stop], ch[start:stop]
                hit = (channels[None, :] == rows_ch[:, None])[:, :, None, None]  # (B, C, 1, 1); none for -1
                out = torch.where(hit, value[rows_img].view(-1, 1, 1, 1), a[rows_img])  # no host sync
                with _autocast(x, bf16):
                    y = ablation.run(x[rows_img[:1]] if suffix else x[rows_img], out)
                scores[start:stop] = y.float().gather(1, targets[rows_img])
        finally:
            handle.remove()

        base = torch.zeros(n, t, device=x.device, dtype=torch.float32)
        is_base = ch < 0
        base[img[is_base]] = scores[is_base]
        ablated = base[:, None, :].repeat(1, c, 1)  # skipped channels: no change, weight 0
        ablated[img[~is_base], ch[~is_base]] = scores[~is_base]
        drop = base[:, None, :] - ablated
        weights = torch.where(base[:, None, :] == 0, torch.zeros_like(drop), drop / base[:, None, :])
        cam = _combine(weights, a)
    return cam.clone()  # a normal tensor, not an inference tensor
