"""Gradient CAMs on one random batch: the floor, reportgen's one-pass engine, and the peers, timed round-robin.

All steps use the same model object (torchvision, random init under a fixed seed, eval mode), the same input batch
and the same target layer (``layer4``, whose output is that of ``layer4[-1]``). What each step covers:

    forward_only      a ``torch.no_grad`` forward pass (context: the cost of one of ScoreCAM's C forwards)
    floor             forward + backward to the layer only: params frozen, the layer's output caught by a forward
                      hook (made a leaf), ``torch.autograd.grad(score_sum, activation)``
    ours_gradcam      ``borrowed`` + ``capture(grad=True)`` + forward + ``resolve_targets("predicted")`` +
    ours_five_cams    ``gradient_cams`` (1 or all 5 methods), maps copied to the host at the layer's resolution
    pytorch_grad_cam  ``GradCAM(model, [layer4])(x, targets=None)``: its predicted class, a full ``backward()``
                      (weight gradients too), maps min-max scaled and resized to the input (cv2) as numpy
    torchcam          ``GradCAM(model, "layer4")``: forward, ``extractor(argmax, scores)``; maps at layer resolution
    captum            a no-grad forward for the predicted class, ``LayerGradCam.attribute``, then
                      ``LayerAttribution.interpolate`` to the input size (its default, nearest), as its tutorials do

Peers run as users call them (their weights require grad). Each peer line also carries ``pearson_vs_ours``: the
correlation of its Grad-CAM with ours on the same batch after the same post-processing (a correctness check).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench.common import Bench, interleaved, log, pearson, ratio

__all__ = ["setup_model", "run_cams"]

FIVE = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
LAYER = "layer4"


def sync_fn(device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def setup_model(bench: Bench, *, channels_last: bool = False):
    """The model and input batch every in-process measurement shares (built once), in either memory layout.

    ``channels_last=True`` gives a copy of the same model and batch in NHWC order, the layout ``reportgen run``
    uses by default (``run.channels_last``); the numbers are the same, the kernels oneDNN/cuDNN pick differ.
    """
    key = "cl" if channels_last else "plain"
    if f"model_{key}" in bench.shared:
        return bench.shared[f"model_{key}"], bench.shared[f"x_{key}"]
    import copy

    import torch
    import torchvision

    s = bench.settings
    dev = torch.device(s.device)
    if channels_last:
        model, x = setup_model(bench)
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, s.model)(weights=None).eval().to(dev)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(s.batch, 3, s.size, s.size, generator=gen).to(dev)
    bench.shared[f"model_{key}"], bench.shared[f"x_{key}"] = model, x
    return model, x


def _steps(plain: tuple, cl: tuple, wanted: list[str]) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The timed callables: ours on the channels-last copy (as ``reportgen run``), peers as users call them."""
    import torch

    steps: dict[str, Callable[[], Any]] = {}
    setup_errors: dict[str, str] = {}

    def forward_only():
        model, x = cl
        with torch.no_grad():
            return model(x)

    def floor(model, x):
        layer = model.get_submodule(LAYER)
        params = list(model.parameters())
        caught = {}

        def hook(_m, _i, out):
            leaf = out.detach().requires_grad_(True)
            caught["a"] = leaf
            return leaf

        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        handle = layer.register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(score, caught["a"])
        return g

    def ours(methods: list[str]):
        from reportgen.hooks import borrowed, capture
        from reportgen.methods.cam import gradient_cams, resolve_targets

        model, x = cl

        def step():
            with borrowed(model), capture(model, [LAYER], grad=True) as caught:
                logits = model(x)
                targets, _ = resolve_targets(logits.detach(), "predicted")
                maps = gradient_cams(logits, {LAYER: caught[LAYER]}, targets, methods)
            return {k: v.cpu() for k, v in maps.items()}

        return step

    def pgc():
        from pytorch_grad_cam import GradCAM

        model, x = plain
        layer = model.get_submodule(LAYER)

        def step():
            with GradCAM(model=model, target_layers=[layer]) as cam:
                out = cam(input_tensor=x, targets=None)
            model.zero_grad(set_to_none=True)
            return out

        return step

    def torchcam(model, x):
        from torchcam.methods import GradCAM

        def step():
            with GradCAM(model, target_layer=LAYER) as extractor:
                scores = model(x)
                cams = extractor(scores.argmax(1).tolist(), scores)
            return cams[0].detach().cpu()

        return step

    def captum():
        from captum.attr import LayerAttribution, LayerGradCam

        model, x = plain
        layer = model.get_submodule(LAYER)
        lgc = LayerGradCam(model, layer)

        def step():
            with torch.no_grad():
                target = model(x).argmax(1)
            attr = lgc.attribute(x, target=target)
            up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]))
            model.zero_grad(set_to_none=True)
            return attr.detach().cpu(), up.detach().cpu()

        return step

    makers: dict[str, Callable[[], Callable[[], Any]]] = {
        "forward_only": lambda: forward_only,
        "floor": lambda: partial(floor, *plain),
        "floor_cl": lambda: partial(floor, *cl),
        "ours_gradcam": lambda: ours(["gradcam"]),
        "ours_five_cams": lambda: ours(FIVE),
        "pytorch_grad_cam": pgc,
        "torchcam": lambda: torchcam(*plain),
        "torchcam_cl": lambda: torchcam(*cl),
        "captum": captum,
    }
    for name in wanted:
        try:
            steps[name] = makers[name]()
        except Exception as exc:
            setup_errors[name] = f"{type(exc).__name__}: {exc}"
    return steps, setup_errors


