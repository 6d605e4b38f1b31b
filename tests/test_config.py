"""Config validation: every problem at once, one line each, naming file, line and dotted key; exit code 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import MINIMAL_CONFIG

from reportgen.cli import main
from reportgen.config import load_config
from reportgen.errors import ConfigError

GOOD = MINIMAL_CONFIG + """\
feature_maps:
  layers: [features.4]
cams:
  methods: [gradcam]
  layers: [features.5]
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_good_config_loads_with_paths_relative_to_the_file(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.data.path == (tmp_path / "images").resolve()
    assert cfg.run.output == (tmp_path / "out").resolve()
    assert cfg.cams.methods == ("gradcam",) and cfg.cams.target == "predicted"
    assert cfg.model.preprocess.size == (32, 32)


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = _write(tmp_path, GOOD.replace("  labels: none", "  labls: none"))
    assert _problems(path) == [f"{path}:4: model.labls: unknown key; did you mean 'labels'?"]


def test_wrong_type(tmp_path):
    path = _write(tmp_path, GOOD.replace("  device: cpu", "  device: cpu\n  batch_size: eight"))
    assert _problems(path) == [f"{path}:13: run.batch_size: expected an integer, got string 'eight'"]


def test_missing_folder_and_file(tmp_path):
    path = _write(tmp_path, GOOD.replace("path: images", "path: nowhere").replace(
        "  labels: none", "  labels: none\n  weights: missing.pt"))
    problems = _problems(path)
    assert problems == [
        f"{path}:5: model.weights: file not found: {(tmp_path / 'missing.pt').resolve()}",
        f"{path}:9: data.path: folder not found: {(tmp_path / 'nowhere').resolve()}",
    ]


def test_unknown_method_suggests(tmp_path):
    path = _write(tmp_path, GOOD.replace("[gradcam]", "[gradcam, gradcampp, gradkam]"))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:16: cams.methods[2]: unknown name 'gradkam'; expected one of gradcam, ")
    assert problem.endswith("did you mean 'gradcam'?")


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace("  labels: none", "  labls: none").replace("  device: cpu", "  device: gpu").replace(
        "[gradcam]", "[nope]")
    problems = _problems(_write(tmp_path, text))
    assert len(problems) == 3
    assert [p.split(": ")[1] for p in problems] == ["model.labls", "run.device", "cams.methods[0]"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path, GOOD.replace("  device: cpu", "  device: [cpu"))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:13: YAML syntax error")


def test_missing_required_sections(tmp_path):
    path = _write(tmp_path, "title: x\n")
    problems = _problems(path)
    assert f"{path}:1: model: required section is missing" in problems
    assert f"{path}:1: data: required section is missing" in problems


def test_target_forms(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD + "  target: 285\n"))
    assert (cfg.cams.target, cfg.cams.class_index) == ("class", 285)
    cfg = load_config(_write(tmp_path, GOOD + "  target: topk\n  top_k: 3\n"))
    assert (cfg.cams.target, cfg.cams.top_k) == ("topk", 3)
    path = _write(tmp_path, GOOD + "  target: predictd\n")
    assert _problems(path) == [
        f"{path}:18: cams.target: expected predicted, true, predicted_and_true, topk or a class index, got 'predictd'; did you mean 'predicted'?"
    ]


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_validate_unknown_layer_offers_close_matches(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("layers: [features.5]", "layers: [featurs.5]"))
    code, out, err = _cli(capsys, "validate", str(path))
    assert code == 2
    assert err.strip() == f"error: {path}:17: cams.layers[0]: no layer named 'featurs.5'; did you mean 'features.5' or 'features.6' or 'features.4'?"
    assert "Traceback" not in err


def test_cli_kernel_layer_must_be_a_conv(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "kernels:\n  layers: [features.1]\n")
    code, _, err = _cli(capsys, "validate", str(path))
    assert code == 2
    assert err.strip() == f"error: {path}:19: kernels.layers[0]: layer 'features.1' is a ReLU, expected a Conv2d"


def test_cli_run_with_bad_config_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("  labels: none", "  labls: none"))
    code, out, err = _cli(capsys, "run", str(path))
    assert code == 2
    assert err.count("\n") == 1 and "model.labls: unknown key" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_cli_validate_ok(tmp_path, capsys):
    code, out, _ = _cli(capsys, "validate", str(_write(tmp_path, GOOD)))
    assert code == 0 and "ok" in out


def test_missing_config_file(tmp_path, capsys):
    code, _, err = _cli(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file not found" in err


def test_data_override_replaces_a_missing_folder(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("path: images", "path: nowhere"))
    cfg = load_config(path, data_dir=tmp_path / "images")
    assert cfg.data.path == (tmp_path / "images").resolve()
    code, _, err = _cli(capsys, "run", str(path), "--data", str(tmp_path / "missing"))
    assert code == 2 and f"--data: folder not found: {(tmp_path / 'missing').resolve()}" in err


def test_method_params_are_validated_against_the_registry(tmp_path):
    text = GOOD.replace("methods: [gradcam]", "methods: [gradcam, smoothgrad, scorecam]") + (
        "  params:\n    smoothgrad: {samples: 0, noize: 0.1}\n    scorecam: {bf16: yes}\n    fullgrad: {}\n")
    path = _write(tmp_path, text)
    problems = _problems(path)
    assert sorted(problems) == sorted([  # (YAML 1.1 reads "yes" as true, so scorecam.bf16 is fine)
        f"{path}:19: cams.params.smoothgrad.noize: unknown key; did you mean 'noise'?",
        f"{path}:19: cams.params.smoothgrad.samples: expected a value >= 1, got 0",
        f"{path}:21: cams.params.fullgrad: fullgrad takes no parameters",
    ])
    cfg = load_config(_write(tmp_path, GOOD.replace("methods: [gradcam]", "methods: [gradcam, smoothgrad]")))
    assert cfg.cams.params == {"smoothgrad": {"samples": 25, "noise": 0.15, "seed": 0, "batch_size": 64}}


def test_input_level_methods_need_no_layers(tmp_path):
    text = GOOD.replace("  methods: [gradcam]\n  layers: [features.5]\n", "  methods: [saliency, fullgrad]\n")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.cams.methods == ("saliency", "fullgrad") and cfg.cams.layers == ()
    text = GOOD.replace("  methods: [gradcam]\n  layers: [features.5]\n", "  methods: [saliency, gradcam]\n")
    path = _write(tmp_path, text)
    assert _problems(path) == [f"{path}:15: cams.layers: required for gradcam: name at least one layer"]


def test_nan_and_infinity_are_refused(tmp_path):
    path = _write(tmp_path, GOOD + "report:\n  alpha: .nan\n")
    assert _problems(path) == [f"{path}:19: report.alpha: expected a finite number, got nan"]
