"""Figures for papers: the maps a run drew, redrawn with matplotlib as PNG, vector PDF and SVG with real text.

The report's figures are fast numpy + Pillow JPEGs; a paper wants a few figures it can scale, with fonts that
match the text. ``write_paper_figures`` reads the run's own arrays (``maps/<id>.safetensors``) and report entries
(the photo as shown, each panel's colour scale and title) and writes, under ``<output>/figures/``:

* ``strip-<image id>.*``: one image's photo and one row of its methods (``figures.strips``);
* ``grid.*``: images (rows) × methods (columns) (``figures.grid``);
* ``kernels-<layer>.*``: a layer's kernel gallery (``figures.kernels``);
* ``class-average-<class>.*``: a class-average map (``write_class_average``, from an (h, w) array).

Each figure is written in every format of ``figures.formats`` (PNG at ``figures.dpi``; PDF with TrueType fonts,
``pdf.fonttype: 42``; SVG with text as ``<text>``, ``svg.fonttype: 'none'``) plus ``<name>.txt``, a one-paragraph
caption: what is shown, the method, layer, target and how the colours were scaled. The files are the same bytes on
every run (no dates, fixed SVG ids). Only matplotlib's object API is used (``Figure``), never ``pyplot``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reportgen.config import RunConfig
from reportgen.errors import ConfigError, RenderError
from reportgen.figures import bar_ticks, format_tick
from reportgen.mapscales import map_range
from reportgen.names import file_part

__all__ = ["check_figures", "write_paper_figures", "write_class_average", "class_average_figure", "FIGURES_DIR"]

FIGURES_DIR = "figures"
_PANEL_IN = 1.55  # a panel's width in inches: five fit a 7-inch text width... with the photo, six
_RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "reportgen", "font.size": 7,
       "axes.titlesize": 7.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5, "font.family": "DejaVu Sans"}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_METADATA = {"png": {"Software": "reportgen"}, "pdf": {"Creator": "reportgen", "Producer": "reportgen",
                                                       "CreationDate": None},
             "svg": {"Creator": "reportgen", "Date": None}}


# ---------------------------------------------------------------------------------------------------- validation


def _close(word: str, candidates: Sequence[str]) -> str:
    found = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5) if len(word) <= 200 else []
    return f"; close matches: {', '.join(repr(f) for f in found)}" if found else ""


def check_figures(cfg: RunConfig, image_paths: Iterable[str]) -> None:
    """Every image ``figures:`` names must be one of the run's images (paths under ``data.path``).

    Raises:
        ConfigError: one line per missing image, ``FILE:LINE: figures.strips[1]: no image 'x.jpg' in the run;
            close matches: ...``.
    """
    f = cfg.figures
    if not (f.strips or f.grid.images):
        return
    known = set(image_paths)
    problems = []
    for where, paths in (("figures.strips", f.strips), ("figures.grid.images", f.grid.images)):
        for i, path in enumerate(paths):
            if path not in known:
                problems.append(f"{cfg.where(f'{where}[{i}]')}: no image {path!r} in the run"
                                + _close(path, sorted(known)))
    if problems:
        raise ConfigError(problems)


# -------------------------------------------------------------------------------------------------- what to draw


class _Panel:
    """One map of one image as the report drew it: its array, scale, title, colormap and words."""

    def __init__(self, entry: dict, maps: Mapping[str, np.ndarray], group: dict, panel: dict, opts: Any):
        self.layer = group["layer"]
        key = f"cam/{panel['method']}/{self.layer}" if self.layer else f"cam/{panel['method']}"
        targets = [int(t) for t in maps[f"{key}/targets"]]
        column = targets.index(int(group["target_index"])) if int(group["target_index"]) in targets else 0
        self.cam = np.asarray(maps[key][column], dtype=np.float32)
        self.title = panel["title"].removesuffix(" overlay")
        self.methods = panel.get("methods", [panel["method"]])
        self.scale = tuple(panel.get("scale") or map_range(self.cam, input_level=not self.layer))
        self.words = panel["bar"]["label"] if "bar" in panel else self.title
        self.cmap = opts.colormap if self.layer else "inferno"
        self.alpha = opts.alpha if self.layer else 1.0
        self.group = group


def _find_panel(entry: dict, maps: Mapping[str, np.ndarray], method: str, layer: str | None, opts: Any
                ) -> _Panel | None:
    """The first target column's panel of ``method`` (at ``layer``, or the input for an input-level method)."""
    for group in entry["cams"]:
        if layer is not None and group["layer"] not in (layer, ""):
            continue
        for panel in group["panels"]:
            if panel.get("image", "").endswith("-map.jpg") or "legend" in panel:
                continue  # an input-level method's map twice (map, overlay): one; concept maps: not a class map
            if method in panel.get("methods", [panel["method"]]):
                return _Panel(entry, maps, group, panel, opts)
    return None


