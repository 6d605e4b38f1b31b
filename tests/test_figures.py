"""Tests for reportgen.figures: arrays -> images (numpy + Pillow, matplotlib colormap tables only)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from markupsafe import Markup
from PIL import Image

from reportgen import figures
from reportgen.figures import (
    apply_colormap,
    colormap_lut,
    feature_panel,
    kernel_grid,
    normalize_map,
    overlay,
    resize_map,
    save_jpeg,
    with_colorbar,
)


def _photo(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 120)], axis=-1).astype(np.uint8)


def _mpl_rgb(name: str, x: float) -> np.ndarray:
    return np.rint(np.asarray(matplotlib.colormaps[name](x)[:3]) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------- LUTs


@pytest.mark.parametrize("name", ["jet", "viridis", "bwr", "gray"])
def test_colormap_lut_shape_and_ends(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3)
    assert lut.dtype == np.uint8
    np.testing.assert_array_equal(lut[0], _mpl_rgb(name, 0.0))
    np.testing.assert_array_equal(lut[255], _mpl_rgb(name, 1.0))


def test_colormap_lut_is_cached_and_read_only() -> None:
    assert colormap_lut("jet") is colormap_lut("jet")
    with pytest.raises(ValueError):
        colormap_lut("jet")[0, 0] = 1


def test_colormap_lut_unknown_name_lists_examples() -> None:
    with pytest.raises(ValueError, match="expected.*viridis"):
        colormap_lut("no-such-map")


def test_module_import_does_not_pull_pyplot_or_torch() -> None:
    code = (
        "import sys, reportgen.figures as f; f.colormap_lut('jet'); "
        "print('matplotlib.pyplot' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# ------------------------------------------------------------------------------------------------- normalize/resize


def test_normalize_map_range() -> None:
    m = np.array([[-2.0, 0.0], [1.0, 6.0]])
    out = normalize_map(m)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.375, 1.0]])


def test_normalize_map_any_shape_and_ints() -> None:
    out = normalize_map(np.arange(24).reshape(2, 3, 4))
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    assert out.flat[0] == 0.0 and out.flat[-1] == 1.0


@pytest.mark.parametrize(
    "m",
    [np.full((3, 3), 5.0), np.full((2, 2), np.nan), np.array([np.inf, -np.inf, np.nan]), np.zeros(0)],
)
def test_normalize_map_constant_or_nonfinite_is_zeros(m: np.ndarray) -> None:
    out = normalize_map(m)
    assert out.shape == m.shape and out.dtype == np.float32
    assert not out.any()


def test_normalize_map_nonfinite_treated_as_zero() -> None:
    out = normalize_map(np.array([np.nan, 2.0, 4.0, np.inf]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0])


def test_normalize_map_does_not_modify_input() -> None:
    m = np.array([1.0, np.nan, 3.0])
    normalize_map(m)
    assert np.isnan(m[1]) and m[0] == 1.0


def test_resize_map_shape_and_constant() -> None:
    out = resize_map(np.full((7, 7), 0.3), (45, 30))
    assert out.shape == (30, 45) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_resize_map_is_bilinear_not_nearest() -> None:
    out = resize_map(np.array([[0.0, 1.0]]), (8, 1))
    assert np.all(np.diff(out[0]) >= 0)
    assert 0.0 < out[0, 3] < 1.0  # interpolated values between the two samples
    assert out[0, 0] == pytest.approx(0.0) and out[0, -1] == pytest.approx(1.0)


def test_apply_colormap_indexes_lut() -> None:
    lut = colormap_lut("viridis")
    m = np.array([[0.0, 1.0, 0.5], [-3.0, 7.0, np.nan]])
    out = apply_colormap(m, "viridis")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], lut[[0, 255, 128]])
    np.testing.assert_array_equal(out[1], lut[[0, 255, 0]])  # clipped, nan -> 0


# ----------------------------------------------------------------------------------------------------------- overlay


def test_overlay_size_and_mode() -> None:
    out = overlay(_photo(60, 80), np.random.default_rng(0).random((7, 7)))
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB" and out.size == (80, 60)


def test_overlay_alpha_zero_is_original() -> None:
    img = _photo()
    np.testing.assert_array_equal(np.asarray(overlay(img, np.ones((7, 7)), alpha=0.0)), img)


def test_overlay_alpha_one_is_colormap() -> None:
    img = _photo()
    out = np.asarray(overlay(img, np.full((7, 7), 1.0), alpha=1.0, cmap="jet"))
    np.testing.assert_array_equal(out, np.broadcast_to(colormap_lut("jet")[255], img.shape))


def test_overlay_blend_formula() -> None:
    img = _photo()
    alpha = 0.45
    out = np.asarray(overlay(img, np.full((7, 7), 0.5), alpha=alpha, cmap="viridis")).astype(float)
    expected = (1 - alpha) * img + alpha * colormap_lut("viridis")[128].astype(float)
    assert np.abs(out - expected).max() <= 1.0


def test_overlay_box_outside_dimmed_inside_tinted() -> None:
    img = _photo(60, 80)
    box = (10, 5, 70, 55)
    out = np.asarray(overlay(img, np.ones((7, 7)), box=box, alpha=0.5))
    dimmed = ((img.astype(np.uint16) + 128) // 2).astype(np.uint8)
    inside = np.zeros(img.shape[:2], dtype=bool)
    inside[5:55, 10:70] = True
    np.testing.assert_array_equal(out[~inside], dimmed[~inside])
    assert np.all(np.any(out[inside] != img[inside], axis=-1))
    assert np.all(np.any(out[inside] != dimmed[inside], axis=-1))


def test_overlay_box_past_edge_is_cropped() -> None:
    img = _photo(60, 80)
    out = np.asarray(overlay(img, np.ones((7, 7)), box=(-10, -10, 40, 90), alpha=0.5))
    dimmed = ((img.astype(np.uint16) + 128) // 2).astype(np.uint8)
    np.testing.assert_array_equal(out[:, 40:], dimmed[:, 40:])
    assert out.shape == img.shape


@pytest.mark.parametrize(
    ("image", "cam"),
    [
        (np.zeros((10, 10), np.uint8), np.zeros((7, 7))),
        (np.zeros((10, 10, 4), np.uint8), np.zeros((7, 7))),
        (np.zeros((10, 10, 3), np.float32), np.zeros((7, 7))),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((1, 7, 7))),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((0, 7))),
    ],
)
def test_overlay_bad_shapes(image: np.ndarray, cam: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        overlay(image, cam)


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"alpha": -0.1}, {"box": (5, 5, 5, 9)}, {"box": (0, 0, 3)}])
def test_overlay_bad_args(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="expected"):
        overlay(_photo(), np.zeros((7, 7)), **kwargs)


# ---------------------------------------------------------------------------------------------------------- colorbar


def test_with_colorbar_wider_same_height() -> None:
    img = Image.fromarray(_photo(200, 150))
    out = with_colorbar(img, cmap="jet", vmin=0.0, vmax=1.0, label="score")
    assert out.mode == "RGB"
    assert out.height == img.height and out.width > img.width + 14
    np.testing.assert_array_equal(np.asarray(out)[:, :150], np.asarray(img))


def test_with_colorbar_orientation_top_is_vmax() -> None:
    img = Image.new("RGB", (100, 200), (255, 255, 255))
    out = np.asarray(with_colorbar(img, cmap="viridis", vmin=-1.0, vmax=1.0)).astype(int)
    lut = colormap_lut("viridis").astype(int)
    strip = out[:, 100:]
    # find the bar's columns: pixels close to the top / bottom ends of the colormap
    top_hits = np.argwhere(np.abs(strip - lut[255]).sum(-1) <= 6)
    bottom_hits = np.argwhere(np.abs(strip - lut[0]).sum(-1) <= 6)
    assert len(top_hits) and len(bottom_hits)
    assert top_hits[:, 0].max() < bottom_hits[:, 0].min()
    bar_rows = np.concatenate([top_hits[:, 0], bottom_hits[:, 0]])
    assert 0.7 * 200 <= bar_rows.max() - bar_rows.min() + 1 <= 0.9 * 200


def test_with_colorbar_label_adds_width() -> None:
    img = Image.new("RGB", (50, 120))
    plain = with_colorbar(img, cmap="jet", vmin=0, vmax=1)
    labelled = with_colorbar(img, cmap="jet", vmin=0, vmax=1, label="weight")
    assert labelled.width > plain.width


def test_with_colorbar_bad_range() -> None:
    with pytest.raises(ValueError, match="expected"):
        with_colorbar(Image.new("RGB", (10, 10)), cmap="jet", vmin=1.0, vmax=0.0)
    with pytest.raises(ValueError, match="expected"):
        with_colorbar(Image.new("RGB", (10, 10)), cmap="jet", vmin=0.0, vmax=math.inf)


@pytest.mark.parametrize(
    ("v", "text"),
    [(1.0, "1"), (0.5, "0.5"), (0.0, "0"), (-0.0, "0"), (-0.023, "-0.023"), (1.2e-05, "1.2e-05"), (123.4, "123")],
)
def test_format_tick(v: float, text: str) -> None:
    assert figures._format_tick(v) == text


# ------------------------------------------------------------------------------------------------------------- panel


@pytest.mark.parametrize(
    ("k", "columns", "tile", "gap"), [(10, None, 96, 4), (5, 2, 64, 3), (1, None, 32, 0), (7, 7, 50, 2)]
)
def test_feature_panel_size(k: int, columns: int | None, tile: int, gap: int) -> None:
    maps = np.random.default_rng(1).standard_normal((k, 7, 9))
    out = feature_panel(maps, list(range(k)), tile=tile, columns=columns, gap=gap)
    cols = columns if columns is not None else math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    strip = figures._label_strip_height(tile)
    assert 10 <= strip <= 24  # room for a legible caption
    assert out.mode == "RGB"
    assert out.size == (cols * tile + (cols + 1) * gap, rows * (tile + strip) + (rows + 1) * gap)


def test_feature_panel_tiles_normalized_individually_and_caption_below() -> None:
    maps = np.stack([np.full((4, 4), 0.0), np.full((4, 4), 100.0)])
    maps[0, 0, 0] = 1.0  # tile 0 ranges 0..1, tile 1 is constant -> zeros
    maps[1, 3, 3] = 300.0  # tile 1 now ranges 100..300
    out = np.asarray(feature_panel(maps, [5, 17], tile=40, columns=2, gap=4, cmap="gray"))
    # top-left block of each tile is its max/min respectively after per-tile normalization
    assert tuple(out[4, 4]) == (255, 255, 255)
    assert tuple(out[4, 4 + 40 + 4]) == (0, 0, 0)
    assert tuple(out[4 + 39, 4 + 40 + 4 + 39]) == (255, 255, 255)
    strip = out[4 + 40 : 4 + 40 + figures._label_strip_height(40), 4 : 4 + 40]
    assert (strip < 128).any()  # dark caption text drawn under the tile


def test_feature_panel_bad_input() -> None:
    with pytest.raises(ValueError, match="expected"):
        feature_panel(np.zeros((7, 7)), [0])
    with pytest.raises(ValueError, match="expected"):
        feature_panel(np.zeros((3, 7, 7)), [0, 1])


# ------------------------------------------------------------------------------------------------------------ kernels


def test_kernel_grid_rgb_scaled_over_whole_set() -> None:
    k = np.zeros((2, 3, 3, 3))
    k[0] = 2.0  # strongest -> white
    k[1] = 1.0  # half -> mid grey, not re-stretched per tile
    k[1, :, 0, 0] = 0.0  # set minimum -> black
    out = np.asarray(kernel_grid(k, rgb=True, tile=30, columns=2, gap=3))
    assert out.shape == (30 + 2 * 3, 2 * 30 + 3 * 3, 3)
    assert tuple(out[3 + 15, 3 + 15]) == (255, 255, 255)
    assert tuple(out[3 + 15, 3 + 30 + 3 + 15]) in {(127, 127, 127), (128, 128, 128)}
    assert tuple(out[3, 3 + 30 + 3]) == (0, 0, 0)


def test_kernel_grid_diverging_zero_mid_and_max_top() -> None:
    k = np.zeros((2, 1, 3, 3))
    k[1, 0, 1, 1] = 0.25
    k[1, 0, 0, 0] = -0.1
    grid = kernel_grid(k, rgb=False, tile=30, columns=2, gap=3, cmap="bwr")
    out = np.asarray(grid)
    lut = colormap_lut("bwr")
    mid = apply_colormap(np.array([[0.5]]), "bwr")[0, 0]
    np.testing.assert_array_equal(mid, lut[128])
    np.testing.assert_array_equal(out[3 + 15, 3 + 15], mid)  # zero kernel
    np.testing.assert_array_equal(out[3 + 15, 3 + 30 + 3 + 15], lut[255])  # +m
    negative = apply_colormap(np.array([[(-0.1 / 0.25 + 1) / 2]]), "bwr")[0, 0]
    np.testing.assert_array_equal(out[3 + 2, 3 + 30 + 3 + 2], negative)  # -0.1 scaled by the set's m = 0.25
    grid_w = 2 * 30 + 3 * 3
    assert grid.width > grid_w  # colour bar appended


def test_kernel_grid_all_zero_is_mid_colour() -> None:
    out = np.asarray(kernel_grid(np.zeros((1, 1, 1, 1)), rgb=False, tile=20, gap=2, cmap="bwr"))
    np.testing.assert_array_equal(out[2:22, 2:22], np.broadcast_to(colormap_lut("bwr")[128], (20, 20, 3)))


def test_kernel_grid_one_by_one_kernels_and_labels() -> None:
    k = np.random.default_rng(2).standard_normal((5, 3, 1, 1))
    out = kernel_grid(k, rgb=True, labels=[f"{i}/0" for i in range(5)], tile=24, gap=2)
    cols, rows = 3, 2
    strip = figures._label_strip_height(24)
    assert out.size == (cols * 24 + (cols + 1) * 2, rows * (24 + strip) + (rows + 1) * 2)
    tile0 = np.asarray(out)[2:26, 2:26]
    assert (tile0 == tile0[0, 0]).all()  # a 1x1 kernel fills its tile with one colour


@pytest.mark.parametrize(
    ("kernels", "rgb"),
    [(np.zeros((4, 1, 3, 3)), True), (np.zeros((4, 3, 3, 3)), False), (np.zeros((4, 3, 3)), False)],
)
def test_kernel_grid_bad_shapes(kernels: np.ndarray, rgb: bool) -> None:
    with pytest.raises(ValueError, match="expected"):
        kernel_grid(kernels, rgb=rgb)


def test_kernel_grid_label_count() -> None:
    with pytest.raises(ValueError, match="expected"):
        kernel_grid(np.zeros((4, 1, 3, 3)), rgb=False, labels=["a"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: normalize_map(np.array(["a"])),
        lambda: resize_map(np.zeros(5), (4, 4)),
        lambda: apply_colormap(np.zeros((2, 2, 2)), "jet"),
        lambda: apply_colormap(np.zeros((0, 3)), "jet"),
    ],
)
def test_shape_errors_say_expected(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="expected"):
        call()


def test_resize_map_bad_size() -> None:
    with pytest.raises(ValueError, match="expected"):
        resize_map(np.zeros((3, 3)), (0, 4))


# ---------------------------------------------------------------------------------------------------------------- io


def test_save_jpeg_atomic_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "fig.jpg"
    save_jpeg(Image.fromarray(_photo()), target, quality=90)
    assert os.listdir(target.parent) == ["fig.jpg"]
    with Image.open(target) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (80, 60)
        assert np.abs(np.asarray(im).astype(int) - _photo().astype(int)).mean() < 4
    save_jpeg(Image.new("RGBA", (5, 5), (0, 0, 0, 0)), str(target))  # replaces; alpha over white
    assert os.listdir(target.parent) == ["fig.jpg"]
    with Image.open(target) as im:
        assert im.size == (5, 5) and np.asarray(im).min() > 240


def test_save_jpeg_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "fig.jpg"
    with pytest.raises(ValueError, match="expected"):
        save_jpeg(Image.new("RGB", (4, 4)), target, quality=0)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(OSError):
        save_jpeg(Image.new("RGB", (4, 4)), tmp_path / "dir.jpg")
    assert sorted(os.listdir(tmp_path)) == ["dir.jpg"]


# -------------------------------------------------------------------------------------------------------- throughput


def test_overlay_throughput_sanity() -> None:
    """Many overlays at display size in a loop: results stay correct and independent (no timing assertion)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)
    cams = rng.random((200, 7, 7))
    first = np.asarray(overlay(img, cams[0]))
    outs = [overlay(img, cam, box=(16, 16, 432, 432)) for cam in cams]
    assert all(o.size == (448, 448) for o in outs)
    np.testing.assert_array_equal(np.asarray(overlay(img, cams[0])), first)  # no hidden state between calls
    assert len({hash(o.tobytes()) for o in outs}) == len(cams)


