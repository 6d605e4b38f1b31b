"""``reportgen compare RUN_A RUN_B``: what changed between two finished runs, as numbers and gate verdicts.

Reads two run folders (``reportgen.api.open_run``), matches their images by file (``path``), and measures on the
images both rendered:

* accuracy overall, per class (label) and per group (the ``groups`` ``{column: value}`` of each image entry): A, B
  and the drop A − B;
* per image the change of its prediction: the softmax of the stored ``logits`` of both runs, and ``delta_p``, the
  larger change in probability of the two classes involved (A's top class and B's): max(|P_B(a) − P_A(a)|,
  |P_B(b) − P_A(b)|); a **flip** is an image whose top class changed; flips are ranked by ``delta_p``;
* per image, method and layer the similarity of the two runs' maps (``reportgen.similarity``: Spearman and SSIM),
  each map upsampled bilinearly to the network's input size first (``model.input_size``; the larger of the two when
  the runs differ), so runs of different architectures compare. The first target column of each map is compared
  (the predicted class with ``target: predicted`` or ``topk``). A method computed at one layer in each run, under
  different names (two architectures), is compared across those layers; other layers and methods present in only
  one run are listed, not compared. Concept maps (``dff``) are not compared;
* the mean of each per-image ``metrics`` number over the common images, when both runs carry it, and its delta.

The facts of a comparison (``reportgen.checks``) are built from these; ``compare_report`` writes the files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.api import Run, open_run
from reportgen.checks import CheckResult, Condition, evaluate
from reportgen.compare_maps import common_size, map_pairs, pair_summary, read_and_compare
from reportgen.errors import UsageError

__all__ = ["compare_runs", "CompareResult", "Comparison", "measure", "accuracy_rows"]



@dataclass
class Comparison:
    """Every number of a comparison, as plain data (``compare.json`` holds ``as_dict()``)."""

    run_a: dict[str, Any]
    run_b: dict[str, Any]
    images: dict[str, Any]
    accuracy: dict[str, Any]
    changes: list[dict[str, Any]]
    maps: dict[str, Any]
    metrics: list[dict[str, Any]]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def flips(self) -> list[dict[str, Any]]:
        return [c for c in self.changes if c["flipped"]]


@dataclass(frozen=True)
class CompareResult:
    """What ``compare_runs`` wrote and found. ``failed`` lists the gate conditions that failed (exit code 3)."""

    output: Path
    json: Path
    xml: Path
    html: Path
    pdf: Path | None
    checks: tuple[CheckResult, ...]
    comparison: Comparison

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    @property
    def exit_code(self) -> int:
        return 3 if self.failed else 0


def compare_runs(run_a: Path, run_b: Path, output: Path | None = None, *, fail_on: Iterable[str | Condition] = (),
                 force: bool = False, pdf: bool = True, top: int = 8) -> CompareResult:
    """Compare two finished runs and write ``compare.json``, ``compare.xml``, ``compare.html`` (and ``.pdf``).

    Args:
        run_a, run_b: the output folders of two finished runs (A: before, B: after).
        output: the comparison's folder; default ``compare-<A's name>-vs-<B's name>`` beside RUN_B. Only an empty
            folder or a previous comparison (with ``force``) is used; a run folder or anything else is refused.
        fail_on: gate conditions (text or parsed); a gate fails when its condition holds.
        force: replace a previous comparison in ``output``.
        pdf: also print ``compare.pdf``.
        top: how many of the most changed maps get a side-by-side figure.

    Raises:
        UsageError: a folder is not a finished run (or a format too new), a condition does not parse or names an
            unknown fact, or the output folder may not be written.
    """
    from reportgen.checks import parse_condition
    from reportgen.compare_report import write_comparison

    conditions = []
    for i, c in enumerate(fail_on):
        try:
            conditions.append(c if isinstance(c, Condition) else parse_condition(c))
        except ValueError as exc:
            raise UsageError(f"--fail-on[{i}]: {exc}") from None
    a, b = open_run(run_a), open_run(run_b)
    out = Path(output) if output is not None else Path(run_b).parent / f"compare-{Path(run_a).resolve().name}-vs-" \
                                                                       f"{Path(run_b).resolve().name}"
    comparison = measure(a, b)
    try:
        checks = evaluate(conditions, comparison.facts)
    except ValueError as exc:
        raise UsageError(f"--fail-on: {exc}") from None
    return write_comparison(comparison, a, b, out, checks, force=force, pdf=pdf, top=top)


# ------------------------------------------------------------------------------------------------- measuring


def measure(a: Run, b: Run) -> Comparison:
    """Every number of the comparison of run A with run B (no file written)."""
    by_a = {e["path"]: e for e in a.manifest["images"]}
    by_b = {e["path"]: e for e in b.manifest["images"]}
    common = [p for p in by_a if p in by_b]
    only_a = [p for p in by_a if p not in by_b]
    only_b = [p for p in by_b if p not in by_a]
    pairs = [(by_a[p], by_b[p]) for p in common]
    accuracy = {
        "overall": _row("all", [(ea.get("correct"), eb.get("correct")) for ea, eb in pairs]),
        "classes": accuracy_rows(pairs, lambda ea, eb: [ea.get("label")] if ea.get("label") is not None else []),
        "groups": accuracy_rows(pairs, lambda ea, eb: [f"{k}={v}" for k, v in sorted(_groups(ea, eb).items())]),
        "all_a": _share([e.get("correct") for e in by_a.values()]),
        "all_b": _share([e.get("correct") for e in by_b.values()]),
    }
    size = common_size(a, b)
    maps_plan = map_pairs(a, b)
    changes, rows = read_and_compare(a, b, pairs, maps_plan["pairs"], size)
    changes.sort(key=lambda c: (-c["delta_p"], c["path"]))
    rows.sort(key=lambda r: (_nan_first(r["spearman"]), _nan_first(r["ssim"]), r["path"], r["method"]))
    summary = [pair_summary(p, [r for r in rows if (r["method"], r["layer_a"], r["layer_b"]) == p])
               for p in maps_plan["pairs"]]
    comparison = Comparison(
        run_a=_describe(a), run_b=_describe(b),
        images={"common": len(common), "only_a": only_a, "only_b": only_b},
        accuracy=accuracy, changes=changes,
        maps={"compared_at": list(size), "pairs": summary, "rows": rows, "not_compared": maps_plan["not_compared"]},
        metrics=_metric_deltas(pairs))
    comparison.facts = facts_of(comparison)
    return comparison


def _nan_first(value: float | None) -> float:
    return -math.inf if value is None else value


def _share(flags: Sequence[bool | None]) -> dict[str, Any]:
    known = [f for f in flags if f is not None]
    return {"n": len(known), "correct": sum(bool(f) for f in known),
            "accuracy": sum(bool(f) for f in known) / len(known) if known else None}


def _row(key: str, flags: Sequence[tuple[bool | None, bool | None]]) -> dict[str, Any]:
    sa, sb = _share([f[0] for f in flags]), _share([f[1] for f in flags])
    drop = sa["accuracy"] - sb["accuracy"] if sa["accuracy"] is not None and sb["accuracy"] is not None else None
    return {"key": key, "n": len(flags), "a": sa, "b": sb, "drop": drop}


def _groups(ea: dict, eb: dict) -> dict[str, str]:
    groups = eb.get("groups") if isinstance(eb.get("groups"), dict) else ea.get("groups")
    return {str(k): str(v) for k, v in groups.items()} if isinstance(groups, dict) else {}


def accuracy_rows(pairs: Sequence[tuple[dict, dict]], keys_of) -> list[dict[str, Any]]:
    """One accuracy row (A, B, drop A − B) per key that ``keys_of(entry_a, entry_b)`` gives an image, sorted."""
    flags: dict[str, list[tuple[bool | None, bool | None]]] = {}
    for ea, eb in pairs:
        for key in keys_of(ea, eb):
            flags.setdefault(str(key), []).append((ea.get("correct"), eb.get("correct")))
    return [_row(k, flags[k]) for k in sorted(flags)]


def _describe(run: Run) -> dict[str, Any]:
    m = run.manifest
    model = m.get("model", {}) if isinstance(m.get("model"), dict) else {}
    return {"folder": str(run.folder), "title": m.get("title"), "run_id": m.get("run_id"),
            "generated_at": m.get("generated_at"), "reportgen_version": m.get("reportgen_version"),
            "model": {k: model.get(k) for k in ("name", "source", "weights", "weights_digest", "input_size",
                                                  "resize", "num_classes")},
            "images": len(m["images"]), "skipped": len(m.get("skipped", []))}


_BRACKET = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(.+)\]$")


def _flat_metrics(value: Any, prefix: str = "") -> dict[str, float]:
    """An entry's ``metrics`` as ``{key: number}``: nested dicts joined with ``/``; non-numbers left out."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flat_metrics(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)
    return out


