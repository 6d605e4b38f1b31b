"""The overview (reportgen.overview) and the summary PDF's choice of images (reportgen.pdfpick), on entries whose
numbers are counted by hand, and maps files written here with known repeats and constant maps."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from reportgen.overview import overview
from reportgen.pdfpick import pick_pdf_images


def _entry(i: int, label: str | None, predicted: str, prob: float, cams: list | None = None, **extra) -> dict:
    correct = None if label is None else label == predicted
    return {"id": f"img-{i:03d}", "path": f"{label or 'top'}/img{i}.png", "label": label, "correct": correct,
            "predictions": [{"rank": 1, "class_index": 0, "class_name": predicted, "prob": prob}],
            "cams": cams or [], "maps_file": f"maps/img-{i:03d}.safetensors", **extra}


def _run_of_known_mistakes() -> list[dict]:
    """cat: 10 images, 9 right, 1 called dog. dog: 10 images, all right. moped: 10 images, 0 right (7 called
    bicycle, 3 called dog). 2 unlabelled. Image i has top-1 probability 0.5 + i/1000. By hand: judged 30, correct
    19, mistakes 11 (images 9 and 20..29)."""
    images, i = [], 0
    for label, outcomes in (("cat", ["cat"] * 9 + ["dog"]), ("dog", ["dog"] * 10),
                            ("moped", ["bicycle"] * 7 + ["dog"] * 3)):
        for predicted in outcomes:
            images.append(_entry(i, label, predicted, 0.5 + i / 1000))
            i += 1
    images.append(_entry(i, None, "cat", 0.9))
    images.append(_entry(i + 1, None, "dog", 0.2))
    return images


def test_accuracy_per_class_and_confusions_match_a_hand_count():
    ov = overview(_run_of_known_mistakes(), skipped=[])
    assert (ov["judged"], ov["correct"], ov["mistakes"], ov["unlabelled"]) == (30, 19, 11, 2)
    assert abs(ov["accuracy"] - 19 / 30) < 1e-12
    rows = {r["name"]: r for r in ov["per_class"]}
    assert {k: (r["total"], r["correct"]) for k, r in rows.items()} == {"cat": (10, 9), "dog": (10, 10),
                                                                         "moped": (10, 0)}
    assert (rows["moped"]["taken_for"], rows["moped"]["taken_for_count"]) == ("bicycle", 7)
    assert rows["dog"]["taken_for"] is None
    assert [(c["true"], c["predicted"], c["count"]) for c in ov["confusions"]] == [
        ("moped", "bicycle", 7), ("moped", "dog", 3), ("cat", "dog", 1)]
    cm = ov["confusion"]
    assert cm["rows"] == ["cat", "dog", "moped"]
    assert cm["cols"][:2] == ["cat", "dog"] and set(cm["cols"]) == {"cat", "dog", "bicycle"}  # only classes that occur
    cell = {(r, c): cm["cells"][i][j] for i, r in enumerate(cm["rows"]) for j, c in enumerate(cm["cols"])}
    assert cell == {("cat", "cat"): 9, ("cat", "dog"): 1, ("cat", "bicycle"): 0, ("dog", "cat"): 0,
                    ("dog", "dog"): 10, ("dog", "bicycle"): 0, ("moped", "cat"): 0, ("moped", "dog"): 3,
                    ("moped", "bicycle"): 7}
    assert cm["diagonal"][0][0] and cm["diagonal"][1][1] and not cm["diagonal"][2][2]
    # the most confident mistake: image 29 (p 0.529, a moped called dog); the least: image 9 (p 0.509)
    assert ov["confident_mistakes"][0]["path"] == "moped/img29.png" and ov["confident_mistakes"][0]["prob"] == 0.529
    assert [m["path"] for m in ov["unsure_mistakes"][:2]] == ["cat/img9.png", "moped/img20.png"]


def test_a_class_far_below_the_rest_is_named_and_the_others_are_not():
    ov = overview(_run_of_known_mistakes(), skipped=[{"path": "x.jpg", "reason": "broken"}])
    class_alerts = [a for a in ov["alerts"] if a["kind"] == "class"]
    assert [a["subject"] for a in class_alerts] == ["moped"]
    assert "0/10" in class_alerts[0]["text"] and "95%" in class_alerts[0]["text"]  # 19/20 over the others
    assert "7 of them called “bicycle”" in class_alerts[0]["text"]
    assert [a["kind"] for a in ov["alerts"]].count("skipped") == 1


def test_a_small_gap_or_a_small_class_is_no_alert():
    images, i = [], 0
    for label, right, total in (("a", 8, 10), ("b", 7, 10), ("c", 0, 3)):  # c: 0/3, but only 3 images
        for n in range(total):
            images.append(_entry(i, label, label if n < right else "z", 0.6))
            i += 1
    assert not [a for a in overview(images, [])["alerts"] if a["kind"] == "class"]


def test_confusion_matrix_is_capped_and_says_what_was_cut():
    """50 classes of 10 images: c00..c29 all right; c30..c49 each with 3 images called "z". The 20 rows are the
    classes with mistakes, the columns those same classes in the same order (the diagonal), the rest in "other"."""
    images = []
    for c in range(50):
        for n in range(10):
            images.append(_entry(len(images), f"c{c:02d}", "z" if c >= 30 and n < 3 else f"c{c:02d}", 0.7))
    cm = overview(images, [])["confusion"]
    wanted = [f"c{c:02d}" for c in range(30, 50)]
    assert cm["rows"] == [*wanted, "other (30 classes)"] and cm["rows_cut"] == 30 and cm["rows_total"] == 50
    assert cm["cols"] == [*wanted, "other (31 classes)"] and cm["cols_cut"] == 31  # c00..c29 and z
    assert all(cm["cells"][i][i] == 7 and cm["kind"][i][i] == "right" for i in range(20))
    assert [row[20] for row in cm["cells"][:20]] == [3] * 20  # the three "z" of each, in the other column
    assert cm["cells"][20][20] == 300 and cm["kind"][20][20] == "mixed"  # c00..c29, all right, summed
    assert sum(map(sum, cm["cells"])) == 500 and cm["row_totals"] == [10] * 20 + [300]


def _write_maps(root, name: str, maps: dict[str, np.ndarray]) -> None:
    (root / "maps").mkdir(exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in maps.items()}, str(root / "maps" / f"{name}.safetensors"))


def test_identical_and_constant_maps_are_alerts(tmp_path):
    """Grad-CAM and XGrad-CAM differ by an affine map (the same after min–max scaling) at layer L on every image;
    LayerCAM differs; EigenCAM is all zero at L on 2 of 3 images; saliency on the input is never constant."""
    rng = np.random.default_rng(0)
    titles = {"gradcam": "Grad-CAM", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
              "saliency": "Saliency"}
    group = {"layer": "L", "panels": [{"method": "gradcam", "methods": ["gradcam", "xgradcam"]},  # drawn once
                                      {"method": "layercam"}, {"method": "eigencam"}]}
    images = []
    for i in range(3):
        a = rng.random((1, 7, 7))
        _write_maps(tmp_path, f"img-{i:03d}", {
            "cam/gradcam/L": a, "cam/xgradcam/L": 3 * a + 2, "cam/layercam/L": rng.random((1, 7, 7)),
            "cam/eigencam/L": np.zeros((1, 7, 7)) if i < 2 else rng.random((1, 7, 7)),
            "cam/saliency": rng.random((1, 32, 32))})
        images.append(_entry(i, "cat", "cat", 0.9, cams=[group, {"layer": "", "panels": [{"method": "saliency"}]}]))
    ov = overview(images, [], maps_root=tmp_path, method_titles=titles)
    same = [a for a in ov["alerts"] if a["kind"] == "same"]
    assert len(same) == 1 and same[0]["subject"] == "L"
    assert same[0]["text"].startswith("Grad-CAM, XGrad-CAM give the same map at layer L") and "3 of 3" in same[0]["text"]
    constant = [a for a in ov["alerts"] if a["kind"] == "constant"]
    assert [a["subject"] for a in constant] == ["eigencam L"]
    assert "all zero on 2 of 3 images" in constant[0]["text"]
    assert ov["maps_checked"]
    assert not [a for a in overview(images, [])["alerts"] if a["kind"] in ("same", "constant")]  # no maps_root


def test_pdf_summary_takes_from_each_list_in_turn():
    images = _run_of_known_mistakes()
    picked = pick_pdf_images(images, ["misclassified", "least_confident", "sample"], 5)
    ids = [p["id"] for p in picked["images"]]
    reasons = {p["id"]: p["reason"] for p in picked["images"]}
    assert len(ids) == 5 and len(set(ids)) == 5
    assert ids == sorted(ids)  # the report's order
    # misclassified: most confident first (img29, img28); least confident: p .20 (unlabelled img31), then img0
    assert reasons["img-029"].startswith("misclassified") and reasons["img-028"].startswith("misclassified")
    assert reasons["img-031"].startswith("least confident") and reasons["img-000"].startswith("least confident")
    assert sum(r == "random sample" for r in reasons.values()) == 1
    again = pick_pdf_images(images, ["misclassified", "least_confident", "sample"], 5)
    assert again == picked  # the sample is seeded
    assert pick_pdf_images(images, ["sample"], 100)["images"].__len__() == len(images)


def test_pdf_lists_that_need_missing_data_are_left_out_and_used_when_present():
    images = _run_of_known_mistakes()
    picked = pick_pdf_images(images, ["lowest_trust", "largest_change"], 5)
    assert picked["images"] == [] and len(picked["left_out"]) == 2
    for n, e in enumerate(images):
        e["metrics"] = {"deletion_auc[gradcam]": 0.5}  # metrics alone say nothing of which way is trustworthy
        e["trust"], e["trust_what"] = float(len(images) - n), "insertion − deletion AUC of Grad-CAM"
    picked = pick_pdf_images(images, ["lowest_trust"], 3)
    last = [e["id"] for e in images][::-1][:3]
    assert [p["id"] for p in picked["images"]] == sorted(last)  # the least trusted three, in report order
    assert picked["images"][0]["reason"].startswith("lowest trust: insertion − deletion AUC of Grad-CAM")


def test_confusion_rows_name_the_labels_class_so_the_diagonal_is_right():
    """Folders named ``0_circle`` hold the class ``circle``: the matrix pairs them by class, not by folder text."""
    images = []
    for label, cls, outcomes in (("0_circle", "circle", ["circle"] * 4), ("1_square", "square", ["square", "circle"])):
        for predicted in outcomes:
            e = _entry(len(images), label, predicted, 0.9, label_class=cls)
            e["correct"] = predicted == cls
            images.append(e)
    cm = overview(images, [])["confusion"]
    assert cm["rows"] == ["circle", "square"] and cm["cols"][:2] == ["circle", "square"]
    assert cm["cells"] == [[4, 0], [1, 1]] and cm["kind"][0][0] == cm["kind"][1][1] == "right"
