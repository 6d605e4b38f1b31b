"""Overlays per second, one process: reportgen.figures (numpy + Pillow) vs one matplotlib figure per overlay.

Both draw the same thing from the same inputs: a 7x7 map over a 384x256 photo with a colour bar, written to a
file. Ours: ``normalize_map`` → ``overlay`` (bilinear resize, jet LUT, alpha 0.45) → ``with_colorbar`` →
``save_jpeg`` (atomic write, quality 88). Matplotlib, as the seed recipe and tutorials do: a figure, ``imshow`` of
the photo and of the map (bilinear, jet, alpha 0.45), ``colorbar``, ``savefig`` as PNG, ``close``.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import Bench, log, ratio

__all__ = ["run_draw"]


def _photo(width: int = 384, height: int = 256) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 220, yy / height * 200, (1 - xx / width) * 180], axis=-1)
    base += rng.normal(0, 12, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def run_draw(bench: Bench) -> None:
    s = bench.settings
    out = bench.workdir / "draw"
    out.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    cam = np.random.default_rng(4).random((7, 7)).astype(np.float32)
    try:
        from reportgen.figures import normalize_map, overlay, save_jpeg, with_colorbar

        def ours(i: int) -> None:
            img = overlay(photo, normalize_map(cam), cmap="jet", alpha=0.45)
            img = with_colorbar(img, cmap="jet", vmin=float(cam.min()), vmax=float(cam.max()), label="Grad-CAM")
            save_jpeg(img, out / f"ours-{i % 50}.jpg")

        ours(0)  # warm-up: colormap table, font
        reps = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(s.draw_overlays):
                ours(i)
            reps.append(time.perf_counter() - t0)
        t_ours = float(np.median(reps)) / s.draw_overlays
    except Exception as exc:
        bench.emit("draw", error=f"{type(exc).__name__}: {exc}")
        return
    log(f"draw: ours {1 / t_ours:.0f} overlays/s; matplotlib ...")
    t_mpl = None
    mpl_error = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def mpl(i: int) -> None:
            fig, ax = plt.subplots(figsize=(4.8, 2.56), dpi=100)
            ax.imshow(photo)
            im = ax.imshow(cam, cmap="jet", alpha=0.45, interpolation="bilinear", extent=(0, 384, 256, 0))
            fig.colorbar(im, ax=ax, label="Grad-CAM")
            ax.axis("off")
            fig.savefig(out / f"mpl-{i % 10}.png")
            plt.close(fig)

        mpl(0)
        t0 = time.perf_counter()
        for i in range(s.draw_matplotlib):
            mpl(i)
        t_mpl = (time.perf_counter() - t0) / s.draw_matplotlib
    except Exception as exc:
        mpl_error = f"{type(exc).__name__}: {exc}"
    fields = {"seconds": t_ours, "images_per_s": 1 / t_ours, "unit": "overlays (seconds are per overlay)",
              "overlays": s.draw_overlays, "reps": 3, "photo": [384, 256], "map": [7, 7],
              "timed": "normalize_map+overlay+with_colorbar+save_jpeg, single process"}
    if t_mpl is not None:
        fields["matplotlib"] = {"seconds": t_mpl, "images_per_s": 1 / t_mpl, "figures": s.draw_matplotlib,
                                "timed": "subplots+imshow x2+colorbar+savefig PNG+close"}
        fields["ratios"] = {"ours_vs_matplotlib": ratio(1 / t_ours, 1 / t_mpl)}
    else:
        fields["matplotlib_error"] = mpl_error
    bench.emit("draw", batch=1, **fields)
