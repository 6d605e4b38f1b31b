"""The print HTML's view of an image (``report.pdf``): its panels regrouped for a dense, fast page.

WeasyPrint lays out every box and text run of the print HTML; the screen's panel (title, linked image, colour
ramp, positioned ticks, label) costs about 16 boxes, and an image of the demo's methods holds 24 panels. The
print view keeps every figure and every number, in fewer boxes:

* each panel shows its colour ramp and the scale's two ends (the real low and high values, as text);
* the bar label, identical but for the method's name across a group, is said once in the group's caption; a
  panel whose label adds something (a constant map, ...) keeps that addition under its own bar;
* a panel drawn once for several methods (identical maps) is titled with the first; "same map: ..." under its
  bar names the others;
* an input-level method's map and overlay (two panels on screen, one scale) are one panel of two images, with
  both colormaps' ramps over one pair of ends;
* images larger than they print are replaced by print-size copies (``print_copies``), written beside the print
  HTML and removed with it; the photo and the feature maps link to the full-size files, the panels link to
  nothing (a link per panel cost 6 % of the printing time).

Measured (``bench/report.py``, 300 images, the demo's sections, ``report.pdf: full``): 313 pages (front matter +
one per image), 43 s of printing, 36 MB; before, 422 pages, 145 s, 60 MB.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

__all__ = ["print_image", "print_copies", "ramp_pixels", "PRINT_ASSETS", "PRINT_PX"]

PRINT_ASSETS = ".print-assets"  # print-size copies, beside the print HTML; removed after printing
# Pixels a figure kind keeps in print: 170-250 dpi at its printed width (panel ~21 mm, photo 28 mm, feature
# maps 44 mm). Larger files get a copy.
PRINT_PX = {"panel": 200, "thumb": 280, "fm": 300}
PRINT_QUALITY = 80
RAMP_PX = 256  # a colour ramp's PNG: 256 x 1 pixels
COLS_MIN, COLS_MAX = 4, 8  # image slots per row of an image's panels: its widest group, within these bounds


def _says(panel: dict) -> str:
    """A panel's bar label without its leading method title (``"Grad-CAM, raw values; ..."`` → ``"raw values; ..."``)."""
    label = str(panel["bar"].get("label", ""))
    title = str(panel.get("title", ""))
    for prefix in (f"{title}, ", f"{title.removesuffix(' overlay')}, "):
        if title and label.startswith(prefix):
            return label[len(prefix):]
    return label


def _ends(bar: dict) -> tuple[str, str]:
    ticks = bar.get("ticks") or []
    if not ticks:
        return "", ""
    return str(ticks[0]["text"]), str(ticks[-1]["text"]) if len(ticks) > 1 else ""


def _pairs(panels: list[dict]) -> list[list[dict]]:
    """Consecutive panels of one method on one scale (an input-level map and its overlay) as one unit."""
    units: list[list[dict]] = []
    for p in panels:
        prev = units[-1][-1] if units else None
        if (prev is not None and len(units[-1]) == 1 and "bar" in p and "bar" in prev and p.get("method")
                and p.get("method") == prev.get("method") and p.get("scale") == prev.get("scale")
                and _ends(p["bar"]) == _ends(prev["bar"])):
            units[-1].append(p)
        else:
            units.append([p])
    return units


def _group(group: dict, src: dict[str, str]) -> dict:
    """One CAM group's print view: its units (panels), the label its bars share, each unit's own addition."""
    barred = [p for p in group["panels"] if "bar" in p]
    common = Counter(_says(p) for p in barred).most_common(1)[0][0] if barred else ""
    units = []
    for unit in _pairs(list(group["panels"])):
        first = unit[0]
        title, *same = str(first.get("title", "")).split(" = ") if "methods" in first else [first.get("title", "")]
        item: dict[str, Any] = {
            "title": title if len(unit) == 1 else f"{title} (map, overlay)",
            "same": same,
            "figures": [{"src": src.get(p["image"], p["image"]), "href": p["image"], "width": p["width"],
                         "height": p["height"], "alt": p.get("title", "")} for p in unit],
            "legend": first.get("legend"),
        }
        if "bar" in first:
            own = _says(first)
            extra = own[len(common):].lstrip(";, ") if own.startswith(common) else own
            ramps = [src.get(p["bar"]["gradient"]) for p in unit]
            item.update(gradients=[p["bar"]["gradient"] for p in unit], ends=_ends(first["bar"]), extra=extra,
                        ramps=ramps if all(ramps) else [])
        units.append(item)
    return {**{k: v for k, v in group.items() if k != "panels"}, "units": units, "bar_says": common,
            "slots": sum(len(u["figures"]) for u in units)}


