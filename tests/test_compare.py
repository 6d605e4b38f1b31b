"""reportgen compare: two real tiny runs compared; flips, map similarity, groups, metrics, gates, files, CLI."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import load_file
from scipy.stats import spearmanr

import reportgen
from reportgen.cli import main
from reportgen.compare import compare_runs
from reportgen.errors import UsageError

N_IMAGES = 8


def colour_images(root: Path, n: int) -> None:
    """``n`` seeded photos in class folders, each tinted its own colour, so a tiny net's predictions differ between
    them (the first ``k`` are the same whatever ``n``)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"{i % 2}_class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.uniform(0, 1, size=3)
        noise = rng.uniform(0, 1, size=(32, 40, 1))
        arr = 255 * (0.3 * colour + 0.7 * noise * colour[None, None, :] * rng.uniform(0.2, 1.0))
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"img{i}.png")


def _config(root: Path, model: str, images: str = "images", size: int = 32, layer: str = "features.5") -> dict:
    return {"model": {"source": "factory", "name": model, "labels": "none", "preprocess": {"size": size}},
            "data": {"path": str(root / images)},
            "run": {"cache_dir": str(root / "cache"), "device": "cpu", "batch_size": 8},
            "cams": {"methods": ["gradcam", "saliency"], "layers": [layer], "target": "predicted"},
            "report": {"pdf": False}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """a: tiny_cnn; b: the same net with a moved classifier; c: another architecture at 24 px; d: tiny_cnn over
    another image set (img1 missing, img8 and img9 added), with one more layer and one more method."""
    root = tmp_path_factory.mktemp("compare")
    colour_images(root / "images", N_IMAGES)
    colour_images(root / "images_d", N_IMAGES + 2)  # the same seeded photos, two more
    (root / "images_d" / "1_class1" / "img1.png").unlink()
    out = {}
    for name, cfg in (("a", _config(root, "tinynets:tiny_cnn")), ("b", _config(root, "comparenets:shifted_cnn")),
                      ("c", _config(root, "comparenets:other_cnn", size=24, layer="block.0")),
                      ("d", {**_config(root, "tinynets:tiny_cnn", images="images_d"),
                             "cams": {"methods": ["gradcam", "saliency", "layercam"],
                                      "layers": ["features.5", "features.2"], "target": "predicted"}})):
        out[name] = reportgen.run(cfg, name=name, output=root / "runs" / name).output
    out["root"] = root
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max())
    return e / e.sum()


def _hand_flips(a: Path, b: Path) -> list[tuple[str, float]]:
    """(path, |ΔP|) of every flipped image, largest first, from the maps files' logits alone."""
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    by_b = {e["path"]: e for e in mb["images"]}
    flips = []
    for ea in ma["images"]:
        pa = _softmax(load_file(str(a / ea["maps_file"]))["logits"])
        pb = _softmax(load_file(str(b / by_b[ea["path"]]["maps_file"]))["logits"])
        ta, tb = int(pa.argmax()), int(pb.argmax())
        if ta != tb:
            flips.append((ea["path"], max(abs(pb[ta] - pa[ta]), abs(pb[tb] - pa[tb]))))
    return sorted(flips, key=lambda f: (-f[1], f[0]))


def test_flips_are_ranked_by_the_change_in_probability(runs, tmp_path):
    result = compare_runs(runs["a"], runs["b"], tmp_path / "ab", pdf=False)
    expected = _hand_flips(runs["a"], runs["b"])
    assert 0 < len(expected) < N_IMAGES  # the fixture's nets differ on some images, not all
    flips = result.comparison.flips
    assert [f["path"] for f in flips] == [p for p, _ in expected]
    assert [f["delta_p"] for f in flips] == pytest.approx([d for _, d in expected], abs=1e-9)
    assert result.comparison.facts["flips"] == len(expected)
    data = json.loads((tmp_path / "ab" / "compare.json").read_text())
    assert [f["path"] for f in data["flips"]] == [p for p, _ in expected]
    assert data["images"] == {"common": N_IMAGES, "only_a": [], "only_b": []}


