"""Every registered CAM / saliency method on the architectures users bring: works, or fails with a clear error.

Random weights, tiny inputs. Covers concatenation and in-place ReLUs (DenseNet), hardswish (MobileNetV3),
SiLU (EfficientNet), LayerNorm and GELU (ConvNeXt).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.compute import compute_entries
from reportgen.config import load_config
from reportgen.errors import MethodError
from reportgen.hooks import model_state
from reportgen.methods import get_method, list_methods
from reportgen.models import load_model
from reportgen.plan import ComputeSpec
from reportgen.results import PREDICTIONS, RunStats

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
MAY_BE_FLAT = {"mobilenet_v3_small": {"gradcampp", "scorecam", "smoothgradcampp", "sscam", "iscam"}}
# randomcam (seed 0): relu(sum_c w_c A_c) with w ~ U(-1, 1) is negative at every position there; fem: weights
# >= 0 on channel sums negative everywhere (vgg11 features.8 is a pre-ReLU conv, densenet's transition2 ends in
# conv + avgpool); kpcacam: this EfficientNet's features.5 values are ~1e-9, so the sigmoid kernel
# tanh(<x, y>/C + 1) is constant and its centred matrix 0 (the peer's map is all zero too)
MAY_BE_FLAT |= {"resnet18": {"randomcam"}, "vgg11": {"fem"}, "densenet121": {"fem", "randomcam"},
                "efficientnet_b0": {"kpcacam"}}
# the original CAM explains only the layer pooled into the classifier: every layer above is mid-network
ALWAYS_REFUSED = {"cam"}
REFUSAL = {"guided_backprop": "nn.ReLU", "cam": "no nn.Linear takes|is not the global average pool"}  # what each refusal must say
METHODS = [s.name for s in list_methods("cam")]
SIZE = 64


def _config(tmp_path, arch: str, layer: str, methods: list[str]):
    import yaml

    (tmp_path / "images").mkdir(exist_ok=True)
    params = {m: {"batch_size": 256} for m in ("scorecam", "ablationcam", "integrated_gradients")}
    params["smoothgrad"] = {"samples": 4, "batch_size": 256}
    params["integrated_gradients"]["steps"] = 8
    params |= {"sscam": {"num_samples": 1, "batch_size": 256}, "iscam": {"num_samples": 1, "batch_size": 256},
               "smoothgradcampp": {"num_samples": 2}, "sess": {"num_scales": 2}}  # one pass per channel and sample
    params["dff"] = {"n_components": 2}  # K concept maps, not T: K = 2 = top_k keeps the shared (2, h, w) check
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
    layer, refused = ARCHS[arch][0], ARCHS[arch][1] | ALWAYS_REFUSED
    cfg = _config(tmp_path, arch, layer, METHODS)
    lm = load_model(cfg.model, "cpu")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    before = model_state(lm.module)
    weights = {k: v.clone() for k, v in lm.module.state_dict().items()}
    ok = [m for m in METHODS if m not in refused]
    cfg_ok = _config(tmp_path, arch, layer, ok)
    spec = ComputeSpec.from_config(cfg_ok)
    wanted = {PREDICTIONS} | {spec.cam_key(s.name, layer if s.needs_layer else "") for s in list_methods("cam")
                              if s.name in ok}
    out = compute_entries(spec, lm, x, wanted, [None], RunStats())
    flat = []
    for name in wanted - {PREDICTIONS}:
        for arrays, _ in out[name]:
            maps = np.asarray(arrays["maps"], dtype=np.float32)
            assert maps.ndim == 3 and maps.shape[0] == 2, (name, maps.shape)  # (top-2 targets, h, w)
            assert np.isfinite(maps).all() and (maps >= 0).all(), name
            if not name.layer:
                assert maps.shape[1:] == (SIZE, SIZE), name  # input-level maps at input resolution
            if maps.max() == maps.min():
                flat.append(name.method)
    # a method switched off (its maps * 0) passes the checks above
    assert not set(flat) - MAY_BE_FLAT.get(arch, set()), f"flat maps: {sorted(flat)}"
    for method in refused:
        cfg_bad = _config(tmp_path, arch, layer, [method])
        with pytest.raises(MethodError, match=REFUSAL[method]):
            spec_bad = ComputeSpec.from_config(cfg_bad)
            key = spec_bad.cam_key(method, layer if get_method(method).needs_layer else "")
            compute_entries(spec_bad, lm, x, {PREDICTIONS, key}, [None], RunStats())
    assert model_state(lm.module) == before
    assert all(torch.equal(v, lm.module.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(x, x_before)
