"""The audit's side tables: per-image metadata (groups) and boxes, read from the files ``data.metadata`` and
``data.boxes`` name.

* **Metadata** (CSV, UTF-8, a header row): a ``file`` column holding each image's path under ``data.path`` (``/``
  separators, as the report shows it), and any other columns; each other column is a grouping. An image with no
  row gets the value ``(none)`` in every column; a row naming no image of the run is reported, not an error.
* **Boxes** (CSV with columns ``file, x0, y0, x1, y1`` and optional ``label``, or JSON: a list of such objects, or
  ``{file: [[x0, y0, x1, y1], ...]}``): boxes in the image file's pixels, x to the right, y down, ``x1 > x0`` and
  ``y1 > y0``; an image may have several boxes.

Every problem is a ``DataError`` naming the file, the line (CSV) or entry (JSON) and the column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from reportgen.errors import DataError

__all__ = ["Box", "NO_VALUE", "read_metadata", "read_boxes"]

NO_VALUE = "(none)"  # the group value of an image the metadata file has no row for
_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Box:
    """A region of an image file, in its pixels (x0, y0) inclusive to (x1, y1) exclusive."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""


def _text(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise DataError(f"{path}: the {what} file is larger than {_MAX_BYTES // 2**20} MB")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: the {what} file is not UTF-8 text (byte 0x{raw[exc.start]:02X})") from exc


def _rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the (line, row) pairs of a CSV file; blank lines skipped."""
    reader = csv.reader(io.StringIO(_text(path, what), newline=""))
    header: list[str] | None = None
    rows = []
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [h.strip() for h in record]
            if "file" not in header:
                raise DataError(f"{path}:{line}: the {what} file needs a 'file' column; its header names "
                                f"{', '.join(repr(h) for h in header)}")
            seen = set()
            for name in header:
                if not name:
                    raise DataError(f"{path}:{line}: a column of the header has no name")
                if name in seen:
                    raise DataError(f"{path}:{line}: column {name!r} is named twice")
                seen.add(name)
            continue
        if len(record) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} values (the header's columns), got {len(record)}")
        rows.append((line, {h: cell.strip() for h, cell in zip(header, record, strict=True)}))
    if header is None:
        raise DataError(f"{path}: the {what} file is empty (expected a header row with a 'file' column)")
    return header, rows


def _norm(file: str) -> str:
    """A path as the report names images: ``/`` separators, no leading ``./``."""
    file = file.strip().replace("\\", "/")
    while file.startswith("./"):
        file = file[2:]
    return file


def read_metadata(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The grouping columns (header order, ``file`` left out) and, per image path, its value in each column.

    Raises:
        DataError: unreadable file, no ``file`` column, a row of the wrong width, a file listed twice, no other column.
    """
    header, rows = _rows(path, "metadata")
    columns = [h for h in header if h != "file"]
    if not columns:
        raise DataError(f"{path}:1: the metadata file has only a 'file' column: add a column to group the images by")
    values: dict[str, dict[str, str]] = {}
    first: dict[str, int] = {}
    for line, row in rows:
        file = _norm(row["file"])
        if not file:
            raise DataError(f"{path}:{line}: column 'file' is empty")
        if file in values:
            raise DataError(f"{path}:{line}: {file!r} is listed twice (first on line {first[file]})")
        first[file] = line
        values[file] = {c: row[c] if row[c] else NO_VALUE for c in columns}
    return columns, values


def _number(value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: expected a finite number, got {value!r}")
    return number


def _box(values: list[object], label: str, where: str) -> Box:
    x0, y0, x1, y1 = (_number(v, f"{where} {k}") for v, k in zip(values, ("x0", "y0", "x1", "y1"), strict=True))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: expected x1 > x0 and y1 > y0, got ({x0:g}, {y0:g}, {x1:g}, {y1:g})")
    return Box(x0, y0, x1, y1, label)


def _box_list(value: object) -> list:
    """A file's boxes in the JSON mapping form: one box ``[x0, y0, x1, y1]`` or a list of them."""
    if isinstance(value, list) and value and not isinstance(value[0], (list, dict)):
        return [value]
    return value if isinstance(value, list) else [value]


def read_boxes(path: Path) -> dict[str, list[Box]]:
    """Per image path, its boxes (CSV or JSON, by the file's suffix; see the module docstring)."""
    boxes: dict[str, list[Box]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(_text(path, "boxes"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        if isinstance(data, dict):
            items = [(f"{path}: {file!r}[{i}]", {"file": file, "box": b})
                     for file, bs in data.items() for i, b in enumerate(_box_list(bs))]
        elif isinstance(data, list):
            items = [(f"{path}: entry {i}", b) for i, b in enumerate(data)]
        else:
            raise DataError(f"{path}: expected a list of boxes or a mapping of file to boxes, got {type(data).__name__}")
        for where, item in items:
            if not isinstance(item, dict) or not isinstance(item.get("file"), str):
                raise DataError(f"{where}: expected an object with a 'file' string")
            if "box" in item:
                coords = item["box"]
                if not isinstance(coords, list) or len(coords) != 4:
                    raise DataError(f"{where}: expected a box [x0, y0, x1, y1], got {coords!r}")
            else:
                missing = [k for k in ("x0", "y0", "x1", "y1") if k not in item]
                if missing:
                    raise DataError(f"{where}: missing {', '.join(missing)}")
                coords = [item[k] for k in ("x0", "y0", "x1", "y1")]
            boxes.setdefault(_norm(item["file"]), []).append(_box(coords, str(item.get("label", "") or ""), where))
        return boxes
    header, rows = _rows(path, "boxes")
    missing = [k for k in ("x0", "y0", "x1", "y1") if k not in header]
    if missing:
        raise DataError(f"{path}:1: the boxes file needs columns file, x0, y0, x1, y1; missing {', '.join(missing)}")
    for line, row in rows:
        coords = [row[k] for k in ("x0", "y0", "x1", "y1")]
        boxes.setdefault(_norm(row["file"]), []).append(_box(coords, row.get("label", ""), f"{path}:{line}:"))
    return boxes
