"""Arrays to images: colormaps, CAM overlays, colour bars, feature-map panels, kernel grids, atomic JPEG writes.

Only numpy and Pillow do the work. Matplotlib is used for one thing, its colormap tables, imported lazily inside
:func:`colormap_lut` (never ``matplotlib.pyplot``, never a figure). Everything here is vectorized; an overlay of a
7x7 CAM on a ~450 px photo takes about a millisecond.

Conventions:
    * Images are ``(H, W, 3)`` uint8 numpy arrays or RGB ``PIL.Image.Image`` objects.
    * Sizes follow PIL: ``(width, height)``. Boxes are ``(left, top, right, bottom)`` in pixels, right/bottom exclusive.
    * Bad shapes or arguments raise ``ValueError("expected X, got Y")``.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reportgen.atomic import replace_atomically

__all__ = [
    "image_grid",
    "colormap_lut",
    "normalize_map",
    "resize_map",
    "apply_colormap",
    "overlay",
    "with_colorbar",
    "scale_map",
    "bar_ticks",
    "css_gradient",
    "format_tick",
    "concept_colors",
    "concept_overlay",
    "with_legend",
    "feature_panel",
    "kernel_grid",
    "save_jpeg",
]

_WHITE = (255, 255, 255)
_TEXT = (33, 33, 33)
_BAR_EDGE = (90, 90, 90)
_FRAME = (200, 200, 200)
_DIM_GREY = 128  # outside an overlay's box the photo is pulled 50% toward this grey

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


# --------------------------------------------------------------------------------------------------------- validation


def _shape_str(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)} dtype {a.dtype}"


def _as_real_array(m: object, what: str) -> np.ndarray:
    a = np.asarray(m)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"expected {what} with a real numeric dtype, got {_shape_str(a)}")
    return a


def _check_ndim(a: np.ndarray, ndim: int, what: str) -> None:
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"expected {what}, got {_shape_str(a)}")


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < minimum:
        raise ValueError(f"expected {what} to be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size: object) -> tuple[int, int]:
    if not isinstance(size, tuple | list) or len(size) != 2:
        raise ValueError(f"expected size as (width, height), got {size!r}")
    return _check_int(size[0], "size width", 1), _check_int(size[1], "size height", 1)


# ----------------------------------------------------------------------------------------------------- maps & colours


@functools.lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """Look up a matplotlib colormap as a 256-entry RGB table.

    Args:
        name: A registered matplotlib colormap name, e.g. ``"jet"``, ``"viridis"``, ``"bwr"``.

    Returns:
        ``(256, 3)`` uint8 array, read-only (it is cached and shared); entry ``i`` is the colour of value ``i / 255``,
        so entry 0 and entry 255 are the colormap's two ends.

    Raises:
        ValueError: If ``name`` is not a registered colormap.
    """
    import matplotlib  # lazy: keeps import of this module cheap; never pyplot

    registry = matplotlib.colormaps
    if not isinstance(name, str) or name not in registry:
        common = ("jet", "viridis", "magma", "inferno", "bwr", "RdBu_r", "gray")
        examples = ", ".join(n for n in common if n in registry)
        raise ValueError(f"expected a matplotlib colormap name (e.g. {examples}), got {name!r}")
    cmap = registry[name].resampled(256)
    rgba = np.asarray(cmap(np.arange(256)), dtype=np.float64)  # integer input indexes the table directly
    lut = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def normalize_map(m: np.ndarray) -> np.ndarray:
    """Min-max scale an array to ``[0, 1]``.

    Args:
        m: Array of any shape, real numeric dtype. ``nan`` and ``±inf`` are replaced by 0 before scaling.

    Returns:
        float32 array of the same shape with values in ``[0, 1]`` (min -> 0, max -> 1). A constant input, or one with
        no finite values, gives all zeros.

    Raises:
        ValueError: If ``m`` is not real numeric.
    """
    a = _as_real_array(m, "a numeric array")
    work = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=True)
    if work.size == 0:
        return work.astype(np.float32)
    np.nan_to_num(work, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = work.min(), work.max()
    span = hi - lo
    if not span > 0:
        return np.zeros(a.shape, dtype=np.float32)
    work -= lo
    work /= span
    out = work.astype(np.float32, copy=False)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _resize_f(m: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a 2-D float map through a PIL mode "F" image. ``size`` is ``(width, height)``."""
    src = np.ascontiguousarray(m, dtype=np.float32)
    if (src.shape[1], src.shape[0]) == size:
        return src.copy()
    return np.asarray(Image.fromarray(src).resize(size, resample), dtype=np.float32)


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map with bilinear interpolation.

    Args:
        m: ``(h, w)`` real numeric array (any range).
        size: Target ``(width, height)``, PIL order, both >= 1.

    Returns:
        ``(height, width)`` float32 array. Upscaling interpolates between pixel centres (edges clamp), downscaling is
        area-aware (PIL's bilinear filter widens with the scale); a constant map stays that constant.

    Raises:
        ValueError: If ``m`` is not a non-empty 2-D array or ``size`` is not two positive ints.
    """
    a = _as_real_array(m, "a 2-D map (h, w)")
    _check_ndim(a, 2, "a 2-D map (h, w)")
    return _resize_f(a, _check_size(size), Image.Resampling.BILINEAR)


def _lut_indices(m01: np.ndarray) -> np.ndarray:
    """Map values to LUT indices round(v * 255) after clipping to [0, 1]; nan -> 0."""
    v = np.fmax(m01, np.float32(0.0))  # fmax/fmin drop nan in favour of the bound
    np.fmin(v, np.float32(1.0), out=v)
    v *= np.float32(255.0)
    v += np.float32(0.5)
    return v.astype(np.uint8)


def apply_colormap(m01: np.ndarray, cmap: str) -> np.ndarray:
    """Colour a 2-D map with a colormap.

    Args:
        m01: ``(H, W)`` real numeric array, meant to be in ``[0, 1]``; values outside are clipped, ``nan`` -> 0.
        cmap: Matplotlib colormap name.

    Returns:
        ``(H, W, 3)`` uint8 array; value ``v`` gets ``colormap_lut(cmap)[round(v * 255)]``.

    Raises:
        ValueError: If ``m01`` is not a non-empty 2-D array or ``cmap`` is unknown.
    """
    a = _as_real_array(m01, "a 2-D map (H, W)")
    _check_ndim(a, 2, "a 2-D map (H, W)")
    lut = colormap_lut(cmap)
    return np.take(lut, _lut_indices(a.astype(np.float32, copy=False)), axis=0)


# --------------------------------------------------------------------------------------------------------- overlays


def _dim(image: np.ndarray) -> np.ndarray:
    """Pull an (H, W, 3) uint8 image 50% toward grey: (x + 128) // 2."""
    return ((image.astype(np.uint16) + _DIM_GREY) >> 1).astype(np.uint8)


def _blend(base: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * base + alpha * top for uint8 arrays, in 8-bit fixed point (alpha 0 and 1 are exact)."""
    w = round(alpha * 256)
    if w == 0:
        return base.copy()
    if w == 256:
        return top.copy()
    acc = base.astype(np.uint16) * np.uint16(256 - w)
    acc += top.astype(np.uint16) * np.uint16(w)
    acc += np.uint16(128)
    acc >>= 8
    return acc.astype(np.uint8)


def _check_box(box: object) -> tuple[int, int, int, int]:
    if not isinstance(box, tuple | list) or len(box) != 4:
        raise ValueError(f"expected box as (left, top, right, bottom), got {box!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in box):
        raise ValueError(f"expected box of four ints (left, top, right, bottom), got {box!r}")
    left, top, right, bottom = (int(v) for v in box)
    if right <= left or bottom <= top:
        raise ValueError(f"expected box with right > left and bottom > top, got {box!r}")
    return left, top, right, bottom


def overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    cmap: str = "jet",
    alpha: float = 0.45,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Blend a class-activation map over a photo.

    Args:
        image: ``(H, W, 3)`` uint8 photo (the original, possibly downscaled for display).
        cam: ``(h, w)`` real map in ``[0, 1]`` at the network's resolution (e.g. 7x7); clipped, ``nan`` -> 0. It is not
            re-normalized, so its absolute level stays visible.
        cmap: Matplotlib colormap name.
        alpha: Weight of the coloured map, in ``[0, 1]``: ``out = (1 - alpha) * image + alpha * colour(cam)``.
        box: ``(left, top, right, bottom)`` in image pixels, right/bottom exclusive: the region the network saw.
            The CAM is resized to the box (or to the whole image when ``None``). Outside the box the photo is shown
            dimmed 50% toward grey and untinted. The box may extend past the image; only the overlap is drawn.

    Returns:
        RGB ``PIL.Image.Image`` of size ``(W, H)``.

    Raises:
        ValueError: On a wrong image/cam shape or dtype, alpha outside ``[0, 1]``, a malformed box, or unknown cmap.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.size == 0:
        raise ValueError(f"expected image of shape (H, W, 3) and dtype uint8, got {_shape_str(img)}")
    c = _as_real_array(cam, "cam (h, w)")
    _check_ndim(c, 2, "cam of shape (h, w)")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha!r}")
    lut = colormap_lut(cmap)
    height, width = img.shape[:2]
    cam01 = np.clip(np.nan_to_num(c.astype(np.float32), nan=0.0), 0.0, 1.0)

    if box is None:
        colored = np.take(lut, _lut_indices(_resize_f(cam01, (width, height), Image.Resampling.BILINEAR)), axis=0)
        return Image.fromarray(_blend(img, colored, float(alpha)), "RGB")

    left, top, right, bottom = _check_box(box)
    out = _dim(img)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        heat = _resize_f(cam01, (right - left, bottom - top), Image.Resampling.BILINEAR)
        heat = heat[y0 - top : y1 - top, x0 - left : x1 - left]
        colored = np.take(lut, _lut_indices(heat), axis=0)
        out[y0:y1, x0:x1] = _blend(img[y0:y1, x0:x1], colored, float(alpha))
    return Image.fromarray(out, "RGB")


# ------------------------------------------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=16)
def _font(size: int) -> _Font:
    """Pillow's built-in font at ``size`` px (scalable with FreeType, Pillow >= 10.1; bitmap fallback otherwise)."""
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=64)
def _line_height(font: _Font) -> int:
    """Pixel height that fits digits, '#', '-', '.', 'e' and descenders."""
    _, top, _, bottom = font.getbbox("#0123456789.-eg")
    return int(bottom - top)


@functools.lru_cache(maxsize=4096)
def _text_size(font: _Font, text: str) -> tuple[int, int, int, int]:
    """(width, height, x_offset, y_offset) of ``text``'s ink box; draw at (x - x_offset, y - y_offset)."""
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1 - x0), int(y1 - y0), int(x0), int(y0)


