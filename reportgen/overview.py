"""The report's overview: what a reader needs first, computed from the image entries (and their raw maps).

``overview(images, skipped, maps_root)`` returns plain data: accuracy overall and per class, a confusion matrix
(true label × predicted class, capped), the largest confusions, the most and least confident mistakes, and
alerts in words: a class far below the rest, methods whose maps are the same at a layer, maps that are all zero
or constant, files skipped. Only labelled images whose label names a model class (``correct`` not null) count
towards accuracy; the others are counted apart.

The map alerts read each image's ``maps/<id>.safetensors`` under ``maps_root`` (the layer-level maps are small;
each input-level map is H × W). Without ``maps_root`` they are left out and the overview says so.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["overview", "CONFUSION_CAP", "CLASS_ALERT_MIN_IMAGES", "CLASS_ALERT_GAP", "SAME_MAP_TOLERANCE"]

log = logging.getLogger(__name__)

CONFUSION_CAP = 20  # rows and columns of the confusion matrix shown; the rest are summed into "other"
TOP_CONFUSIONS = 10
MISTAKES_SHOWN = 5
CLASS_ALERT_MIN_IMAGES = 5  # a class with fewer images is never called "far below the rest"
CLASS_ALERT_GAP = 0.25  # ... and it must be this far (accuracy, 0..1) below the other classes' accuracy,
CLASS_ALERT_SIGMAS = 2.0  # and further than this many standard errors of its own count
SAME_MAP_TOLERANCE = 1e-3  # two maps scaled to min–max [0, 1] are "the same" when no pixel differs by more
SAME_MAP_SHARE = 0.95  # methods are reported identical at a layer when their maps agree on this share of images
CONSTANT_TOLERANCE = 1e-7  # a map whose range is below this times its largest magnitude (or 1) is constant


def _top1(entry: dict) -> dict | None:
    preds = entry.get("predictions") or []
    return preds[0] if preds else None


def _mistake(entry: dict) -> dict:
    top = _top1(entry) or {}
    return {"id": entry["id"], "path": entry["path"], "label": entry.get("label"),
            "predicted": top.get("class_name"), "prob": top.get("prob")}


def _accuracy(images: list[dict]) -> dict[str, Any]:
    judged = [e for e in images if e.get("correct") is not None]
    right = sum(1 for e in judged if e["correct"])
    return {"judged": len(judged), "correct": right, "accuracy": right / len(judged) if judged else None,
            "unlabelled": sum(1 for e in images if e.get("label") is None),
            "label_not_a_class": sum(1 for e in images if e.get("label") is not None and e.get("correct") is None)}


def _per_class(judged: list[dict]) -> list[dict[str, Any]]:
    """Per true label: images, correct, accuracy, and the class it is most often taken for."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for e in judged:
        by_label[e["label"]].append(e)
    rows = []
    for label in sorted(by_label):
        group = by_label[label]
        right = sum(1 for e in group if e["correct"])
        wrong = Counter((_top1(e) or {}).get("class_name") for e in group if not e["correct"])
        taken_for, taken_n = wrong.most_common(1)[0] if wrong else (None, 0)
        rows.append({"name": label, "total": len(group), "correct": right, "accuracy": right / len(group),
                     "taken_for": taken_for, "taken_for_count": taken_n})
    return rows


