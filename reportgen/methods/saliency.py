"""Input-gradient maps: vanilla saliency, guided backprop, SmoothGrad and Integrated Gradients.

Every method computes signed attributions (N, T, C, H, W) for the input pixels (``raw_attributions``) and
draws them as in FlashTorch: the magnitude ``max_c |a_c|`` over the colour channels, a map (N, T, H, W)
float32 >= 0 at the input's own resolution. Maps are returned unnormalised; the figure code min-max scales
them for display.

All passes differentiate w.r.t. a fresh input leaf with ``torch.autograd.grad`` (parameters' ``.grad`` are
never touched). Images are independent in eval mode, so the gradient of the target scores summed over a batch
is each image's own gradient: one forward per batch of inputs and one backward per target column.
The caller borrows the model (``reportgen.hooks.borrowed``: eval mode, frozen parameters); these functions
leave it as found, removing any hook they add in ``finally``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.methods.inputs import check_batch, check_logits

__all__ = [
    "IG_BASELINES",
    "IG_METHODS",
    "ig_baseline",
    "guided_backprop",
    "integrated_gradients",
    "magnitude",
    "raw_attributions",
    "saliency",
    "smoothgrad",
]

_RAW_METHODS = ("saliency", "guided_backprop", "smoothgrad", "integrated_gradients")
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
IG_BASELINES = ("zero", "black", "blur")


# ---------------------------------------------------------------------------------------------------- checks


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MethodError(f"expected {name} to be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------- gradients


def _input_gradients(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """d score / d input for a batch, one backward per target column.

    Args:
        inputs: (B, C, H, W) float; not modified.
        targets: (B, T) int64 on ``inputs``' device.

    Returns:
        (B, T, C, H, W) float32, detached.
    """
    leaf = inputs.detach().clone().requires_grad_(True)
    columns = targets.shape[1]
    grads = []
    with torch.enable_grad():
        logits = check_logits(model(leaf), leaf.shape[0], targets)
        for t in range(columns):
            # Images are independent in eval mode: the gradient of the sum is each image's own gradient.
            score = logits.gather(1, targets[:, t : t + 1]).float().sum()
            (g,) = torch.autograd.grad(score, leaf, retain_graph=t < columns - 1)
            grads.append(g.detach().float())
    return torch.stack(grads, dim=1)


def _batched(
    model: nn.Module,
    targets: Tensor,
    per_image: int,
    make_rows: Callable[[int, int, int], Tensor],
    weights: Tensor,
    batch_size: int,
    shape: tuple[int, ...],
) -> Tensor:
    """Weighted sums of input gradients over ``per_image`` derived inputs of each image, batched across images.

    The derived inputs of all images form one image-major sequence (image 0's rows first), cut into forward
    passes of at most ``batch_size`` inputs; the result does not depend on ``batch_size`` (up to float rounding).

    Args:
        targets: (N, T) int64.
        per_image: rows per image (samples or path points).
        make_rows: (image, first row, stop row) → those rows, (stop - first, C, H, W); called in sequence order.
        weights: (per_image,) float32, the weight of each row's gradient.
        shape: (C, H, W) of one input.

    Returns:
        (N, T, C, H, W) float32: sum over rows r of weights[r] * d score / d row_r.
    """
    n, columns = targets.shape
    out = torch.zeros((n, columns, *shape), dtype=torch.float32, device=targets.device)
    total = n * per_image
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        pieces, spans = [], []
        first = start
        while first < stop:  # split the chunk into runs of one image each
            image, row = divmod(first, per_image)
            end = min(stop, (image + 1) * per_image)
            pieces.append(make_rows(image, row, row + end - first))
            spans.append((image, row, row + end - first))
            first = end
        inputs = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        rows_targets = torch.cat([targets[i : i + 1].expand(b - a, columns) for i, a, b in spans])
        grads = _input_gradients(model, inputs, rows_targets)
        offset = 0
        for image, a, b in spans:
            w = weights[a:b].view(-1, 1, *([1] * len(shape)))
            out[image] += (grads[offset : offset + b - a] * w).sum(dim=0)
            offset += b - a
    return out


def magnitude(raw: Tensor) -> Tensor:
    """(N, T, C, H, W) signed attributions → (N, T, H, W) float32 max over channels of |a| (FlashTorch)."""
    return raw.abs().amax(dim=2).float().contiguous()


# ---------------------------------------------------------------------------------------------------- guided backprop


def _guided_relu_pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
    """Run the ReLU on a copy of its input whose gradient is clamped at 0 on the way back.

    The copy is the ReLU's own input, so its gradient is exactly the ReLU's grad_input (the hook was registered
    before an in-place ReLU overwrites it, and sees the gradient w.r.t. the pre-ReLU value):
    relu(grad_output) * [input > 0]. Copying also makes in-place ReLUs safe and never changes the caller's tensor.
    """
    if len(args) != 1 or not isinstance(args[0], Tensor) or not args[0].requires_grad:
        return None
    copy = args[0].clone()
    copy.register_hook(lambda g: g.clamp(min=0))
    return (copy,)


def _relu_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodError(f"guided backprop needs hooks on nn.ReLU modules; {type(model).__name__} is TorchScript")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise MethodError(
            f"guided backprop needs nn.ReLU modules; found none in {type(model).__name__} "
            "(expected at least one nn.ReLU, got functional or other activations only)"
        )
    return relus


# ---------------------------------------------------------------------------------------------------- baselines


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """(N, C, H, W) → the same, each channel convolved with a Gaussian of std ``sigma`` pixels, truncated at
    ``ceil(3 sigma)`` and renormalised; edges extended by replication (any sigma works on any image size)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ig_baseline(
    x: Tensor, baseline: str, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
    blur_sigma: float = 10.0,
) -> Tensor:
    """Integrated Gradients' starting image for each image of ``x`` (N, C, H, W), normalised like ``x``.

    ``zero``: all zeros after normalisation, i.e. the dataset's mean colour (captum's default). ``black``: pixel
    value 0 in every channel, ``(0 - mean) / std`` after normalisation (the paper's choice for images; needs the
    preprocessing's ``mean`` and ``std``). ``blur``: the image itself blurred by a Gaussian of ``blur_sigma``
    input pixels (Sturmfels et al., Distill 2020); per-channel normalisation is affine, so blurring the
    normalised image equals normalising the blurred one.
    """
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "black":
        if mean is None or std is None or len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise MethodError(f"the black baseline needs the preprocessing's mean and std for {x.shape[1]} channels, "
                              f"got mean={mean!r}, std={std!r}")
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0 - m) / s).expand_as(x).contiguous()
    if baseline == "blur":
        if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, int | float) or not blur_sigma > 0:
            raise MethodError(f"expected blur_sigma > 0 (pixels), got {blur_sigma!r}")
        return _gaussian_blur(x, float(blur_sigma))
    raise MethodError(f"expected an Integrated Gradients baseline in {', '.join(IG_BASELINES)}, got {baseline!r}")