def _photo(root: Path, entry: dict) -> np.ndarray:
    with Image.open(root / entry["thumb"]) as img:
        return np.asarray(img.convert("RGB"))


def _read_maps(root: Path, entry: dict) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(root / entry["maps_file"]))


# ---------------------------------------------------------------------------------------------------------- draw


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.03, h_pad=0.02, wspace=0.1, hspace=0.02)
    return fig


def _wrap(title: str, width: int = 24) -> str:
    """A panel title on lines of at most about ``width`` characters, broken after ' = ', '/' or ' ' (so the
    titles of neighbouring panels never overlap)."""
    words = re.split(r"(?<= )|(?<=/)", title)
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word.rstrip()) > width:
            lines.append("")
        lines[-1] += word
    return "\n".join(line.rstrip() for line in lines)


def _show_photo(ax, photo: np.ndarray, title: str | None = None) -> None:
    h, w = photo.shape[:2]
    ax.imshow(photo, extent=(0, w, h, 0), interpolation="antialiased")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(_wrap(title))


def _show_map(ax, photo: np.ndarray | None, cam: np.ndarray, box: Sequence[int] | None, scale: Sequence[float],
              cmap: str, alpha: float, title: str) -> None:
    """A map over its photo (or alone) on ``ax`` and its horizontal colour bar under it, ticked like the report's
    bar (its ends and round values between); very small or large values show a common factor (×10⁻⁴)."""
    from matplotlib.colors import Normalize

    lo, hi = float(scale[0]), float(scale[1])
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    if photo is not None:
        h, w = photo.shape[:2]
        _show_photo(ax, photo)
        left, top, right, bottom = box if box is not None else (0, 0, w, h)
        art = ax.imshow(cam, cmap=cmap, norm=norm, alpha=alpha, extent=(left, right, bottom, top),
                        interpolation="bilinear")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
    else:
        art = ax.imshow(cam, cmap=cmap, norm=norm, interpolation="bilinear")
        ax.set_axis_off()
    ax.set_title(_wrap(title))
    bar = ax.figure.colorbar(art, ax=ax, location="bottom", fraction=0.06, pad=0.03, aspect=14)
    bar.solids.set_alpha(1.0)
    values = [v for v, _ in (bar_ticks(lo, hi) if hi >= lo else [(lo, 0.0)])]
    peak = max(abs(lo), abs(hi))
    power = int(np.floor(np.log10(peak))) if peak > 0 else 0
    if -2 <= power <= 3:
        bar.set_ticks(values, labels=[format_tick(v) for v in values])
    else:
        bar.set_ticks(values, labels=[format_tick(v / 10.0 ** power) for v in values])
        bar.set_label(f"×10{str(power).translate(_SUPERSCRIPT)}", labelpad=1)
    bar.outline.set_linewidth(0.5)