def _confusion(judged: list[dict], cap: int = CONFUSION_CAP) -> dict[str, Any]:
    """True label × predicted class over the classes that occur, at most ``cap`` rows and columns, the rest summed
    into an ``other`` row and column, with what was cut.

    Rows: the labels with the most mistakes (then the most images), shown in name order. Columns: those rows' own
    classes first, in the same order (so the diagonal is the correct ones), then the other predicted classes with
    the most images. ``kind`` per cell: ``right`` (the diagonal), ``wrong``, or ``mixed`` (other × other, which
    holds both).
    """
    # rows by the label's class name (``label_class``: ``0_circle`` is the class ``circle``), so the diagonal is right
    pairs = [(e.get("label_class") or e["label"], (_top1(e) or {}).get("class_name") or "—") for e in judged]
    row_counts = Counter(t for t, _ in pairs)
    wrong_counts = Counter(t for t, p in pairs if t != p)
    col_counts = Counter(p for _, p in pairs)
    rows = sorted(sorted(row_counts, key=lambda n: (-wrong_counts[n], -row_counts[n], n))[:cap])
    cols = [n for n in rows if n in col_counts]
    cols += sorted((n for n in col_counts if n not in set(cols)), key=lambda n: (-col_counts[n], n))[:cap - len(cols)]
    rows_cut, cols_cut = len(row_counts) - len(rows), len(col_counts) - len(cols)
    r_at, c_at = {n: i for i, n in enumerate(rows)}, {n: i for i, n in enumerate(cols)}
    n_rows, n_cols = len(rows) + bool(rows_cut), len(cols) + bool(cols_cut)
    cells = [[0] * n_cols for _ in range(n_rows)]
    for t, p in pairs:
        cells[r_at.get(t, n_rows - 1)][c_at.get(p, n_cols - 1)] += 1
    kind = [["mixed" if i >= len(rows) and j >= len(cols) else "right" if i < len(rows) and j < len(cols)
             and rows[i] == cols[j] else "wrong" for j in range(n_cols)] for i in range(n_rows)]
    return {
        "rows": rows + ([f"other ({rows_cut} classes)"] if rows_cut else []),
        "cols": cols + ([f"other ({cols_cut} classes)"] if cols_cut else []),
        "cells": cells, "row_totals": [sum(r) for r in cells],
        "max": max([n for i, r in enumerate(cells) for j, n in enumerate(r) if kind[i][j] != "mixed"]
                   or [n for r in cells for n in r] or [0]),  # the shading's scale: "other" cells saturate
        "rows_cut": rows_cut, "cols_cut": cols_cut, "rows_total": len(row_counts), "cols_total": len(col_counts),
        "total": len(pairs), "kind": kind, "diagonal": [[k == "right" for k in row] for row in kind],
    }