# ------------------------------------------------------------------ what the panels select (methods/kernels.py,
# methods/feature_maps.py): the fixtures elsewhere never cut, so a wrong ranking would go unseen


def test_kernels_ranked_by_l2_norm_and_cut_at_max_kernels() -> None:
    import torch
    from torch import nn

    from reportgen.methods.kernels import select_kernels

    rgb = nn.Conv2d(3, 5, 2, bias=False)
    scales = [1.0, 5.0, 3.0, 0.5, 4.0]
    with torch.no_grad():
        for o, s in enumerate(scales):
            rgb.weight[o] = s * (1 if o % 2 else -1)  # the sign does not count, the norm does
    sel = select_kernels(rgb, 3, "conv")
    assert sel.rgb and sel.total == 5 and sel.labels == ["1", "4", "2"]
    assert torch.equal(sel.kernels, rgb.weight[[1, 4, 2]])

    grey = nn.Conv2d(2, 2, 1, bias=False)  # kernels (output/input): 0/0 0/1 1/0 1/1
    with torch.no_grad():
        grey.weight.copy_(torch.tensor([1.0, -7.0, 3.0, 2.0]).view(2, 2, 1, 1))
    sel = select_kernels(grey, 2, "conv")
    assert not sel.rgb and sel.total == 4 and sel.labels == ["0/1", "1/0"]
    assert sel.kernels.flatten().tolist() == [-7.0, 3.0]
    assert select_kernels(grey, 100, "conv").labels == ["0/1", "1/0", "1/1", "0/0"]


