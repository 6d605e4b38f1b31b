"""Every registered CAM / saliency method on the architectures users bring: works, or fails with a clear error.

Random weights, tiny inputs. Covers concatenation and in-place ReLUs (DenseNet), hardswish (MobileNetV3),
SiLU (EfficientNet), LayerNorm and GELU (ConvNeXt).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.compute import Counters, compute_entries
from reportgen.config import load_config
from reportgen.errors import MethodError
from reportgen.hooks import model_state
from reportgen.methods import list_methods
from reportgen.models import load_model

# architecture → (layer explained by layer methods, methods expected to refuse it with a MethodError)
ARCHS = {  # mid-network layers with at most 256 channels keep the perturbation methods (one pass per channel) fast
    "resnet18": ("layer2", set()),
    "vgg11": ("features.8", set()),
    "alexnet": ("features.10", set()),
    "densenet121": ("features.transition2", set()),  # concatenating dense blocks with in-place ReLUs before it
    "mobilenet_v3_small": ("features.4", set()),  # hardswish blocks
    "efficientnet_b0": ("features.5", {"guided_backprop"}),  # SiLU only: no nn.ReLU to guide
    "convnext_tiny": ("features.3", {"guided_backprop"}),  # LayerNorm and GELU only
}
# maps that are rightly all zero: features.4 of the random MobileNetV3-Small is a linear bottleneck (negative
# values); every Grad-CAM++ weighted sum there is negative (G^2 ~ 1e-15; pytorch-grad-cam's map peaks at 2e-18),
# and so is Score-CAM's (positive softmax weights over channels with a negative mean), so the ReLU leaves nothing
MAY_BE_FLAT = {"mobilenet_v3_small": {"gradcampp", "scorecam"}}
METHODS = [s.name for s in list_methods("cam")]
SIZE = 64


def _config(tmp_path, arch: str, layer: str, methods: list[str]):
    import yaml

    (tmp_path / "images").mkdir(exist_ok=True)
    params = {m: {"batch_size": 256} for m in ("scorecam", "ablationcam", "integrated_gradients")}
    params["smoothgrad"] = {"samples": 4, "batch_size": 256}
    params["integrated_gradients"]["steps"] = 8
    cfg = {
        "model": {"source": "torchvision", "name": arch, "num_classes": 10, "labels": "none",
                  "preprocess": {"size": SIZE}},
        "data": {"path": str(tmp_path / "images")},
        "run": {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "device": "cpu"},
        "cams": {"methods": methods, "layers": [layer], "target": "topk", "top_k": 2,
                 "params": {m: p for m, p in params.items() if m in methods}},
    }
    path = tmp_path / f"{arch}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_method_on_every_architecture(tmp_path, arch):
    layer, refused = ARCHS[arch]
    cfg = _config(tmp_path, arch, layer, METHODS)
    lm = load_model(cfg.model, "cpu")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    before = model_state(lm.module)
    weights = {k: v.clone() for k, v in lm.module.state_dict().items()}
    ok = [m for m in METHODS if m not in refused]
    wanted = {("pred",)} | {("cam", s.name, layer if s.needs_layer else "") for s in list_methods("cam") if s.name in ok}
    cfg_ok = _config(tmp_path, arch, layer, ok)
    out = compute_entries(cfg_ok, lm, x, wanted, [None], Counters())
    flat = []
    for name in wanted - {("pred",)}:
        for arrays, _ in out[name]:
            maps = np.asarray(arrays["maps"], dtype=np.float32)
            assert maps.ndim == 3 and maps.shape[0] == 2, (name, maps.shape)  # (top-2 targets, h, w)
            assert np.isfinite(maps).all() and (maps >= 0).all(), name
            if not name[2]:
                assert maps.shape[1:] == (SIZE, SIZE), name  # input-level maps at input resolution
            if maps.max() == maps.min():
                flat.append(name[1])
    # a method switched off (its maps * 0) passes the checks above
    assert not set(flat) - MAY_BE_FLAT.get(arch, set()), f"flat maps: {sorted(flat)}"
    for method in refused:
        cfg_bad = _config(tmp_path, arch, layer, [method])
        with pytest.raises(MethodError, match="nn.ReLU"):
            compute_entries(cfg_bad, lm, x, {("pred",), ("cam", method, "")}, [None], Counters())
    assert model_state(lm.module) == before
    assert all(torch.equal(v, lm.module.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(x, x_before)
