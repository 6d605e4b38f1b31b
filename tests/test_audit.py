"""The audit stage: metadata and boxes files, bootstrap intervals, group and class numbers, localization, class-average
maps, gate conditions of a run (exit 3), provenance and ``reportgen rerun``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from reportgen.annotations import NO_VALUE, Box, read_boxes, read_metadata
from reportgen.audit import POINTING_TOLERANCE, _localize
from reportgen.cli import main
from reportgen.errors import DataError
from reportgen.modelcard import Preprocess
from reportgen.stats import mean_ci


def _pre(size=(32, 32), resize="squash"):
    return Preprocess(size=size, resize=resize, crop_pct=0.875, interpolation="bilinear", mean=(0.5,) * 3,
                      std=(0.25,) * 3)


# ------------------------------------------------------------------------------------------------ side files


def test_metadata_columns_values_and_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("\ufefffile,site,scanner\n./a/x.png,A,s1\nb\\y.png,,s2\n\n", encoding="utf-8")
    columns, values = read_metadata(p)
    assert columns == ["site", "scanner"]
    assert values == {"a/x.png": {"site": "A", "scanner": "s1"}, "b/y.png": {"site": NO_VALUE, "scanner": "s2"}}
    for text, said in [("name,site\nx,1\n", "needs a 'file' column"), ("file,site\nx,1\nx,2\n", ":3: 'x' is listed twice"),
                       ("file,site\nx,1,2\n", ":2: expected 2 values"), ("file\nx\n", "only a 'file' column"),
                       ("", "is empty"), ("file,site,site\n", "named twice")]:
        p.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=said.replace("(", r"\(")):
            read_metadata(p)
    p.write_bytes(b"file,site\nx,\xe9\n")
    with pytest.raises(DataError, match=r"m.csv:2: the metadata file is not UTF-8"):
        read_metadata(p)


def test_boxes_csv_and_json_forms(tmp_path):
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("file,x0,y0,x1,y1,label\na.png,1,2,11,12,dog\na.png,0,0,5,5,\n", encoding="utf-8")
    assert read_boxes(csv_path) == {"a.png": [Box(1, 2, 11, 12, "dog"), Box(0, 0, 5, 5, "")]}
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"a.png": [[1, 2, 11, 12]], "b.png": [0, 0, 4, 4]}), encoding="utf-8")
    assert read_boxes(js) == {"a.png": [Box(1, 2, 11, 12)], "b.png": [Box(0, 0, 4, 4)]}
    js.write_text(json.dumps([{"file": "c.png", "x0": 1, "y0": 1, "x1": 2, "y1": 3, "label": "x"}]), encoding="utf-8")
    assert read_boxes(js) == {"c.png": [Box(1, 1, 2, 3, "x")]}
    for text, said in [("file,x0,y0,x1\n", "missing y1"), ("file,x0,y0,x1,y1\na,5,0,1,4\n", r"b.csv:2:: expected x1 > x0"),
                       ("file,x0,y0,x1,y1\na,one,0,1,4\n", "x0: expected a number")]:
        csv_path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=said):
            read_boxes(csv_path)
    js.write_text("[1, 2", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_boxes(js)


# ------------------------------------------------------------------------------------------------ numbers


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(0.5, 0.1, 400)
    mean, ci, n = mean_ci(values, np.random.default_rng(1), 2000)
    assert n == 400 and mean == pytest.approx(values.mean())
    half = 1.96 * values.std(ddof=1) / np.sqrt(400)  # the normal interval it should approach
    assert ci[0] == pytest.approx(mean - half, abs=0.003) and ci[1] == pytest.approx(mean + half, abs=0.003)
    assert mean_ci(values, np.random.default_rng(1), 2000) == (mean, ci, n)
    assert mean_ci([None, float("nan")], np.random.default_rng(0), 10) == (None, None, 0)
    assert mean_ci([0.3], np.random.default_rng(0), 10) == (0.3, [0.3, 0.3], 1)


def test_localization_by_hand():
    m = np.zeros((8, 8), dtype=np.float32)
    m[1, 1] = 3.0  # peak in the top-left cell of an 8x8 layer map -> input pixels 4..8 of 32
    m[6, 6] = 1.0
    pre = _pre()
    # a box over the top-left quarter of a 64x64 image = input pixels 0..16: holds the peak and most of the mass
    hit, energy = _localize(m, [Box(0, 0, 32, 32)], (64, 64), pre)
    assert hit == 1.0 and 0.6 < energy < 0.9
    # a box far from the peak: no hit, little mass
    hit, energy = _localize(m, [Box(40, 40, 64, 64)], (64, 64), pre)
    assert hit == 0.0 and energy < 0.4
    # a box just within the pointing game's tolerance of the peak (input pixel ~6) counts
    x0 = (6 + POINTING_TOLERANCE - 2) * 2  # image pixels (the image is twice the input)
    assert _localize(m, [Box(x0, 0, 64, 16)], (64, 64), pre)[0] == 1.0


def test_localization_follows_the_crop():
    """With resize: crop the network sees the centre of the image: a box outside it holds none of the map."""
    m = np.ones((4, 4), dtype=np.float32)
    pre = _pre(resize="crop")
    _, energy = _localize(m, [Box(0, 0, 6, 100)], (100, 100), pre)  # crop_pct 0.875: the left 6.25 % is cut away
    assert energy == 0.0
    _, energy = _localize(m, [Box(0, 0, 50, 100)], (100, 100), pre)  # the left half of what is seen
    assert energy == pytest.approx(0.5, abs=0.02)
    _, energy = _localize(m, [Box(0, 0, 100, 100)], (100, 100), pre)
    assert energy == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ a run


@pytest.fixture
def audited(tmp_path):
    images = tmp_path / "images"
    make_images(images, 6)
    (tmp_path / "meta.csv").write_text("file,site\n0_class0/img0.png,A\n1_class1/img1.png,B\n0_class0/img2.png,A\n",
                                       encoding="utf-8")
    (tmp_path / "boxes.csv").write_text("file,x0,y0,x1,y1\n0_class0/img0.png,0,0,20,16\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text("""\