def test_a_run_compared_with_itself_is_identical(runs, tmp_path):
    result = compare_runs(runs["a"], runs["a"], tmp_path / "aa", pdf=False,
                          fail_on=["flips > 0", "map_similarity_min[gradcam] < 0.999", "map_ssim_min[saliency] < 0.999"])
    c = result.comparison
    assert c.flips == [] and c.facts["accuracy_drop"] == 0
    assert len(c.maps["rows"]) == 2 * N_IMAGES
    for row in c.maps["rows"]:
        assert row["spearman"] == pytest.approx(1.0, abs=1e-9) and row["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert c.facts["map_similarity"] == pytest.approx({"gradcam": 1.0, "saliency": 1.0})
    assert result.exit_code == 0 and not result.failed


def test_failed_gate_exits_3_and_writes_junit(runs, tmp_path, capsys):
    out = tmp_path / "gate"
    code = main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(out), "--no-pdf",
                 "--fail-on", "flips > 0", "--fail-on", "accuracy_drop > 0.99", "--fail-on", "map_similarity[gradcam] < 2"])
    assert code == 3
    err = capsys.readouterr().err
    assert "gate failed: flips > 0" in err and "gate failed: map_similarity[gradcam] < 2" in err
    assert "accuracy_drop" not in err
    for name in ("compare.json", "compare.xml", "compare.html"):  # everything is still written
        assert (out / name).is_file()
    assert not (out / "compare.pdf").exists()
    root = ET.parse(out / "compare.xml").getroot()
    (suite,) = root.iter("testsuite")
    assert suite.get("name") == "reportgen compare" and suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert list(cases) == ["flips > 0", "accuracy_drop > 0.99", "map_similarity[gradcam] < 2"]
    assert cases["accuracy_drop > 0.99"] is None
    assert "flips = " in cases["flips > 0"].get("message")
    data = json.loads((out / "compare.json").read_text())
    assert data["verdict"] == {"passed": False, "failed": ["flips > 0", "map_similarity[gradcam] < 2"], "checks": 3}
    html = (out / "compare.html").read_text()
    assert data["run_a"]["folder"] not in html and data["run_b"]["folder"] not in html  # names only, not the machine's
    assert html.index("Failed: 2 of 3") < html.index('id="accuracy"') < html.index('id="flips"') < html.index('id="maps"')
    assert len(data["figures"]) == N_IMAGES  # the top 8 changed maps, one per image
    for fig in data["figures"]:
        assert (out / fig["image"]).is_file() and fig["image"] in html
    for flip in data["flips"]:  # the flipped photos travel with the comparison
        thumb = data["thumbs"][flip["path"]]["image"]
        assert (out / thumb).is_file() and f'src="{thumb}"' in html


def test_passing_gates_exit_0_and_no_condition_is_one_passing_testcase(runs, tmp_path):
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(tmp_path / "p"), "--no-pdf",
                 "--fail-on", "images_only_a > 0"]) == 0
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(tmp_path / "n"), "--no-pdf"]) == 0
    cases = list(ET.parse(tmp_path / "n" / "compare.xml").getroot().iter("testcase"))
    assert [c.get("name") for c in cases] == ["comparison written"] and cases[0].find("failure") is None


@pytest.mark.parametrize(("args", "message"), [
    (["--fail-on", "flips >"], "--fail-on\\[0\\]: 'flips >': expected a number after '>'"),
    (["--fail-on", "flops > 1"], "unknown fact 'flops'.*did you mean 'flips'"),
])
def test_bad_conditions_are_usage_errors_and_write_nothing(runs, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(out), "--no-pdf", *args]) == 2
    assert not out.exists()
    assert re.search(message, capsys.readouterr().err)


