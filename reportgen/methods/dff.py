"""Deep Feature Factorization: the concepts a layer sees in a batch, by non-negative matrix factorization.

Collins, Achanta & Süsstrunk, "Deep Feature Factorization for Concept Discovery", ECCV 2018. The activations of
every position of every image of the batch are the rows of one matrix, factorized into K concepts::

    A (C, N·h·w) - min_c  ≈  W (C, K) · H (K, N·h·w),   W, H >= 0

``H`` reshaped to (N, K, h, w) gives each image K concept maps; column ``k`` of ``W`` is concept k's channel
weights. The NMF runs in torch on the batch's device (Lee & Seung multiplicative updates for the Frobenius
loss, a fixed number of iterations, the initial factors drawn on the CPU from ``seed``), so the same batch gives
the same maps on every run.

**A DFF map depends on its batch**: the concepts are those of all the images factorized together, so an image
gets other maps (and other concept numbers) in another batch. reportgen cuts images into batches in a fixed
order (``run.batch_size``), so reruns are identical; a different batch size, an added image that shifts the
batches, or an out-of-memory split of a batch changes the maps of the images of that batch.

Semantics follow pytorch-grad-cam 1.5.7 (``feature_factorization/deep_feature_factorization.py``, ``dff``):
nan → 0, each channel shifted by its minimum over the batch before factorizing, concept embeddings
``W[:, k] + min_c`` run through the classifier for the legend. Differences: the peer uses scikit-learn's
coordinate-descent solver, here multiplicative updates (reconstruction error within a few per cent of it, see
tests/test_dff.py); concepts are scaled so each map's maximum over the batch is 1 (NMF fixes W·H, not the
scale of each factor: the embedding is then the activation of a position holding that concept at full
strength) and numbered by their share of the reconstruction, largest first.
"""

from __future__ import annotations

import json
import math

import torch
from torch import Tensor, nn

from reportgen.errors import MethodError
from reportgen.hooks import capture
from reportgen.methods.inputs import check_batch

__all__ = ["dff", "nmf", "random_init"]

_EPS = 1e-12  # multiplicative-update denominators, on data scaled to max 1
_TOP_CLASSES = 3


