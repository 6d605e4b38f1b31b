"""IS-CAM: Score-CAM whose channel scores are integrated over a ramp of mask intensities (torchcam's family).

Masks, chunking and the softmax are those of ``sscam`` (torchcam's Score-CAM family); every (level, image,
channel) row of the batch runs in the same chunks of ``batch_size`` masked inputs under ``inference_mode``.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import Tensor, nn

from reportgen.methods.inputs import check_batch
from reportgen.methods.perturbation import _first_pass
from reportgen.methods.sscam import check_counts, score_rows, softmax_cam, unit_masks

__all__ = ["iscam"]


def iscam(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, num_samples: int = 10,
          batch_size: int = 64, bf16: bool = False) -> Tensor:
    """IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", 2020).

    Formula: ``cam_c = relu(Σ_k softmax_k(mean_i y_c(r_i · x ⊙ up(norm(A_k)))) · A_k)`` with
    ``r_i = Σ_{j=1..i} j / S`` for i = 1..S (S = ``num_samples``, torchcam's default 10), as torchcam 0.5.0
    computes it (``coeff += (sidx + 1) / num_samples``): the ramp reaches S(S+1)/(2S) = 5.5 for S = 10, not 1.
    (torchcam's docstring writes Σ_{j=0..i-1}, one step lower; we follow its code, the reference users run.)

    Args:
        model: in eval mode (the caller borrows it); left exactly as found.
        x: (N, 3, H, W) float32 normalised input on the model's device; not modified.
        targets: (N, T) int64 class indices, T maps per image.
        layer: qualified name of a module whose output is (N, C, h, w).
        num_samples: points of the ramp. batch_size: masked inputs per forward pass.
        bf16: bfloat16 autocast of the masked passes (off: exact float32).

    Returns:
        (N, T, h, w) float32 >= 0 on ``x``'s device, unnormalised, detached.
    """
    targets = check_batch(x, targets)
    check_counts(num_samples=num_samples, batch_size=batch_size)
    # r_i summed in Python floats, as torchcam does, then rounded once to float32
    ramp = torch.tensor(list(accumulate((i + 1) / num_samples for i in range(num_samples))), device=x.device)

    def masked(up: Tensor, img: Tensor, _ch: Tensor, level: int | Tensor) -> Tensor:
        return ramp[level].view(-1, 1, 1, 1) * (up * x[img])

    with torch.inference_mode():
        _, a, _ = _first_pass(model, x, layer, targets)
        scores = score_rows(model, x, targets, unit_masks(a), num_samples, masked, batch_size, bf16)
        cam = softmax_cam(scores, a, num_samples)
    return cam.clone()  # a normal tensor, not an inference tensor
