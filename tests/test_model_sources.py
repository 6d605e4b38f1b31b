"""Model sources and what each can run: TorchScript (no hooks), exported programs (torch.export .pt2), the CLI."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_config
from torch import nn

from reportgen.cli import main
from reportgen.compute import compute_entries, kernel_entry
from reportgen.config import ModelConfig, PreprocessConfig, load_config
from reportgen.errors import ModelError
from reportgen.methods.activation_max import visualize_filters
from reportgen.models import load_model, parse_model_spec
from reportgen.plan import ComputeSpec
from reportgen.results import RunStats

PRE = PreprocessConfig(size=(32, 32))
_EXPORT_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam",
                   "scorecam", "ablationcam", "saliency", "smoothgrad", "integrated_gradients"]


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    """A resnet18-like net (one BasicBlock per stage, in-place ReLUs called twice per block, downsample paths)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so an export in eval mode matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x, scale: float = 1.0):
        return self.act(self.conv(x)) * scale


class _SharedBlockNet(nn.Module):
    """``block`` is called twice with different constants: torch.export.unflatten splits it into block, block@1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = _Block()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.block(self.block(self.stem(x)), 2.0)
        return self.fc(x.mean((2, 3)))


def _export(model: nn.Module, path: Path, *, dynamic: bool = True) -> Path:
    x = torch.randn(2, 3, 32, 32)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
    return path


@pytest.fixture(scope="module")
def resnet_pt2(tmp_path_factory) -> Path:
    return _export(tiny_resnet(), tmp_path_factory.mktemp("export") / "tiny_resnet.pt2")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    from tinynets import tiny_cnn

    path = tmp_path_factory.mktemp("script") / "tiny.pt"
    torch.jit.script(tiny_cnn()).save(str(path))
    return path


def _config(tmp_path: Path, image_dir: Path, model: dict, **sections) -> Path:
    model = {"labels": "none", "preprocess": {"size": 32}, **model}
    return write_config(tmp_path, image_dir, model=model, **sections)


# --- TorchScript ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_layers_lists_a_torchscript_model_without_a_traceback(scripted, capsys):
    assert main(["layers", str(scripted)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert any(line.split() == ["features.0", "Conv2d", "-"] for line in out.out.splitlines())
    assert "note: a TorchScript model runs only kernels, saliency, smoothgrad, integrated_gradients" in out.out


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_validate_and_run_refuse_hook_methods_on_torchscript(tmp_path, image_dir, scripted, capsys):
    cfg = _config(tmp_path, image_dir, {"source": "torchscript", "name": str(scripted)},
                  filters={"layers": ["features.2"], "channels": [0]})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for key in ("feature_maps.layers", "filters.layers", "cams.methods[0]", "cams.methods[4]"):
        assert "config.yaml:" in err and f": {key}: " in err, key
    assert "feature_maps cannot run on a torchscript model: a TorchScript module takes no forward or backward hooks" in err
    assert "model.source: factory" in err and "torch.export.save" in err
    assert "kernels.layers" not in err  # kernels need no hooks
    assert main(["run", str(cfg)]) == 2  # run refuses before any work, as validate does
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_runs_what_validate_accepts(tmp_path, image_dir, scripted, capsys):
    cfg = _config(tmp_path, image_dir, {"source": "torchscript", "name": str(scripted)},
                  feature_maps={"layers": []}, cams={"methods": ["saliency", "integrated_gradients"]})
    assert main(["validate", str(cfg)]) == 0
    assert "note: a TorchScript model runs only" in capsys.readouterr().out
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "out" / "report.html").is_file()


def broken_factory(num_classes: int = 10) -> nn.Module:
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("this model cannot run")

    return Broken()


def test_layers_never_prints_a_traceback_for_a_model_that_fails(capsys):
    assert main(["layers", "factory:test_model_sources:broken_factory"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "the model failed on a zero input of shape 1x3x224x224: RuntimeError: this model cannot run" in err


# --- exported programs ---------------------------------------------------------------------------------------


def test_pt2_paths_are_exported_programs(resnet_pt2):
    assert parse_model_spec(str(resnet_pt2)) == ("export", str(resnet_pt2))
    assert parse_model_spec(f"export:{resnet_pt2}") == ("export", str(resnet_pt2))


def test_exported_program_keeps_layer_names_types_and_input_size(resnet_pt2):
    eager = load_model(ModelConfig(source="factory", name="test_model_sources:tiny_resnet", labels="none",
                                   preprocess=PRE))
    lm = load_model(ModelConfig(source="export", name=str(resnet_pt2), labels="none", preprocess=PreprocessConfig()))
    assert lm.card.layers == eager.card.layers  # same qualified names, class names, Conv2d flags, weight shapes
    assert lm.preprocess.size == (32, 32)  # the exported fixed input size is the default
    assert lm.card.num_classes == 10 and lm.card.weights_source.startswith("inside the exported program")
    with pytest.raises(ModelError, match=r"exported for 32x32 inputs, but model.preprocess.size asks for 64x64"):
        load_model(ModelConfig(source="export", name=str(resnet_pt2), labels="none",
                               preprocess=PreprocessConfig(size=(64, 64))))


def test_exported_program_maps_equal_the_eager_module(tmp_path, image_dir, resnet_pt2):
    """Feature maps, every gradient CAM, the perturbation CAMs and the input-gradient maps, kernels and filter
    visualization: the unflattened exported program gives the eager module's numbers."""
    path = _config(tmp_path, image_dir, {"source": "factory", "name": "test_model_sources:tiny_resnet"},
                   feature_maps={"layers": ["layer1.0.relu", "layer3.0.conv2"], "top_k": 4},
                   cams={"methods": _EXPORT_METHODS, "layers": ["layer4", "layer3.0.conv2"], "target": "predicted",
                         "params": {"smoothgrad": {"samples": 3}, "integrated_gradients": {"steps": 4}}})
    cfg = load_config(path)
    eager = load_model(cfg.model)
    exported = load_model(ModelConfig(source="export", name=str(resnet_pt2), labels="none", preprocess=PRE))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    spec = ComputeSpec.from_config(cfg)
    wanted = set(spec.result_keys())
    a = compute_entries(spec, eager, x, wanted, [None] * 3, RunStats())
    b = compute_entries(spec, exported, x, wanted, [None] * 3, RunStats())
    assert set(a) == set(b) == wanted
    for key in wanted:
        for (arrays_a, _), (arrays_b, _) in zip(a[key], b[key], strict=True):
            for name in arrays_a:
                assert np.allclose(arrays_a[name], arrays_b[name], rtol=1e-4, atol=1e-5), (key, name)
    gradcam = np.stack([arrays["cam"] if "cam" in arrays else next(iter(arrays.values()))
                        for arrays, _ in a[spec.cam_key("gradcam", "layer3.0.conv2")]])
    assert gradcam.max() > 0  # a real map, not two empty ones agreeing
    for layer in ("conv1", "layer2.0.conv2"):
        assert np.array_equal(kernel_entry(eager, layer, 8)[0]["kernels"], kernel_entry(exported, layer, 8)[0]["kernels"])
    kw = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "size": 32, "steps": 3}
    assert torch.allclose(visualize_filters(eager.module, "layer2", [0, 5], **kw),
                          visualize_filters(exported.module, "layer2", [0, 5], **kw), atol=1e-4)


