"""The audit end to end, with nothing downloaded: two small nets trained here in seconds, one of which learned a
shortcut (a mark on every circle of its training set), audited on images where the mark also sits on some squares and
crosses. The audit must find it: the marked images rank first among the changes, the marked group's accuracy drop
is reported, a gate exits 3, and the shortcut net's class-average Grad-CAM of the circles sits on the mark while the
clean net's does not."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from reportgen.auditdemo import MARK_BOX, SIZE, make_scenario
from reportgen.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    make_scenario(root / "demo", audit_images=30, train_images=600)
    for name in ("clean", "shortcut"):  # the example configs, pointed at this folder, lighter (no PDF, no metrics)
        text = (REPO / "configs" / f"audit_{name}.yaml").read_text(encoding="utf-8")
        text = text.replace("../outputs/audit-demo", str(root / "demo")).replace("../outputs/", f"{root}/")
        text = text.replace("pdf: summary", "pdf: false").replace(
            "compute: [deletion, insertion, average_drop, increase, sanity]", "compute: [average_drop, increase]")
        text += "figures:\n  class_averages: [circle]\n  formats: [png, svg]\n  dpi: 100\n"
        (root / f"audit_{name}.yaml").write_text(text, encoding="utf-8")
    return root


def _marked(root: Path) -> set[str]:
    with open(root / "demo" / "metadata.csv", encoding="utf-8") as f:
        return {r["file"] for r in csv.DictReader(f) if r["marked"] == "yes"}


def _mark_share(run: Path, cls: int) -> float:
    """The share of the class-average Grad-CAM of true class ``cls`` that lies on the mark."""
    m = load_file(run / "audit" / "class_average.safetensors")[f"class/true/gradcam/features.6/{cls}"]
    h, w = m.shape
    x0, y0, x1, y1 = (round(v * s / SIZE) for v, s in zip(MARK_BOX, (w, h, w, h), strict=True))
    return float(m[y0:y1, x0:x1].sum() / m.sum())


def test_the_audit_finds_the_shortcut(scenario, capsys):
    root = scenario
    assert main(["run", str(root / "audit_clean.yaml"), "--quiet"]) == 0  # its gates pass
    code = main(["run", str(root / "audit_shortcut.yaml"), "--quiet"])  # compare_to: the clean run
    out, err = capsys.readouterr()
    assert code == 3 and "gate failed: group_accuracy[marked=yes] < 0.9" in err
    assert "gate failed: compare: group_accuracy_drop[marked=yes] > 0.1" in err

    # the comparison: the marked squares and crosses are the largest changes, and the group's drop is reported
    compare = json.loads((root / "audit-shortcut-compare" / "compare.json").read_text())
    marked_others = {p for p in _marked(root) if not p.startswith("0_")}
    assert len(marked_others) == 6
    flips = [c["path"] for c in compare["changes"] if c["flipped"]]
    assert set(flips[:len(marked_others)]) == marked_others, flips
    drop = compare["facts"]["group_accuracy_drop"]["marked=yes"]
    assert drop == pytest.approx(len(marked_others) / len(_marked(root)), abs=0.05)
    xml = (root / "audit-shortcut-compare" / "compare.xml").read_text()
    assert 'failures="2"' in xml

    # the shortcut net's circles are seen through the mark; the clean net's are not
    share_shortcut, share_clean = _mark_share(root / "audit-shortcut", 0), _mark_share(root / "audit-clean", 0)
    area = ((MARK_BOX[2] - MARK_BOX[0]) * (MARK_BOX[3] - MARK_BOX[1])) / SIZE**2
    assert share_shortcut > 10 * area and share_clean < 3 * area, (share_shortcut, share_clean, area)

    # the run's own report carries the groups and the class-average maps
    manifest = json.loads((root / "audit-shortcut" / "manifest.json").read_text())
    groups = {r["value"]: r for r in manifest["audit"]["groups"][0]["rows"]}
    assert groups["yes"]["accuracy"]["mean"] < groups["no"]["accuracy"]["mean"]
    assert manifest["images"][0]["metrics"]  # the trust scores asked for, per image

    # the circles' class-average map as a paper figure: vector text and a caption
    svg = (root / "audit-shortcut" / "figures" / "class-average-circle.svg").read_text(encoding="utf-8")
    assert "<text" in svg and "circle" in svg
    assert "10 images of class circle" in (root / "audit-shortcut" / "figures" / "class-average-circle.txt").read_text()

    # and a CI gate on the comparison from the command line
    assert main(["compare", str(root / "audit-clean"), str(root / "audit-shortcut"), "--output",
                 str(root / "gate"), "--no-pdf", "--fail-on", "flips_to_wrong > 3"]) == 3
    assert main(["compare", str(root / "audit-clean"), str(root / "audit-clean"), "--output",
                 str(root / "same"), "--no-pdf", "--fail-on", "flips > 0"]) == 0
    shutil.rmtree(root / "same")


def test_the_first_scheduled_run_has_nothing_to_compare_with(scenario, tmp_path, capsys):
    text = (scenario / "audit_shortcut.yaml").read_text(encoding="utf-8")
    text = text.replace(f"output: {scenario}/audit-shortcut", f"output: {tmp_path}/sched")
    text = text.replace(f"compare_to: {scenario}/audit-clean", f"compare_to: {tmp_path}/sched")
    config = tmp_path / "sched.yaml"
    config.write_text(text, encoding="utf-8")
    (tmp_path / "sched").mkdir()
    assert main(["run", str(config), "--quiet"]) == 3  # its own gates fail; no comparison yet
    assert not (tmp_path / "sched-compare").exists()
    # the next run compares with the one it replaces: the same weights and images, so nothing changed; the
    # previous report a killed run had kept aside is swept like a staging folder (its writer is gone)
    from reportgen.atomic import writer_tag

    killed = tmp_path / f".partial-{writer_tag(2**22 + 12345)}-previous-sched"
    (killed / "maps").mkdir(parents=True)
    config.write_text(text.replace("  - flips > 5\n", "  - flips > 0\n"), encoding="utf-8")
    assert main(["run", str(config), "--quiet", "--force"]) == 3
    compare = json.loads((tmp_path / "sched-compare" / "compare.json").read_text())
    assert compare["facts"]["flips"] == 0 and compare["images"]["common"] == 30
    assert not [p for p in tmp_path.iterdir() if "previous-" in p.name]
    assert np.isfinite(compare["facts"]["accuracy_drop"]) and compare["facts"]["accuracy_drop"] == 0