def _save(fig, folder: Path, stem: str, cfg: RunConfig, caption: str) -> list[Path]:
    import matplotlib

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with matplotlib.rc_context(_RC):
            for fmt in cfg.figures.formats:
                path = folder / f"{stem}.{fmt}"
                fig.savefig(path, format=fmt, dpi=cfg.figures.dpi, metadata=_METADATA[fmt])
                written.append(path)
        text = folder / f"{stem}.txt"
        text.write_text(" ".join(caption.split()) + "\n", encoding="utf-8")
        written.append(text)
    except OSError as exc:
        raise RenderError(f"cannot write the paper figure {folder.name}/{stem}: {exc}") from exc
    return written


def _target_words(group: dict) -> str:
    return f"target class {group['target_index']} {group['target_name']} ({group['target_kind']})"


def _prediction_words(entry: dict) -> str:
    top = entry["predictions"][0] if entry.get("predictions") else None
    said = f"predicted {top['class_name']} (p = {top['prob']:.2f})" if top else "no prediction"
    label = f"label {entry['label']}" if entry.get("label") is not None else "no label"
    return f"{label}, {said}"


def _strip(root: Path, cfg: RunConfig, entry: dict, methods: Sequence[str], layer: str | None):
    """One image: the photo and one row of panels, each with its colour bar; and its caption."""
    maps = _read_maps(root, entry)
    panels: list[_Panel] = []
    for m in methods:
        if any(m in p.methods for p in panels):
            continue  # drawn in an identical map's panel
        found = _find_panel(entry, maps, m, layer, cfg.report)
        if found is not None:
            panels.append(found)
    photo = _photo(root, entry)
    aspect = photo.shape[0] / photo.shape[1]
    n = len(panels) + 1
    with _rc():
        lines = max(_wrap(t).count("\n") + 1 for t in [entry["path"], *(p.title for p in panels)])
        fig = _figure(n * _PANEL_IN, (_PANEL_IN - 0.1) * aspect + 0.45 + 0.15 * lines)
        axes = fig.subplots(1, n, squeeze=False)[0]
        _show_photo(axes[0], photo, entry["path"])
        for ax, p in zip(axes[1:], panels, strict=True):
            _show_map(ax, photo, p.cam, entry.get("box"), p.scale, p.cmap, p.alpha, p.title)
    layers = sorted({p.layer for p in panels if p.layer})
    target = _target_words(panels[0].group) if panels else "no target"
    caption = (f"{entry['path']} ({_prediction_words(entry)}) and its maps for {target}: "
               + "; ".join(f"{p.title} at {p.layer or 'the input pixels'}" for p in panels) + ". "
               + _colour_words(cfg, panels) + f" Model: {cfg.model.name}. Drawn by reportgen from "
               f"{entry['maps_file']}." + (f" Layers: {', '.join(layers)}." if layers else ""))
    return fig, caption


def _colour_words(cfg: RunConfig, panels: Sequence[_Panel]) -> str:
    opts = cfg.report
    how = {p.words.split(", ", 1)[-1] if ", " in p.words else p.words for p in panels}
    return (f"Layer maps are overlaid on the photo with the {opts.colormap} colormap at opacity {opts.alpha}, "
            "input-level maps drawn alone with inferno; the bar under each map gives its raw values ("
            f"report.normalize: {opts.normalize}: " + "; ".join(sorted(how)) + ").")