def print_image(image: dict, src: dict[str, str] | None = None) -> dict:
    """The print view of one image's entry: ``groups`` (see ``_group``), ``cols`` (image slots per row, the same
    for every group of the image so that panels are one size) and the sources of its figures in print.

    Args:
        image: the image's report entry (``drawing.draw_image``).
        src: figure path → print-size copy (``print_copies``); a figure not in it prints as it is.
    """
    src = src or {}
    groups = [_group(g, src) for g in image.get("cams") or []]
    widest = max((g["slots"] for g in groups), default=COLS_MIN)
    return {"groups": groups, "cols": max(COLS_MIN, min(COLS_MAX, widest)),
            "thumb": src.get(image["thumb"], image["thumb"]),
            "feature_maps": [{**fm, "src": src.get(fm["image"], fm["image"])} for fm in image.get("feature_maps") or []]}


def _figures(images: Iterable[dict]) -> Iterable[tuple[str, str, int, int]]:
    """(path, kind, width, height) of every figure an image section prints."""
    for e in images:
        yield e["thumb"], "thumb", int(e.get("width") or 0), int(e.get("height") or 0)
        for fm in e.get("feature_maps") or []:
            yield fm["image"], "fm", int(fm.get("width") or 0), int(fm.get("height") or 0)
        for g in e.get("cams") or []:
            for p in g["panels"]:
                yield p["image"], "panel", int(p.get("width") or 0), int(p.get("height") or 0)


def _copy(root: Path, rel: str, px: int) -> str | None:
    """A print-size JPEG copy of ``root/rel`` at most ``px`` wide, under ``PRINT_ASSETS``; its path, or None when the
    file is no larger than that (or cannot be read: the original prints then)."""
    from PIL import Image

    target = PurePosixPath(PRINT_ASSETS, rel).with_suffix(".jpg")
    try:
        with Image.open(root / rel) as img:
            if img.width <= px:
                return None
            h = max(1, round(img.height * px / img.width))
            img.draft("RGB", (px, h))  # JPEG: decode at 1/2, 1/4 ... of the size straight from the DCT
            small = img.convert("RGB").resize((px, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        out = root / target
        out.parent.mkdir(parents=True, exist_ok=True)
        small.save(out, "JPEG", quality=PRINT_QUALITY, optimize=False)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # what Pillow raises on a bad file
        return None
    return target.as_posix()


_STOP = re.compile(r"#([0-9a-fA-F]{6})\s+([0-9.]+)%")


def ramp_pixels(gradient: str, width: int = RAMP_PX) -> np.ndarray | None:
    """The colours of a ``figures.css_gradient`` (``linear-gradient(to right, #rrggbb p%, ...)``) as a (1, width, 3)
    uint8 row, linearly interpolated between its stops as a browser draws it; None for any other text."""
    stops = [(float(at) / 100.0, [int(hexa[i:i + 2], 16) for i in (0, 2, 4)]) for hexa, at in _STOP.findall(gradient)]
    if len(stops) < 2 or not gradient.startswith("linear-gradient(to right,"):
        return None
    at = np.array([a for a, _ in stops])
    colours = np.array([c for _, c in stops], dtype=np.float64)
    x = (np.arange(width) + 0.5) / width
    row = np.stack([np.interp(x, at, colours[:, k]) for k in range(3)], axis=-1)
    return np.round(row).astype(np.uint8)[None]


def _ramps(root: Path, images: Iterable[dict]) -> dict[str, str]:
    """One PNG per distinct colour ramp of the panels (a PDF image drawn many times costs far less to lay out and
    print than a CSS gradient per panel)."""
    from PIL import Image

    out: dict[str, str] = {}
    for e in images:
        for g in e.get("cams") or []:
            for p in g["panels"]:
                gradient = (p.get("bar") or {}).get("gradient")
                if gradient and gradient not in out:
                    row = ramp_pixels(gradient)
                    if row is None:
                        continue
                    rel = f"{PRINT_ASSETS}/ramp-{len(out)}.png"
                    (root / PRINT_ASSETS).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(row).save(root / rel)
                    out[gradient] = rel
    return out


def print_copies(root: Path, images: Iterable[dict], workers: int | None = None) -> dict[str, str]:
    """Write the print HTML's own files under ``root/PRINT_ASSETS``: print-size copies of the image sections'
    figures wider than they print (``PRINT_PX``; a figure whose entry gives a width no larger is not opened) and
    one PNG per colour ramp of the panels' bars.

    Returns:
        figure path (relative to ``root``) → its copy's path, and a bar's CSS gradient → its ramp's path.
    """
    images = list(images)
    out = _ramps(root, images)
    todo = {rel: PRINT_PX[kind] for rel, kind, w, _ in _figures(images) if not w or w > PRINT_PX[kind]}
    if todo:
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # Pillow's decode, resize and encode run without the GIL
            done = pool.map(lambda item: (item[0], _copy(root, *item)), todo.items())
            out.update({rel: copy for rel, copy in done if copy})
    return out
