"""Filter visualization by activation maximization: images that chosen channels of a layer respond to most.

Gradient ascent on the input image (Erhan et al. 2009), made readable the way lucid and its PyTorch port lucent
do it (Olah et al., Distill 2017, "Feature Visualization"): the image is parameterised in Fourier space with 1/f
frequency scaling, its colours are decorrelated with lucid's ImageNet ``color_correlation_svd_sqrt`` matrix and
squashed to [0, 1] by a sigmoid, and each step the model sees it through a random jitter, scale and rotation
(one ``affine_grid``/``grid_sample``, grey outside the frame) and then the model's own normalisation.
``parameterization="pixel"`` keeps the plain pixel-space ascent (FlashTorch's ``GradientAscent``) available.

Randomness: the image at position ``i`` of ``channels`` draws its initial parameters and then every step's
transform from its own CPU ``torch.Generator``, seeded from ``(seed, i)``. So an image does not depend on
``batch_size`` (chunking), on the other channels asked for, on the device's RNG or on the global RNG, which is
left untouched; the same call gives the same images bit for bit on the same device.

Chunking: the images are independent (eval mode), so ``batch_size`` only splits the forwards. It is exact, not
just close, on the CPU: oneDNN runs a batch of one through other kernels than a batch of two or more, whose
different rounding Adam's sign-like first steps would amplify into visibly different images; so a chunk of a
single image is run with a detached copy of itself (whose output is dropped), and the model gets contiguous NCHW
input (``einsum`` returns channels-last for N > 1, which also switches kernels). On a GPU, cuDNN may still pick
batch-size-dependent algorithms: there ``batch_size`` changes images only by rounding, amplified.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.errors import MethodError, ModelError
from reportgen.hooks import borrowed, capture, find_layer

__all__ = ["PARAMETERIZATIONS", "visualize_filters"]

PARAMETERIZATIONS = ("fourier", "pixel")

# lucid's square root of the ImageNet colour covariance (rows: R, G, B), scaled so its largest column norm is 1.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
_INIT_SD = 0.01  # lucent's standard deviation for the initial parameters (image ≈ uniform grey after the sigmoid)
_FOURIER_MAGIC = 4.0  # lucid divides the Fourier image by 4: less saturation after the sigmoid
_SCALE_RANGE = (0.9, 1.1)  # lucent's random_scale range
_MAX_ROTATION_DEG = 10.0  # lucent's random_rotate range
_JITTER_FRACTION = 1 / 16  # jitter of up to ±size/16 pixels (8 px at 128), about lucent's 8 + 4 px at 224
_MIN_SIZE = 16


class _LayerReached(Exception):
    """Raised by a forward hook once the layer's output is caught, so the rest of the network is not run."""


