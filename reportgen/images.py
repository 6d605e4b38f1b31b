"""Find images and decode them (EXIF-aware, any mode → RGB). Batching for the model is in ``batches.py``.

A folder is walked recursively in sorted order. A file inside a subfolder takes the subfolder's name as its
label (torchvision's ImageFolder convention, first level under the root); files at the root are unlabelled.
A file that cannot be read or decoded, a folder that cannot be listed, a symbolic link that leads to no file
(missing target, loop), and an image-named FIFO, socket or device (never opened) are skipped with their reason and
the run goes on. File names may hold any bytes: see ``reportgen.names``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from reportgen.errors import DataError
from reportgen.modelcard import Preprocess
from reportgen.names import readable, shorten

__all__ = ["IMAGE_EXTENSIONS", "ImageRecord", "Skipped", "discover", "decode", "crop_box", "display_image"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class ImageRecord:
    """One image file. ``path`` opens it; ``rel`` (its path under the folder) and ``label`` are for display: any
    byte of its name that is not UTF-8 shows as ``\\xNN``. ``id`` is unique in the run, stable, ASCII, at most
    ~70 characters (a long name is cut and hashed), and safe in file names and URLs."""

    index: int
    path: Path
    rel: str
    id: str
    label: str | None
    digest: str


@dataclass(frozen=True)
class Skipped:
    """A file left out of the report, and why. Both texts are made readable (see ``ImageRecord``) when made, so
    whatever a reason quotes (a file name in a decoder's message) can be written anywhere."""

    rel: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "rel", readable(self.rel))
        object.__setattr__(self, "reason", readable(self.reason))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "image"


def _link_problem(path: Path) -> str | None:
    """Why ``path``, a symbolic link, leads to no file (missing target, or links that point at each other), else
    None. Reading a link loop would fail with ELOOP rather than hang, but the reason should say what it is."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link"
        return f"cannot follow symbolic link: {exc.strerror or exc}"
    return None


_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def _digest(path: Path) -> str:
    """SHA-256 of a regular file's bytes. Anything else (a FIFO named ``*.jpg``, a socket, a device) is refused
    from its ``stat`` without being opened: opening a FIFO for reading waits for a writer, forever. The file is
    opened non-blocking and checked again, in case it was swapped for one since.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a regular file (the message says what it is).
    """
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(_not_regular(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(_not_regular(mode))
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _candidates(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Image-named files under ``root`` (sorted; hidden files and folders left out), and each folder that could not
    be listed, as skipped with its reason: ``Path.rglob`` would leave such a folder out silently, and every image
    in it. Symbolic links to folders are not followed, so a link loop cannot make the walk endless."""
    unreadable: list[Skipped] = []

    def note(exc: OSError) -> None:
        rel = Path(exc.filename).relative_to(root).as_posix() if exc.filename else "."
        unreadable.append(Skipped(rel, f"cannot read folder: {exc.strerror or exc}"))

    found: list[Path] = []
    for folder, dirs, files in os.walk(root, onerror=note):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found), unreadable


def discover(root: Path, limit: int | None = None) -> tuple[list[ImageRecord], list[Skipped]]:
    """Every image file under ``root`` (sorted), with its label and the SHA-256 of its bytes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    records: list[ImageRecord] = []
    used: set[str] = set()
    candidates, skipped = _candidates(root)
    for path in candidates:
        real = path.relative_to(root).as_posix()
        rel = readable(real)
        problem = _link_problem(path)
        if problem:
            skipped.append(Skipped(rel, problem))
            continue
        try:
            digest = _digest(path)
        except ValueError as exc:
            skipped.append(Skipped(rel, str(exc)))
            continue
        except OSError as exc:
            skipped.append(Skipped(rel, f"cannot read file: {exc.strerror or exc}"))
            continue
        base = shorten(_slug(rel), real)
        ident = base
        n = 2
        while ident in used:
            ident = f"{base}-{n}"
            n += 1
        used.add(ident)
        parts = Path(rel).parts
        label = parts[0] if len(parts) > 1 else None
        records.append(ImageRecord(len(records), path, rel, ident, label, digest))
        if limit is not None and len(records) >= limit:
            break
    return records, skipped


def decode(path: Path) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as 8-bit RGB, whatever its mode.

    Transparent images are composited on white; 16- and 32-bit greyscale are scaled to 8 bits by their range.
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            img = Image.fromarray(scaled.round().astype(np.uint8), "L")
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float, float]:
    """The region of a (width × height) image that the network sees, in that image's pixels."""
    if pre.resize == "squash":
        return 0.0, 0.0, float(width), float(height)
    out_h, out_w = pre.size
    # timm's convention: resize the short side to size / crop_pct, then centre-crop to size.
    scale = (min(out_h, out_w) / pre.crop_pct) / min(width, height)
    box_w, box_h = out_w / scale, out_h / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def display_image(img: Image.Image, pre: Preprocess, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The photo scaled to fit ``size`` × ``size`` for the report, and the network's region in its pixels."""
    box = crop_box(img.width, img.height, pre)
    display = img.copy()
    display.thumbnail((size, size), Image.BICUBIC)
    sx, sy = display.width / img.width, display.height / img.height
    return np.asarray(display), (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