TIMED = {
    "forward_only": "torch.no_grad forward",
    "floor": "forward (params frozen, layer4 output made a leaf by a hook) + autograd.grad(score_sum, activation)",
    "floor_cl": "as floor, on the channels-last copy of the model and batch",
    "ours_gradcam": "borrowed+capture(grad) forward, resolve_targets, gradient_cams([gradcam]), maps to host (7x7)",
    "ours_five_cams": "as ours_gradcam with all 5 gradient CAMs from the same pass, maps to host (layer res.)",
    "pytorch_grad_cam": "GradCAM(model,[layer4]) call: forward, full backward (weight grads), min-max + cv2 resize "
                        "to input, numpy",
    "torchcam": "torchcam GradCAM: forward, extractor(argmax, scores) -> normalized maps at layer resolution",
    "torchcam_cl": "as torchcam, given the channels-last copy of the model and batch (what the layout alone gives a peer)",
    "captum": "no-grad forward for targets + LayerGradCam.attribute + LayerAttribution.interpolate to input (nearest)",
}


def _agreement(name: str, peer_out: Any, ours_maps: np.ndarray) -> float | None:
    """Pearson r of a peer's Grad-CAM with ours (N, h, w), after the same post-processing."""
    if name == "pytorch_grad_cam":
        from pytorch_grad_cam.utils.image import scale_cam_image

        h, w = peer_out.shape[-2:]
        return pearson(scale_cam_image(np.maximum(ours_maps, 0), (w, h)), peer_out)
    if name in ("torchcam", "torchcam_cl"):
        return pearson(np.maximum(ours_maps, 0), peer_out.numpy())
    if name == "captum":
        attr = peer_out[0][:, 0].numpy()  # (N, h, w) before interpolation; captum does not apply ReLU by default
        return pearson(np.maximum(ours_maps, 0), np.maximum(attr, 0))
    return None


def run_cams(bench: Bench, wanted: list[str]) -> None:
    """Time the wanted steps round-robin and emit one line each (in the order of ``wanted``)."""
    s = bench.settings
    try:
        plain, cl = setup_model(bench), setup_model(bench, channels_last=True)
    except Exception as exc:
        for name in wanted:
            bench.emit(name, error=f"model setup failed: {type(exc).__name__}: {exc}")
        return
    x = plain[1]
    steps, setup_errors = _steps(plain, cl, wanted)
    log(f"cams: {', '.join(steps)} on {s.model} batch {s.batch} ({s.reps} rounds after {s.warmup} warm-up)")
    timings, failed, last = interleaved(steps, reps=s.reps, warmup=s.warmup, sync=sync_fn(x.device))
    ours_maps = None
    ours_out = last.get("ours_gradcam") or last.get("ours_five_cams")
    if ours_out is not None:
        ours_maps = ours_out[(LAYER, "gradcam")][:, 0].numpy()
    for name in wanted:
        if name in setup_errors:
            bench.emit(name, error=f"setup: {setup_errors[name]}")
            continue
        if name in failed:
            exc = failed[name]
            bench.emit(name, error=f"{type(exc).__name__}: {exc}")
            continue
        t = timings[name]
        ips = s.batch / t["seconds"]
        fields: dict[str, Any] = {"seconds": t["seconds"], "images_per_s": ips, "timed": TIMED[name],
                                  "layer": LAYER, "input": [s.size, s.size], "reps": t["reps"], "spread": t["spread"],
                                  "images_per_s_best": s.batch / t["min_s"]}
        ratios: dict[str, float | None] = {}
        # the floor is the faster layout's: the best the hardware does for this forward + backward
        floors = [s.batch / timings[f]["seconds"] for f in ("floor", "floor_cl") if f in timings]
        floor_ips = max(floors) if floors else None
        if name.startswith("ours_") and floor_ips:
            ratios["vs_floor"] = ratio(ips, floor_ips)  # images/s ratio: 1.0 = as fast as the floor
        if name in ("pytorch_grad_cam", "torchcam", "torchcam_cl", "captum"):
            if "ours_gradcam" in timings:
                ratios["ours_gradcam_vs_this"] = ratio(s.batch / timings["ours_gradcam"]["seconds"], ips)
            if "ours_five_cams" in timings:
                ratios["ours_five_cams_vs_this"] = ratio(s.batch / timings["ours_five_cams"]["seconds"], ips)
            if floor_ips:
                ratios["vs_floor"] = ratio(ips, floor_ips)
            if ours_maps is not None:
                try:
                    fields["pearson_vs_ours"] = _agreement(name, last[name], ours_maps)
                except Exception as exc:
                    fields["pearson_vs_ours_error"] = f"{type(exc).__name__}: {exc}"
        if name in ("floor", "floor_cl") and "forward_only" in timings:
            ratios["vs_forward_only"] = ratio(ips, s.batch / timings["forward_only"]["seconds"])
        if ratios:
            fields["ratios"] = ratios
        bench.emit(name, **fields)
