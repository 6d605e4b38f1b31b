"""Files the run may not read, and symbolic links that lead nowhere, in a real ``reportgen run``.

The tests run as root, which reads a file of mode 000 anyway. So when this process is root, the run is started
either as the unprivileged user ``nobody`` (65534), when that user can reach the interpreter, or else as root
without the capabilities that bypass file permissions (``setpriv`` drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH): both make ``open`` of a mode-000 file fail with EACCES, as it would for any user.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, make_images, write_config

NOBODY = 65534
_DAC_CAPS = "-dac_override,-dac_read_search"


def _reachable_by_others(path: Path) -> bool:
    """Whether a user who owns nothing (permission bits for "others") can read ``path`` and every folder above it."""
    path = path.resolve()
    folders = list(path.parents)
    if path.is_dir():
        folders.append(path)
    if not all(os.stat(p).st_mode & stat.S_IXOTH for p in folders):
        return False
    return path.is_dir() or bool(os.stat(path).st_mode & stat.S_IROTH)


def _unprivileged() -> tuple[list[str], dict]:
    """How to start a child that file permissions apply to: (command prefix, extra ``subprocess.run`` arguments).

    Not root: as is. Root: as ``nobody`` when the interpreter and its standard library are readable by others;
    otherwise as root without the permission-bypassing capabilities; skipped when neither is possible.
    """
    if os.geteuid() != 0:
        return [], {}
    interpreter = Path(sys.executable)
    if _reachable_by_others(interpreter) and _reachable_by_others(Path(os.__file__)):
        return [], {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(f"running as root: {interpreter.resolve()} is not reachable by uid {NOBODY} and setpriv is missing")
    return [setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}", "--"], {}


@pytest.fixture
def work_dir():
    """A folder every user may use (``tmp_path`` lies under a root-only folder), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="reportgen-perm-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _open_to_all(root: Path) -> None:
    """Make ``root`` and everything below it usable by any user (the config, images, output and cache folders)."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):  # a link's mode is not its own; loops cannot be followed
                os.chmod(os.path.join(folder, name), 0o666)


def _folder_with_unreadable_file_and_link_loops(root: Path) -> list[str]:
    """Three good images, a good PNG of mode 000 (and one in a folder ``private`` that gets mode 000), three links
    in loops and a link to the folder itself. Returns the good images' relative paths."""
    good = [p.relative_to(root).as_posix() for p in make_images(root, 3, labelled=False)]
    shutil.copyfile(root / good[0], root / "locked.png")
    (root / "private").mkdir()
    shutil.copyfile(root / good[0], root / "private" / "hidden-by-mode.png")
    os.symlink("loop.png", root / "loop.png")
    os.symlink("pong.png", root / "ping.png")
    os.symlink("ping.png", root / "pong.png")
    os.symlink(".", root / "again")  # a folder that contains itself: must not be walked forever
    return good


def test_unreadable_file_and_folder_and_link_loops_are_skipped_and_the_run_goes_on(work_dir):
    prefix, as_user = _unprivileged()
    images = work_dir / "images"
    good = _folder_with_unreadable_file_and_link_loops(images)
    config = write_config(work_dir, images, cams={"methods": ["gradcam"], "layers": ["features.5"]})
    _open_to_all(work_dir)
    os.chmod(images / "locked.png", 0)
    os.chmod(images / "private", 0)
    env = {**os.environ, "HOME": str(work_dir), "MPLCONFIGDIR": str(work_dir / "mpl"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([*prefix, sys.executable, "-m", "reportgen", "run", str(config), "--quiet"],
                          cwd=work_dir, env=env, capture_output=True, text=True, timeout=300, **as_user)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((work_dir / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(i["path"] for i in manifest["images"]) == sorted(good)
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"locked.png", "private", "loop.png", "ping.png", "pong.png"}
    assert "permission denied" in skipped["locked.png"].lower()
    assert skipped["private"].lower() == "cannot read folder: permission denied"
    assert skipped["loop.png"] == skipped["ping.png"] == skipped["pong.png"] == "symbolic link loop"
    assert "Traceback" not in done.stderr
