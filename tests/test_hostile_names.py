"""File names no one chose with care: 250 characters, bytes that are not UTF-8, a FIFO named ``*.jpg``.

Each test is a real run of the CLI, in process, on the tiny CNN, and reads back what a user reads: the manifest,
the raw maps, the HTML (parsed) and, where a name reaches it, the PDF's bookmarks.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, write_config
from PIL import Image
from safetensors import safe_open

from reportgen.cli import main
from reportgen.names import file_part, readable

LONG = "l" * 246 + ".png"  # 250 bytes: the file system takes it, a name derived from it did not
WIDE = "\U0001d49c" * 62 + ".png"  # 62 four-byte characters: 252 bytes
BAD = os.fsdecode(b"bad\xff\xfe.png")  # not UTF-8: Python gives the two bytes as lone surrogates
BAD_SHOWN = "bad\\xff\\xfe.png"


def _photo(path: Path, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")


class _Text(HTMLParser):
    """Text of the report by element class (image titles, skipped-file cells), and every id and src."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.by_class: dict[str, list[str]] = {}
        self.ids: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids += [a["id"]] if "id" in a else []
        self.srcs += [a["src"]] if tag == "img" else []
        self.stack.append(a.get("class") or "")
        if tag in ("img", "meta", "br", "link"):
            self.stack.pop()

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for cls in self.stack:
            if cls:
                self.by_class.setdefault(cls, []).append(data)


def _parse(html: Path) -> _Text:
    parser = _Text()
    parser.feed(html.read_text(encoding="utf-8"))  # strict: the whole file is UTF-8
    return parser


def _outline_titles(pdf: Path) -> list[str]:
    from pypdf import PdfReader

    def walk(items):
        for item in items:
            if isinstance(item, list):
                yield from walk(item)
            else:
                yield item.title

    return list(walk(PdfReader(str(pdf)).outline))


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _run(tmp_path: Path, data: Path, *extra: str, **overrides) -> int:
    return main(["run", str(write_config(tmp_path, data, **overrides)), "--quiet", *extra])


def _components(root: Path) -> list[bytes]:
    return [os.fsencode(p.name) for p in root.rglob("*")]


# ---------------------------------------------------------------------------------------------- item 3: long names


def test_long_file_names_get_short_readable_asset_names_and_every_image_is_in_the_report(tmp_path):
    data = tmp_path / "images"
    (data / ("c" * 200)).mkdir(parents=True)  # a long class folder as well: its name is the label
    _photo(data / LONG, 1)
    _photo(data / ("l" * 246 + ".jpg"), 2)  # shares the first 246 characters with LONG: ids must stay apart
    _photo(data / WIDE, 3)
    _photo(data / ("c" * 200) / LONG, 4)
    _photo(data / "plain.png", 5)
    assert _run(tmp_path, data, "--output", str(tmp_path / "out"), report={"pdf": True, "image_size": 96}) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["skipped"] == []
    titles = _outline_titles(out / "report.pdf")
    assert any(LONG in t for t in titles) and any(WIDE in t for t in titles), titles
    images = {i["path"]: i for i in manifest["images"]}
    assert set(images) == {LONG, "l" * 246 + ".jpg", WIDE, f"{'c' * 200}/{LONG}", "plain.png"}
    assert images["plain.png"]["id"] == "plain-png"  # short names keep the ids they always had
    ids = [i["id"] for i in manifest["images"]]
    assert len(set(ids)) == len(ids) and all(len(i) <= 70 and i.isascii() for i in ids)
    assert images[LONG]["id"].startswith("l" * 40)  # readable: its start, then a hash
    assert images[f"{'c' * 200}/{LONG}"]["label"] == "c" * 200
    # every file and folder the run wrote, in the report and in the cache, has a name far under 255 bytes
    assert max(len(n) for n in _components(out)) <= 100
    assert max(len(n) for n in _components(tmp_path / "cache")) <= 100
    for entry in manifest["images"]:
        with safe_open(str(out / entry["maps_file"]), "np") as f:
            assert f.metadata()["image"] == entry["path"]
    page = _parse(out / "report.html")
    assert all((out / src).is_file() for src in page.srcs)
    assert LONG in "".join(t for p in (out / "images").glob("*.html") for t in _parse(p).by_class["image-title"])
    # a rerun into another folder links the kept figures under the same short names
    assert _run(tmp_path, data, "--output", str(tmp_path / "again")) == 0
    again = json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8"))
    assert again["stats"]["forward_passes"] == 0 and again["images"] == manifest["images"]


class _LongLayerCNN(torch.nn.Module):
    """The tiny CNN's layers under one submodule with a 300-character name (any string is allowed)."""

    NAME = "stage_" + "\u00e9" * 294  # 600 bytes in UTF-8

    def __init__(self):
        super().__init__()
        from tinynets import tiny_cnn

        inner = tiny_cnn()
        self.add_module(self.NAME, inner.features)
        self.pool, self.fc = inner.pool, inner.fc

    def forward(self, x):
        return self.fc(self.pool(getattr(self, self.NAME)(x)).flatten(1))


