"""Score-CAM: reportgen's batched implementation vs pytorch-grad-cam's ``ScoreCAM`` on the same few images.

Both explain the predicted class at ``layer4`` with the same masked-input batch size. Each costs C forward passes
per image (C = 512 channels for ResNet-18, 2,048 for ResNet-50), so only a few images are timed, once each
(on CUDA after a one-image warm-up). The maps are compared after the same post-processing (pytorch-grad-cam's:
ReLU, per-image min-max, cv2 resize to the input): mean Pearson r over the images. Ours runs on the channels-last
copy of the model (as ``reportgen run`` does by default), in fp32 and with ``bf16=True`` (compared with our fp32
map); the peer runs as users call it, and once more given the channels-last copy (``peer_channels_last``: what the
layout alone would give it).
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

from bench.cams import LAYER, setup_model, sync_fn
from bench.common import Bench, log, pearson, ratio

__all__ = ["run_scorecam"]


def _timed(fn, sync) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def run_scorecam(bench: Bench) -> None:
    s = bench.settings
    try:
        from reportgen.methods.perturbation import scorecam
    except Exception as exc:
        bench.emit("scorecam", skipped=f"reportgen.methods.perturbation.scorecam is not importable "
                                       f"({type(exc).__name__}: {exc})")
        return
    import torch
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = setup_model(bench)
    model_cl, _ = setup_model(bench, channels_last=True)
    if s.score_size == x.shape[-1]:
        xs = x[: s.score_images]
    else:
        gen = torch.Generator().manual_seed(2)
        xs = torch.randn(s.score_images, 3, s.score_size, s.score_size, generator=gen).to(x.device)
    xs_cl = xs.contiguous(memory_format=torch.channels_last)
    n = xs.shape[0]
    sync = sync_fn(xs.device)
    with torch.no_grad():
        targets = model(xs).argmax(1, keepdim=True)  # (N, 1): the predicted class, as pytorch-grad-cam picks it
    size = (xs.shape[-1], xs.shape[-2])
    cuda = xs.device.type == "cuda"

    def ours(images, tg, bf16=False):
        return scorecam(model_cl, images.contiguous(memory_format=torch.channels_last), tg, layer=LAYER,
                        batch_size=s.score_batch, bf16=bf16)

    def peer(images, tg, net=model):
        cam = ScoreCAM(model=net, target_layers=[net.get_submodule(LAYER)])
        cam.batch_size = s.score_batch
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its per-image tqdm bars
                return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in tg[:, 0].tolist()])
        finally:
            cam.activations_and_grads.release()

    if cuda:  # one-image warm-up of each (cuDNN algorithm choice, allocator)
        log("scorecam: warm-up")
        ours(xs[:1], targets[:1])
        ours(xs[:1], targets[:1], bf16=True)
        peer(xs[:1], targets[:1])
        peer(xs_cl[:1], targets[:1], net=model_cl)
        sync()
    log(f"scorecam: ours fp32 on {n} image(s), batch {s.score_batch}")
    t_ours, m_ours = _timed(lambda: ours(xs, targets), sync)
    log(f"scorecam: pytorch-grad-cam on {n} image(s) ({t_ours:.1f}s for ours)")
    t_peer, m_peer = _timed(lambda: peer(xs, targets), sync)
    log(f"scorecam: pytorch-grad-cam on the channels-last copy ({t_peer:.1f}s as users call it)")
    t_peer_cl, _ = _timed(lambda: peer(xs_cl, targets, net=model_cl), sync)
    ours_np = m_ours[:, 0].float().cpu().numpy()  # (N, h, w)
    with torch.no_grad():
        feats = {}
        handle = model.get_submodule(LAYER).register_forward_hook(lambda _m, _i, o: feats.setdefault("a", o))
        model(xs[:1])
        handle.remove()
        channels = int(feats["a"].shape[1])
    ours_up = scale_cam_image(np.maximum(ours_np, 0), size)
    r = pearson(ours_up, m_peer)
    common = {"images": n, "layer": LAYER, "channels": channels, "score_batch": s.score_batch,
              "input": [s.score_size, s.score_size]}
    fwd = bench.ips("forward_only")
    # C no-grad forwards per image, at the cams batch size and input size (an estimate; only where sizes match)
    floor_ips = fwd / channels if fwd and s.score_size == s.size else None
    bench.emit("scorecam_peer", batch=n, seconds=t_peer, images_per_s=n / t_peer,
               timed="pytorch-grad-cam ScoreCAM(model,[layer4]) call, explicit predicted-class targets",
               peer_channels_last={"seconds": t_peer_cl, "images_per_s": n / t_peer_cl}, **common)
    fields = {"seconds": t_ours, "images_per_s": n / t_ours, "pearson_vs_peer": r,
              "timed": "reportgen.methods.perturbation.scorecam(model_cl, x_cl, targets, layer='layer4', bf16=False)",
              "ratios": {"ours_vs_peer": ratio(n / t_ours, n / t_peer),
                         "ours_vs_peer_channels_last": ratio(n / t_ours, n / t_peer_cl),
                         "vs_forward_floor_estimate": ratio(n / t_ours, floor_ips)},
              "forward_floor_estimate_images_per_s": floor_ips, **common}
    log("scorecam: ours bf16")
    t_bf, m_bf = _timed(lambda: ours(xs, targets, bf16=True), sync)
    bf_np = m_bf[:, 0].float().cpu().numpy()
    fields["bf16"] = {"seconds": t_bf, "images_per_s": n / t_bf,
                      "pearson_vs_ours_fp32": pearson(scale_cam_image(np.maximum(bf_np, 0), size), ours_up),
                      "pearson_vs_peer": pearson(scale_cam_image(np.maximum(bf_np, 0), size), m_peer),
                      "bf16_vs_fp32": ratio(n / t_bf, n / t_ours), "bf16_vs_peer": ratio(n / t_bf, n / t_peer)}
    bench.emit("scorecam", batch=n, **fields)