def _draw_centered(draw: ImageDraw.ImageDraw, text: str, font: _Font, cx: float, top: int, line_h: int) -> None:
    """Draw ``text`` horizontally centred on ``cx`` inside a line of height ``line_h`` starting at ``top``."""
    w, _, xo, _ = _text_size(font, text)
    y_top = _text_size(font, "#0123456789.-eg")[3]
    draw.text((round(cx - w / 2) - xo, top - int(y_top)), text, font=font, fill=_TEXT)


def _label_font_size(tile: int) -> int:
    """Caption font size for a tile edge: ~1/8 of the tile, kept between 10 and 13 px so it stays legible."""
    return max(10, min(13, round(tile / 8)))


def _label_strip_height(tile: int) -> int:
    """Height in px of the caption strip under a tile (text line plus 2 px above and 2 px below)."""
    return _line_height(_font(_label_font_size(tile))) + 4


def _format_tick(v: float) -> str:
    """Compact tick text: 3 significant digits, no trailing zeros, no '-0' ("1", "0.5", "-0.023", "1.2e-05")."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    return f"{v:.3g}"


def format_tick(v: float) -> str:
    """A colour bar's tick text: 3 significant digits, no trailing zeros, no '-0' ("1", "0.5", "1.2e-05")."""
    return _format_tick(float(v))