def _largest_confusions(judged: list[dict], n: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    label_totals = Counter(e["label"] for e in judged)
    wrong = Counter((e["label"], (_top1(e) or {}).get("class_name")) for e in judged if not e["correct"])
    return [{"true": t, "predicted": p, "count": c, "share": c / label_totals[t]}
            for (t, p), c in sorted(wrong.items(), key=lambda kv: (-kv[1], kv[0][0], str(kv[0][1])))[:n]]


def _class_alerts(per_class: list[dict], judged: list[dict]) -> list[dict[str, str]]:
    """A class far below the rest: at least CLASS_ALERT_MIN_IMAGES images, and its accuracy both
    CLASS_ALERT_GAP below that of all other judged images and more than CLASS_ALERT_SIGMAS standard errors below
    it (the binomial spread of the class's own count at the others' accuracy)."""
    alerts = []
    total, right = len(judged), sum(1 for e in judged if e["correct"])
    for row in per_class:
        n_rest = total - row["total"]
        if row["total"] < CLASS_ALERT_MIN_IMAGES or n_rest < CLASS_ALERT_MIN_IMAGES:
            continue
        rest = (right - row["correct"]) / n_rest
        spread = (max(rest * (1 - rest), 0.01) / row["total"]) ** 0.5
        gap = rest - row["accuracy"]
        if gap >= CLASS_ALERT_GAP and gap > CLASS_ALERT_SIGMAS * spread:
            taken = (f"; {row['taken_for_count']} of them called “{row['taken_for']}”" if row["taken_for"] else "")
            alerts.append({"kind": "class", "subject": row["name"],
                           "text": f"Class “{row['name']}” is far below the rest: {row['correct']}/{row['total']} "
                                   f"correct ({row['accuracy']:.0%}) against {rest:.0%} over the other classes"
                                   f"{taken}."})
    return alerts


def _map_keys(entry: dict) -> Iterable[tuple[str, int, str, str]]:
    """(layer, target column, method, maps key) of every map the entry's figures were drawn from (dff left out:
    its maps are concepts, not classes)."""
    column: Counter = Counter()
    for group in entry.get("cams") or []:
        layer = group.get("layer") or ""
        ti = column[layer]
        column[layer] += 1
        seen = set()
        for panel in group.get("panels") or []:
            for method in panel.get("methods") or [panel.get("method")]:  # a panel drawn once for identical maps
                if not method or method == "dff" or method in seen:
                    continue
                seen.add(method)
                yield layer, ti, method, f"cam/{method}/{layer}" if layer else f"cam/{method}"


def _scaled(m: np.ndarray) -> np.ndarray | None:
    """The map scaled to min–max [0, 1]; None when it is constant (or not finite)."""
    m = np.asarray(m, dtype=np.float64)
    if not m.size or not np.isfinite(m).all():
        return None
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= CONSTANT_TOLERANCE * max(abs(lo), abs(hi), 1.0):
        return None
    return (m - lo) / (hi - lo)


def _map_alerts(images: list[dict], maps_root: Path, titles: dict[str, str]) -> list[dict[str, str]]:
    """Methods whose maps are the same at a layer (after min–max scaling), and maps that are constant."""
    from safetensors import safe_open

    pair_same: Counter = Counter()  # (layer, method a, method b) -> images where the two maps agree
    pair_seen: Counter = Counter()
    constant: Counter = Counter()  # (layer, method) -> images with a constant map (any target column)
    zero: Counter = Counter()
    seen: Counter = Counter()
    unread = 0
    for entry in images:
        path = maps_root / str(entry.get("maps_file") or "")
        wanted = list(_map_keys(entry))
        if not wanted or not path.is_file():
            unread += bool(wanted)
            continue
        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = set(f.keys())
                arrays = {key: f.get_tensor(key) for key in {k for *_, k in wanted} if key in keys}
        except (OSError, ValueError, RuntimeError):  # a damaged file: the alerts skip this image
            unread += 1
            continue
        by_layer: dict[tuple[str, int], list[tuple[str, np.ndarray | None]]] = defaultdict(list)
        flagged: set[tuple[str, str]] = set()
        for layer, ti, method, key in wanted:
            stack = arrays.get(key)
            if stack is None or ti >= len(stack):
                continue
            raw = np.asarray(stack[ti])
            scaled = _scaled(raw)
            by_layer[(layer, ti)].append((method, scaled))
            if scaled is None and (layer, method) not in flagged:
                flagged.add((layer, method))
                constant[(layer, method)] += 1
                zero[(layer, method)] += bool(raw.size and np.isfinite(raw).all() and not np.any(raw))
        for layer, method in {(la, m) for (la, _), ms in by_layer.items() for m, _ in ms}:
            seen[(layer, method)] += 1
        same_here: set[tuple[str, str, str]] = set()
        for (layer, _), methods in by_layer.items():
            for i, (a, ma) in enumerate(methods):
                for b, mb in methods[i + 1:]:
                    if ma is None or mb is None or ma.shape != mb.shape:
                        continue
                    if float(np.max(np.abs(ma - mb))) <= SAME_MAP_TOLERANCE:
                        same_here.add((layer, a, b))
        for pair in {(layer, a, b) for (layer, _), ms in by_layer.items() for i, (a, _) in enumerate(ms)
                     for b, _ in ms[i + 1:]}:
            pair_seen[pair] += 1
        for pair in same_here:
            pair_same[pair] += 1
    return _same_alerts(pair_same, pair_seen, titles) + _constant_alerts(constant, zero, seen, titles) + (
        [{"kind": "maps", "subject": "maps", "text": f"The maps of {unread} image(s) could not be read for these checks."}]
        if unread else [])


def _layer_text(layer: str) -> str:
    return f"at layer {layer}" if layer else "on the input"


def _same_alerts(same: Counter, seen: Counter, titles: dict[str, str]) -> list[dict[str, str]]:
    """Groups of methods whose maps agree on at least SAME_MAP_SHARE of the images, per layer (transitive)."""
    alerts = []
    for layer in sorted({la for la, _, _ in seen}):
        parent: dict[str, str] = {}

        def find(x: str, parent: dict[str, str] = parent) -> str:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        agree = {(a, b): same[(la, a, b)] for (la, a, b) in seen if la == layer
                 and same[(la, a, b)] >= SAME_MAP_SHARE * seen[(la, a, b)] and same[(la, a, b)] > 0}
        for a, b in agree:
            parent[find(a)] = find(b)
        groups: dict[str, list[str]] = defaultdict(list)
        for m in parent:
            groups[find(m)].append(m)
        for members in groups.values():
            if len(members) < 2:
                continue
            counts = [agree[p] for p in agree if p[0] in members]
            n, of = min(counts), max(seen[(layer, a, b)] for a, b in agree if a in members)
            names = ", ".join(titles.get(m, m) for m in sorted(members, key=lambda m: list(titles).index(m)
                                                                if m in titles else 99))
            alerts.append({"kind": "same", "subject": layer or "input",
                           "text": f"{names} give the same map {_layer_text(layer)} (after scaling each to its "
                                   f"min–max) on {n} of {of} images: one view, not several."})
    return alerts


def _constant_alerts(constant: Counter, zero: Counter, seen: Counter, titles: dict[str, str]) -> list[dict]:
    alerts = []
    for (layer, method), n in sorted(constant.items()):
        what = "all zero" if zero[(layer, method)] == n else "constant (one value everywhere)"
        alerts.append({"kind": "constant", "subject": f"{method} {layer or 'input'}",
                       "text": f"{titles.get(method, method)} {_layer_text(layer)}: the map is {what} on {n} of "
                               f"{seen[(layer, method)]} images; its panels show no location."})
    return alerts


def overview(images: list[dict], skipped: list[dict], maps_root: Path | None = None,
             method_titles: dict[str, str] | None = None) -> dict[str, Any]:
    """The overview of a run's images (plain data: see the module docstring).

    Args:
        images: the report entries (``id``, ``path``, ``label``, ``correct``, ``predictions``, ``cams``, ...).
        skipped: ``{path, reason}`` of the files left out.
        maps_root: the folder the entries' ``maps_file`` paths are relative to; None: no map alerts.
        method_titles: method name -> title, in the config's order (for the alerts' words and order).
    """
    titles = dict(method_titles or {})
    acc = _accuracy(images)
    judged = [e for e in images if e.get("correct") is not None]
    per_class = _per_class(judged)
    mistakes = [e for e in judged if not e["correct"]]
    by_conf = sorted(mistakes, key=lambda e: (-float((_top1(e) or {}).get("prob") or 0.0), e["id"]))
    alerts = _class_alerts(per_class, judged)
    if maps_root is not None:
        try:
            alerts += _map_alerts(images, Path(maps_root), titles)
        except ImportError:  # pragma: no cover - safetensors is a dependency
            log.warning("safetensors is missing: the overview leaves out the map alerts")
    if skipped:
        alerts.append({"kind": "skipped", "subject": "skipped files",
                       "text": f"{len(skipped)} file(s) were skipped and are not in this report: see Skipped files."})
    return {
        **acc,
        "per_class": per_class,
        "confusion": _confusion(judged),
        "confusions": _largest_confusions(judged),
        "confident_mistakes": [_mistake(e) for e in by_conf[:MISTAKES_SHOWN]],
        "unsure_mistakes": [_mistake(e) for e in by_conf[::-1][:MISTAKES_SHOWN]],
        "mistakes": len(mistakes),
        "alerts": alerts,
        "maps_checked": maps_root is not None,
    }
