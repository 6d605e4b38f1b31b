"""The colour scale of each map panel (``report.normalize``) and the words its colour bar says about it.

A map's panel colours its values from ``lo`` (the colormap's low end) to ``hi`` (its high end):

* ``per_map`` (default): each map on its own: layer-level maps min–max, input-level maps (saliency, FullGrad)
  0 to the map's 99th percentile (heavy-tailed gradients: the top 1 % is clipped).
* ``per_image``: one scale over an image's layer-level maps (every method, layer and target), one over its
  input-level maps.
* ``per_method``: one scale per method and layer over the whole run.
* ``shared``: one scale over every layer-level map of the run, one over every input-level map.

Layer-level and input-level maps never share a scale: a CAM is in units of a class score per activation, a
saliency map in units of a score per pixel value, orders of magnitude apart. A scale over several maps is the
smallest ``lo`` and the largest ``hi`` of the maps' own ones (so ``per_method`` input-level maps are clipped at
the largest 99th percentile of the run's maps of that method).

The two dataset-wide modes need every map's range before the first panel is drawn: ``ScaleTable`` collects the
ranges (two floats per method and layer, whatever the number of images) while the maps are gathered, and the
drawing waits for it (``draw.DrawStage``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["NORMALIZE_MODES", "DATASET_WIDE", "map_range", "merge", "ScaleTable", "scale_key", "bar_label", "lookup"]

NORMALIZE_MODES = ("per_map", "per_image", "per_method", "shared")
DATASET_WIDE = ("per_method", "shared")

Range = tuple[float, float]


def map_range(cam: np.ndarray, input_level: bool) -> Range:
    """The ``(lo, hi)`` one map is coloured with on its own: min–max for a layer-level map; for an input-level one,
    0 to its 99th percentile (to its maximum when that percentile is not above 0; (0, 1) for an all-zero map).
    ``nan`` and ``inf`` count as 0."""
    a = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size == 0:
        return 0.0, 1.0
    if not input_level:
        return float(a.min()), float(a.max())
    top = float(np.percentile(a, 99))
    if not (math.isfinite(top) and top > 0):
        top = float(a.max()) if float(a.max()) > 0 else 1.0
    return 0.0, top


def merge(ranges: Iterable[Range]) -> Range:
    """One scale over several maps: the smallest ``lo`` and the largest ``hi``."""
    los, his = zip(*ranges, strict=True)
    return min(los), max(his)


def scale_key(mode: str, method: str, layer: str) -> str:
    """The name of the dataset-wide scale a map of ``method`` at ``layer`` ("" = the input) is drawn with."""
    if mode == "per_method":
        return f"{method}@{layer}"
    return "*@layer" if layer else "*@input"


class ScaleTable:
    """Dataset-wide scales, collected one image at a time: memory does not grow with the number of images.

    Args:
        mode: ``per_method`` or ``shared`` (the others need no table).
    """

    def __init__(self, mode: str):
        if mode not in DATASET_WIDE:
            raise ValueError(f"expected a dataset-wide normalize mode {DATASET_WIDE}, got {mode!r}")
        self.mode = mode
        self._ranges: dict[str, Range] = {}
        self._images: dict[str, int] = {}

    def add(self, method: str, layer: str, maps: np.ndarray) -> None:
        """Count one image's maps ``(T, h, w)`` of ``method`` at ``layer`` ("" = an input-level method)."""
        key = scale_key(self.mode, method, layer)
        found = [map_range(m, input_level=not layer) for m in np.asarray(maps)]
        if not found:
            return
        counted = 1 if self.mode == "per_method" else len(found)  # per_method: images; shared: maps
        if key in self._ranges:
            found.append(self._ranges[key])
        self._ranges[key] = merge(found)
        self._images[key] = self._images.get(key, 0) + counted

    def scales(self) -> dict[str, tuple[float, float, int]]:
        """Each scale as ``(lo, hi, count)`` (images for ``per_method``, maps for ``shared``): plain data, for the drawing context and the figure-cache key."""
        return {k: (lo, hi, self._images[k]) for k, (lo, hi) in sorted(self._ranges.items())}


def bar_label(mode: str, *, input_level: bool, layer: str, images: int = 0, maps: int = 0) -> str:
    """What a colour bar's values are and how its colours were scaled, in words.

    Args:
        mode: the ``report.normalize`` mode.
        input_level: the map explains the input pixels (saliency, FullGrad), not a layer.
        layer: the map's layer (for ``per_method``).
        images: how many images (or maps) a dataset-wide scale covers.
        maps: how many maps a ``per_image`` scale covers.
    """
    def n(count: int, noun: str) -> str:
        return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

    if input_level:
        what = "raw values; colours 0 to "
        scope = {
            "per_map": "the map's 99th percentile (higher values clipped)",
            "per_image": f"the largest 99th percentile of this image's {n(maps, 'input-level map')} (clipped above)",
            "per_method": f"this method's largest 99th percentile over {n(images, 'image')} (clipped above)",
            "shared": f"the largest 99th percentile of every input-level map of the run, {n(images, 'map')} "
                      "(clipped above)",
        }[mode]
        return what + scope
    scope = {
        "per_map": "colours min–max per map",
        "per_image": f"colours: one scale over this image's {n(maps, 'layer map')}",
        "per_method": f"colours: one scale for this method at {layer} over {n(images, 'image')}",
        "shared": f"colours: one scale over every layer map of the run ({n(images, 'map')})",
    }[mode]
    return f"raw values; {scope}"


def lookup(scales: Mapping[str, tuple[float, float, int]], mode: str, method: str, layer: str,
           fallback: Range) -> tuple[Range, int]:
    """The dataset-wide scale of a map (``fallback``, its own range, when the table lacks it) and its count."""
    found = scales.get(scale_key(mode, method, layer))
    if found is None:
        return fallback, 1
    return (found[0], found[1]), found[2]
