"""The Python API (reportgen.run, reportgen.open_run): the CLI's run, its errors, and a finished run's maps."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, make_images, write_config
from safetensors.numpy import load_file

import reportgen
from reportgen.cli import main
from reportgen.errors import ConfigError, DataError, UsageError
from reportgen.tensorfile import write_tensors

CAMS = {"methods": ["gradcam", "saliency"], "layers": ["features.5", "features.2"], "target": "topk", "top_k": 2}


def test_import_reportgen_imports_neither_torch_nor_numpy():
    code = ("import reportgen, sys; assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
            "print(reportgen.run.__module__, reportgen.open_run.__name__, reportgen.Run.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["reportgen.api", "open_run", "Run"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    make_images(tmp / "images")
    (tmp / "images" / "broken.png").write_bytes(b"not a png")
    path = write_config(tmp, tmp / "images", cams=CAMS)
    result = reportgen.run(path)
    return path, result


def test_run_returns_the_cli_run_and_open_run_reads_it(finished, tmp_path):
    path, result = finished
    assert result.html == result.output / "report.html" and result.stats.images_ok == 4
    assert main(["run", str(path), "--output", str(tmp_path / "cli"), "--quiet"]) == 0
    run = reportgen.open_run(result.output)
    cli_run = reportgen.open_run(tmp_path / "cli")
    assert run.images == cli_run.images
    for image in run.images:  # the same run: byte for byte the same maps
        assert (result.output / image.maps_file).read_bytes() == (tmp_path / "cli" / image.maps_file).read_bytes()


def test_images_are_frozen_records_of_the_manifest(finished):
    run = reportgen.open_run(finished[1].output)
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert run.manifest == manifest
    assert [i.id for i in run.images] == [e["id"] for e in manifest["images"]]
    first = run.images[0]
    assert (first.file, first.label, first.maps_file) == ("0_class0/img0.png", "0_class0", f"maps/{first.id}.safetensors")
    assert [p.class_index for p in first.predictions] == [p["class_index"] for p in manifest["images"][0]["predictions"]]
    assert 0 < first.predictions[0].prob <= 1 and first.correct == (first.predictions[0].class_index == 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.label = "x"
    assert [(s.path, s.reason.startswith("cannot decode")) for s in run.skipped] == [("broken.png", True)]
    assert run.methods == ("feature_maps", "gradcam", "saliency")  # config order: feature_maps come first
    assert run.layers == ("features.5", "features.2", "features.4")  # report order: CAM layers, then feature maps


def test_maps_by_id_file_or_record_are_the_stored_arrays(finished):
    run = reportgen.open_run(finished[1].output)
    image = run.images[1]
    stored = load_file(str(run.folder / image.maps_file))
    for key in (image, image.id, image.file, Path(image.file)):
        cams, targets = run.maps(key, "gradcam", layer="features.2")
        assert cams.dtype == np.float32 and np.array_equal(cams, stored["cam/gradcam/features.2"])
        assert targets == tuple(p.class_index for p in image.predictions[:2])  # topk 2
    sal, targets = run.maps(image, "saliency")
    assert sal.shape == (2, 32, 32) and np.array_equal(sal, stored["cam/saliency"])
    fm, channels = run.maps(image, "feature_maps")  # one layer: no need to name it
    assert fm.shape == (4, 16, 16) and channels == tuple(int(c) for c in stored["feature_maps/features.4/channels"])


@pytest.mark.parametrize(("args", "message"), [
    (("img0.png", "gradcam", "features.5"), r"no image 'img0.png'.*did you mean '0_class0/img0.png'"),
    ((0, "saliency"), r"expected an id, a file or an ImageInfo, got int"),
    (("0-class0-img0-png", "gradcma"), r"no maps of method 'gradcma'.*has: feature_maps, gradcam, saliency; "
                                       r"did you mean 'gradcam'"),
    (("0-class0-img0-png", "gradcam", "features.4"), r"no gradcam maps at layer 'features.4'.*features.5, features.2"),
    (("0-class0-img0-png", "gradcam"), r"gradcam was computed at 2 layers \(features.5, features.2\): pass layer="),
    (("0-class0-img0-png", "saliency", "features.5"), r"saliency explains the input pixels: it has no layer"),
])
def test_maps_errors_say_what_the_run_has(finished, args, message):
    run = reportgen.open_run(finished[1].output)
    with pytest.raises(UsageError, match=message):
        run.maps(*args)


def test_a_record_of_another_run_is_refused(finished):
    run = reportgen.open_run(finished[1].output)
    other = dataclasses.replace(run.images[0], file="elsewhere.png")
    with pytest.raises(UsageError, match="is not an image of the run"):
        run.maps(other, "saliency")


def test_open_run_refuses_what_is_not_a_finished_run_or_is_too_new(finished, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "something else"}')
    for folder, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "file", "is not a folder"),
                            (tmp_path / "empty", "not a finished reportgen run: it has no manifest.json"),
                            (tmp_path / "other", "not a reportgen manifest")):
        with pytest.raises(UsageError, match=message):
            reportgen.open_run(folder)
    copy = tmp_path / "copy"
    main(["run", str(finished[0]), "--output", str(copy), "--quiet"])
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(UsageError, match=r"format version 2 by reportgen 0\.1\.0; this reportgen .* reads versions 1 "
                                         r"to 1: upgrade"):
        reportgen.open_run(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))  # no "format": version 1
    run = reportgen.open_run(copy)
    image = run.images[0]
    arrays = load_file(str(copy / image.maps_file))
    write_tensors(copy / image.maps_file, arrays, {"image": image.file, "format": "2"})
    with pytest.raises(UsageError, match=r"maps/.*\.safetensors: written in format version 2"):
        run.maps(image, "saliency")
    (copy / run.images[1].maps_file).write_bytes(b"\0" * 16)
    with pytest.raises(DataError, match="cannot read the maps file"):
        run.maps(run.images[1], "saliency")


def test_overrides_are_the_cli_flags(finished, tmp_path):
    path, result = finished
    with pytest.raises(UsageError, match="holds a finished run; pass --force"):
        reportgen.run(path)
    with pytest.raises(UsageError, match="data: folder not found"):
        reportgen.run(path, data=tmp_path / "nowhere")
    make_images(tmp_path / "two", 2, labelled=False)
    again = reportgen.run(path, output=tmp_path / "out2", cache_dir=tmp_path / "cache2", data=tmp_path / "two",
                          device="cpu")
    assert again.output == tmp_path / "out2" and (tmp_path / "cache2").is_dir()
    assert [i.file for i in reportgen.open_run(again.output).images] == ["img0.png", "img1.png"]


def _config_dict(tmp_path: Path) -> dict:
    return yaml.safe_load(write_config(tmp_path, tmp_path / "images", cams=CAMS).read_text())


def test_a_dict_config_is_validated_like_a_file_with_its_name_for_the_file(tmp_path):
    make_images(tmp_path / "images", 2)
    bad = {**_config_dict(tmp_path), "cams": {**CAMS, "methods": ["gradcma"], "layers": ["features.9"]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError) as from_file:
        reportgen.run(path)
    with pytest.raises(ConfigError) as from_dict:
        reportgen.run(bad)
    expected = [re.sub(rf"^{re.escape(str(path))}:\d+: ", "<dict>: ", p) for p in from_file.value.problems]
    assert from_dict.value.problems == expected and "cams.methods[0]" in expected[0]
    with pytest.raises(ConfigError) as named:
        reportgen.run(bad, name="audit.yaml")
    assert named.value.problems[0].startswith("audit.yaml: cams.methods[0]: ")
    with pytest.raises(ConfigError, match=r"<dict>: run.batch_size: expected text, a number, .* got object"):
        reportgen.run({**bad, "run": {"batch_size": object()}})
    with pytest.raises(UsageError, match="only a dict config takes a name"):
        reportgen.run(path, name="x")


def test_a_dict_config_runs_with_paths_relative_to_the_working_folder(tmp_path, monkeypatch):
    make_images(tmp_path / "images", 2)
    monkeypatch.chdir(tmp_path)
    config = _config_dict(tmp_path)
    config["data"] = {"path": Path("images")}  # a Path, relative to the working folder
    config["run"] = {**config["run"], "output": "out", "cache_dir": "cache"}
    result = reportgen.run(config, name="audit.yaml")
    assert result.output == tmp_path / "out" and result.stats.images_ok == 2
    manifest = json.loads(result.manifest.read_text())
    assert manifest["config_path"] == "audit.yaml" and manifest["title"] == "tiny test run"


def test_the_examples_in_docs_api_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ``yaml`` block (its first line names its file) is written, every ``python`` block run, in order."""
    import matplotlib
    import timm
    import torch
    from safetensors.torch import save_file

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # the example's "fine-tuned" ResNet-18: seeded random weights
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    (tmp_path / "weights").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights" / "resnet18.safetensors")
    make_images(tmp_path / "images")
    doc = (REPO / "docs" / "API.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", doc, re.S):
        Path(block.splitlines()[0].lstrip("# ").strip()).write_text(block)
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/API.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "('feature_maps', 'gradcam', 'saliency') ('layer4', 'layer1')" in printed
    assert re.search(r"\(2, 7, 7\) float32 \(\d+, \d+\)", printed)
    assert "<dict>: cams.methods[0]: " in printed
    assert (tmp_path / "outputs" / "audit-dict" / "manifest.json").is_file()
    assert (tmp_path / "gradcam-replot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