def long_layer_cnn():
    return _LongLayerCNN().eval()


def test_a_layer_with_a_600_byte_name_gets_bounded_asset_names(tmp_path, image_dir):
    layer = f"{_LongLayerCNN.NAME}.5"
    model = {"source": "factory", "name": "test_hostile_names:long_layer_cnn", "labels": "none",
             "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    code = _run(tmp_path, image_dir, model=model, kernels={"layers": [layer], "max_kernels": 4},
                feature_maps={"layers": [layer], "top_k": 2},
                cams={"methods": ["gradcam"], "layers": [layer], "target": "predicted"})
    assert code == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["skipped"] == [] and len(manifest["images"]) == 4
    assert manifest["kernels"][0]["layer"] == layer
    assert max(len(n) for n in _components(out)) <= 100
    kernel_file = Path(manifest["kernels"][0]["image"]).name
    assert kernel_file.startswith("stage_") and (out / manifest["kernels"][0]["image"]).is_file()


def test_file_part_is_bounded_in_bytes_and_keeps_long_names_apart():
    assert file_part("layer4.1.conv2") == "layer4.1.conv2"
    a, b = file_part("x" * 300 + "a"), file_part("x" * 300 + "b")
    assert a != b and a.startswith("x" * 40) and len(a.encode()) <= 64
    wide = file_part("\U0001d49c" * 100)  # 400 bytes of 4-byte characters
    assert wide.isascii() and len(wide) <= 64
    assert not file_part("." * 300).startswith(".") and "/" not in file_part("../" * 100)


# -------------------------------------------------------------------------- item 3: one image's files cannot be written


def _fail_writes_of(monkeypatch, marker: str, err: int) -> None:
    """Make writing any figure of the image whose id contains ``marker`` fail with ``err`` (drawn in this process)."""
    import reportgen.drawing as drawing

    real = drawing.save_jpeg

    def save_jpeg(img, path, **kw):
        if marker in str(path):
            raise OSError(err, os.strerror(err), str(path))
        return real(img, path, **kw)

    monkeypatch.setattr(drawing, "save_jpeg", save_jpeg)


def test_one_image_that_cannot_be_written_is_skipped_with_its_reason(tmp_path, image_dir, monkeypatch):
    _fail_writes_of(monkeypatch, "img1-png", errno.ENAMETOOLONG)
    assert _run(tmp_path, image_dir) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [i["path"] for i in manifest["images"]] == ["0_class0/img0.png", "0_class0/img2.png", "1_class1/img3.png"]
    assert manifest["skipped"] == [{"path": "1_class1/img1.png", "reason": "cannot write its figures: File name too "
                                    "long (assets/images/1-class1-img1-png/thumb.jpg)"}]
    assert manifest["run"]["images_skipped"] == 1 and manifest["run"]["images_ok"] == 3
    assert not (out / "assets" / "images" / "1-class1-img1-png").exists()
    assert not (out / "maps" / "1-class1-img1-png.safetensors").exists()
    assert "1_class1/img1.png" in "".join(_parse(out / "report.html").by_class["path"])


def test_a_full_disk_while_drawing_still_ends_the_run(tmp_path, image_dir, monkeypatch, capsys):
    _fail_writes_of(monkeypatch, "img1-png", errno.ENOSPC)
    assert _run(tmp_path, image_dir) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_drawing_workers_skip_an_image_they_cannot_write(tmp_path):
    from reportgen.config import ReportOptions
    from reportgen.drawing import DrawContext
    from reportgen.drawpool import Drawer
    from reportgen.images import discover
    from reportgen.results import PREDICTIONS, ImageResult

    data = tmp_path / "images"
    make_images(data, 3, labelled=False)
    records, _ = discover(data)
    root = tmp_path / "report"
    (root / "assets" / "images").mkdir(parents=True)
    (root / "assets" / "images" / records[1].id).write_bytes(b"")  # a file where its folder must go: ENOTDIR
    drawn = []
    drawer = Drawer(DrawContext(root, ["a", "b", "c"], ReportOptions(), [], [], []), workers=1,
                    on_drawn=lambda i, e: drawn.append(i))
    found = {PREDICTIONS: ({"logits": np.array([0.1, 0.5, 0.2], dtype=np.float32)}, {})}
    for rec in records:
        drawer.submit(ImageResult(rec, found, np.zeros((8, 8, 3), np.uint8), (0, 0, 8, 8), None))
    entries = drawer.finish()
    assert sorted(entries) == drawn == [0, 2]
    assert [(s.rel, s.reason.split(":")[0]) for s in drawer.skipped] == [("img1.png", "cannot write its figures")]


# ------------------------------------------------------------------------------------------ item 4: not UTF-8


