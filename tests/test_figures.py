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
