"""Image discovery and decoding: labels from folders, EXIF orientation, every mode to RGB, bad files skipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reportgen.batches import iter_batches, to_tensor
from reportgen.images import crop_box, decode, discover
from reportgen.modelcard import Preprocess

PRE = Preprocess(size=(16, 16), resize="squash", crop_pct=0.875, interpolation="bilinear",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_discover_labels_from_class_folders_and_flat_files(tmp_path):
    for rel in ["cat/a.png", "cat/sub/b.jpg", "dog/c.png", "d.png", ".hidden/e.png", "notes.txt"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("x")
        else:
            Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    records, skipped = discover(tmp_path)
    assert [(r.rel, r.label) for r in records] == [
        ("cat/a.png", "cat"), ("cat/sub/b.jpg", "cat"), ("d.png", None), ("dog/c.png", "dog")]
    assert skipped == []
    assert len({r.id for r in records}) == 4 and all(r.id.replace("-", "").isalnum() for r in records)
    assert discover(tmp_path, limit=2)[0][-1].rel == "cat/sub/b.jpg"


def test_ids_stay_unique_when_slugs_collide(tmp_path):
    for name in ["a b.png", "a-b.png", "a_b.png"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    ids = [r.id for r in discover(tmp_path)[0]]
    assert len(set(ids)) == 3


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = 255  # left half white in the stored pixels
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = decode(tmp_path / "r.jpg")
    assert out.size == (10, 20)  # width and height swapped
    top = np.asarray(out)[:5].mean()
    bottom = np.asarray(out)[-5:].mean()
    assert top > 200 and bottom < 50  # the stored left half is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK", "1"])
def test_any_mode_decodes_to_rgb(tmp_path, mode):
    if mode == "I;16":
        img = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    elif mode == "RGBA":
        img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red → white
    else:
        img = Image.new("RGB", (8, 8), (200, 100, 50)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    out = decode(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "RGBA":
        assert np.asarray(out).min() == 255
    if mode == "I;16":
        arr = np.asarray(out)[..., 0]
        assert arr.min() == 0 and arr.max() == 255  # full 16-bit range mapped to 8 bits


def test_bad_files_are_skipped_with_reason_and_the_rest_go_on(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    records, _ = discover(tmp_path)
    batches = list(iter_batches(records, PRE, batch_size=8, display_size=32))
    (batch,) = batches
    ok = [records[i].rel for i in batch.indices]
    failed = {records[i].rel: reason for i, reason in batch.failures}
    assert ok == ["good.png"]
    assert set(failed) == {"broken.jpg", "truncated.png"}
    assert all(reason.startswith("cannot decode image") for reason in failed.values())
    assert batch.tensor.shape == (1, 3, 16, 16)


def test_tensor_normalisation_and_display():
    img = Image.new("RGB", (40, 20), (255, 0, 127))
    t = to_tensor(img, PRE)
    assert t.shape == (3, 16, 16)
    assert np.allclose(t[:, 0, 0].numpy(), [1.0, -1.0, 127 / 255 * 2 - 1], atol=1e-6)


def test_crop_box_matches_timm_centre_crop():
    pre = Preprocess((224, 224), "crop", 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    left, top, right, bottom = crop_box(512, 256, pre)
    # short side 256 → 256 px, crop 224/256 of it: 224 px of the original, centred
    assert (round(left), round(top), round(right), round(bottom)) == (144, 16, 368, 240)
    assert crop_box(512, 256, PRE) == (0.0, 0.0, 512.0, 256.0)


def test_batches_with_worker_processes(tmp_path):
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    records, _ = discover(tmp_path)
    batches = list(iter_batches(records, PRE, batch_size=2, workers=2, display_size=32))
    assert [b.indices for b in batches] == [[0, 1], [2, 3], [4]]