def _metric_deltas(pairs: list[tuple[dict, dict]]) -> list[dict[str, Any]]:
    """Per metric number both runs carry for the common images: the means in A and B and the delta B − A."""
    sums: dict[str, list[float]] = {}
    for ea, eb in pairs:
        fa, fb = _flat_metrics(ea.get("metrics")), _flat_metrics(eb.get("metrics"))
        for key in fa.keys() & fb.keys():
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0] += fa[key]
            acc[1] += fb[key]
            acc[2] += 1
    rows = []
    for key in sorted(sums):
        sa, sb, n = sums[key]
        rows.append({"key": key, "n": int(n), "a": sa / n, "b": sb / n, "delta": (sb - sa) / n})
    return rows


def _metric_fact(key: str) -> tuple[str, str | None]:
    """``deletion_auc[gradcam]`` or ``deletion_auc/gradcam`` → (``deletion_auc_delta``, ``gradcam``)."""
    m = _BRACKET.match(key)
    if m:
        return f"{m.group(1)}_delta", m.group(2)
    name, sep, rest = key.partition("/")
    return f"{name}_delta", rest if sep else None


def facts_of(c: Comparison) -> dict[str, Any]:
    """The comparison's facts for gate conditions (vocabulary: ``reportgen.checks``, docs/AUDIT.md)."""
    acc = c.accuracy
    facts: dict[str, Any] = {
        "accuracy_a": acc["overall"]["a"]["accuracy"], "accuracy_b": acc["overall"]["b"]["accuracy"],
        "accuracy": acc["overall"]["b"]["accuracy"], "accuracy_drop": acc["overall"]["drop"],
        "class_accuracy": {r["key"]: r["b"]["accuracy"] for r in acc["classes"]},
        "class_accuracy_drop": {r["key"]: r["drop"] for r in acc["classes"]},
        "group_accuracy": {r["key"]: r["b"]["accuracy"] for r in acc["groups"]},
        "group_accuracy_drop": {r["key"]: r["drop"] for r in acc["groups"]},
        "flips": len(c.flips),
        "flips_to_wrong": sum(1 for f in c.flips if f["correct_a"] is True and f["correct_b"] is False),
        "flips_to_right": sum(1 for f in c.flips if f["correct_a"] is False and f["correct_b"] is True),
        "images_common": c.images["common"], "images_only_a": len(c.images["only_a"]),
        "images_only_b": len(c.images["only_b"]),
    }
    per_method: dict[str, list[dict]] = {}
    for r in c.maps["rows"]:
        per_method.setdefault(r["method"], []).append(r)
    for name, key, fn in (("map_similarity", "spearman", "mean"), ("map_similarity_min", "spearman", "min"),
                          ("map_ssim", "ssim", "mean"), ("map_ssim_min", "ssim", "min")):
        facts[name] = {}
        for method, rows in per_method.items():
            values = [r[key] for r in rows if r[key] is not None]
            facts[name][method] = (None if not values else sum(values) / len(values) if fn == "mean" else min(values))
    for m in c.metrics:
        name, arg = _metric_fact(m["key"])
        if arg is None:
            facts.setdefault(name, m["delta"])
        elif isinstance(facts.setdefault(name, {}), dict):
            facts[name][arg] = m["delta"]
    return facts
