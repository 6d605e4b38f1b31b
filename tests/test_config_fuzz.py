"""Property: whatever YAML a user writes, validation ends in a ConfigError (exit 2) or a config — never a crash."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reportgen.config import load_config
from reportgen.errors import ConfigError

_KEYS = ["title", "model", "data", "run", "kernels", "feature_maps", "cams", "filters", "report", "source", "name",
         "weights", "labels", "preprocess", "size", "mean", "std", "path", "limit", "device", "batch_size", "layers",
         "methods", "target", "top_k", "params", "channels", "steps", "pdf", "alpha", "colormap", "image_size", "x"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(["", "auto", "gradcam", "imagenet", "none", "factory", "timm", "resnet18", "a:b",
                                      "topk", "true", "fourier", "jet", "~", "../x", "images"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)), max_leaves=20)
_configs = st.one_of(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=8), _values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_configs)
def test_validation_never_crashes(tmp_path, data):
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(f"{path}:") for p in exc.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_is_a_config_error_or_a_config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(f"{path}:") for p in exc.problems)
