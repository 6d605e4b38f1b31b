"""Trust metrics: what each costs per image, in seconds and as a multiple of one forward pass.

On the shared model (torchvision, random weights, channels-last copy as ``reportgen run`` uses) and the first
``IMAGES`` images of the shared batch (8 at 224 px; quick: 2 at 112 px), the Grad-CAM maps at ``layer4`` for the
predicted class are computed once, then each metric function of ``reportgen.metrics`` is timed once (they cost
tens of forward passes per image, so one call is the measurement): deletion/insertion (20 steps, the blurred
insertion substrate), average drop/increase, ROAD (9 percentiles, MoRF and LeRF in one call) and the sanity check
(5 cascading randomization stages, Grad-CAM recomputed at each). ``forward`` is one no-grad forward of the same
images at the same batch size, timed again just before each metric: ``vs_forward`` = the metric's seconds per image
/ the forward's. The metrics that take ``autocast_dtype`` are timed again under bfloat16 autocast where the device
has it natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX), with the largest difference from float32.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.cams import LAYER, setup_model, sync_fn
from bench.common import Bench, log, median_time

__all__ = ["run_metrics"]

IMAGES = 8


def _bf16_native(device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_metrics(bench: Bench) -> None:
    s = bench.settings
    try:
        from reportgen.metrics import confidence_change, deletion_insertion, road, sanity_check
    except Exception as exc:
        bench.emit("metrics_forward", skipped=f"reportgen.metrics is not importable ({type(exc).__name__}: {exc})")
        return
    import torch

    from reportgen.hooks import borrowed, capture
    from reportgen.methods.cam import gradient_cams

    model, x_all = setup_model(bench, channels_last=True)
    x = x_all[: min(IMAGES, x_all.shape[0]) if not s.quick else 2]
    n = x.shape[0]
    sync = sync_fn(x.device)
    with torch.no_grad():
        targets = model(x).argmax(1)

    def gradcam(net) -> torch.Tensor:
        with borrowed(net), capture(net, [LAYER], grad=True) as caught:
            logits = net(x)
            maps = gradient_cams(logits, caught, targets[:, None], ["gradcam"])
        return maps[(LAYER, "gradcam")][:, 0]

    maps = gradcam(model)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    fwd = median_time(forward, reps=s.reps, warmup=s.warmup, sync=sync)
    per_fwd = fwd["seconds"] / n
    common = {"images": n, "input": list(x.shape[-2:]), "layer": LAYER, "maps": "gradcam, predicted class"}
    bench.emit("metrics_forward", batch=n, seconds=fwd["seconds"], images_per_s=n / fwd["seconds"],
               seconds_per_image=per_fwd, timed="model(x) under inference_mode, channels_last", **common)
    batch = s.score_batch
    bf16 = _bf16_native(x.device)
    with torch.inference_mode():  # warm-up at the chunk size (oneDNN / cuDNN pick kernels per shape on first use)
        chunk = x[:1].expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        model(chunk)
        if bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                model(chunk)
    sync()
    runs = {
        "deletion_insertion": lambda **kw: deletion_insertion(model, x, maps, targets, batch_size=batch, **kw),
        "confidence_change": lambda **kw: confidence_change(model, x, maps, targets, batch_size=batch, **kw),
        "road": lambda **kw: road(model, x, maps, targets, batch_size=batch, **kw),
        "sanity_check": lambda **kw: sanity_check(model, x, targets, gradcam, stages=5),
    }
    for name, fn in runs.items():
        # the forward again just before: on a shared machine the load drifts, and the ratio wants the same moment
        per_fwd = median_time(forward, reps=s.reps, warmup=0, sync=sync)["seconds"] / n
        log(f"metrics: {name} on {n} image(s), batch {batch} (forward {per_fwd:.3f}s/image)")
        t0 = time.perf_counter()
        out = fn()
        sync()
        seconds = time.perf_counter() - t0
        fields = {"seconds": seconds, "images_per_s": n / seconds, "seconds_per_image": seconds / n,
                  "forward_seconds_per_image": per_fwd,
                  "vs_forward": seconds / n / per_fwd, "forward_images": out["forward_images"],
                  "forwards_per_image": out["forward_images"] / n, "score_batch": batch,
                  "timed": f"reportgen.metrics.{name}(...) once", **common}
        if name == "road":
            fields["imputation_solver"] = "direct (scipy, per image)" if x.device.type == "cpu" else "cg (batched)"
            # what is not forward passes: the imputation (an estimate, from the forward's time per image)
            fields["imputation_s_per_image_estimate"] = seconds / n - out["forward_images"] / n * per_fwd
        if name != "sanity_check":
            if bf16:
                log(f"metrics: {name} under bf16 autocast")
                t0 = time.perf_counter()
                low = fn(autocast_dtype=torch.bfloat16)
                sync()
                t_bf = time.perf_counter() - t0
                diff = max(float((low[k] - out[k]).abs().nan_to_num(0.0).max()) for k in out if k != "forward_images")
                fields["bf16"] = {"seconds": t_bf, "seconds_per_image": t_bf / n, "vs_forward": t_bf / n / per_fwd,
                                  "bf16_vs_fp32": seconds / t_bf, "max_abs_diff_vs_fp32": diff}
            else:
                fields["bf16"] = {"skipped": "no native bfloat16 on this device"}
        scores = {k: [round(float(v), 4) for v in out[k].flatten()[:4]] for k in out
                  if k not in ("forward_images", "stage_layers")}
        bench.emit(f"metrics_{name}", batch=n, first_scores=scores, **fields)