def test_names_that_are_not_utf8_are_shown_readably_everywhere_and_the_real_file_is_read(tmp_path):
    data = tmp_path / os.fsdecode(b"images\xff")  # the data folder's own name too
    make_images(data, 2, labelled=False)
    _photo(data / BAD, 7)
    cls = data / os.fsdecode(b"285_cat\xe9")  # a Latin-1 class folder
    cls.mkdir()
    _photo(cls / "x.png", 8)
    (data / os.fsdecode(b"junk\xff.jpg")).write_bytes(b"not an image")  # the decoder's message quotes the path
    (tmp_path / "elsewhere").mkdir()  # YAML cannot hold those bytes: the folder is given on the command line
    assert _run(tmp_path, tmp_path / "elsewhere", "--data", str(data), report={"pdf": True, "image_size": 96}) == 0
    out = tmp_path / "out"
    text = (out / "manifest.json").read_bytes().decode("utf-8")  # strict
    manifest = json.loads(text)
    for text in _strings(manifest):
        text.encode("utf-8")  # raises on a lone surrogate, which strict readers refuse (an empty string is fine)
    paths = [i["path"] for i in manifest["images"]]
    assert paths == ["285_cat\\xe9/x.png", BAD_SHOWN, "img0.png", "img1.png"]
    bad = manifest["images"][1]
    assert bad["id"] == "bad-xff-xfe-png"  # readable, and apart from a file named bad--.png
    assert (out / bad["thumb"]).is_file()  # the real file was opened and drawn
    assert manifest["images"][0]["label"] == "285_cat\\xe9" and manifest["images"][0]["correct"] is not None
    assert [s["path"] for s in manifest["skipped"]] == ["junk\\xff.jpg"]
    assert manifest["skipped"][0]["reason"].startswith("cannot decode image")
    assert manifest["dataset"]["classes"] == [{"name": "285_cat\\xe9", "count": 1}]
    assert manifest["dataset"]["root"] == "images\\xff"  # its name: no absolute path in what is shared
    with safe_open(str(out / bad["maps_file"]), "np") as f:
        assert f.metadata()["image"] == BAD_SHOWN
    page = _parse(out / "report.html")
    assert BAD_SHOWN in "".join(t for p in (out / "images").glob("*.html") for t in _parse(p).by_class["image-title"])
    assert "junk\\xff.jpg" in "".join(page.by_class["path"])
    assert "images\\xff" in "".join(page.by_class["wrap"])  # the dataset's folder, by its name
    assert all((out / src).is_file() for src in page.srcs)
    titles = _outline_titles(out / "report.pdf")
    assert any(BAD_SHOWN in t for t in titles), titles
    # the rerun (its decode failure remembered in the cache, with the reason's name) gives the same report
    assert _run(tmp_path, tmp_path / "elsewhere", "--data", str(data), "--output", str(tmp_path / "again")) == 0
    again = json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8"))
    assert again["skipped"] == manifest["skipped"] and again["images"] == manifest["images"]


def test_safetensors_names_and_metadata_take_any_string(tmp_path):
    from reportgen.tensorfile import write_tensors

    write_tensors(tmp_path / "m.safetensors", {f"cam/{BAD}": np.ones(2, np.float32)}, {"image": BAD, BAD: "x"})
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.metadata() == {"image": BAD_SHOWN, BAD_SHOWN: "x"}
        assert list(f.keys()) == [f"cam/{BAD_SHOWN}"]


def test_readable_escapes_only_what_cannot_be_written():
    assert readable("caf\u00e9 \U0001d49c.png") == "caf\u00e9 \U0001d49c.png"
    assert readable(BAD) == BAD_SHOWN
    assert readable("\ud800x") == "\\ud800x"
    assert readable(BAD).encode("utf-8")


# ----------------------------------------------------------------------------------- item 5: not a regular file


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if the run blocks, as opening a FIFO for reading does."""

    def ring(signum, frame):
        raise TimeoutError("the run blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_or_socket_named_like_an_image_is_skipped_without_being_opened(tmp_path, image_dir, alarm):
    os.mkfifo(image_dir / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(image_dir / "sock.png"))
    try:
        assert stat.S_ISSOCK((image_dir / "sock.png").stat().st_mode)
        assert _run(tmp_path, image_dir) == 0
    finally:
        sock.close()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["skipped"] == [{"path": "pipe.jpg", "reason": "not a regular file (named pipe)"},
                                   {"path": "sock.png", "reason": "not a regular file (socket)"}]
    assert len(manifest["images"]) == 4 and manifest["run"]["images_total"] == 6
    html = tmp_path / "out" / "report.html"
    assert "pipe.jpg" in "".join(_parse(html).by_class["path"])
    assert "not a regular file (named pipe)" in html.read_text(encoding="utf-8")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_named_like_an_image_is_skipped_without_being_opened(tmp_path):
    from reportgen.images import discover

    make_images(tmp_path, 1, labelled=False)
    os.mknod(tmp_path / "dev.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    records, skipped = discover(tmp_path)
    assert [r.rel for r in records] == ["img0.png"]
    assert [(s.rel, s.reason) for s in skipped] == [("dev.jpg", "not a regular file (character device)")]