def test_feature_maps_are_the_top_k_channels_by_mean_activation() -> None:
    import torch

    from reportgen.methods.feature_maps import top_channels

    a = torch.zeros(2, 4, 2, 2)
    a[0, :, 0, 0] = torch.tensor([4.0, 8.0, 0.0, 12.0])  # means 1, 2, 0, 3
    a[0, 2] = torch.tensor([[0.0, 9.0], [-9.0, 0.0]])  # the largest peak, but mean 0
    a[1, :, 1, 1] = torch.tensor([-4.0, 0.0, 4.0, 2.0])
    maps, idx, means = top_channels(a, 2)
    assert idx.tolist() == [[3, 1], [2, 3]]
    assert torch.allclose(means, torch.tensor([[3.0, 2.0], [1.0, 0.5]]))
    assert maps.shape == (2, 2, 2, 2) and torch.equal(maps[0, 0].float(), a[0, 3])
    assert top_channels(a, 10)[1].shape == (2, 4)  # k capped at the channels there are


# ------------------------------------------------------------------- colour bars as HTML text (report.normalize)


def test_bar_ticks_ends_are_the_values_and_inner_ticks_round_and_placed() -> None:
    from reportgen.figures import bar_ticks

    for lo, hi in [(0.0, 1.0), (0.0123, 0.987), (-2.0, 5.0), (1e-5, 3e-4), (0.3, 0.31), (0.0, 3.7)]:
        ticks = bar_ticks(lo, hi)
        assert ticks[0] == (lo, 0.0) and ticks[-1] == (hi, 1.0)
        assert 3 <= len(ticks) <= 4
        for v, at in ticks[1:-1]:
            assert at == pytest.approx((v - lo) / (hi - lo))
            assert 0.3 <= at <= 0.7
    assert [v for v, _ in bar_ticks(-2.0, 5.0)] == [-2.0, 2.0, 5.0]  # round values, 30% from the ends
    assert [v for v, _ in bar_ticks(0.0, 1.0)] == [0.0, 0.5, 1.0]
    assert bar_ticks(0.3, 0.31)[1][0] == pytest.approx(0.305)  # no round value fits: the midpoint
    assert bar_ticks(2.0, 2.0) == [(2.0, 0.0)]
    with pytest.raises(ValueError, match="expected"):
        bar_ticks(1.0, 0.0)