# ---------------------------------------------------------------------------------------------------- raw attributions


def _path_parameters(steps: int, method: str) -> tuple[list[float], list[float]]:
    """Quadrature weights and points on [0, 1] for ``steps`` evaluations, as captum's approximation_methods."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return (0.5 * w).tolist(), (0.5 * (1 + nodes)).tolist()
    if method not in IG_METHODS:
        raise MethodError(f"expected an integration method in {', '.join(IG_METHODS)}, got {method!r}")
    if steps < 2:
        raise MethodError(f"expected at least 2 steps for {method}, got {steps}")
    sizes = [1 / steps] * steps
    kind = method.split("_")[1]
    if kind == "trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        alphas = torch.linspace(0, 1, steps)
    elif kind == "left":
        alphas = torch.linspace(0, 1 - 1 / steps, steps)
    elif kind == "middle":
        alphas = torch.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps)
    else:
        alphas = torch.linspace(1 / steps, 1, steps)
    return sizes, alphas.tolist()


def raw_attributions(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    method: str = "saliency",
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    steps: int = 32,
    integration: str = "gausslegendre",
    baseline: str = "zero",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    blur_sigma: float = 10.0,
    batch_size: int = 64,
) -> Tensor:
    """Signed attributions of every input pixel and channel, before the channel reduction of the maps.

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, C, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.
        method: ``saliency`` (dy/dx), ``guided_backprop`` (guided dy/dx), ``smoothgrad`` (mean over ``samples``
            noisy copies of dy/dx) or ``integrated_gradients`` ((x - x0) * weighted mean of dy/dx along x0 → x).
        samples, noise, seed: SmoothGrad's copies per image, noise std as a fraction of each image's
            ``max - min``, and the seed of its local generator.
        steps, integration: Integrated Gradients' path points and quadrature rule (one of ``IG_METHODS``).
        baseline, mean, std, blur_sigma: Integrated Gradients' starting image x0 (``ig_baseline``).
        batch_size: inputs per forward pass for SmoothGrad and Integrated Gradients (the memory budget).

    Returns:
        (N, T, C, H, W) float32 on x's device, detached: the values captum's ``Saliency(abs=False)``,
        ``GuidedBackprop``, ``NoiseTunnel(Saliency)`` (smoothgrad) and ``IntegratedGradients`` (with
        ``baselines=ig_baseline(x, baseline, ...)``) attribute.
    """
    if method not in _RAW_METHODS:
        raise MethodError(f"expected a method in {', '.join(_RAW_METHODS)}, got {method!r}")
    targets = check_batch(x, targets)
    targets = targets.to(x.device)
    x = x.detach()
    shape = tuple(x.shape[1:])
    if x.shape[0] == 0:
        return torch.zeros((0, targets.shape[1], *shape), dtype=torch.float32, device=x.device)
    if method == "saliency":
        return _input_gradients(model, x, targets)
    if method == "guided_backprop":
        handles = []
        try:
            for relu in _relu_modules(model):
                handles.append(relu.register_forward_pre_hook(_guided_relu_pre_hook))
            return _input_gradients(model, x, targets)
        finally:
            for handle in handles:
                handle.remove()
    if method == "smoothgrad":
        _check_positive("samples", samples)
        _check_positive("batch_size", batch_size)
        if not isinstance(noise, int | float) or isinstance(noise, bool) or not noise >= 0:
            raise MethodError(f"expected a noise level >= 0, got {noise!r}")
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
        stds = (x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1)) * noise  # (N,) per image
        current: list = [-1, None]  # the image whose noisy copies were drawn last, and those copies

        def noisy(image: int, first: int, stop: int) -> Tensor:
            # Noise is drawn image by image, in order, one call per image: the stream (and so the map) does not
            # depend on batch_size. On the CPU, when samples * C * H * W is a multiple of 16, it equals captum's
            # single torch.normal draw over all copies under torch.manual_seed(seed).
            while current[0] < image:
                nxt = current[0] + 1
                eps = torch.randn((samples, *shape), generator=gen, device=x.device, dtype=x.dtype)
                current[:] = [nxt, x[nxt] + eps * stds[nxt]]
            return current[1][first:stop]

        ones = torch.ones(samples, dtype=torch.float32, device=x.device)
        return _batched(model, targets, samples, noisy, ones, batch_size, shape) / samples
    if method == "integrated_gradients":
        _check_positive("steps", steps)
        _check_positive("batch_size", batch_size)
        sizes, alphas = _path_parameters(steps, integration)
        alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
        start = ig_baseline(x, baseline, mean=mean, std=std, blur_sigma=blur_sigma)
        delta = x - start

        def on_path(image: int, first: int, stop: int) -> Tensor:
            return start[image] + alpha_t[first:stop].view(-1, 1, 1, 1) * delta[image]  # captum's path points

        weights = torch.tensor(sizes, dtype=torch.float32, device=x.device)
        total = _batched(model, targets, steps, on_path, weights, batch_size, shape)
        return total * delta.float()[:, None]
    raise AssertionError(method)  # unreachable: checked above


# ---------------------------------------------------------------------------------------------------- maps


def saliency(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, ICLR-W 2014).

    Formula: ``S = max_c |dy_t/dx_c|``.

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, 3, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.

    Returns:
        (N, T, H, W) float32 >= 0 on x's device, detached.
    """
    return magnitude(raw_attributions(model, x, targets, "saliency"))