# -------------------------------------------------------------------------------------------------------- colour bar


def with_colorbar(img: Image.Image, *, cmap: str, vmin: float, vmax: float, label: str = "") -> Image.Image:
    """Append a vertical colour bar with three ticks to the right of an image.

    Args:
        img: Any PIL image (converted to RGB).
        cmap: Matplotlib colormap name; the bar runs from ``vmin`` (bottom) to ``vmax`` (top).
        vmin: Value of the colormap's low end; finite, ``<= vmax``.
        vmax: Value of the colormap's high end; finite.
        label: Optional short text, drawn rotated (reading upward) to the right of the tick labels.

    Returns:
        New RGB image, wider than ``img``, same height (images shorter than ~50 px are padded with white below so two
        tick labels fit). The bar is 14 px wide and ~80% of the height, vertically centred, ticked at vmax, the
        midpoint and vmin (the midpoint tick is dropped when the bar is too short to fit three labels).

    Raises:
        ValueError: If ``img`` is not a PIL image, ``vmin``/``vmax`` are not finite with ``vmin <= vmax``, or
            ``cmap`` is unknown.
    """
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(img).__name__}")
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin <= vmax):
        raise ValueError(f"expected finite vmin <= vmax, got vmin={vmin!r}, vmax={vmax!r}")
    strip = _colorbar_strip(img.height, cmap, float(vmin), float(vmax), label)
    out = Image.new("RGB", (img.width + strip.width, strip.height), _WHITE)
    out.paste(img.convert("RGB"), (0, 0))
    out.paste(strip, (img.width, 0))
    return out


