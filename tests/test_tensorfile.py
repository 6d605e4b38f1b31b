"""reportgen.tensorfile: safetensors files with the same bytes in every process, readable by safetensors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from reportgen.tensorfile import write_tensors


def _arrays():
    rng = np.random.default_rng(0)
    return {"maps": rng.random((2, 7, 7)).astype(np.float32), "targets": np.arange(3, dtype=np.int64),
            "pixels": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), "half": rng.random(5).astype(np.float16),
            "flags": np.array([True, False]), "empty": np.zeros((0, 3), np.float32),
            "scalar": np.asarray(np.float32(3.5)), "wide": rng.random(3)}


def test_round_trip_every_dtype_and_metadata(tmp_path):
    arrays = _arrays()
    write_tensors(tmp_path / "x.safetensors", arrays, {"label": "ü <b>", "digest": "abc"})
    got = load_file(str(tmp_path / "x.safetensors"))
    assert got.keys() == arrays.keys()
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
    with safe_open(str(tmp_path / "x.safetensors"), "np") as f:
        assert f.metadata() == {"label": "ü <b>", "digest": "abc"}


def test_same_bytes_as_the_library_where_its_order_is_fixed(tmp_path):
    # the library's numpy writer rejects 0-d arrays, and orders bool before uint8 (both 1 byte wide: either is valid)
    arrays = {k: v for k, v in _arrays().items() if k not in ("scalar", "flags")}
    write_tensors(tmp_path / "ours.safetensors", arrays, {"k": "v"})
    save_file(arrays, str(tmp_path / "lib.safetensors"), metadata={"k": "v"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_same_bytes_in_every_process(tmp_path):
    """The library's metadata order changes per process (a randomised hash map); ours does not."""
    code = ("import sys, numpy as np; from reportgen.tensorfile import write_tensors; "
            "write_tensors(sys.argv[1], {'a': np.arange(4, dtype=np.float32)}, "
            "{k: k * 3 for k in 'abcdefghij'})")
    for i in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True)
    files = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(4)}
    assert len(files) == 1


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot store 'c' of dtype complex64"):
        write_tensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})