def test_folders_that_are_not_finished_runs_are_refused(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), str(runs["b"]), "--output", str(tmp_path / "x")]) == 2
    assert f"{tmp_path / 'empty'} is not a finished reportgen run" in capsys.readouterr().err
    newer = tmp_path / "newer"
    shutil.copytree(runs["b"], newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(UsageError, match="format version 99"):
        compare_runs(runs["a"], newer, tmp_path / "y", pdf=False)


def test_output_is_never_a_run_or_a_foreign_folder(runs, tmp_path):
    with pytest.raises(UsageError, match="is RUN_B"):
        compare_runs(runs["a"], runs["b"], runs["b"], force=True, pdf=False)
    with pytest.raises(UsageError, match="lies inside RUN_A"):
        compare_runs(runs["a"], runs["b"], runs["a"] / "cmp", pdf=False)
    other_run = tmp_path / "other_run"
    shutil.copytree(runs["d"], other_run)
    with pytest.raises(UsageError, match="holds a reportgen run, not a comparison"):
        compare_runs(runs["a"], runs["b"], other_run, force=True, pdf=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a previous comparison"):
        compare_runs(runs["a"], runs["b"], mine, force=True, pdf=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "cmp"
    compare_runs(runs["a"], runs["b"], out, pdf=False)
    with pytest.raises(UsageError, match="pass --force"):
        compare_runs(runs["a"], runs["b"], out, pdf=False)
    compare_runs(runs["a"], runs["b"], out, force=True, pdf=False)
    assert json.loads((out / "compare.json").read_text())["run_b"]["folder"] == str(runs["b"])


def test_default_output_is_beside_run_b(runs):
    result = compare_runs(runs["a"], runs["d"], pdf=False)
    try:
        assert result.output == runs["d"].parent / "compare-a-vs-d"
    finally:
        shutil.rmtree(result.output)


def test_different_image_sets_compare_on_the_intersection(runs, tmp_path):
    c = compare_runs(runs["a"], runs["d"], tmp_path / "ad", pdf=False).comparison
    assert c.images == {"common": N_IMAGES - 1, "only_a": ["1_class1/img1.png"],
                        "only_b": ["0_class0/img8.png", "1_class1/img9.png"]}
    assert (c.facts["images_only_a"], c.facts["images_only_b"], c.facts["images_common"]) == (1, 2, N_IMAGES - 1)
    assert c.flips == [] and c.accuracy["overall"]["n"] == N_IMAGES - 1  # the same model: nothing changed
    assert all(r["spearman"] == pytest.approx(1.0) for r in c.maps["rows"])
    assert [(p["method"], p["layer_a"], p["n"]) for p in c.maps["pairs"]] == [("gradcam", "features.5", N_IMAGES - 1),
                                                                               ("saliency", "", N_IMAGES - 1)]
    assert [(n["method"], n["layer"], n["run"]) for n in c.maps["not_compared"]] == [
        ("gradcam", "features.2", "B"), ("layercam", "features.5, features.2", "B")]
    html = (tmp_path / "ad" / "compare.html").read_text()
    assert "1_class1/img9.png" in html and "Only in A" in html


def test_two_architectures_compare_at_input_resolution(runs, tmp_path):
    c = compare_runs(runs["a"], runs["c"], tmp_path / "ac", pdf=False).comparison
    assert c.maps["compared_at"] == [32, 32]  # 32 px and 24 px inputs: the larger
    assert [(p["method"], p["layer_a"], p["layer_b"]) for p in c.maps["pairs"]] == [
        ("gradcam", "features.5", "block.0"), ("saliency", "", "")]
    rows = [r for r in c.maps["rows"] if r["method"] == "gradcam"]
    checked = 0
    for row in rows:
        a = load_file(str(runs["a"] / f"maps/{row['id_a']}.safetensors"))["cam/gradcam/features.5"][0]
        b = load_file(str(runs["c"] / f"maps/{row['id_a']}.safetensors"))["cam/gradcam/block.0"][0]
        assert a.shape == (16, 16) and b.shape == (12, 12)  # compared at 32 x 32 after bilinear upsampling
        up = [F.interpolate(torch.from_numpy(m)[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
              .numpy().ravel() for m in (a, b)]
        if np.ptp(up[0]) == 0 or np.ptp(up[1]) == 0:  # a constant map (all zero Grad-CAM) has no ranking
            assert row["spearman"] is None
            continue
        assert row["spearman"] == pytest.approx(spearmanr(*up).statistic, abs=1e-6)
        checked += 1
    assert checked >= 3
    assert c.maps["pairs"][0]["undefined"] == len(rows) - checked


def test_groups_and_metrics_of_the_manifests(runs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs["a"], a)
    shutil.copytree(runs["b"], b)
    correct = {}
    for folder, scale in ((a, 1.0), (b, 3.0)):
        manifest = json.loads((folder / "manifest.json").read_text())
        for i, entry in enumerate(manifest["images"]):
            entry["groups"] = {"mark": "marked" if i % 2 else "clean", "size": "big" if i < 3 else "small"}
            entry["correct"] = bool(i % 3 == 0) if folder == a else bool(i % 2 == 0)
            entry["metrics"] = {"deletion_auc[gradcam]": scale * i / 10, "only_here": 1.0} if folder == a else {
                "deletion_auc[gradcam]": scale * i / 10}
            correct.setdefault(entry["path"], []).append(entry["correct"])
        (folder / "manifest.json").write_text(json.dumps(manifest))
    c = compare_runs(a, b, tmp_path / "ab", fail_on=["group_accuracy_drop[marked] > 0.2"], pdf=False).comparison
    marked = [v for i, v in enumerate(correct.values()) if i % 2]
    acc_a, acc_b = np.mean([v[0] for v in marked]), np.mean([v[1] for v in marked])  # 1/4 (i = 3) and 0/4 by hand
    assert (acc_a, acc_b) == (0.25, 0.0)
    assert c.facts["group_accuracy"]["mark=marked"] == acc_b
    assert c.facts["group_accuracy_drop"]["mark=marked"] == pytest.approx(acc_a - acc_b)
    assert c.facts["group_accuracy_drop"]["size=big"] == pytest.approx(1 / 3 - 2 / 3)  # i < 3: {0} and {0, 2}
    assert c.facts["accuracy_drop"] == pytest.approx(3 / 8 - 4 / 8)
    # deletion_auc[gradcam]: mean i/10 over 8 images = 0.35 in A, 1.05 in B; "only_here" is in A alone
    assert c.metrics == [{"key": "deletion_auc[gradcam]", "n": 8, "a": pytest.approx(0.35), "b": pytest.approx(1.05),
                          "delta": pytest.approx(0.7)}]
    assert c.facts["deletion_auc_delta"] == {"gradcam": pytest.approx(0.7)}
    assert json.loads((tmp_path / "ab" / "compare.json").read_text())["verdict"]["failed"] == [
        "group_accuracy_drop[marked] > 0.2"]


def test_pdf_is_printed(runs, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    result = compare_runs(runs["a"], runs["b"], tmp_path / "pdf", fail_on=["flips > 0"])
    text = "".join(page.extract_text() for page in pypdf.PdfReader(result.pdf).pages)
    assert "Failed: 1 of 1 gate condition" in text and "Prediction flips" in text
