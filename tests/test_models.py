"""Model sources, local weights, layer lookup and the model probe: no network, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from reportgen.config import ModelConfig, PreprocessConfig
from reportgen.errors import ModelError
from reportgen.hooks import find_layer
from reportgen.models import load_model, parse_model_spec, resolve_device, weights_digest

PRE = PreprocessConfig(size=(32, 32))


def _cfg(source, name, **kw):
    return ModelConfig(source=source, name=name, labels=kw.pop("labels", "none"), preprocess=PRE, **kw)


def test_timm_and_torchvision_sources_build_without_download():
    lm = load_model(_cfg("timm", "resnet18", num_classes=7))
    assert len(lm.labels) == 7 and lm.preprocess.size == (32, 32)
    lm = load_model(_cfg("torchvision", "resnet18", num_classes=5))
    assert len(lm.labels) == 5 and not lm.module.training


def test_unknown_model_names_suggest():
    with pytest.raises(ModelError, match="unknown torchvision model 'resnet1'; did you mean"):
        load_model(_cfg("torchvision", "resnet1"))
    with pytest.raises(ModelError, match="unknown timm model"):
        load_model(_cfg("timm", "no_such_net_xyz"))
    with pytest.raises(ModelError, match="cannot import module 'no_such_module'"):
        load_model(_cfg("factory", "no_such_module:fn"))
    with pytest.raises(ModelError, match="has no function 'nope'"):
        load_model(_cfg("factory", "tinynets:nope"))


def test_weights_from_pt_and_safetensors_change_the_digest(tmp_path):
    from tinynets import tiny_cnn

    base = load_model(_cfg("factory", "tinynets:tiny_cnn"))
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    a = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "w.pt"))
    b = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "w.safetensors"))
    assert a.digest == b.digest == weights_digest(model) != base.digest
    assert torch.equal(a.module.fc.weight, model.fc.weight)


def test_weights_that_do_not_fit_are_named(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"bad.pt: weights do not fit the model: 1 tensors of another shape"):
        load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "bad.pt"))
    torch.save({"fc.weight": torch.zeros(10, 16)}, tmp_path / "part.pt")
    with pytest.raises(ModelError, match=r"part.pt: weights do not fit the model: \d+ missing"):
        load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "part.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.pt: cannot read weights"):
        load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "junk.pt"))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_source(tmp_path):
    from tinynets import tiny_cnn

    scripted = torch.jit.script(tiny_cnn())
    scripted.save(str(tmp_path / "m.pt"))
    lm = load_model(_cfg("torchscript", str(tmp_path / "m.pt")))
    assert len(lm.labels) == 10 and lm.digest == weights_digest(tiny_cnn())
    assert parse_model_spec(str(tmp_path / "m.pt")) == ("torchscript", str(tmp_path / "m.pt"))


def test_find_layer_offers_close_matches(tiny_model):
    assert isinstance(find_layer(tiny_model, "features.2"), torch.nn.Conv2d)
    with pytest.raises(ModelError, match=r"no layer named 'feature.2'; did you mean 'features.2'"):
        find_layer(tiny_model, "feature.2")


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")


def test_imagenet_labels_are_real_names():
    from tinynets import tiny_cnn  # noqa: F401  (importable factory)

    lm = load_model(_cfg("factory", "tinynets:tiny_cnn", labels="imagenet", num_classes=1000))
    assert lm.labels[285] == "Egyptian cat" and lm.labels[967] == "espresso"


def _whole_module_checkpoint(tmp_path):
    """A tiny CNN with changed weights, saved twice: as a whole pickled module and as a plain state dict."""
    from tinynets import tiny_cnn

    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3)
    torch.save(model, tmp_path / "whole.pt")  # pickles the tinynets.TinyCNN object itself
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    return model


def test_a_pickled_module_is_refused_without_allow_pickle(tmp_path):
    _whole_module_checkpoint(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "whole.pt"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'whole.pt'}: ")
    assert "tinynets.TinyCNN" in message and "needs full pickle, which can run arbitrary code" in message
    assert message.endswith("if you trust the file, set `model.allow_pickle: true`")


def test_allow_pickle_loads_a_pickled_module_with_a_warning_and_the_same_digest(tmp_path, caplog):
    model = _whole_module_checkpoint(tmp_path)
    with caplog.at_level("WARNING", logger="reportgen.models"):
        plain = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "plain.pt", allow_pickle=True))
        assert not caplog.records  # a file of plain tensors never goes through full pickle, flag or not
        whole = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "whole.pt", allow_pickle=True))
    strict = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "plain.pt"))
    assert whole.digest == plain.digest == strict.digest == weights_digest(model)
    assert whole.digest != load_model(_cfg("factory", "tinynets:tiny_cnn")).digest
    assert [r.getMessage() for r in caplog.records] == [
        f"loading {tmp_path / 'whole.pt'} with full pickle: this can run code in the file (model.allow_pickle is true)"
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)


class _RunsCodeWhenUnpickled:
    """Unpickling this calls ``os.mkdir(marker)``: the kind of side effect weights_only loading must prevent."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_code_in_a_checkpoint_runs_only_with_allow_pickle(tmp_path):
    from tinynets import tiny_cnn

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": tiny_cnn().state_dict(), "extra": _RunsCodeWhenUnpickled(marker)}, tmp_path / "w.pt")
    with pytest.raises(ModelError, match=r"w\.pt: .*needs full pickle"):
        load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "w.pt"))
    assert not marker.exists()
    lm = load_model(_cfg("factory", "tinynets:tiny_cnn", weights=tmp_path / "w.pt", allow_pickle=True))
    assert marker.is_dir() and lm.digest == weights_digest(tiny_cnn())


def test_allow_pickle_must_be_a_boolean(tmp_path):
    from reportgen.config import load_config
    from reportgen.errors import ConfigError

    (tmp_path / "images").mkdir()
    path = tmp_path / "c.yaml"
    text = "model:\n  source: factory\n  name: tinynets:tiny_cnn\n  allow_pickle: {}\ndata:\n  path: images\n"
    path.write_text(text.format('"yes"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:4: model.allow_pickle: expected true or false, got string 'yes'"]
    path.write_text(text.format("true"), encoding="utf-8")
    assert load_config(path).model.allow_pickle is True
    path.write_text(text.replace("  allow_pickle: {}\n", ""), encoding="utf-8")
    assert load_config(path).model.allow_pickle is False