def guided_backprop(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al., "Striving for Simplicity", ICLR-W 2015).

    Formula: ``S = max_c |guided dy_t/dx_c|``, each ReLU passing back ``relu(grad_out) * [input > 0]``.

    Forward pre-hooks on every ``nn.ReLU`` module (subclasses included) run it on a copy of its input whose
    gradient is clamped at zero (captum's mechanism: no full backward hook, so in-place ReLUs work, and no module
    is swapped); the hooks are removed in ``finally``. Captum hooks the original input tensor instead, so where
    that tensor also feeds another op it clamps the sum of all gradients reaching it; the copy's gradient is the
    ReLU's own grad_input, what a full backward hook would see. Both agree when a ReLU's input feeds nothing
    else (torchvision's nets). Only ``nn.ReLU`` modules are guided: ``torch.nn.functional.relu`` calls, even
    inside a model that also has ReLU modules, and ReLU6, SiLU, ... modules pass plain gradients. A model
    without any ``nn.ReLU`` module raises ``MethodError``.

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, 3, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.

    Returns:
        (N, T, H, W) float32 >= 0 on x's device, detached.
    """
    return magnitude(raw_attributions(model, x, targets, "guided_backprop"))


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017).

    Formula: ``S = max_c |mean_n dy_t/dx_c (x + eps_n)|``, ``eps_n ~ N(0, (noise * (max x - min x))^2)``.

    The noise std is a fraction of each image's own value range, as in the paper's "noise level"
    sigma / (x_max - x_min) (captum's ``stdevs`` is an absolute std). The raw gradients are averaged first
    (as captum's ``NoiseTunnel(Saliency(abs=False), nt_type='smoothgrad')``), then drawn as the max over
    channels of the magnitude. Noisy copies are batched across images and samples, at most ``batch_size``
    per forward pass; noise comes from a local ``torch.Generator`` on x's device seeded with ``seed``
    (same seed, same map; the global RNG is untouched).

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, 3, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.
        samples: noisy copies per image.
        noise: noise std as a fraction of each image's ``max - min``.
        seed: noise seed.
        batch_size: inputs per forward pass.

    Returns:
        (N, T, H, W) float32 >= 0 on x's device, detached.
    """
    raw = raw_attributions(model, x, targets, "smoothgrad", samples=samples, noise=noise, seed=seed,
                           batch_size=batch_size)
    return magnitude(raw)


def integrated_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, *, steps: int = 32, baseline: str = "black",
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, blur_sigma: float = 10.0,
    batch_size: int = 64,
) -> Tensor:
    """Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017).

    Formula: ``S = max_c |(x - x0)_c * sum_k w_k dy_t/dx_c(x0 + a_k (x - x0))|``, Gauss-Legendre points ``a_k``
    and weights ``w_k`` on [0, 1] (sum w_k = 1), captum 0.9's default ``method="gausslegendre"``. The baseline
    x0 is ``ig_baseline(x, baseline, ...)``: ``black`` (pixel value 0, the paper's choice; the default), ``zero``
    (0 after normalisation: the mean colour, captum's default) or ``blur`` (the image blurred, ``blur_sigma``
    pixels). The ``N * steps`` path inputs are batched, at most ``batch_size`` per forward.

    Args:
        model: borrowed (eval mode, frozen parameters); left exactly as found.
        x: (N, 3, H, W) float32 normalised images on the model's device; never modified.
        targets: (N, T) int64 class indices.
        steps: points on the path.
        baseline: ``black``, ``zero`` or ``blur``.
        mean, std: the preprocessing's per-channel normalisation (needed by ``black``).
        blur_sigma: the ``blur`` baseline's Gaussian std, in input pixels.
        batch_size: inputs per forward pass.

    Returns:
        (N, T, H, W) float32 >= 0 on x's device, detached.
    """
    raw = raw_attributions(model, x, targets, "integrated_gradients", steps=steps, baseline=baseline, mean=mean,
                           std=std, blur_sigma=blur_sigma, batch_size=batch_size)
    return magnitude(raw)