def test_validate_refuses_what_an_exported_program_cannot_run(tmp_path, image_dir, capsys):
    pt2 = _export(_SharedBlockNet().eval(), tmp_path / "shared.pt2")
    cfg = _config(tmp_path, image_dir, {"source": "export", "name": str(pt2)},
                  kernels={"layers": ["stem"]}, feature_maps={"layers": ["block.conv", "block@1"]},
                  cams={"methods": ["gradcam", "guided_backprop", "fullgrad"], "layers": ["block"]})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ": cams.methods[1]: guided_backprop cannot run on a export model: guided backprop guides nn.ReLU modules" in err
    assert ": cams.methods[2]: fullgrad cannot run on a export model: FullGrad sums the bias gradients" in err
    assert ": cams.layers[0]: layer 'block' is called more than once with different graphs" in err
    assert "'block' and 'block@1'" in err
    assert ": feature_maps.layers[1]: layer 'block@1' is a copy torch.export.unflatten made" in err
    assert "feature_maps.layers[0]" not in err and "cams.methods[0]" not in err and "kernels" not in err
    ok = _config(tmp_path, image_dir, {"source": "export", "name": str(pt2)},
                 kernels={"layers": ["stem"]}, feature_maps={"layers": ["block.conv"]},
                 cams={"methods": ["gradcam"], "layers": ["stem"]})
    assert main(["validate", str(ok)]) == 0
    out = capsys.readouterr().out
    assert "note: an exported program runs every method but fullgrad and guided_backprop" in out
    assert "block@1" in out


