"""The registry is the one table of methods: every entry names an importable implementation and is documented.

Running every method on real architectures is ``test_architectures.py::test_every_method_on_every_architecture``,
which walks the same registry.
"""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import REPO

from reportgen.methods import get_method, list_methods
from reportgen.methods.registry import MethodSpec, register


@pytest.mark.parametrize("name", [s.name for s in list_methods()])
def test_every_entry_names_an_importable_implementation_of_its_engine(name):
    spec = get_method(name)
    fn = spec.implementation()
    assert callable(fn) and fn.__module__ == spec.impl.partition(":")[0]
    args = list(inspect.signature(fn).parameters)
    if spec.engine == "gradient":
        assert args[:2] == ["a", "g"], args
    elif spec.engine == "map":
        assert args[:3] == ["model", "x", "targets"], args
        accepted = set(args)
        wanted = {p.name for p in spec.params} | ({"layer"} if spec.needs_layer else set())
        wanted |= {"mean", "std"} if spec.wants_preprocess else set()
        assert wanted <= accepted, f"{name}: parameters the registry passes but the function lacks: {wanted - accepted}"


def test_every_method_has_a_row_in_docs_methods():
    text = (REPO / "docs" / "METHODS.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"[a-z_]+", " ".join(line.split("|")[1] for line in text.splitlines()
                                                    if line.startswith("| ") and line.count("|") > 3)))
    missing = [s.name for s in list_methods() if s.name not in documented]
    assert not missing, f"methods without a row in docs/METHODS.md: {missing}"


@pytest.mark.parametrize("bad, message", [
    (dict(impl="os:system"), "impl must be 'reportgen.module:function'"),
    (dict(impl="reportgen.methods.cam"), "impl must be"),
    (dict(impl="reportgen.methods.cam:gradcam", output=""), "needs output 'weighted' or 'map'"),
    (dict(impl="reportgen.methods.cam:gradcam", output="weighted", name="gradcam"), "already registered"),
])
def test_register_refuses_incomplete_entries(bad, message):
    fields = dict(name="newcam", title="New", kind="cam", description="d", paper="p", engine="gradient")
    with pytest.raises(ValueError, match=message):
        register(MethodSpec(**{**fields, **bad}))
    assert "newcam" not in {s.name for s in list_methods()}


def test_config_params_reach_gradient_engine_functions(tmp_path, image_dir):
    """cams.params of a gradient-engine method (Random-CAM's seed, FEM's k) change its maps in a real compute."""
    import numpy as np
    import torch
    from conftest import write_config

    from reportgen.compute import compute_entries
    from reportgen.config import load_config
    from reportgen.models import load_model
    from reportgen.plan import ComputeSpec
    from reportgen.results import PREDICTIONS, RunStats

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = {}
    for seed, k in ((0, 2.0), (1, 0.5)):
        cams = {"methods": ["randomcam", "fem"], "layers": ["features.2"],
                "params": {"randomcam": {"seed": seed}, "fem": {"k": k}}}
        cfg = load_config(write_config(tmp_path, image_dir, cams=cams))
        spec = ComputeSpec.from_config(cfg)
        out = compute_entries(spec, load_model(cfg.model, "cpu"), x, {PREDICTIONS, *spec.cam_keys()}, [None] * 2,
                              RunStats())
        maps[seed] = {m: np.stack([e[0]["maps"] for e in out[spec.cam_key(m, "features.2")]]) for m in cams["methods"]}
    for m in ("randomcam", "fem"):
        assert not np.array_equal(maps[0][m], maps[1][m]), f"{m}: its parameter did not reach the function"
