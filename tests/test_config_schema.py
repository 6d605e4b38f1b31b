"""The config table (``reportgen.config.SECTIONS``) is the one declaration of every key: the reader applies it, the
dataclasses agree with it, ``reportgen config-schema`` prints it, docs/CONFIG.md is that output, and
``reportgen validate --explain`` shows where each resolved value came from."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import MINIMAL_CONFIG

from reportgen import config
from reportgen.cli import main
from reportgen.config import SECTIONS, Computed, load_config
from reportgen.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GOOD = MINIMAL_CONFIG + """\
cams:
  methods: [gradcam, smoothgrad]
  layers: [features.5]
  target: 7
  params:
    smoothgrad: {samples: 4}
"""
# the dataclass each section becomes, and its fields that no key sets directly (derived by a cross-key rule)
DATACLASSES = {
    "": (config.RunConfig, {"path", "model", "data", "run", "kernels", "feature_maps", "cams", "filters", "report",
                            "metrics", "figures", "lines"}),
    "model": (config.ModelConfig, {"preprocess"}),
    "model.preprocess": (config.PreprocessConfig, set()),
    "data": (config.DataConfig, set()),
    "run": (config.RunOptions, set()),
    "kernels": (config.KernelsConfig, set()),
    "feature_maps": (config.FeatureMapsConfig, set()),
    "cams": (config.CamsConfig, {"class_index", "params"}),
    "filters": (config.FiltersConfig, set()),
    "report": (config.ReportOptions, set()),
    "metrics": (config.MetricsConfig, set()),
    "figures": (config.FiguresConfig, {"grid"}),
    "figures.grid": (config.FiguresGridConfig, set()),
}


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _keys() -> list[tuple[str, config.Field]]:
    return [(f"{s.name}.{f.name}" if s.name else f.name, f) for s in SECTIONS for f in s.fields if f.form != "section"]


def test_docs_config_md_is_the_generated_schema(capsys):
    code, out, _ = _cli(capsys, "config-schema", "--format", "markdown")
    assert code == 0
    assert (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8") == out, (
        "docs/CONFIG.md is stale: run `reportgen config-schema --format markdown > docs/CONFIG.md`")


@pytest.mark.parametrize("section", sorted(DATACLASSES))
def test_the_table_and_the_dataclasses_name_the_same_fields_with_the_same_defaults(section):
    cls, derived = DATACLASSES[section]
    table = {f.name: f for f in next(s for s in SECTIONS if s.name == section).fields if f.form != "section"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(table) == set(fields) - derived
    for name, f in table.items():
        declared = fields[name]
        if declared.default is dataclasses.MISSING:  # the reader always sets it: required or computed
            assert f.required or isinstance(f.default, Computed), name
        else:
            assert declared.default == f.default, (section, name, declared.default, f.default)


def test_every_bound_and_choice_in_the_table_is_enforced(tmp_path):
    """Each key with a minimum, a maximum or choices refuses a value just outside, naming the key: the reader
    reads the table, no second copy of the bounds."""
    checked = 0
    for dotted, f in _keys():
        bad = [] if f.minimum is None else [f.minimum - 1 if f.kind is int else f.minimum / 2 if f.minimum else -0.5]
        bad += [] if f.maximum is None else [f.maximum + 1]
        bad += [] if f.choices is None else ["zzz"]
        for value in bad:
            data = yaml.safe_load(GOOD)
            *parents, key = dotted.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = value
            path = _write(tmp_path, yaml.safe_dump(data))
            with pytest.raises(ConfigError) as info:
                load_config(path)
            said = f": {dotted}[0]: unknown name" if f.form == "names" else f": {dotted}: expected"  # a list's item
            assert any(p.startswith(f"{path}:") and said in p for p in info.value.problems), (
                dotted, value, info.value.problems)
            checked += 1
    assert checked >= 30


def test_raw_maps_is_declared_read_and_checked(tmp_path):
    assert load_config(_write(tmp_path, GOOD)).report.raw_maps == "reduced"
    assert load_config(_write(tmp_path, GOOD + "report:\n  raw_maps: full\n")).report.raw_maps == "full"
    path = _write(tmp_path, GOOD + "report:\n  raw_maps: ful\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:20: report.raw_maps: expected one of reduced, full, got 'ful'; did you mean 'full'?"]


def test_schema_json_lists_every_key_with_type_default_bounds_and_help(capsys):
    code, out, _ = _cli(capsys, "config-schema", "--format", "json")
    assert code == 0
    data = json.loads(out)
    rows = {row["key"]: row for s in data["sections"] for row in s["keys"]}
    assert set(rows) == {dotted for dotted, _ in _keys()} | {"cams.params"}
    assert all(row["help"] and row["type"] for row in rows.values())
    assert rows["run.batch_size"] | {"help": ""} == {
        "key": "run.batch_size", "type": "integer", "required": False, "default": 8, "default_text": "8",
        "minimum": 1, "maximum": None, "choices": None, "allowed": ">= 1", "help": ""}
    assert rows["report.raw_maps"]["choices"] == ["reduced", "full"] and rows["report.raw_maps"]["default"] == "reduced"
    assert rows["report.raw_maps"]["help"].startswith("full also stores the signed per-channel (3, H, W) attribution")
    assert rows["run.output"]["default_text"] == "<config dir>/outputs/<config stem>"
    assert rows["run.cache_dir"]["default_text"] == "~/.cache/reportgen"
    assert rows["model.source"]["required"] and rows["filters.lr"]["allowed"] == "1e-06..10"
    assert [s["name"] for s in data["sections"]] == [s.name for s in SECTIONS]


def test_schema_text_groups_keys_by_section(capsys):
    code, out, _ = _cli(capsys, "config-schema")
    assert code == 0
    assert '  report.raw_maps = "reduced"  (string; reduced, full)\n      full also stores' in out
    assert "  run.output = <config dir>/outputs/<config stem>  (path to a folder)\n" in out
    starts = [out.index(f"\n{s.name}: ") for s in SECTIONS if s.name]
    assert starts == sorted(starts)
    for dotted, _ in _keys():
        assert f"\n  {dotted} = " in out


def test_default_output_and_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = GOOD.replace("  output: out\n  cache_dir: cache\n", "")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.run.output == (tmp_path / "outputs" / "c").resolve()
    assert cfg.run.cache_dir == (tmp_path / "home" / ".cache" / "reportgen").resolve()
    assert cfg.title == "reportgen: c"


def test_validate_explain_shows_each_value_and_where_it_came_from(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write(tmp_path, GOOD.replace("  cache_dir: cache\n", ""))
    code, out, err = _cli(capsys, "validate", str(path), "--explain")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}: ok") and lines[1].startswith("resolved values")
    values = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in lines[2:]}
    assert set(values) == {d for d, _ in _keys()} | {f"cams.params.smoothgrad.{p}" for p in
                                                     ("samples", "noise", "seed", "batch_size")}
    assert values["run.device"] == '"cpu"  # line 11'
    assert values["run.output"] == f'"{(tmp_path / "out").resolve()}"  # line 10'
    assert values["run.cache_dir"] == f'"{(tmp_path / "home" / ".cache" / "reportgen").resolve()}"  # default'
    assert values["run.batch_size"] == "8  # default"
    assert values["model.preprocess.size"] == "[32, 32]  # line 6"
    assert values["model.preprocess.mean"] == "null  # default: the model's (timm) or ImageNet's"
    assert values["cams.target"] == "7  # line 15"  # a class index, not the kind "class" it is stored as
    assert values["cams.params.smoothgrad.samples"] == "4  # line 17"
    assert values["cams.params.smoothgrad.noise"] == "0.15  # default"
    assert values["report.raw_maps"] == '"reduced"  # default'
    assert values["title"] == '"reportgen: c"  # default'


def test_explain_escapes_what_a_terminal_would_act_on(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD + 'title: "a\\e[31mred\\u202e"\n'))
    (line,) = [line for line in config.explain_config(cfg) if line.startswith("title")]
    assert "\x1b" not in line and "\u202e" not in line and "\\u001b[31mred\\u202e" in line


def test_text_given_instead_of_a_file_is_read_with_the_same_bounds(tmp_path):
    (tmp_path / "images").mkdir()
    cfg = load_config(tmp_path / "dict.yaml", text=GOOD)  # the Python API's dict configs come this way
    assert cfg.data.path == (tmp_path / "images").resolve() and cfg.lines["run.device"] == 12
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "dict.yaml", text=GOOD.replace("device: cpu", "device: gpu"))
    assert info.value.problems == [f"{tmp_path / 'dict.yaml'}:12: run.device: expected auto, cpu, cuda, cuda:N or "
                                   "mps, got 'gpu'"]
    with pytest.raises(ConfigError, match="over the limit of 1,000,000 bytes"):
        load_config(tmp_path / "dict.yaml", text=GOOD + "#" * 1_000_000)