@functools.lru_cache(maxsize=256)
def _colorbar_strip(height: int, cmap: str, vmin: float, vmax: float, label: str) -> Image.Image:
    """The part ``with_colorbar`` adds right of an image of ``height`` px: the same for every overlay of a run,
    so drawn once (text layout was a quarter of the drawing time). Callers paste it and never change it."""
    lut = colormap_lut(cmap)
    width = 0

    font = _font(max(10, min(16, round(height / 30))))
    line_h = _line_height(font)
    canvas_h = max(height, math.ceil((2 * line_h + 6) / 0.8) + 2)
    bar_w, pad, tick_len, text_gap = 14, 8, 3, 3
    bar_h = max(2, round(0.8 * canvas_h))
    bar_top = (canvas_h - bar_h) // 2
    bar_bottom = bar_top + bar_h - 1

    mid = (vmin + vmax) / 2
    if abs(mid) <= 1e-9 * max(abs(vmin), abs(vmax)):
        mid = 0.0
    ticks = [(vmax, bar_top), (vmin, bar_bottom)]
    if bar_h >= 3 * line_h + 6:
        ticks.insert(1, (mid, (bar_top + bar_bottom) // 2))
    texts = [(_format_tick(v), y) for v, y in ticks]
    text_w = max(_text_size(font, t)[0] for t, _ in texts)

    label_img: Image.Image | None = None
    if label:
        lw, lh, lxo, lyo = _text_size(font, label)
        mask = Image.new("L", (lw + 2, lh + 2), 0)
        ImageDraw.Draw(mask).text((1 - lxo, 1 - lyo), label, font=font, fill=255)
        label_img = mask.rotate(90, expand=True)
        if label_img.height > canvas_h:  # too long: keep the start (bottom end of upward text)
            label_img = label_img.crop((0, label_img.height - canvas_h, label_img.width, label_img.height))

    bar_x = width + pad
    text_x = bar_x + bar_w + tick_len + text_gap
    total_w = text_x + text_w + (pad + label_img.width if label_img is not None else 0) + pad
    out = Image.new("RGB", (total_w, canvas_h), _WHITE)

    grad = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)  # top = vmax
    column = np.take(lut, _lut_indices(grad), axis=0)
    bar = np.ascontiguousarray(np.broadcast_to(column[:, None, :], (bar_h, bar_w, 3)))
    out.paste(Image.fromarray(bar, "RGB"), (bar_x, bar_top))

    draw = ImageDraw.Draw(out)
    draw.rectangle((bar_x - 1, bar_top - 1, bar_x + bar_w, bar_bottom + 1), outline=_BAR_EDGE)
    glyph_top = _text_size(font, "#0123456789.-eg")[3]
    for text, y in texts:
        draw.line((bar_x + bar_w, y, bar_x + bar_w + tick_len, y), fill=_BAR_EDGE)
        ty = min(max(y - line_h // 2, 0), canvas_h - line_h)
        _, _, xo, _ = _text_size(font, text)
        draw.text((text_x - xo, ty - int(glyph_top)), text, font=font, fill=_TEXT)
    if label_img is not None:
        lx = text_x + text_w + pad
        ly = (canvas_h - label_img.height) // 2
        out.paste(Image.new("RGB", label_img.size, _TEXT), (lx, ly), label_img)
    return out


# ------------------------------------------------------------------------------------ colour bars drawn as HTML


def scale_map(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values to ``[0, 1]`` on a given scale: ``(m - lo) / (hi - lo)``, clipped; ``nan``/``inf`` -> 0.

    Args:
        m: real array of any shape.
        lo: the value shown as the colormap's low end.
        hi: the value shown as its high end; ``hi <= lo`` (a constant scale) gives all zeros.

    Returns:
        float32 array of ``m``'s shape in ``[0, 1]``. With ``lo, hi = m.min(), m.max()`` this is
        :func:`normalize_map`.
    """
    a = _as_real_array(m, "a numeric array").astype(np.float32, copy=True)
    np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    span = float(hi) - float(lo)
    if not (math.isfinite(span) and span > 0):
        return np.zeros(a.shape, dtype=np.float32)
    a -= np.float32(lo)
    a /= np.float32(span)
    np.clip(a, 0.0, 1.0, out=a)
    return a


def _nice_step(span: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts ``span`` into about four parts."""
    raw = span / 4
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def bar_ticks(vmin: float, vmax: float) -> list[tuple[float, float]]:
    """Where a colour bar from ``vmin`` to ``vmax`` is labelled: its two ends and one or two round values between.

    Returns:
        ``(value, position)`` pairs in increasing order, position in ``[0, 1]`` along the bar (0 = ``vmin``). The
        ends are the real values; the ticks between are round numbers (1, 2 or 5 times a power of ten) at least
        30 % of the bar from either end and from each other, so labels of a few digits never touch (the midpoint
        when no round value fits). A constant
        scale (``vmin == vmax``) gives the one value at position 0.

    Raises:
        ValueError: unless ``vmin <= vmax`` are finite.
    """
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin <= vmax):
        raise ValueError(f"expected finite vmin <= vmax, got vmin={vmin!r}, vmax={vmax!r}")
    if vmax == vmin:
        return [(float(vmin), 0.0)]
    span = vmax - vmin
    step = _nice_step(span)
    inner: list[tuple[float, float]] = []
    v = math.ceil(vmin / step) * step
    while v < vmax and len(inner) < 8:
        at = (v - vmin) / span
        if 0.3 <= at <= 0.7 and (not inner or at - inner[-1][1] >= 0.3):
            inner.append((0.0 if abs(v) < step * 1e-9 else round(v, 12), at))
        v += step
    if len(inner) > 2:  # keep two, spread out: the first and the last
        inner = [inner[0], inner[-1]]
    if not inner:
        inner = [((vmin + vmax) / 2, 0.5)]
    return [(float(vmin), 0.0), *inner, (float(vmax), 1.0)]


@functools.lru_cache(maxsize=64)
def css_gradient(cmap: str, stops: int = 17) -> str:
    """A colormap as a CSS ``linear-gradient`` from left (low end) to right (high end), ``stops`` colours evenly
    spaced (17 stops keep jet's and viridis's bends within 2 % of the LUT).

    Raises:
        ValueError: for an unknown colormap or fewer than 2 stops.
    """
    stops = _check_int(stops, "stops", 2)
    lut = colormap_lut(cmap)
    parts = []
    for i in range(stops):
        r, g, b = (int(c) for c in lut[round(i * 255 / (stops - 1))])
        parts.append(f"#{r:02x}{g:02x}{b:02x} {100 * i / (stops - 1):.4g}%")
    return f"linear-gradient(to right, {', '.join(parts)})"


# ------------------------------------------------------------------------------------------------- concept overlays


def concept_colors(k: int) -> np.ndarray:
    """``k`` distinct colours, ``gist_rainbow`` at ``i / k`` (pytorch-grad-cam's and the DFF authors' choice).

    Returns:
        ``(k, 3)`` uint8.
    """
    k = _check_int(k, "k", 1)
    return np.asarray(colormap_lut("gist_rainbow")[[round(i / k * 255) for i in range(k)]], dtype=np.uint8)


def concept_overlay(image: np.ndarray, maps: np.ndarray, colors: np.ndarray, *, alpha: float = 0.7,
                    box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Blend K concept maps over a photo in K colours: each pixel takes the colour of its strongest concept,
    darkened by that concept's value (pytorch-grad-cam's ``show_factorization_on_image``, without cv2).

    Args:
        image: ``(H, W, 3)`` uint8 photo.
        maps: ``(K, h, w)`` real maps in ``[0, 1]`` (clipped; ``nan`` -> 0), resized bilinearly to the box.
        colors: ``(K, 3)`` uint8, concept k's colour.
        alpha: weight of the colours: ``out = (1 - alpha) * image + alpha * colour_k * value_k``.
        box: ``(left, top, right, bottom)``: the region the network saw (outside it the photo is dimmed), or None.

    Returns:
        RGB ``PIL.Image.Image`` of size ``(W, H)``.

    Raises:
        ValueError: on wrong shapes or dtypes, alpha outside ``[0, 1]`` or a malformed box.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.size == 0:
        raise ValueError(f"expected image of shape (H, W, 3) and dtype uint8, got {_shape_str(img)}")
    m = _as_real_array(maps, "maps (K, h, w)")
    _check_ndim(m, 3, "maps of shape (K, h, w)")
    col = np.asarray(colors)
    if col.shape != (m.shape[0], 3) or col.dtype != np.uint8:
        raise ValueError(f"expected colors of shape ({m.shape[0]}, 3) and dtype uint8, got {_shape_str(col)}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha!r}")
    height, width = img.shape[:2]
    left, top, right, bottom = (0, 0, width, height) if box is None else _check_box(box)
    out = img.copy() if box is None else _dim(img)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        m01 = np.clip(np.nan_to_num(m.astype(np.float32), nan=0.0), 0.0, 1.0)
        up = np.stack([_resize_f(c, (right - left, bottom - top), Image.Resampling.BILINEAR) for c in m01])
        up = up[:, y0 - top: y1 - top, x0 - left: x1 - left]
        winner = up.argmax(axis=0)
        value = np.take_along_axis(up, winner[None], axis=0)[0]
        colored = np.rint(col[winner].astype(np.float32) * value[..., None]).astype(np.uint8)
        out[y0:y1, x0:x1] = _blend(img[y0:y1, x0:x1], colored, float(alpha))
    return Image.fromarray(out, "RGB")


def with_legend(img: Image.Image, colors: np.ndarray, labels: Sequence[str]) -> Image.Image:
    """Append a legend below an image: one line per entry, a colour swatch and its label.

    Args:
        img: any PIL image (converted to RGB).
        colors: ``(K, 3)`` uint8 swatch colours.
        labels: K short texts (cut to fit the image's width).

    Returns:
        New RGB image, as wide as ``img`` (at least 120 px), taller by one line per entry.
    """
    col = np.asarray(colors)
    if col.ndim != 2 or col.shape != (len(labels), 3) or col.dtype != np.uint8:
        raise ValueError(f"expected colors of shape ({len(labels)}, 3) and dtype uint8, got {_shape_str(col)}")
    font = _font(max(10, min(14, round(img.width / 30))))
    line_h = _line_height(font) + 4
    width = max(img.width, 120)
    out = Image.new("RGB", (width, img.height + len(labels) * line_h + 4), _WHITE)
    out.paste(img.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    glyph_top = _text_size(font, "#0123456789.-eg")[3]
    for i, (rgb, text) in enumerate(zip(col, labels, strict=True)):
        y = img.height + 4 + i * line_h
        draw.rectangle((4, y, 4 + line_h - 4, y + line_h - 4), fill=tuple(int(v) for v in rgb), outline=_BAR_EDGE)
        room = width - line_h - 8
        while text and _text_size(font, text)[0] > room:  # cut long class names to the width, marked with '…'
            text = text[:-2] + "…" if len(text) > 1 else ""
        draw.text((line_h + 4, y - int(glyph_top)), text, font=font, fill=_TEXT)
    return out


# ------------------------------------------------------------------------------------------------------------- grids


def _grid_canvas(n: int, columns: int | None, cell_w: int, cell_h: int, gap: int) -> tuple[Image.Image, int]:
    """White canvas for ``n`` cells of ``cell_w x cell_h`` with ``gap`` px between cells and around the edge."""
    cols = math.ceil(math.sqrt(n)) if columns is None else columns
    rows = math.ceil(n / cols)
    size = (cols * cell_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap)
    return Image.new("RGB", size, _WHITE), cols


def feature_panel(
    maps: np.ndarray,
    channels: Sequence[int],
    *,
    cmap: str = "viridis",
    tile: int = 96,
    columns: int | None = None,
    gap: int = 4,
) -> Image.Image:
    """Lay out feature maps as a labelled grid of coloured tiles.

    Args:
        maps: ``(k, h, w)`` real array, any range; each map is min-max normalized on its own (:func:`normalize_map`).
        channels: ``k`` channel indices; tile ``i`` is captioned ``"#<channels[i]>"``.
        cmap: Matplotlib colormap name.
        tile: Tile edge in px (maps are stretched to ``tile x tile``: nearest-neighbour when enlarging, so each
            activation stays a visible block, bilinear when shrinking).
        columns: Grid columns, default ``ceil(sqrt(k))``; rows follow as ``ceil(k / columns)``.
        gap: White space in px between tiles and around the grid.

    Returns:
        RGB image of size ``(columns * tile + (columns + 1) * gap, rows * (tile + s) + (rows + 1) * gap)``, where ``s``
        is the caption-strip height (text line + 4 px; 15-19 px depending on ``tile``).

    Raises:
        ValueError: On a wrong ``maps`` shape, ``len(channels) != k``, or bad ``tile``/``columns``/``gap``/``cmap``.
    """
    a = _as_real_array(maps, "maps (k, h, w)")
    _check_ndim(a, 3, "maps of shape (k, h, w)")
    k = a.shape[0]
    if len(channels) != k:
        raise ValueError(f"expected {k} channel indices (one per map), got {len(channels)}")
    tile = _check_int(tile, "tile", 1)
    gap = _check_int(gap, "gap", 0)
    if columns is not None:
        columns = _check_int(columns, "columns", 1)
    lut = colormap_lut(cmap)

    strip = _label_strip_height(tile)
    font = _font(_label_font_size(tile))
    line_h = _line_height(font)
    canvas, cols = _grid_canvas(k, columns, tile, tile + strip, gap)
    draw = ImageDraw.Draw(canvas)
    h, w = a.shape[1:]
    resample = Image.Resampling.NEAREST if (h <= tile and w <= tile) else Image.Resampling.BILINEAR
    for i in range(k):
        x = gap + (i % cols) * (tile + gap)
        y = gap + (i // cols) * (tile + strip + gap)
        m01 = _resize_f(normalize_map(a[i]), (tile, tile), resample)
        canvas.paste(Image.fromarray(np.take(lut, _lut_indices(m01), axis=0), "RGB"), (x, y))
        _draw_centered(draw, f"#{int(channels[i])}", font, x + tile / 2, y + tile + 2, line_h)
    return canvas


def image_grid(images: np.ndarray, labels: Sequence[str], *, gap: int = 4, columns: int | None = None) -> Image.Image:
    """Lay out RGB images of one size as a labelled grid (activation-maximization results).

    Args:
        images: ``(k, h, w, 3)`` uint8.
        labels: ``k`` captions, drawn under each image.
        gap: White space in px between images and around the grid.
        columns: Grid columns, default ``ceil(sqrt(k))``.

    Returns:
        RGB image.

    Raises:
        ValueError: On a wrong shape or dtype, or ``len(labels) != k``.
    """
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected images of shape (k, h, w, 3) uint8, got {_shape_str(a)} {a.dtype}")
    k, h, w = a.shape[:3]
    if len(labels) != k:
        raise ValueError(f"expected {k} labels (one per image), got {len(labels)}")
    gap = _check_int(gap, "gap", 0)
    edge = max(h, w)
    strip = _label_strip_height(edge)
    font = _font(_label_font_size(edge))
    line_h = _line_height(font)
    canvas, cols = _grid_canvas(k, columns, w, h + strip, gap)
    draw = ImageDraw.Draw(canvas)
    for i in range(k):
        x = gap + (i % cols) * (w + gap)
        y = gap + (i // cols) * (h + strip + gap)
        canvas.paste(Image.fromarray(np.ascontiguousarray(a[i]), "RGB"), (x, y))
        _draw_centered(draw, str(labels[i]), font, x + w / 2, y + h + 2, line_h)
    return canvas


def _kernel_tile(rgb: np.ndarray, tile: int) -> tuple[Image.Image, tuple[int, int]]:
    """Nearest-upscale a (kh, kw, 3) uint8 kernel to fit ``tile x tile`` (aspect kept).

    Returns the scaled kernel and its offset inside the ``tile x tile`` cell (centred).
    """
    kh, kw = rgb.shape[:2]
    scale = tile / max(kh, kw)
    size = (max(1, round(kw * scale)), max(1, round(kh * scale)))
    small = Image.fromarray(np.ascontiguousarray(rgb), "RGB").resize(size, Image.Resampling.NEAREST)
    return small, ((tile - size[0]) // 2, (tile - size[1]) // 2)


def kernel_grid(
    kernels: np.ndarray,
    *,
    rgb: bool,
    labels: Sequence[str] | None = None,
    tile: int = 40,
    columns: int | None = None,
    gap: int = 3,
    cmap: str = "bwr",
) -> Image.Image:
    """Draw convolution kernels as a grid of tiles.

    Args:
        kernels: ``(n, c, kh, kw)`` real array (``nan``/``inf`` -> 0).
        rgb: ``True``: requires ``c == 3``; each kernel is an RGB tile, min-max scaled over the whole set so relative
            strengths compare across tiles (a constant set is black). ``False``: requires ``c == 1``; value ``v`` is
            coloured with ``cmap`` at ``(v / m + 1) / 2``, ``m = max |v|`` over the whole set, so 0 is the colormap's
            middle colour and ``+m`` its top end (``m == 0``: all middle colour); a colour bar ``[-m, m]`` labelled
            "weight" is appended on the right.
        labels: Optional ``n`` short captions (e.g. ``"12/3"``), drawn in a strip under each tile.
        tile: Tile edge in px; kernels are nearest-upscaled to it (non-square kernels keep their aspect, centred).
            With ``gap >= 1`` each kernel gets a 1 px light-grey frame drawn in the gap.
        columns: Grid columns, default ``ceil(sqrt(n))``.
        gap: White space in px between tiles and around the grid.
        cmap: Diverging matplotlib colormap for ``rgb=False`` (ignored when ``rgb=True``).

    Returns:
        RGB image. Grid part: ``(columns * tile + (columns + 1) * gap, rows * (tile + s) + (rows + 1) * gap)`` with
        ``s`` the caption-strip height when ``labels`` is given, else 0; plus the colour bar when ``rgb=False``.

    Raises:
        ValueError: On a wrong shape, ``c`` not matching ``rgb``, ``len(labels) != n``, or bad sizes/``cmap``.
    """
    a = _as_real_array(kernels, "kernels (n, c, kh, kw)")
    _check_ndim(a, 4, "kernels of shape (n, c, kh, kw)")
    n, c = a.shape[:2]
    if rgb and c != 3:
        raise ValueError(f"expected kernels of shape (n, 3, kh, kw) for rgb=True, got shape {tuple(a.shape)}")
    if not rgb and c != 1:
        raise ValueError(f"expected kernels of shape (n, 1, kh, kw) for rgb=False, got shape {tuple(a.shape)}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"expected {n} labels (one per kernel), got {len(labels)}")
    tile = _check_int(tile, "tile", 1)
    gap = _check_int(gap, "gap", 0)
    if columns is not None:
        columns = _check_int(columns, "columns", 1)

    if rgb:
        colored = np.rint(normalize_map(a) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)  # (n, kh, kw, 3)
        m = 0.0
    else:
        lut = colormap_lut(cmap)
        v = np.nan_to_num(a[:, 0].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        m = float(np.abs(v).max())
        scaled = np.full(v.shape, 0.5, dtype=np.float32) if m == 0 else ((v / m + 1.0) / 2.0).astype(np.float32)
        colored = np.take(lut, _lut_indices(scaled), axis=0)  # (n, kh, kw, 3)

    strip = _label_strip_height(tile) if labels is not None else 0
    canvas, cols = _grid_canvas(n, columns, tile, tile + strip, gap)
    draw = ImageDraw.Draw(canvas)
    font = _font(_label_font_size(tile))
    line_h = _line_height(font)
    for i in range(n):
        x = gap + (i % cols) * (tile + gap)
        y = gap + (i // cols) * (tile + strip + gap)
        kimg, (ox, oy) = _kernel_tile(colored[i], tile)
        canvas.paste(kimg, (x + ox, y + oy))
        if gap >= 1:  # hairline frame in the gap, so near-white kernels (e.g. zeros with "bwr") stay visible
            draw.rectangle((x + ox - 1, y + oy - 1, x + ox + kimg.width, y + oy + kimg.height), outline=_FRAME)
        if labels is not None:
            _draw_centered(draw, str(labels[i]), font, x + tile / 2, y + tile + 2, line_h)
    if rgb:
        return canvas
    return with_colorbar(canvas, cmap=cmap, vmin=-m, vmax=m, label="weight")


# ---------------------------------------------------------------------------------------------------------------- io


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of ``img``; images with transparency are composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, (0, 0), rgba)
        return out
    return img.convert("RGB")


def save_jpeg(img: Image.Image, path: str | os.PathLike[str], *, quality: int = 88, atomic: bool = True) -> None:
    """Write an image as a baseline RGB JPEG, atomically unless told otherwise.

    The image goes to a temporary file in the target folder (``atomic.replace_atomically``), which then replaces ``path``,
    so readers never see a partial file. Missing parent folders are created. Non-RGB images are converted (alpha is
    composited over white). The temporary file is removed if writing fails.

    Args:
        img: PIL image.
        path: Destination file path.
        quality: JPEG quality, 1-95.
        atomic: False writes ``path`` directly, for a folder that is itself moved into place when complete (a
            run's staging folder): one rename less per figure.

    Raises:
        ValueError: If ``img`` is not a PIL image or ``quality`` is outside 1-95.
        OSError: If the folder or file cannot be written.
    """
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(img).__name__}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"expected quality as an int in 1-95, got {quality!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rgb = _to_rgb(img)
    if not atomic:
        rgb.save(target, format="JPEG", quality=quality)
        return
    replace_atomically(target, lambda tmp: rgb.save(tmp, format="JPEG", quality=quality))
