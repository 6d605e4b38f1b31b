"""``--force`` never deletes user files: only a folder reportgen wrote is replaced, and an output folder that
overlaps the images, the config, the cache, the home folder or ``/`` is refused at validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_images, write_config

from reportgen.cli import main
from reportgen.outfolder import MARKER, placement_problems


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what must survive a refused run)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _set_output(config: Path, output: str | None = None, cache: str | None = None, **model) -> None:
    cfg = yaml.safe_load(config.read_text())
    if output is not None:
        cfg["run"]["output"] = output
    if cache is not None:
        cfg["run"]["cache_dir"] = cache
    cfg["model"].update(model)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_force_with_the_image_folder_as_output_is_refused_and_the_images_stay(tmp_path, image_dir, capsys):
    config = write_config(tmp_path, image_dir)
    before = _tree(image_dir)
    for argv in (["run", str(config), "--output", str(image_dir), "--force", "--quiet"],
                 ["run", str(config), "--output", str(image_dir / "0_class0"), "--force", "--quiet"],
                 ["run", str(config), "--output", str(tmp_path), "--force", "--quiet"]):
        err = _refused(capsys, argv)
        assert "--output:" in err and "image folder" in err
        assert "pass --force" not in err
    assert _tree(image_dir) == before


def test_force_never_deletes_a_folder_reportgen_did_not_write(tmp_path, image_dir, capsys):
    config = write_config(tmp_path, image_dir)
    docs = tmp_path / "thesis"
    (docs / "chapters").mkdir(parents=True)
    (docs / "notes.txt").write_text("three years of work")
    (docs / "chapters" / "1.tex").write_text("\\chapter{One}")
    before = _tree(docs)
    for extra in ([], ["--force"]):
        err = _refused(capsys, ["run", str(config), "--output", str(docs), "--quiet", *extra])
        assert "was not written by reportgen" in err and "notes.txt" in err
        assert "--force" not in err  # the message must not invite the flag that would have deleted it
    assert _tree(docs) == before
    # a file where the folder should be, a manifest that is not ours, a marker that is not ours: all refused
    (tmp_path / "afile").write_text("x")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"name": "my data set"}))
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / MARKER).write_text("not json")
    (forged / "data.csv").write_text("a,b")
    for target in ("afile", "fake", "forged"):
        _refused(capsys, ["run", str(config), "--output", str(tmp_path / target), "--force", "--quiet"])
    assert (fake / "manifest.json").exists() and (forged / "data.csv").exists()


def test_a_report_folder_is_replaced_only_while_it_holds_nothing_but_the_report(tmp_path, image_dir, capsys):
    config = write_config(tmp_path, image_dir)
    out = tmp_path / "out"
    assert main(["run", str(config), "--quiet"]) == 0
    marker = json.loads((out / MARKER).read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert marker["tool"] == "reportgen" and len(manifest["run_id"]) == 32
    assert set(marker["entries"]) == {p.name for p in out.iterdir()} - {MARKER}
    assert main(["run", str(config), "--quiet", "--force"]) == 0  # ours: replaced
    assert json.loads((out / "manifest.json").read_text())["run_id"] != manifest["run_id"]
    (out / "my-review.md").write_text("findings")  # a reviewer's file added to the report folder
    err = _refused(capsys, ["run", str(config), "--quiet", "--force"])
    assert "my-review.md" in err and "did not write" in err
    assert (out / "my-review.md").read_text() == "findings"


def test_a_report_of_an_earlier_version_without_the_marker_is_still_replaced(tmp_path, image_dir):
    config = write_config(tmp_path, image_dir)
    out = tmp_path / "out"
    assert main(["run", str(config), "--quiet"]) == 0
    (out / MARKER).unlink()  # what 0.1.0 wrote: no marker, and none of the folders added since (audit/, images/)
    for later in ("audit", "images"):
        shutil.rmtree(out / later)
    assert main(["run", str(config), "--quiet", "--force"]) == 0
    assert (out / MARKER).is_file()


def test_empty_or_missing_output_needs_no_force(tmp_path, image_dir):
    config = write_config(tmp_path, image_dir)
    (tmp_path / "out").mkdir()
    assert main(["run", str(config), "--quiet"]) == 0


@pytest.mark.parametrize("output, cache, what", [
    (".", None, "is the config's folder"),  # `output: .` in the config = the config's folder
    ("..", None, "contains the config's folder"),
    ("images", None, "is the image folder"),
    ("images/out", None, "lies inside the image folder"),
    ("/", None, "the root folder"),
    ("cache", None, "is the cache"),  # output = cache: the cache would be replaced by the report
    ("cache/reports", None, "lies inside the cache"),  # `cache clear` would delete the report
    ("out", "out/cache", "the cache"),  # cache inside the output: the next --force would delete it
])
def test_overlapping_output_is_a_config_error_in_validate_and_run(tmp_path, image_dir, capsys, output, cache, what):
    config = write_config(tmp_path, image_dir)
    _set_output(config, output, cache)
    for command in ("validate", "run"):
        err = _refused(capsys, [command, str(config), *(["--quiet", "--force"] if command == "run" else [])])
        assert f"{config}:" in err and what in err, err  # FILE:LINE
        key = "run.cache_dir" if cache else "run.output"
        assert f": {key}:" in err
    assert _tree(image_dir) and (tmp_path / "config.yaml").is_file()


def test_output_containing_the_home_or_working_folder_is_refused(tmp_path, image_dir, capsys, monkeypatch):
    home = tmp_path / "users" / "ana"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    config = write_config(tmp_path, image_dir)
    for output in (home, tmp_path / "users"):
        err = _refused(capsys, ["run", str(config), "--output", str(output), "--force", "--quiet"])
        assert "home folder" in err
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    err = _refused(capsys, ["run", str(config), "--output", str(tmp_path / "work"), "--force", "--quiet"])
    assert "working folder" in err


def test_output_holding_the_weights_or_labels_is_refused(tmp_path, image_dir, capsys):
    config = write_config(tmp_path, image_dir)
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "labels.txt"
    labels.write_text("a\nb\n")
    _set_output(config, labels=str(labels))
    err = _refused(capsys, ["validate", str(config)])
    assert "model.labels" in err and "which the run reads" in err


def test_placement_rules_on_paths_alone(tmp_path):
    """The rules without any file: every overlap of output with a protected folder, both ways."""
    data, cache, cfg = tmp_path / "d", tmp_path / "c", tmp_path / "conf" / "x.yaml"

    def problems(output, cache_dir=cache):
        return placement_problems(output=output, cache_dir=cache_dir, data=data, config=cfg)

    assert problems(tmp_path / "conf" / "outputs" / "x") == []  # the default output: fine
    assert problems(tmp_path / "elsewhere") == []
    assert problems(data) and problems(data / "sub") and problems(tmp_path)
    assert problems(tmp_path / "conf") and problems(cache) and problems(cache / "r")
    assert problems(tmp_path / "o", cache_dir=tmp_path / "o" / "c")
    assert problems(Path("/"))
    # a sibling whose name starts like a protected folder is not inside it
    assert problems(tmp_path / "d2") == [] and problems(tmp_path / "c-reports") == []


def test_images_in_the_output_folder_of_a_separate_run_are_untouched(tmp_path, capsys):
    """Two configs, one image folder each; the second's output is the first's images: refused, nothing lost."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_images(a / "images")
    make_images(b / "images")
    config_b = write_config(b, b / "images")
    before = _tree(a / "images")
    _refused(capsys, ["run", str(config_b), "--output", str(a / "images"), "--force", "--quiet"])
    assert _tree(a / "images") == before


def test_the_c_library_is_looked_up_once_without_a_compiler(tmp_path, monkeypatch):
    """``ctypes.util.find_library`` spawns gcc/ldconfig (~0.1 s, 16 times a run before): never call it."""
    import ctypes.util
    import subprocess

    from reportgen import atomic

    def forbidden(*args, **kwargs):
        raise AssertionError(f"spawned or searched: {args}")

    monkeypatch.setattr(ctypes.util, "find_library", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    atomic._libc.cache_clear()
    a, b = tmp_path / "a", tmp_path / "b"
    for _ in range(3):
        a.mkdir()
        (a / "x").write_text("new")
        b.mkdir(exist_ok=True)
        atomic.swap_into_place(a, b)
        assert (b / "x").read_text() == "new" and not a.exists()
    assert atomic._renameat2() is not None  # Linux: the one-step exchange is found in the interpreter's libc
    assert atomic._libc.cache_info().misses == 1
