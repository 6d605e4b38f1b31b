"""docs/FORMAT.md is the contract of the output folder: every table row is checked against a real run's files.

The tables are parsed from the page itself, so a key, dtype, shape or file the page names and the run does not
write (or the other way round) fails here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re

import pytest
from conftest import REPO, make_images, write_config
from safetensors import safe_open

from reportgen.api import FORMAT_VERSION
from reportgen.config import load_config
from reportgen.images import discover
from reportgen.methods import get_method
from reportgen.names import file_part
from reportgen.runner import run

DOC = REPO / "docs" / "FORMAT.md"
TOP_K = 2  # cams.target: topk, so T = 2
FM_TOP_K = 4
METHODS = ["gradcam", "eigencam", "saliency"]  # layer-level (gradient engine, no gradients) and input-level
CAM_LAYERS = ["features.5", "features.2"]
FM_LAYERS = ["features.4"]


def _tables(text: str) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every Markdown table of ``text``: (header, rows as {column: cell without backticks})."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s\-|]+\|$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().replace("`", "") for c in lines[i].strip().strip("|").split(" | ")]
                rows.append(dict(zip(header, cells, strict=True)))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def _table(header: list[str], nth: int = 0) -> list[dict[str, str]]:
    matching = [rows for head, rows in _tables(DOC.read_text(encoding="utf-8")) if head == header]
    assert len(matching) > nth, f"docs/FORMAT.md has no table {header} number {nth + 1}"
    return matching[nth]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("format")
    make_images(tmp / "images")
    cfg = load_config(write_config(tmp, tmp / "images",
                                   feature_maps={"layers": FM_LAYERS, "top_k": FM_TOP_K},
                                   cams={"methods": METHODS, "layers": CAM_LAYERS, "target": "topk", "top_k": TOP_K}))
    run(cfg)
    return cfg


def _instances(pattern: str, cfg) -> list[tuple[str, dict[str, str]]]:
    """A documented key with its placeholders filled in every way the config asks for, with the values used."""
    layered = [m for m in cfg.cams.methods if get_method(m).needs_layer]
    on_input = [m for m in cfg.cams.methods if not get_method(m).needs_layer]
    if pattern.startswith("feature_maps/"):
        choices = {"layer": list(cfg.feature_maps.layers)}
    elif "<layer>" in pattern:
        choices = {"method": layered, "layer": list(cfg.cams.layers)}
    else:
        choices = {"method": on_input}
    names = [n for n in choices if f"<{n}>" in pattern]
    out = []
    for values in itertools.product(*(choices[n] for n in names)):
        bound = dict(zip(names, values, strict=True))
        key = pattern
        for n, v in bound.items():
            key = key.replace(f"<{n}>", v)
        out.append((key, bound))
    return out


def test_every_documented_maps_key_dtype_and_shape_is_what_a_run_writes(real_run):
    cfg = real_run
    rows = _table(["key", "dtype", "shape", "when", "what"])
    fixed = {"K": 10, "T": TOP_K, "k": FM_TOP_K, "H": 32, "W": 32}  # tiny_cnn: 10 classes, 32x32 input
    dtypes = {"float32": "F32", "int64": "I64"}
    for path in sorted((cfg.run.output / "maps").iterdir()):
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            expected: set[str] = set()
            resolution: dict[str, tuple[int, int]] = {}  # h, w of each layer: the same in every key of the layer
            for row in rows:
                symbols = [s for s in re.split(r"[(), ]+", row["shape"]) if s]
                for key, bound in _instances(row["key"], cfg):
                    expected.add(key)
                    assert key in keys, f"{path.name}: documented key {key!r} is missing"
                    tensor = f.get_slice(key)
                    assert tensor.get_dtype() == dtypes[row["dtype"]], f"{key}: dtype {tensor.get_dtype()}"
                    shape = tensor.get_shape()
                    assert len(shape) == len(symbols), f"{key}: shape {shape}, documented {row['shape']}"
                    for sym, size in zip(symbols, shape, strict=True):
                        if sym in fixed:
                            assert size == fixed[sym], f"{key}: {sym} = {size}, expected {fixed[sym]}"
                    if symbols[-2:] == ["h", "w"]:
                        assert resolution.setdefault(bound["layer"], tuple(shape[-2:])) == tuple(shape[-2:])
            assert keys == expected, f"{path.name}: undocumented keys {sorted(keys - expected)}"


def test_maps_metadata_is_as_documented(real_run):
    rows = _table(["key", "when", "what"])
    documented = {r["key"] for r in rows}
    required = {r["key"] for r in rows if "optional" not in r["when"]}
    manifest = json.loads((real_run.run.output / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["images"]:
        with safe_open(str(real_run.run.output / entry["maps_file"]), framework="numpy") as f:
            meta = f.metadata()
        assert required <= set(meta) <= documented, sorted(set(meta) ^ documented)
        assert meta["image"] == entry["path"] and meta["label"] == str(entry["label"])
        photo = real_run.data.path / entry["path"]
        assert meta["digest"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert int(meta.get("format", "1")) == FORMAT_VERSION  # what the writer writes, the reader knows


def test_manifest_and_image_entry_keys_are_as_documented(real_run):
    manifest = json.loads((real_run.run.output / "manifest.json").read_text(encoding="utf-8"))
    for nth, value in ((0, manifest), (1, manifest["images"][0])):
        rows = _table(["key", "type", "what"], nth)
        documented = {r["key"] for r in rows}
        required = {r["key"] for r in rows if "optional" not in r["what"]}
        assert required <= set(value) <= documented, sorted(set(value) ^ documented)
    assert manifest.get("format", 1) == FORMAT_VERSION
    assert re.fullmatch(r"[0-9a-f]{32}", manifest["run_id"])


def test_every_file_of_the_folder_is_documented_and_every_documented_file_is_there(real_run):
    cfg = real_run
    out = cfg.run.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    ids = [e["id"] for e in manifest["images"]]
    layered = [m for m in cfg.cams.methods if get_method(m).needs_layer]
    on_input = [m for m in cfg.cams.methods if not get_method(m).needs_layer]
    choices = {"<id>": ids, "<i>": [str(i) for i in range(TOP_K)]}
    expected = set()
    for cm in manifest["audit"]["class_maps"]:  # assets/audit/class-<by>-<method>-<layer>-<class>.png
        expected |= {c["image"] for c in cm["classes"]}
    for row in _table(["path", "what"]):
        pattern = row["path"]
        if pattern.startswith("assets/audit/"):
            continue
        if (pattern == "report.pdf" and not cfg.report.pdf
                or pattern == "report-standalone.html" and not cfg.report.self_contained):
            continue
        if pattern.startswith("assets/kernels/"):
            layers = cfg.kernels.layers
        elif pattern.startswith("assets/filters/"):
            layers = cfg.filters.layers
        elif "/fm-" in pattern:
            layers = cfg.feature_maps.layers
        else:
            layers = cfg.cams.layers
        local = {**choices, "<layer>": [file_part(la) for la in layers],
                 "<method>": layered if "<layer>" in pattern and "/cam-" in pattern else on_input}
        names = [n for n in local if n in pattern]
        for values in itertools.product(*(local[n] for n in names)):
            path = pattern
            for n, v in zip(names, values, strict=True):
                path = path.replace(n, v)
            expected.add(path)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected, (sorted(written - expected), sorted(expected - written))


def test_marker_is_as_documented(real_run):
    marker = json.loads((real_run.run.output / ".reportgen-run.json").read_text(encoding="utf-8"))
    assert set(marker) == {"tool", "version", "entries"} and marker["tool"] == "reportgen"
    assert marker["entries"] == ["assets", "audit", "images", "manifest.json", "maps", "report.html"]  # no PDF here


def test_image_ids_follow_the_documented_rule(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"`([^`]+\.JPG)` →\s+`([^`]+)`", text)
    assert example, "docs/FORMAT.md lost its id example"
    long_name = "a" * 70 + ".png"
    for rel in (example.group(1), "cat.png", "Cat.png", long_name):
        make_images(tmp_path / "tmp", 1, labelled=False)
        target = tmp_path / "images" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tmp" / "img0.png").replace(target)
    records, _ = discover(tmp_path / "images")
    ids = {r.rel: r.id for r in records}
    assert ids[example.group(1)] == example.group(2)
    # sorted path order: "Cat.png" < "cat.png", so the later one gets the suffix
    assert (ids["Cat.png"], ids["cat.png"]) == ("cat-png", "cat-png-2")
    digest = hashlib.sha256(long_name.encode()).hexdigest()[:8]
    assert ids[long_name] == "a" * 55 + "-" + digest and len(ids[long_name]) == 64
