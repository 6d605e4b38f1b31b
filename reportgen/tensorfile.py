"""Write safetensors files byte for byte the same on every run.

The safetensors library stores its string metadata in a hash map whose order changes from one process to the
next, so the same arrays and metadata gave files with different bytes. This writer emits the same format
(8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, then the raw arrays) with
the metadata and the tensors in a fixed order: widest dtype first, then by name, as the library does, so every
array stays aligned for zero-copy reading. Files are read back with ``safetensors`` as before. Names and metadata
are written as UTF-8: a string holding lone surrogates (a file name's undecodable bytes, as Python gives them) is
written with each such byte as ``\\xNN`` (``reportgen.names.readable``) rather than refused.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reportgen.names import readable

__all__ = ["write_tensors"]

_DTYPES = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16", np.dtype("int8"): "I8",
    np.dtype("uint64"): "U64", np.dtype("uint32"): "U32", np.dtype("uint16"): "U16", np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}


def write_tensors(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``arrays`` (numpy, any of the dtypes above) and string ``metadata`` to ``path`` (opened for writing).

    Raises:
        ValueError: an array of a dtype safetensors cannot hold.
        OSError: the file cannot be written (e.g. the disk is full).
    """
    prepared = {}
    for name, value in arrays.items():
        a = np.asarray(value, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype not in _DTYPES:
            raise ValueError(f"cannot store {name!r} of dtype {a.dtype} in a safetensors file")
        prepared[readable(str(name))] = a
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {readable(str(k)): readable(str(v)) for k, v in sorted(metadata.items())}
    offset = 0
    order = sorted(prepared, key=lambda n: (-prepared[n].dtype.itemsize, n))
    for name in order:
        a = prepared[name]
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for name in order:
            fh.write(prepared[name].tobytes())
