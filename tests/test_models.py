"""Model sources, local weights, layer lookup and the model probe: no network, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from reportgen.config import ModelConfig, PreprocessConfig
from reportgen.errors import ModelError
from reportgen.models import find_layer, load_model, parse_model_spec, resolve_device, weights_digest

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