def test_layers_lists_an_exported_program(resnet_pt2, capsys):
    assert main(["layers", str(resnet_pt2)]) == 0
    out = capsys.readouterr().out
    assert "tiny_resnet.pt2: " in out and "input 3x32x32" in out
    assert any(line.split() == ["layer4.0.conv2", "Conv2d", "512x1x1"] for line in out.splitlines())
    assert main(["layers", str(resnet_pt2), "--size", "64"]) == 1
    assert "Expected input at *args[0].shape[2] to be equal to 32, but got 64" in capsys.readouterr().err


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the archive ``src`` with ``change(relative name, bytes) -> bytes | None`` applied (None drops)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            root, _, rel = info.filename.partition("/")
            data = change(rel, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
        extra = change("<extra>", b"")
        if extra:
            zout.writestr(f"{root}/data/aotinductor/model/model.so", extra)
    return dst


def _load_export(path: Path, allow_pickle: bool = False):
    return load_model(ModelConfig(source="export", name=str(path), labels="none", preprocess=PRE,
                                  allow_pickle=allow_pickle))


def test_exported_archives_that_could_run_code_are_refused(tmp_path, resnet_pt2, monkeypatch):
    loads = []
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    def pickled(rel, data):
        if rel.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    bad = _rewrite(resnet_pt2, tmp_path / "pickled.pt2", pickled)
    with pytest.raises(ModelError, match=r"pickled.pt2: 1 entries are stored as pickles .*set `model.allow_pickle: true`"):
        _load_export(bad)
    aoti = _rewrite(resnet_pt2, tmp_path / "aoti.pt2", lambda rel, data: b"ELF" if rel == "<extra>" else data)
    with pytest.raises(ModelError, match=r"aoti.pt2: holds AOTInductor code"):
        _load_export(aoti, allow_pickle=True)

    def hostile_expression(rel, data):
        if rel.startswith("models/") and rel.endswith(".json"):
            return data.replace(b"Symbol('s", b"__import__('os').system('true') or Symbol('s", 1)
        return data

    evil = _rewrite(resnet_pt2, tmp_path / "expr.pt2", hostile_expression)
    assert b"__import__" in zipfile.ZipFile(evil).read(next(n for n in zipfile.ZipFile(evil).namelist()
                                                             if n.endswith("models/model.json")))
    with pytest.raises(ModelError, match=r"expr.pt2: a shape expression is not plain arithmetic"):
        _load_export(evil, allow_pickle=True)
    assert loads == []  # torch.export.load never saw any of them
    shutil.copy(resnet_pt2, tmp_path / "plain.pt2")
    _load_export(tmp_path / "plain.pt2")
    assert len(loads) == 1


def test_exports_that_would_give_wrong_maps_are_refused(tmp_path):
    static = _export(tiny_resnet(), tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(ModelError, match=r"static.pt2: exported with a fixed batch size of 2; .*Dim\('batch'\)"):
        _load_export(static)
    training = _export(tiny_resnet().train(), tmp_path / "train.pt2")
    with pytest.raises(ModelError, match=r"train.pt2: exported in training mode .*call model.eval\(\)"):
        _load_export(training)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"junk.pt2: cannot read the exported program"):
        _load_export(tmp_path / "junk.pt2")
