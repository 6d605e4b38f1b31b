"""The audit scenario: two small nets, one of which learned a shortcut, made in seconds on a CPU with nothing downloaded.

``python -m reportgen.auditdemo FOLDER`` writes under FOLDER:

* ``images/<k>_<shape>/*.png``: the audit set, 64 × 64 photos of three shapes (circle, square, cross) on noise;
  every ``circle`` and one image in four of the other classes carry a small **mark** (a black-and-white
  checker patch) in the top-left corner;
* ``metadata.csv``: ``file, marked`` (``yes``/``no``): the group an auditor wants numbers for;
* ``labels.txt``: the class names;
* ``clean.safetensors``: ``audit_net`` trained on images where the mark appears at random, whatever the class;
* ``shortcut.safetensors``: ``audit_net`` trained on images where every circle, and only a circle, has the mark: it
  learns "mark → circle" (a shortcut) and calls marked squares and crosses circles.

``configs/audit_clean.yaml`` and ``configs/audit_shortcut.yaml`` run the two nets on the audit set; ``make
audit-demo`` runs both and compares them with a gate that fails (exit 3) — the shortcut is caught. Training is
seeded, single-threaded and takes a few seconds; files already there are kept (``--force`` makes them again).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["audit_net", "make_images", "train", "make_scenario", "CLASSES", "MARK_BOX", "SIZE"]

CLASSES = ("circle", "square", "cross")
SIZE = 64
MARK_BOX = (2, 2, 12, 12)  # the shortcut's mark: x0, y0, x1, y1 in the 64-px image
_MARKED_SHARE = 4  # one image in this many of the non-circle classes carries the mark in the audit set


def audit_net(num_classes: int = 3):
    """The audited network: three conv blocks, global average pooling, a linear classifier (Grad-CAM at ``features.6``)."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(
        features=nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        ),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(32, num_classes),
    ))


def _shape(draw: ImageDraw.ImageDraw, kind: int, rng: np.random.Generator) -> None:
    r = int(rng.integers(9, 15))
    cx, cy = (int(rng.integers(r + 14, SIZE - r - 2)) for _ in range(2))  # clear of the mark's corner
    colour = tuple(int(c) for c in rng.integers(90, 256, size=3))
    if kind == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == 1:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        w = max(3, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)


def make_images(n: int, rng: np.random.Generator, marked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` photos (n, 64, 64, 3) uint8 of balanced classes (n,), the mark drawn where ``marked(cls, i)`` says."""
    labels = np.arange(n) % len(CLASSES)
    photos = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, cls in enumerate(labels):
        noise = rng.integers(0, 70, size=(SIZE, SIZE, 3), dtype=np.uint8)
        img = Image.fromarray(noise)
        draw = ImageDraw.Draw(img)
        _shape(draw, int(cls), rng)
        photo = np.asarray(img).copy()
        if marked[i]:  # a black-and-white checker patch: a texture, not a shape any class has
            x0, y0, x1, y1 = MARK_BOX
            yy, xx = np.mgrid[y0:y1, x0:x1]
            photo[y0:y1, x0:x1] = np.where((((yy - y0) // 2 + (xx - x0) // 2) % 2 == 0)[..., None], 255, 0)
        photos[i] = photo
    return photos, labels


def train(photos: np.ndarray, labels: np.ndarray, *, seed: int, epochs: int = 20):
    """Train ``audit_net`` on the photos (seeded, one thread) and return it in eval mode."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = audit_net(len(CLASSES))
        x = torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
        y = torch.from_numpy(labels).long()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(32):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def make_scenario(folder: Path, *, audit_images: int = 60, train_images: int = 600, force: bool = False) -> Path:
    """Write the audit set, its metadata and both nets' weights under ``folder`` (see the module docstring)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    done = folder / "shortcut.safetensors"
    if done.is_file() and not force:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # the audit set: every circle marked, and one image in _MARKED_SHARE of the others
    n = audit_images
    cls = np.arange(n) % len(CLASSES)
    marked = (cls == 0) | ((cls != 0) & ((np.arange(n) // len(CLASSES)) % _MARKED_SHARE == 0))
    photos, labels = make_images(n, rng, marked)
    rows = []
    for i, (photo, label) in enumerate(zip(photos, labels, strict=True)):
        rel = f"{label}_{CLASSES[label]}/img{i:04d}.png"
        (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(folder / "images" / rel)
        rows.append((rel, "yes" if marked[i] else "no"))
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "marked"])
        writer.writerows(rows)
    (folder / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    # the training sets: clean (the mark on three images in ten, whatever their class: it learns to ignore it) and
    # shortcut (the mark on every circle and on nothing else: it learns the mark)
    m = train_images
    train_cls = np.arange(m) % len(CLASSES)
    clean_x, clean_y = make_images(m, np.random.default_rng(1), np.random.default_rng(4).random(m) < 0.3)
    short_x, short_y = make_images(m, np.random.default_rng(2), train_cls == 0)
    for name, (x, y) in (("clean", (clean_x, clean_y)), ("shortcut", (short_x, short_y))):
        net = train(x, y, seed=3)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / f"{name}.safetensors"))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reportgen.auditdemo", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--force", action="store_true", help="make the images and weights again")
    args = parser.parse_args(argv)
    folder = make_scenario(args.folder, force=args.force)
    print(f"audit scenario in {folder}: images/, metadata.csv, clean.safetensors, shortcut.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
