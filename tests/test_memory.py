"""An unattended run of thousands of batches must not grow: no tensors kept alive, no hooks or gradients left on
the model, no creeping resident memory (and on CUDA, no device memory) from one batch to the next.

The compute path of a run (``fill_batch``: device copy, one forward and backward pass for the gradient CAMs,
the feature maps, a perturbation method, cache writes) is driven for 200 batches on the tiny CNN; what is
alive after a 10-batch warm-up (lazy initialisation, allocator pools) must still be all that is alive after.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
from conftest import write_config

from reportgen.cache import TensorCache, cache_key
from reportgen.compute import fill_batch
from reportgen.config import load_config
from reportgen.models import load_model
from reportgen.plan import ComputeSpec
from reportgen.results import PREDICTIONS, ResultKey, RunStats

WARMUP = 10
BATCHES = 200
IMAGES = 2  # per batch
LAYER = "features.5"
GRADIENT_CAMS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
RSS_GROWTH_LIMIT = 30 * 2**20
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _live_tensors() -> int:
    """How many ``torch.Tensor`` objects the garbage collector can see, after a full collection."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))  # type(): no lazy proxy warns


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc/self/statm``: pages)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _leftovers(model: torch.nn.Module) -> list[str]:
    """Hooks and gradients a method left on ``model``, by module or parameter name (empty when clean)."""
    found = []
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(module, kind, None):
                found.append(f"{name or 'model'}.{kind}")
    found += [f"{name}.grad" for name, p in model.named_parameters() if p.grad is not None]
    return found


class _Batches:
    """Feeds ``fill_batch`` one batch of fresh random images at a time, as the runner does (new keys, nothing found)."""

    def __init__(self, cfg, lm, cache: TensorCache):
        self.spec, self.lm, self.cache = ComputeSpec.from_config(cfg), lm, cache
        self.names = [PREDICTIONS, ResultKey.feature_maps("features.4"),
                      *[self.spec.cam_key(m, LAYER) for m in [*GRADIENT_CAMS, "scorecam"]]]
        self.generator = torch.Generator().manual_seed(0)
        self.counters = RunStats()
        self.done = 0

    def run(self, n: int) -> None:
        for _ in range(n):
            keys = [{name: cache_key({"batch": self.done, "row": r, "name": name}) for name in self.names}
                    for r in range(IMAGES)]
            found: list[dict] = [{} for _ in range(IMAGES)]
            x = torch.randn(IMAGES, 3, 32, 32, generator=self.generator)
            fill_batch(self.spec, self.lm, self.cache, keys, found, x, [None] * IMAGES, self.counters)
            assert all(len(f) == len(self.names) for f in found)
            self.done += 1


@pytest.mark.parametrize("device", DEVICES)
def test_two_hundred_batches_leave_no_tensors_hooks_grads_or_memory_behind(tmp_path, image_dir, device):
    cams = {"methods": [*GRADIENT_CAMS, "scorecam"], "layers": [LAYER]}
    cfg = load_config(write_config(tmp_path, image_dir, cams=cams, kernels={}))
    lm = load_model(cfg.model, device)
    batches = _Batches(cfg, lm, TensorCache(tmp_path / "cache"))
    batches.run(WARMUP)
    tensors, rss = _live_tensors(), _rss_bytes()
    cuda_bytes = torch.cuda.memory_allocated() if device == "cuda" else 0
    batches.run(BATCHES)
    assert _live_tensors() == tensors
    assert _leftovers(lm.module) == []
    growth = _rss_bytes() - rss
    assert growth < RSS_GROWTH_LIMIT, f"resident memory grew by {growth / 2**20:.1f} MiB over {BATCHES} batches"
    if device == "cuda":
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == cuda_bytes
    c = batches.counters
    assert (c.forward_passes, c.backward_passes, c.map_passes) == (WARMUP + BATCHES,) * 3
    assert batches.cache.writes == (WARMUP + BATCHES) * IMAGES * len(batches.names)