def test_css_gradient_runs_through_the_lut_low_to_high() -> None:
    import re

    from reportgen.figures import css_gradient

    text = css_gradient("viridis")
    stops = re.findall(r"#([0-9a-f]{6}) ([0-9.]+)%", text)
    assert text.startswith("linear-gradient(to right, ") and len(stops) == 17
    lut = colormap_lut("viridis")
    assert bytes.fromhex(stops[0][0]) == bytes(lut[0]) and float(stops[0][1]) == 0
    assert bytes.fromhex(stops[-1][0]) == bytes(lut[255]) and float(stops[-1][1]) == 100
    assert bytes.fromhex(stops[8][0]) == bytes(lut[128])  # the middle stop: 8 * 255 / 16 = 127.5 -> 128


def test_scale_map_on_a_given_scale() -> None:
    from reportgen.figures import scale_map

    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(scale_map(m, 0.0, 4.0), [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(scale_map(m, 0.0, 2.0), [[0, 0.5], [1, 1]])  # clipped above
    np.testing.assert_array_equal(scale_map(m, m.min(), m.max()), normalize_map(m))
    assert not scale_map(m, 1.0, 1.0).any()


def _css_rules(text: str) -> list[tuple[str, str, str]]:
    """(media, selector, declarations) of each rule of a stylesheet (one level of @media blocks)."""
    import re

    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out, media, pos = [], "", 0
    while True:
        m = re.compile(r"\s*([^{}]*)([{}])").match(text, pos)
        if m is None:
            return out
        head, brace = m.group(1).strip(), m.group(2)
        pos = m.end()
        if brace == "}":
            media = ""  # the end of an @media block
        elif head.startswith("@media"):
            media = head
        else:
            close = text.index("}", pos)
            out.extend((media, sel.strip(), text[pos:close]) for sel in head.split(","))
            pos = close + 1


def _font_px(decl: str) -> float | None:
    import re

    m = re.search(r"font-size:\s*([0-9.]+)(px|pt)", decl)
    if m is None:
        return None
    return float(m.group(1)) * (1.0 if m.group(2) == "px" else 96 / 72)


def test_colour_bar_text_is_11px_on_screen_and_7pt_in_print() -> None:
    css = (Path(__file__).resolve().parents[1] / "templates" / "panels.css").read_text(encoding="utf-8")
    rules = _css_rules(css)
    for cls in (".cbar-ticks", ".cbar-label"):
        screen = [_font_px(d) for media, sel, d in rules if not media and sel == cls and _font_px(d)]
        printed = [_font_px(d) for media, sel, d in rules if "print" in media and sel == cls and _font_px(d)]
        assert screen and screen[-1] >= 11, cls
        assert printed and printed[-1] >= 7 * 96 / 72 - 1e-9, cls
    # nothing in panels.css sets a smaller size on a tick itself
    assert all(_font_px(d) is None for _, sel, d in rules if sel.startswith(".cbar-tick") and sel != ".cbar-ticks")
    assert any(sel == ".cbar-ticks" for _, sel, _ in rules) and len(rules) > 10  # the parser saw the whole file


def _render_panel(tmp_path: Path, entry: dict) -> str:
    """The panel macro rendered into a page with the report's stylesheets (report.css, then panels.css)."""
    from reportgen import report

    env = report._environment()
    page = env.from_string('{% from "_panel.html.j2" import panel %}<!DOCTYPE html><html><head><meta charset="utf-8">'
                           "<style>{{ css }}</style></head><body><main><div class=\"grid cam-grid n-2\">"
                           "{{ panel(p, g, i) }}{{ panel(p, g, i) }}</div></main></body></html>")
    (tmp_path / "a.jpg").write_bytes(b"")
    Image.new("RGB", (96, 72), (10, 120, 200)).save(tmp_path / "a.jpg")
    return page.render(css=Markup(report._read_css()), p=entry, g={"layer": "features.6", "target_name": "cat"},
                       i={"path": "x.png"})


def _panel_entry() -> dict:
    from reportgen.drawing import colour_bar

    return {"method": "gradcam", "title": "Grad-CAM = XGrad-CAM = HiResCAM", "image": "a.jpg", "width": 96,
            "height": 72, "methods": ["gradcam", "xgradcam", "hirescam"],
            "bar": colour_bar("jet", 0.0, 0.00318, "Grad-CAM, raw values; colours min–max per map")}


def test_panel_bar_is_html_text_with_the_ticks_and_label(tmp_path: Path) -> None:
    from html.parser import HTMLParser

    html = _render_panel(tmp_path, _panel_entry())

    class Ticks(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ticks, self.label, self._in = [], [], None

        def handle_starttag(self, tag, attrs):
            cls = dict(attrs).get("class", "")
            self._in = "tick" if "cbar-tick" in cls else "label" if cls == "cbar-label" else None

        def handle_data(self, data):
            if self._in == "tick":
                self.ticks.append(data)
            elif self._in == "label":
                self.label.append(data)
            self._in = None

    parsed = Ticks()
    parsed.feed(html)
    assert parsed.ticks == ["0", "0.001", "0.002", "0.00318"] * 2  # real values: the ends and round ones between
    assert parsed.label == ["Grad-CAM, raw values; colours min–max per map"] * 2
    assert "linear-gradient(to right, #000080 0%" in html
    assert "<text" not in html and 'class="panel panel-same"' in html


def test_panel_bar_ticks_are_at_least_7pt_in_the_pdf(tmp_path: Path) -> None:
    import io

    import pypdf
    import weasyprint

    html = _render_panel(tmp_path, _panel_entry())
    pdf = weasyprint.HTML(string=html, base_url=str(tmp_path)).write_pdf()
    sizes: dict[str, float] = {}

    def visit(text, cm, tm, font_dict, font_size):
        scale = float(np.hypot(tm[0], tm[1]) * np.hypot(cm[0], cm[1]))
        if text.strip():
            sizes.setdefault(text.strip(), font_size * scale)

    pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text(visitor_text=visit)
    for tick in ("0.001", "0.002", "0.00318"):
        assert tick in sizes, sorted(sizes)
        assert sizes[tick] >= 7 - 0.05, (tick, sizes[tick])
    label = next(k for k in sizes if k.startswith("Grad-CAM, raw"))
    assert sizes[label] >= 7 - 0.05


# ----------------------------------------------------------------------- report.normalize on hand-made maps


_METHODS = [("gradcam", "Grad-CAM", True), ("layercam", "LayerCAM", True), ("saliency", "Saliency", False)]


def _hand_image(index: int, grad: np.ndarray, layer: np.ndarray, sal: np.ndarray):
    from reportgen.images import ImageRecord
    from reportgen.results import PREDICTIONS, ImageResult, ResultKey

    def entry(m: np.ndarray) -> tuple[dict, dict]:
        return {"maps": m[None].astype(np.float32), "targets": np.array([1])}, {}

    results = {PREDICTIONS: ({"logits": np.array([0.0, 2.0], dtype=np.float32)}, {}),
               ResultKey.cam("gradcam", "L"): entry(grad), ResultKey.cam("layercam", "L"): entry(layer),
               ResultKey.cam("saliency", ""): entry(sal)}
    rec = ImageRecord(index, Path(f"img{index}.png"), f"img{index}.png", f"img{index}-png", None, "0" * 64)
    return ImageResult(rec, results, np.zeros((40, 40, 3), np.uint8), (0, 0, 40, 40), None)


_IMAGES = [  # (grad-CAM, LayerCAM, saliency) of two images
    (np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[1.0, 5.0], [5.0, 9.0]]), np.arange(100.0).reshape(10, 10)),
    (np.array([[-1.0, 0.0], [0.0, 6.0]]), np.array([[2.0, 3.0], [3.0, 4.0]]), np.arange(100.0).reshape(10, 10) * 3),
]


def _draw_hand(tmp_path: Path, mode: str) -> list[dict]:
    from dataclasses import replace

    from reportgen.config import ReportOptions
    from reportgen.drawing import DrawContext, draw_image
    from reportgen.mapscales import DATASET_WIDE, ScaleTable

    images = [_hand_image(i, *maps) for i, maps in enumerate(_IMAGES)]
    ctx = DrawContext(tmp_path, ["zero", "one"], ReportOptions(normalize=mode, alpha=1.0), _METHODS, ["L"], [])
    if mode in DATASET_WIDE:
        table = ScaleTable(mode)
        for image in images:
            for key, (tensors, _) in image.results.items():
                if key.kind == "cam":
                    table.add(key.method, key.layer, tensors["maps"])
        ctx = replace(ctx, scales=table.scales())
    return [draw_image(ctx, image) for image in images]


def _scales(entry: dict) -> dict[str, list[float]]:
    return {p["title"]: p["scale"] for g in entry["cams"] for p in g["panels"]}


@pytest.mark.parametrize(("mode", "expected"), [
    ("per_map", [{"Grad-CAM": [0, 3], "LayerCAM": [1, 9], "Saliency": [0, 98.01]},
                 {"Grad-CAM": [-1, 6], "LayerCAM": [2, 4], "Saliency": [0, 294.03]}]),
    ("per_image", [{"Grad-CAM": [0, 9], "LayerCAM": [0, 9], "Saliency": [0, 98.01]},
                   {"Grad-CAM": [-1, 6], "LayerCAM": [-1, 6], "Saliency": [0, 294.03]}]),
    ("per_method", [{"Grad-CAM": [-1, 6], "LayerCAM": [1, 9], "Saliency": [0, 294.03]}] * 2),
    ("shared", [{"Grad-CAM": [-1, 9], "LayerCAM": [-1, 9], "Saliency": [0, 294.03]}] * 2),
])
def test_normalize_modes_give_the_scales_they_claim(tmp_path: Path, mode: str, expected: list[dict]) -> None:
    entries = _draw_hand(tmp_path, mode)
    for entry, want in zip(entries, expected, strict=True):
        got = _scales(entry)
        assert got.pop("Saliency overlay") == got["Saliency"]
        assert got == {k: pytest.approx(v) for k, v in want.items()}
        bars = {p["title"]: p["bar"] for g in entry["cams"] for p in g["panels"]}
        assert bars["Grad-CAM"]["ticks"][0]["text"] == figures.format_tick(want["Grad-CAM"][0])
        assert bars["Grad-CAM"]["ticks"][-1]["text"] == figures.format_tick(want["Grad-CAM"][1])
        said = {"per_map": "min–max per map", "per_image": "this image's 2 layer maps",
                "per_method": "one scale for this method at L over 2 images",
                "shared": "every layer map of the run"}[mode]
        assert said in bars["LayerCAM"]["label"] and "Grad-CAM, raw values" in bars["Grad-CAM"]["label"]
        assert "99th percentile" in bars["Saliency"]["label"]
    # the colours follow the scale: the last pixel of the first image's Grad-CAM is its value 3 (bilinear
    # upscaling keeps the corners), coloured at (3 - lo) / (hi - lo) with alpha 1
    lo, hi = expected[0]["Grad-CAM"]
    panel = next(p for g in entries[0]["cams"] for p in g["panels"] if p["title"] == "Grad-CAM")
    with Image.open(tmp_path / panel["image"]) as img:
        corner = np.asarray(img.convert("RGB"))[-1, -1].astype(int)
    want = colormap_lut("jet")[round((3 - lo) / (hi - lo) * 255)].astype(int)
    assert np.abs(corner - want).max() <= 12  # JPEG


def test_scale_table_memory_does_not_grow_with_images() -> None:
    from reportgen.mapscales import ScaleTable

    table = ScaleTable("per_method")
    for i in range(500):
        table.add("gradcam", "L", np.full((1, 2, 2), float(i)))
    assert table.scales() == {"gradcam@L": (0.0, 499.0, 500)}
    assert len(table._ranges) == 1


def test_a_constant_map_says_so_on_its_bar(tmp_path: Path) -> None:
    from reportgen.config import ReportOptions
    from reportgen.drawing import DrawContext, draw_image

    image = _hand_image(0, np.zeros((2, 2)), np.array([[1.0, 5.0], [5.0, 9.0]]), np.arange(100.0).reshape(10, 10))
    entry = draw_image(DrawContext(tmp_path, ["a", "b"], ReportOptions(), _METHODS, ["L"], []), image)
    bars = {p["title"]: p["bar"]["label"] for g in entry["cams"] for p in g["panels"]}
    assert bars["Grad-CAM"].endswith("this map is constant: every value is 0")
    assert "constant" not in bars["LayerCAM"]


# ------------------------------------------------------------------------- identical maps, captions, true class


def test_identical_groups_clusters_equal_maps_only() -> None:
    from reportgen.drawing import identical_groups

    a = np.arange(12.0).reshape(3, 4)
    maps = [a, a * (1 + 1e-6), a + 1.0, np.zeros((3, 4)), np.zeros((3, 4)), a.T.copy()]
    assert identical_groups(maps) == [[0, 1], [2], [3], [4], [5]]  # constant maps are equal to none


def test_gradcam_xgradcam_hirescam_are_drawn_once_after_gap_and_linear(tmp_path: Path) -> None:
    """TinyCNN: features.6 (a ReLU) -> global average pool -> linear: the three CAMs are one map (their weights
    are all w_c / hw); at features.2 (followed by more convolutions) they differ."""
    import json

    from conftest import make_images, write_config
    from safetensors.numpy import load_file

    import reportgen

    make_images(tmp_path / "images", n=3)
    methods = ["gradcam", "xgradcam", "hirescam", "layercam"]
    cfg = write_config(tmp_path, tmp_path / "images", report={"pdf": False, "image_size": 64},
                       cams={"methods": methods, "layers": ["features.6", "features.2"], "target": "topk",
                             "top_k": 3}, kernels={"layers": ["features.2"]})
    out = reportgen.run(str(cfg)).output
    manifest = json.loads((out / "manifest.json").read_text())
    same_seen = 0
    for image in manifest["images"]:
        maps = load_file(str(out / image["maps_file"]))
        for group in (g for g in image["cams"] if g["layer"] == "features.6"):
            column = list(maps["cam/gradcam/features.6/targets"]).index(group["target_index"])
            g, x, h = (maps[f"cam/{m}/features.6"][column] for m in ("gradcam", "xgradcam", "hirescam"))
            assert np.allclose(g, x, rtol=1e-4, atol=1e-6 * max(g.max(), 1e-12))  # the reference: the arrays
            assert np.allclose(g, h, rtol=1e-4, atol=1e-6 * max(g.max(), 1e-12))
            titles = [p["title"] for p in group["panels"]]
            if np.ptp(g) > 0:
                same_seen += 1
                assert group["identical"] == [["gradcam", "xgradcam", "hirescam"]]
                assert titles == ["Grad-CAM = XGrad-CAM = HiResCAM", "LayerCAM"]
                assert group["panels"][0]["methods"] == ["gradcam", "xgradcam", "hirescam"]
            else:  # an all-zero map (the class's evidence is negative everywhere): not called identical
                assert group["identical"] == [] and len(titles) == 4
        for group in (g for g in image["cams"] if g["layer"] == "features.2"):
            assert group["identical"] == [] and len(group["panels"]) == 4
    assert same_seen >= 3
    kernels = manifest["kernels"][0]["caption"]
    assert "a tile labelled o/i is the kernel from input channel i to output channel o" in kernels


def test_true_class_map_sits_next_to_the_predicted_one() -> None:
    from reportgen.drawing import _true_class_beside

    groups = [{"target_index": c, "target_kind": f"top-{i + 1}"} for i, c in enumerate([4, 7, 2])]
    moved = _true_class_beside(groups, true_index=2, correct=False)
    assert [g["target_index"] for g in moved] == [4, 2, 7]
    assert moved[1]["true_class"] and moved[1]["target_kind"] == "top-3, the label's class"
    assert _true_class_beside(groups, true_index=4, correct=True) == groups
    assert _true_class_beside(groups, true_index=9, correct=False) == groups  # not among the targets


def test_feature_map_caption_says_what_is_shown(tmp_path: Path) -> None:
    from reportgen.config import ReportOptions
    from reportgen.drawing import DrawContext, _feature_maps
    from reportgen.results import ResultKey

    image = _hand_image(0, *_IMAGES[0])
    image.results[ResultKey.feature_maps("blocks.3")] = (
        {"maps": np.random.default_rng(0).random((3, 5, 6)).astype(np.float32), "channels": np.array([7, 2, 30])}, {})
    ctx = DrawContext(tmp_path, ["a", "b"], ReportOptions(), [], [], ["blocks.3"])
    (fm,) = _feature_maps(ctx, image, "assets/images/x", {})
    assert fm["shape"] == [3, 5, 6] and fm["channels"] == [7, 2, 30]
    assert fm["caption"].startswith("the 3 channels of blocks.3 with the highest mean activation on this image, "
                                    "each 5×6")
    assert "coloured min–max on its own" in fm["caption"] and "#n = the channel's index" in fm["caption"]


def test_dataset_wide_scale_through_a_run_and_its_warm_rerun(tmp_path: Path) -> None:
    """per_method: the drawing waits for every map's range; each method and layer gets one scale, the min and max
    over the run's maps files; a warm rerun links every image's figures from the figure cache."""
    import json

    from conftest import make_images, write_config
    from safetensors.numpy import load_file

    import reportgen

    make_images(tmp_path / "images", n=5)
    cfg = write_config(tmp_path, tmp_path / "images", report={"pdf": False, "image_size": 64,
                                                              "normalize": "per_method"},
                       cams={"methods": ["gradcam", "saliency"], "layers": ["features.2"]},
                       run={"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                            "batch_size": 2})
    first = reportgen.run(str(cfg))
    manifest = json.loads((first.output / "manifest.json").read_text())
    maps = [load_file(str(first.output / e["maps_file"])) for e in manifest["images"]]
    want = {"Grad-CAM": [min(float(m["cam/gradcam/features.2"].min()) for m in maps),
                         max(float(m["cam/gradcam/features.2"].max()) for m in maps)],
            "Saliency": [0.0, max(float(np.percentile(m["cam/saliency"][0], 99)) for m in maps)]}
    for entry in manifest["images"]:
        for group in entry["cams"]:
            for p in group["panels"]:
                assert p["scale"] == pytest.approx(want[p["title"].removesuffix(" overlay")], rel=1e-5)
                assert "over 5 images" in p["bar"]["label"]
    second = reportgen.run(str(cfg), force=True)
    assert second.stats.figures_restored == 5 and second.stats.figures_stored == 0
    again = json.loads((second.output / "manifest.json").read_text())
    assert [e["cams"] for e in again["images"]] == [e["cams"] for e in manifest["images"]]


def test_a_class_explained_twice_is_drawn_once(tmp_path: Path) -> None:
    """A target rule that names the same class twice for an image (its prediction and its label, when they agree)
    gives one group of panels; the maps file keeps both columns."""
    from safetensors.numpy import load_file

    from reportgen.config import ReportOptions
    from reportgen.drawing import DrawContext, draw_image
    from reportgen.results import ResultKey

    image = _hand_image(0, *_IMAGES[0])
    for key, (tensors, _) in list(image.results.items()):
        if key.kind == "cam":
            image.results[key] = ({"maps": np.concatenate([tensors["maps"]] * 2), "targets": np.array([1, 1])},
                                  {"target_kinds": '["predicted", "true"]'})
    entry = draw_image(DrawContext(tmp_path, ["a", "b"], ReportOptions(), _METHODS, ["L"], []), image)
    assert [(g["layer"], g["target_kind"]) for g in entry["cams"]] == [("L", "predicted"), ("", "predicted")]
    assert load_file(str(tmp_path / entry["maps_file"]))[ResultKey.cam("gradcam", "L").maps_name].shape == (2, 2, 2)