def _grid(root: Path, cfg: RunConfig, entries: Sequence[dict], methods: Sequence[str], layer: str | None):
    """Images (rows) × methods (columns), each panel with its colour bar; and the caption."""
    rows = []
    for entry in entries:
        maps = _read_maps(root, entry)
        rows.append((entry, _photo(root, entry), [_find_panel(entry, maps, m, layer, cfg.report) for m in methods]))
    aspect = max(photo.shape[0] / photo.shape[1] for _, photo, _ in rows)
    n = len(methods) + 1
    titles = [next((p.title for _, _, ps in rows for p in [ps[j]] if p is not None), methods[j])
              for j in range(len(methods))]
    with _rc():
        lines = max(_wrap(t).count("\n") + 1 for t in titles)
        fig = _figure(n * _PANEL_IN, len(rows) * ((_PANEL_IN - 0.1) * aspect + 0.5) + 0.15 * lines)
        axes = fig.subplots(len(rows), n, squeeze=False)
        for r, (entry, photo, panels) in enumerate(rows):
            _show_photo(axes[r, 0], photo, entry["path"])
            for j, p in enumerate(panels, start=1):
                ax = axes[r, j]
                if p is None:
                    ax.set_axis_off()
                    ax.set_title(f"{methods[j - 1]}: no map")
                    continue
                _show_map(ax, photo, p.cam, entry.get("box"), p.scale, p.cmap, p.alpha,
                          titles[j - 1] if r == 0 else "")
    found = [p for _, _, ps in rows for p in ps if p is not None]
    caption = (f"{len(rows)} images (rows: " + "; ".join(f"{e['path']}, {_prediction_words(e)}" for e, _, _ in rows)
               + f") and their maps (columns: {', '.join(titles)}"
               + (f", layer {layer}" if layer else "") + "), each for its image's first target column ("
               + (found[0].group["target_kind"] if found else "none") + "). " + _colour_words(cfg, found)
               + f" Model: {cfg.model.name}.")
    return fig, caption