model:
  source: factory
  name: tinynets:tiny_cnn
  labels: none
  preprocess: {size: 32}
data:
  path: images
  metadata: meta.csv
  boxes: boxes.csv
run: {output: out, cache_dir: cache, device: cpu, batch_size: 4}
cams:
  methods: [gradcam, saliency]
  layers: [features.3]
report: {pdf: false}
metrics: {bootstrap: 50}
checks:
  - accuracy <= 1
  - images_skipped > 0
""", encoding="utf-8")
    return tmp_path, config


def test_groups_classes_localization_and_class_maps_in_the_manifest(audited, capsys):
    tmp_path, config = audited
    code = main(["run", str(config), "--quiet"])
    assert code == 3  # accuracy <= 1 holds: a gate condition describes failure
    err = capsys.readouterr().err
    assert "gate failed: accuracy <= 1" in err and "images_skipped" not in err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entries = {e["path"]: e for e in m["images"]}
    assert entries["0_class0/img0.png"]["groups"] == {"site": "A"}
    assert entries["1_class1/img3.png"]["groups"] == {"site": NO_VALUE}
    assert set(entries["0_class0/img0.png"]["localization"]) == {
        "pointing_game[gradcam]", "box_energy[gradcam]", "pointing_game[saliency]", "box_energy[saliency]"}
    assert "localization" not in entries["1_class1/img1.png"]
    audit = m["audit"]
    site = {r["value"]: r for r in audit["groups"][0]["rows"]}
    for value, paths in (("A", ["0_class0/img0.png", "0_class0/img2.png"]), ("B", ["1_class1/img1.png"])):
        want = np.mean([entries[p]["correct"] for p in paths])
        assert site[value]["images"] == len(paths) and site[value]["accuracy"]["mean"] == pytest.approx(want)
    per_class = {r["value"]: r for r in audit["classes"]}
    assert per_class["0_class0"]["images"] == 3
    # the class-average maps: the mean of the images' min-max normalized maps, on the input frame
    from safetensors.numpy import load_file

    arrays = load_file(tmp_path / "out" / "audit" / "class_average.safetensors")
    predicted = {e["predictions"][0]["class_index"] for e in m["images"]}
    assert {k for k in arrays if k.startswith("class/predicted/gradcam/")} == {
        f"class/predicted/gradcam/features.3/{c}" for c in predicted}
    maps = load_file(tmp_path / "out" / m["images"][0]["maps_file"])["cam/gradcam/features.3"][0]
    assert arrays["class/true/gradcam/features.3/0"].shape == (64, 64) and maps.shape != (64, 64)
    for cm in audit["class_maps"]:
        for c in cm["classes"]:
            assert (tmp_path / "out" / c["image"]).is_file()
    checks = {c["condition"]: c for c in m["checks"]}
    assert checks["accuracy <= 1"]["failed"] and not checks["images_skipped > 0"]["failed"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="audit"' in html and "Class-average maps" in html and "Localization against the boxes" in html


def test_a_bad_metadata_file_stops_the_run_before_the_model(audited, capsys):
    tmp_path, config = audited
    (tmp_path / "meta.csv").write_text("path,site\nx,1\n", encoding="utf-8")
    assert main(["run", str(config), "--quiet"]) == 2 or not (tmp_path / "out").exists()
    assert "meta.csv:1: the metadata file needs a 'file' column" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_condition_that_names_no_fact_fails_closed(audited, capsys):
    tmp_path, config = audited
    config.write_text(config.read_text().replace("  - images_skipped > 0", "  - group_accuracy[nowhere] < 0.5"))
    assert main(["run", str(config), "--quiet"]) == 3
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    bad = [c for c in m["checks"] if c["condition"].startswith("group_accuracy")][0]
    assert bad["failed"] and "known: site=(none), site=A, site=B" in bad["detail"]


def test_a_condition_is_checked_when_the_config_is_read(audited, capsys):
    tmp_path, config = audited
    config.write_text(config.read_text().replace("accuracy <= 1", "accuracy <<= 1"))
    assert main(["validate", str(config)]) == 2
    assert f"{config}:17: checks[0]:" in capsys.readouterr().err


def test_provenance_and_rerun_say_what_differs(audited, capsys):
    tmp_path, config = audited
    main(["run", str(config), "--quiet"])
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    prov = m["provenance"]
    assert prov["config"]["cams"]["methods"] == ["gradcam", "saliency"]
    assert prov["config"]["data"]["metadata"] == str(tmp_path / "meta.csv")
    assert prov["dataset"]["files"] == 6 and len(prov["dataset"]["list"]) == 6
    assert prov["versions"]["torch"] and prov["config_sha256"] and prov["weights"]["values_sha256"]
    capsys.readouterr()
    assert main(["rerun", str(tmp_path / "out"), "--quiet"]) == 3  # the same gates fail again
    out = capsys.readouterr().out
    assert "same inputs, same results" in out
    make_images(tmp_path / "more", 1)
    (tmp_path / "more" / "0_class0" / "img0.png").rename(tmp_path / "images" / "0_class0" / "new.png")
    assert main(["rerun", str(tmp_path / "out"), "--quiet", "--force"]) == 3
    out = capsys.readouterr().out
    assert "differs: data: 1 file(s) added: 0_class0/new.png" in out
    assert "result differs: 1 image(s) only in the rerun: 0_class0/new.png" in out


def test_a_run_folder_without_provenance_is_refused(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"reportgen_version": "0.1.0"}))
    assert main(["rerun", str(tmp_path / "old")]) == 2
    assert "records no config" in capsys.readouterr().err
    assert main(["rerun", str(tmp_path / "nowhere")]) == 2


def test_no_metrics_asked_means_no_metric_work(audited):
    tmp_path, config = audited
    from reportgen.api import run

    result = run(config)
    assert result.stats.metric_images == 0
    m = json.loads(Path(result.manifest).read_text())
    assert m["images"][0]["metrics"] == {} and m["audit"]["metrics"] == []


def test_predicted_and_true_targets():
    import torch

    from reportgen.methods.cam import resolve_targets

    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets, kinds = resolve_targets(logits, "predicted_and_true", labels=[0, 0, None])
    assert targets.tolist() == [[1, 0], [0, 0], [2, 2]]
    assert kinds == [["predicted", "true"], ["predicted", "true"], ["predicted", "predicted (no label)"]]


def test_a_misclassified_image_shows_its_labels_map_beside_the_predicted_one(audited):
    tmp_path, config = audited
    config.write_text(config.read_text().replace("  layers: [features.3]", "  layers: [features.3]\n"
                                                 "  target: predicted_and_true"))
    from reportgen.api import run

    m = json.loads(Path(run(config).manifest).read_text())
    for e in m["images"]:
        groups = [g for g in e["cams"] if g["layer"] == "features.3"]
        if e["correct"]:
            assert len(groups) == 1 and groups[0]["target_kind"] == "predicted"
        else:
            assert [g["target_index"] for g in groups] == [e["predictions"][0]["class_index"], int(e["label"][0])]
            assert groups[1]["true_class"] is True
    maps = load_maps(tmp_path / "out" / m["images"][0]["maps_file"])
    assert maps["cam/gradcam/features.3"].shape[0] == 2  # both columns are kept in the maps file


def load_maps(path):
    from safetensors.numpy import load_file

    return load_file(path)


def test_the_torch_free_tables_agree_with_the_metric_registry():
    """config.METRIC_NAMES and auditsummary.SCORE_INFO stay torch-free copies of what reportgen.metrics declares."""
    from reportgen.auditsummary import SCORE_INFO
    from reportgen.config import METRIC_NAMES
    from reportgen.metrics import METRICS

    assert set(METRIC_NAMES) == set(METRICS)
    for metric in METRICS.values():
        for score in metric.scores:
            if metric.name != "sanity":
                assert SCORE_INFO[score][1] == metric.higher_is_better, score