def nmf(v: Tensor, k: int, *, max_iter: int = 200, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Non-negative matrix factorization ``v ≈ w @ h`` by multiplicative updates (Lee & Seung, NeurIPS 2000).

    Formula: ``w <- w * (v hᵀ) / (w h hᵀ)``, then ``h <- h * (wᵀv) / (wᵀw h)``, ``max_iter`` times (as
    scikit-learn's ``solver="mu"``), from ``random_init`` of ``v / max(v)``.

    Args:
        v: (C, P) non-negative float matrix, any device.
        k: number of components, >= 1.
        max_iter: number of update rounds (fixed: no tolerance, so the result does not hinge on rounding).
        seed: seed of the initial factors, drawn on the CPU (the same start on every device).

    Returns:
        ``(w, h)``: (C, k) and (k, P) float32 on ``v``'s device, both >= 0.
    """
    c, p = v.shape
    scale = float(v.max()) if v.numel() else 0.0
    if not math.isfinite(scale) or scale <= 0:  # all zero: any w with h = 0 is exact
        return v.new_zeros(c, k, dtype=torch.float32), v.new_zeros(k, p, dtype=torch.float32)
    x = v.float() / scale  # the eps guard and float32 range do not depend on the layer's scale (1e-9 .. 1e4)
    w, h = random_init(x, k, seed)
    for _ in range(max_iter):  # scikit-learn's solver="mu" order: w, then h
        w = w * (x @ h.T) / (w @ (h @ h.T) + _EPS)
        h = h * (w.T @ x) / ((w.T @ w) @ h + _EPS)
    return w * scale, h


def random_init(v: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's ``init="random"`` scale, from a CPU generator: ``|N(0, 1)| * sqrt(mean(v) / k)``.

    Args:
        v: (C, P) non-negative matrix.
        k: number of components.
        seed: seed of the generator (h is drawn first, then w).

    Returns:
        ``(w, h)``: (C, k) and (k, P) float32 on ``v``'s device.
    """
    generator = torch.Generator().manual_seed(seed)
    avg = math.sqrt(float(v.float().mean()) / k)
    h = torch.randn(k, v.shape[1], generator=generator).abs() * avg
    w = torch.randn(v.shape[0], k, generator=generator).abs() * avg
    return w.to(v.device), h.to(v.device)


def _activations(model: nn.Module, x: Tensor, layer: str, batch_size: int) -> Tensor:
    """The layer's output for ``x``, ``batch_size`` images per forward pass: (N, C, h, w) float32."""
    parts = []
    with torch.inference_mode(), capture(model, [layer]) as caught:
        for start in range(0, x.shape[0], batch_size):
            caught.pop(layer, None)
            model(x[start:start + batch_size])
            if layer not in caught:
                raise MethodError(f"dff: expected layer {layer!r} to run during the forward pass, got no output from it")
            parts.append(caught[layer].float())
    return torch.cat(parts)


def _classifier(model: nn.Module, channels: int) -> nn.Linear | None:
    """The model's last ``nn.Linear`` when it takes ``channels`` inputs (the layer feeds the classifier), else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears and linears[-1].in_features == channels else None


def _normalise(w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Scale each concept's map to max 1 (its weights take the factor) and sort concepts by their share of w @ h."""
    top = h.amax(dim=1)
    scale = torch.where(top > 0, top, torch.ones_like(top))
    w, h = w * scale, h / scale[:, None]
    share = w.sum(dim=0) * h.sum(dim=1)
    order = torch.argsort(-share.double().cpu(), stable=True).to(w.device)
    return w[:, order], h[order]


def _check(n_components: int, max_iter: int, batch_size: int) -> None:
    for name, value, low in (("n_components", n_components, 1), ("max_iter", max_iter, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MethodError(f"dff: expected {name} >= {low} (an integer), got {value!r}")


def dff(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str, n_components: int = 5, max_iter: int = 200,
        seed: int = 0, batch_size: int = 64) -> tuple[Tensor, dict[str, str]]:
    """Deep Feature Factorization (Collins et al., ECCV 2018) of the batch ``x`` at ``layer``.

    Formula: ``A (C, N·h·w) - min_c ≈ W (C, K) · H (K, N·h·w)``, W, H >= 0; maps = H as (N, K, h, w). Class-agnostic:
    ``targets`` is checked, not used. The maps of an image depend on the other images of ``x`` (one NMF per
    batch; see the module docstring).

    Args:
        model: the network, in eval mode (the compute engine borrows it).
        x: (N, 3, H, W) float32 input batch.
        targets: (N, T) int64 target classes (validated only).
        layer: qualified name of the layer whose output is factorized.
        n_components: K, concepts per batch.
        max_iter: multiplicative-update rounds of the NMF.
        seed: seed of the NMF's initial factors.
        batch_size: images per forward pass catching the activations (memory only: the NMF covers all of ``x``).

    Returns:
        ``(maps, notes)``: maps (N, K, h, w) float32 >= 0, concept k of image n at ``maps[n, k]``, each concept's
        maximum over the batch 1; notes (the same for every image of the batch): ``dff_concepts``, JSON (K, C)
        concept embeddings ``W[:, k] + min_c`` in the layer's units, and ``dff_top_classes``, JSON per concept
        ``[[class, probability], ...]`` (the top 3 of softmax(classifier(embedding))), ``[]`` when the model's last
        ``nn.Linear`` does not take C inputs.
    """
    check_batch(x, targets)
    _check(n_components, max_iter, batch_size)
    a = torch.nan_to_num(_activations(model, x, layer, batch_size), nan=0.0)
    n, c, hh, ww = a.shape
    v = a.permute(1, 0, 2, 3).reshape(c, -1)
    offset = v.amin(dim=1, keepdim=True)
    w, h = _normalise(*nmf(v - offset, n_components, max_iter=max_iter, seed=seed))
    maps = h.reshape(n_components, n, hh, ww).permute(1, 0, 2, 3).contiguous()
    concepts = (w + offset).T.contiguous()  # (K, C): the peer's ``W + offset``, what the classifier is run on
    notes = {"dff_concepts": _json_floats(concepts), "dff_top_classes": json.dumps(_top_classes(model, concepts))}
    return maps, notes


def _top_classes(model: nn.Module, concepts: Tensor) -> list[list[list[float | int]]]:
    """Per concept, the classifier's top classes for its embedding: ``[[class, probability], ...]``."""
    fc = _classifier(model, concepts.shape[1])
    if fc is None:
        return []
    with torch.inference_mode():
        probs = torch.softmax(fc(concepts.to(dtype=fc.weight.dtype)).float(), dim=1).cpu()
    top = torch.topk(probs, min(_TOP_CLASSES, probs.shape[1]), dim=1)
    return [[[int(i), round(float(p), 4)] for p, i in zip(ps, idx, strict=True)]
            for ps, idx in zip(top.values, top.indices, strict=True)]


def _json_floats(t: Tensor) -> str:
    """A 2-D float32 tensor as JSON, each value in the shortest text that reads back to the same float32."""
    rows = t.float().cpu().numpy()
    return "[" + ",".join("[" + ",".join(str(v) for v in row) + "]" for row in rows) + "]"