def visualize_filters(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 128,
    steps: int = 256,
    lr: float = 0.05,
    parameterization: str = "fourier",
    transforms: bool = True,
    decorrelate: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | None = None,
) -> Tensor:
    """One image per channel that maximises the channel's mean activation, by gradient ascent on the image.

    All images are optimised together (Adam on the image parameters only; forwards of at most ``batch_size``
    images); image ``i``'s loss is minus the spatial mean of channel ``channels[i]`` of ``layer``'s output, and
    the total loss is their sum, so each image gets its own gradient. The model runs in eval mode with frozen
    weights and is left exactly as found; each forward stops as soon as ``layer`` has run.

    Args:
        model: a CNN taking (N, 3, size, size) normalised images; not moved, not changed.
        layer: qualified module name whose output is (N, C, h, w); a module called twice counts its first call.
        channels: indices in [0, C), repeats allowed; the images come back in this order.
        mean: the model's per-channel (RGB) input mean, 3 floats.
        std: the model's per-channel (RGB) input standard deviation, 3 floats > 0.
        size: side of the square images, >= 16.
        steps: optimisation steps, >= 1.
        lr: Adam learning rate, > 0.
        parameterization: ``fourier`` (1/f-scaled spectrum, as lucid) or ``pixel`` (a logit per pixel).
        transforms: each step, look at the image through a random jitter (±size/16 px), scale (0.9-1.1) and
            rotation (±10°); with False the model sees the image as returned.
        decorrelate: map the parameters through lucid's ImageNet colour-correlation matrix before the sigmoid.
        seed: seeds every random draw (initial images, transforms), per image from ``(seed, position)``.
        batch_size: images per forward pass, >= 1; does not change the result.
        device: where to optimise; by default the device of the model's first parameter or buffer (else CPU).

    Returns:
        (K, 3, size, size) float32 in [0, 1] on the CPU, K = len(channels): image k maximises ``channels[k]``.

    Raises:
        MethodError: an unknown layer, a channel outside [0, C), an argument out of range, or a layer whose output
            is not (N, C, h, w) or that the forward pass never reaches.
    """
    chans = _check_arguments(channels, mean, std, size, steps, lr, parameterization, batch_size)
    try:
        module = find_layer(model, layer)
    except ModelError as exc:
        raise MethodError(str(exc)) from exc
    dev = device if device is not None else _model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    k = len(chans)

    def stop(_module: nn.Module, _inputs: object, _output: object) -> None:
        raise _LayerReached

    # inference_mode(False): callers inside inference mode would otherwise get tensors that autograd refuses
    with torch.inference_mode(False), borrowed(model), capture(model, [layer]) as caught:
        handle = module.register_forward_hook(stop)  # after capture's hook, so the output is caught first
        try:
            mean_t = torch.tensor([float(m) for m in mean], device=dev).view(1, 3, 1, 1)
            std_t = torch.tensor([float(s) for s in std], device=dev).view(1, 3, 1, 1)
            with torch.no_grad():
                grey = torch.full((1, 3, size, size), 0.5, device=dev)
                probe = _forward_to_layer(model, ((grey - mean_t) / std_t).to(dtype), caught, layer, probe=True)
            n_channels = int(probe.shape[1])
            del probe
            bad = [c for c in chans if not 0 <= c < n_channels]
            if bad:
                raise MethodError(
                    f"expected channels of layer {layer!r} in [0, {n_channels}) (it has {n_channels} channels), "
                    f"got {', '.join(str(c) for c in bad)}"
                )

            generators = [_image_generator(seed, i) for i in range(k)]
            params = _initial_parameters(parameterization, size, generators).to(dev).requires_grad_(True)
            thetas = _transform_matrices(size, steps, generators).to(dev) if transforms else None
            scale = _fourier_scale(size).to(dev)
            color = _COLOR_CORRELATION.to(dev)
            targets = torch.tensor(chans, dtype=torch.long, device=dev)
            optimizer = torch.optim.Adam([params], lr=lr)
            with torch.enable_grad():
                for step in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    for start in range(0, k, batch_size):
                        part = slice(start, start + batch_size)
                        image = _to_rgb(params[part], parameterization, size, scale, color, decorrelate)
                        if thetas is not None:
                            image = _apply_transforms(image, thetas[part, step])
                        n = image.shape[0]
                        if n == 1:  # run as two: see "Chunking" in the module docstring
                            image = torch.cat([image, image.detach()])
                        act = _forward_to_layer(model, ((image - mean_t) / std_t).to(dtype), caught, layer)[:n]
                        rows = torch.arange(n, device=act.device)
                        score = act[rows, targets[part].to(act.device)].float().mean(dim=(1, 2))
                        (-score.sum()).backward()
                        del image, act, score
                    optimizer.step()
            with torch.no_grad():
                images = _to_rgb(params, parameterization, size, scale, color, decorrelate)
        finally:
            handle.remove()
            caught.clear()
    return images.detach().float().cpu().clamp_(0.0, 1.0)


