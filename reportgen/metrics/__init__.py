"""Trust metrics: how far to believe a saliency map, per image, as batched torch functions.

Each function takes the model (eval mode, on its device), a batch ``x`` (N, C, H, W) of normalized inputs, the
maps (N, h, w) of one target column and the targets (N,), and returns a dict of per-image scores, (N,) float32
tensors on the CPU, plus ``forward_images``: the images it pushed through the model (its cost). The exception is
``sanity_check``, which takes a ``map_fn(model) -> maps`` instead of maps (it recomputes them on randomized copies
of the model) and returns (N, S) scores, one column per randomization stage. Nothing here reads a config or a cache.

``METRICS`` maps each name a config may list to its ``Metric``: the function, the score it yields, whether higher
is better, and a one-line description with the citation. Names sharing a function (``deletion`` and ``insertion``,
``average_drop`` and ``increase``, ``road_morf`` and ``road_lerf``) are computed by one call when both are asked
(``calls``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from reportgen.metrics.confidence import confidence_change
from reportgen.metrics.deletion import deletion_insertion
from reportgen.metrics.road import road
from reportgen.metrics.sanity import sanity_check

__all__ = ["Metric", "METRICS", "calls", "confidence_change", "deletion_insertion", "road", "sanity_check"]


@dataclass(frozen=True)
class Metric:
    """One selectable metric: ``function(...)[scores[i]]`` are its per-image scores."""

    name: str
    function: Callable[..., dict[str, Any]]
    scores: tuple[str, ...]
    higher_is_better: bool
    description: str


def _table(*metrics: Metric) -> dict[str, Metric]:
    table: dict[str, Metric] = {}
    for metric in metrics:
        if metric.name in table:
            raise ValueError(f"metric {metric.name!r} registered twice")
        table[metric.name] = metric
    return table


METRICS: dict[str, Metric] = _table(
    Metric("deletion", deletion_insertion, ("deletion_auc",), False,
           "Area under the target's probability as the most salient pixels are deleted first "
           "(Petsiuk et al., RISE, BMVC 2018)"),
    Metric("insertion", deletion_insertion, ("insertion_auc",), True,
           "Area under the target's probability as the most salient pixels are revealed first on a blurred copy "
           "(Petsiuk et al., RISE, BMVC 2018)"),
    Metric("average_drop", confidence_change, ("average_drop",), False,
           "Relative drop of the target's probability when the image is multiplied by the map "
           "(Chattopadhay et al., Grad-CAM++, WACV 2018)"),
    Metric("increase", confidence_change, ("increase",), True,
           "Whether the target's probability rises when the image is multiplied by the map "
           "(Chattopadhay et al., Grad-CAM++, WACV 2018)"),
    Metric("road_morf", road, ("road_morf",), False,
           "Change of the target's probability when the most relevant pixels are removed and imputed, averaged over "
           "10-90% (Rong et al., ROAD, ICML 2022)"),
    Metric("road_lerf", road, ("road_lerf",), True,
           "Change of the target's probability when the least relevant pixels are removed and imputed, averaged "
           "over 10-90% (Rong et al., ROAD, ICML 2022)"),
    Metric("sanity", sanity_check, ("spearman", "ssim"), False,
           "Similarity of the map to the maps of the model with its layers re-initialized from the top: a map that "
           "stays the same ignores the model (Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018)"),
)


def calls(names: Iterable[str]) -> dict[Callable[..., dict[str, Any]], list[str]]:
    """The functions to call for the metric ``names`` (one call per function), each with the names it serves.

    Raises:
        KeyError: for a name not in ``METRICS`` (the config validates names against ``METRICS`` first).
    """
    grouped: dict[Callable[..., dict[str, Any]], list[str]] = {}
    for name in names:
        grouped.setdefault(METRICS[name].function, []).append(name)
    return grouped