def _kernels(layer: str, kernels: np.ndarray, labels: Sequence[str], rgb: bool, total: int):
    """A layer's kernels as a grid of tiles (a diverging colour scale centred at 0, or RGB); and the caption."""
    from matplotlib.colors import Normalize

    k = np.nan_to_num(np.asarray(kernels, dtype=np.float32))
    n = k.shape[0]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tile = min(0.5, 6.0 / cols)
    with _rc():
        fig = _figure(cols * tile + (0 if rgb else 0.6), rows * (tile + (0.12 if n <= 64 else 0)) + 0.3)
        grid = fig.add_gridspec(rows, cols + (0 if rgb else 1), width_ratios=[1] * cols + ([] if rgb else [0.15]))
        m = float(np.abs(k).max()) or 1.0
        norm = Normalize(-m, m)
        art = None
        for i in range(n):
            ax = fig.add_subplot(grid[i // cols, i % cols])
            if rgb:
                lo, hi = float(k.min()), float(k.max())
                ax.imshow(((k[i] - lo) / (hi - lo if hi > lo else 1.0)).transpose(1, 2, 0), interpolation="nearest")
            else:
                art = ax.imshow(k[i, 0], cmap="bwr", norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_linewidth(0.3)
            if n <= 64:
                ax.set_xlabel(str(labels[i]), fontsize=5, labelpad=1)
        if art is not None:
            bar = fig.colorbar(art, cax=fig.add_subplot(grid[:, cols]))
            bar.set_label("weight")
    what = "filters" if rgb else "kernels"
    key = ("each tile an output channel's 3×kh×kw filter as RGB, scaled over the shown filters; a tile's label is "
           "its output channel" if rgb else
           "blue < 0 < red on one scale centred at zero (the colour bar); a tile labelled o/i is the kernel from "
           "input channel i to output channel o")
    caption = (f"{n} of the {total} {what} of layer {layer} with the largest L2 norm, largest first: {key}.")
    return fig, caption


def class_average_figure(avg: np.ndarray, photo: np.ndarray | None = None, *, title: str, cmap: str = "jet",
                         alpha: float = 0.45):
    """A class-average map as a matplotlib ``Figure``: over ``photo`` (e.g. the class's mean image), or alone.

    Args:
        avg: ``(h, w)`` real array (the mean of the class's maps at one layer); coloured min–max.
        photo: ``(H, W, 3)`` uint8, or None for the map alone.
        title: the panel's title.

    Raises:
        ValueError: on a wrong shape.
    """
    a = np.asarray(avg, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a class-average map of shape (h, w), got shape {a.shape}")
    if photo is not None and (photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8):
        raise ValueError(f"expected photo of shape (H, W, 3) uint8, got shape {photo.shape} dtype {photo.dtype}")
    aspect = (photo.shape[0] / photo.shape[1]) if photo is not None else a.shape[0] / a.shape[1]
    with _rc():
        fig = _figure(2.2, 2.1 * aspect + 0.65)
        _show_map(fig.add_subplot(), photo, a, None,
                  map_range(a, input_level=False), cmap, alpha if photo is not None else 1.0, title)
    return fig


def write_class_average(output_dir: str | Path, cfg: RunConfig, class_name: str, avg: np.ndarray,
                        photo: np.ndarray | None = None, *, method: str, layer: str, images: int) -> list[Path]:
    """Write ``figures/class-average-<class>.*``: the mean of ``images`` maps of ``method`` at ``layer`` for the
    class; returns the files written."""
    fig = class_average_figure(avg, photo, title=f"{class_name}: mean {method}", cmap=cfg.report.colormap,
                               alpha=cfg.report.alpha)
    caption = (f"The mean {method} map at layer {layer} over the {images} images of class {class_name}, "
               f"{'over the photo' if photo is not None else 'alone'}; colours min–max of the mean map "
               f"({cfg.report.colormap}); the bar gives its raw values. Model: {cfg.model.name}.")
    return _save(fig, Path(output_dir) / FIGURES_DIR, f"class-average-{_slug(class_name)}", cfg, caption)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "class"


class _rc:
    """matplotlib's settings for these figures while they are built (fonts, sizes) and saved."""

    def __enter__(self):
        import matplotlib

        self._ctx = matplotlib.rc_context(_RC)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------- write


def write_paper_figures(output_dir: str | Path, cfg: RunConfig, images: Sequence[dict], *,
                        kernels: Mapping[str, tuple[np.ndarray, list[str], bool, int]] | None = None) -> list[Path]:
    """Write the figures ``cfg.figures`` selects under ``output_dir/figures/``; return the files written.

    Args:
        output_dir: the run's (staging) folder: ``maps/`` and ``assets/`` are read from it.
        images: the run's image entries (``draw.DrawStage.finish``).
        kernels: per layer of ``figures.kernels``, its kernels as drawn in the report: (kernels (n, c, kh, kw),
            tile labels, rgb, total kernels of the layer) (``layerfigs.kernel_arrays``).

    Raises:
        ConfigError: an image of ``figures:`` is not in the run.
        RenderError: a file cannot be written.
    """
    root = Path(output_dir)
    f = cfg.figures
    if not (f.strips or f.grid.images or f.kernels):
        return []
    by_path = {e["path"]: e for e in images}
    check_figures(cfg, by_path)
    folder = root / FIGURES_DIR
    default_layer = cfg.cams.layers[0] if cfg.cams.layers else None
    written: list[Path] = []
    for path in f.strips:
        entry = by_path[path]
        fig, caption = _strip(root, cfg, entry, f.methods or cfg.cams.methods, f.layer or default_layer)
        written += _save(fig, folder, f"strip-{entry['id']}", cfg, caption)
    if f.grid.images:
        entries = [by_path[p] for p in f.grid.images]
        fig, caption = _grid(root, cfg, entries, f.grid.methods or cfg.cams.methods, f.grid.layer or default_layer)
        written += _save(fig, folder, "grid", cfg, caption)
    for layer in f.kernels:
        if kernels is None or layer not in kernels:
            raise RenderError(f"no kernels of {layer} were handed to the paper figures")
        fig, caption = _kernels(layer, *kernels[layer])
        written += _save(fig, folder, f"kernels-{file_part(layer)}", cfg, caption)
    return written