def _check_arguments(
    channels: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    size: int,
    steps: int,
    lr: float,
    parameterization: str,
    batch_size: int,
) -> list[int]:
    """Validate everything that needs no forward pass; return the channels as plain ints."""
    if parameterization not in PARAMETERIZATIONS:
        raise MethodError(f"expected parameterization to be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")
    if size < _MIN_SIZE:
        raise MethodError(f"expected size >= {_MIN_SIZE}, got {size}")
    if steps < 1:
        raise MethodError(f"expected steps >= 1, got {steps}")
    if not lr > 0:
        raise MethodError(f"expected a learning rate > 0, got {lr}")
    if batch_size < 1:
        raise MethodError(f"expected batch_size >= 1, got {batch_size}")
    if len(mean) != 3 or len(std) != 3:
        raise MethodError(f"expected 3 per-channel means and stds (RGB), got {len(mean)} and {len(std)}")
    if not all(float(s) > 0 for s in std):
        raise MethodError(f"expected stds > 0, got {list(std)}")
    if isinstance(channels, (str, bytes)) or len(channels) == 0:
        raise MethodError(f"expected at least one channel index, got {channels!r}")
    try:
        return [operator.index(c) for c in channels]
    except TypeError as exc:
        raise MethodError(f"expected integer channel indices, got {list(channels)!r}") from exc


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _forward_to_layer(model: nn.Module, x: Tensor, caught: dict[str, Tensor], layer: str, probe: bool = False) -> Tensor:
    """Run ``model`` on ``x`` (N, 3, S, S) until ``layer`` has run; its output (N, C, h, w)."""
    caught.pop(layer, None)
    try:
        model(x)
    except _LayerReached:
        pass
    except MethodError:
        raise
    except Exception as exc:  # only the probe wraps: later forwards see the same shapes
        if not probe:
            raise
        raise MethodError(
            f"expected the model to take a {tuple(x.shape)} image batch, got {type(exc).__name__}: {exc}"
        ) from exc
    if layer not in caught:
        raise MethodError(f"expected layer {layer!r} to run in the model's forward pass, got a forward that skips it")
    return caught[layer]


def _image_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator for one image, seeded from (seed, position) so chunking never changes the draws."""
    digest = hashlib.sha256(f"reportgen.activation_max:{seed}:{position}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _initial_parameters(parameterization: str, size: int, generators: list[torch.Generator]) -> Tensor:
    """Parameters for K images, one generator each: fourier (K, 3, S, S//2+1, 2) or pixel (K, 3, S, S) float32."""
    shape = (3, size, size // 2 + 1, 2) if parameterization == "fourier" else (3, size, size)
    return torch.stack([torch.randn(shape, generator=g) * _INIT_SD for g in generators])


def _fourier_scale(size: int, decay_power: float = 1.0) -> Tensor:
    """lucid's 1/f spectrum scaling for an (S, S) image: (S, S//2+1) float32, capped at S for the lowest frequency."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    freqs = (fx * fx + fy * fy).sqrt()
    return (1.0 / freqs.clamp(min=1.0 / size) ** decay_power).float()


def _to_rgb(params: Tensor, parameterization: str, size: int, scale: Tensor, color: Tensor, decorrelate: bool) -> Tensor:
    """Image parameters (N, ...) → (N, 3, S, S) float32 in (0, 1): inverse FFT, colour decorrelation, sigmoid."""
    if parameterization == "fourier":
        spectrum = torch.view_as_complex(params) * scale
        x = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho") / _FOURIER_MAGIC
    else:
        x = params
    if decorrelate:
        x = torch.einsum("nchw,dc->ndhw", x, color).contiguous()  # einsum returns channels-last for N > 1
    return torch.sigmoid(x)


def _transform_matrices(size: int, steps: int, generators: list[torch.Generator]) -> Tensor:
    """Every step's random jitter + scale + rotation for each image: (K, steps, 2, 3) float32 ``affine_grid`` thetas.

    Drawn per image from its own generator (after its initial parameters), so they do not depend on chunking.
    """
    jitter = max(1, round(size * _JITTER_FRACTION))
    thetas = []
    for g in generators:
        shift = torch.randint(-jitter, jitter + 1, (steps, 2), generator=g).double() * 2 / size  # pixels → [-1, 1] units
        lo, hi = _SCALE_RANGE
        zoom = lo + (hi - lo) * torch.rand(steps, generator=g, dtype=torch.float64)
        angle = (2 * torch.rand(steps, generator=g, dtype=torch.float64) - 1) * math.radians(_MAX_ROTATION_DEG)
        cos, sin = angle.cos() / zoom, angle.sin() / zoom  # theta maps output to input coordinates: zoom in = shrink
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
        )
        thetas.append(theta.float())
    return torch.stack(thetas)


def _apply_transforms(image: Tensor, theta: Tensor) -> Tensor:
    """Resample (N, 3, S, S) images through per-image affine maps ``theta`` (N, 2, 3); grey (0.5) outside the frame."""
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
