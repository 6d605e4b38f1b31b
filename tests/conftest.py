"""Shared fixtures: tiny seeded models, image folders made on the fly, configs written to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# One intra-op thread: on a 2-core machine shared with other work, two OpenMP threads made some tests 15x
# slower (spinning at barriers); the suite measures correctness, not speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_model():
    from tinynets import tiny_cnn

    return tiny_cnn()


@pytest.fixture
def fixed_model():
    from tinynets import FixedCNN

    return FixedCNN().eval()


def make_images(root: Path, n: int = 4, *, labelled: bool = True, size: tuple[int, int] = (40, 32)) -> list[Path]:
    """``n`` small deterministic RGB photos-to-be under ``root`` (class folders ``0_a``/``1_b`` when labelled)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        folder = root / (f"{i % 2}_class{i % 2}" if labelled else "")
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_images(root)
    return root


# The smallest valid config of the tiny CNN as YAML text, folders relative to the config (images/, out/, cache/).
MINIMAL_CONFIG = """\
model:
  source: factory
  name: tinynets:tiny_cnn
  labels: none
  preprocess:
    size: 32
data:
  path: images
run:
  output: out
  cache_dir: cache
  device: cpu
"""


def write_config(tmp_path: Path, data_dir: Path, **overrides) -> Path:
    """A config for the tiny CNN over ``data_dir``; ``overrides`` replace whole top-level sections."""
    cfg = {
        "title": "tiny test run",
        "model": {"source": "factory", "name": "tinynets:tiny_cnn", "labels": "none",
                  "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
        "data": {"path": str(data_dir)},
        "run": {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                "batch_size": 3},
        "kernels": {"layers": ["features.0", "features.2"], "max_kernels": 16},
        "feature_maps": {"layers": ["features.4"], "top_k": 4},
        "cams": {"methods": ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"],
                 "layers": ["features.5", "features.2"], "target": "predicted"},
        "report": {"pdf": False, "image_size": 96},
    }
    cfg.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


# Reference models for the comparisons with pytorch-grad-cam (seeded random weights).
@pytest.fixture(scope="module")
def resnet18():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def vgg11():
    """vgg11 with out-of-place ReLUs: pytorch-grad-cam keeps its caught activations by reference on the CPU, so
    an in-place ReLU after the caught conv would turn them into the ReLU's output."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return model


def exchange_supported(folder: Path) -> bool:
    """Whether ``renameat2(RENAME_EXCHANGE)`` swaps two folders in ``folder``, probed without reportgen's code
    (a test that asked reportgen would skip, not fail, when reportgen's exchange is switched off)."""
    import ctypes
    import ctypes.util

    a, b = folder / ".probe-a", folder / ".probe-b"
    a.mkdir()
    b.mkdir()
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
        return fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0
    except (OSError, AttributeError, TypeError):
        return False
    finally:
        a.rmdir()
        b.rmdir()
