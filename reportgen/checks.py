"""Gate conditions: ``accuracy < 0.9``, ``group_accuracy[marked] < 0.8``, ``flips > 10`` — parsed, then evaluated.

A condition describes **failure**: the gate fails when it is true. Grammar::

    NAME [ "[" ARG "]" ] OP NUMBER        OP: < <= > >= == !=

``NAME`` is a word (letters, digits, ``_``, not starting with a digit); ``ARG`` is any text without ``]`` (a class,
a method, a group ``column=value`` or a bare ``value``); ``NUMBER`` a finite decimal (``0.9``, ``-1e-3``, ``10``).

Conditions are evaluated against **facts**: a dict mapping a name to a number, or a name to ``{arg: number}``.
A name or arg not among the facts is an error naming the known ones. A fact whose value is missing (``None`` or
NaN: e.g. accuracy when no image is labelled) cannot be evaluated: the gate **fails** (a CI gate fails closed),
with a detail saying why.

Group args: a group fact's args are ``column=value``; ``group_accuracy[value]`` finds the one ``column=value`` with
that value and is an error naming the candidates when several columns share the value.

Two fact vocabularies (docs/AUDIT.md has the same tables):

**A run's facts** (``checks:`` in a config; built by the run's audit, ``reportgen.auditsummary``):

* ``accuracy``: share of labelled images whose top class is their label (0..1); ``confidence``: mean top-1
  probability; ``images``, ``images_skipped``
* ``class_accuracy[c]``: the same over the images labelled ``c``
* ``group_accuracy[column=value]`` (or ``[value]``), ``group_confidence[...]``: over a group (``data.metadata``)
* per method, the mean over images of each trust metric: ``deletion_auc[gradcam]``, ``insertion_auc[...]``,
  ``average_drop[...]``, ``increase[...]``, ``road_morf[...]``, ``road_lerf[...]`` (``[method@layer]`` when the
  method ran at several layers)
* ``sanity_similarity[method]``, ``sanity_ssim[method]``: similarity of the maps to those of the randomized model
* ``pointing_game[method]``, ``box_energy[method]``: localization against ``data.boxes``

**A comparison's facts** (``reportgen compare --fail-on``; built by ``reportgen.compare``; accuracies over the
images both runs rendered):

* ``accuracy_a``, ``accuracy_b``, ``accuracy`` (= B's), ``accuracy_drop`` (A − B: positive when B is worse)
* ``class_accuracy[c]`` (B's), ``class_accuracy_drop[c]`` (A − B)
* ``group_accuracy[g]`` (B's), ``group_accuracy_drop[g]`` (A − B)
* ``flips``: images whose top class changed; ``flips_to_wrong``: of them, right in A and wrong in B;
  ``flips_to_right``: wrong in A and right in B
* ``map_similarity[method]``: mean Spearman similarity of the two runs' maps over the common images and layers
  (at input resolution); ``map_similarity_min[method]``: the lowest; ``map_ssim[method]``, ``map_ssim_min[method]``
* ``images_common``, ``images_only_a``, ``images_only_b``
* metric deltas when both runs carry per-image ``metrics``: ``<metric>_delta[<rest>]`` (B − A of the mean over
  the common images), e.g. ``deletion_auc_delta[gradcam]``
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reportgen.names import close_matches

__all__ = ["Condition", "CheckResult", "parse_condition", "evaluate", "OPERATORS", "Facts"]

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
_OP_ORDER = ("<=", ">=", "==", "!=", "<", ">")  # two-character operators first
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_GRAMMAR = "expected NAME [ARG] OP NUMBER, e.g. 'accuracy < 0.9' or 'group_accuracy[marked] < 0.8'"
_MAX_SHOWN = 12

Number = int | float | None
Facts = Mapping[str, "Number | Mapping[str, Number]"]


@dataclass(frozen=True)
class Condition:
    """A parsed condition. ``text`` is as written (stripped); ``str()`` gives the canonical form."""

    text: str
    name: str
    arg: str | None
    op: str
    threshold: float

    def __str__(self) -> str:
        arg = f"[{self.arg}]" if self.arg is not None else ""
        return f"{self.name}{arg} {self.op} {self.threshold:g}"

    @property
    def subject(self) -> str:
        """The fact it reads: ``name`` or ``name[arg]``."""
        return self.name if self.arg is None else f"{self.name}[{self.arg}]"


@dataclass(frozen=True)
class CheckResult:
    """One condition's verdict: ``failed`` when the condition holds (or its fact has no value)."""

    condition: str
    value: float | None
    failed: bool
    detail: str


def parse_condition(text: str) -> Condition:
    """Parse one gate condition.

    Raises:
        ValueError: the text does not follow the grammar; the message says what was expected where.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a condition as text, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ValueError(f"empty condition; {_GRAMMAR}")
    m = _NAME.match(source)
    if not m:
        raise ValueError(f"{source!r}: a condition starts with a fact's name (letters, digits, _); {_GRAMMAR}")
    name, pos = m.group(), m.end()
    arg = None
    rest = source[pos:].lstrip()
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError(f"{source!r}: '[' after {name!r} is not closed with ']'")
        arg = rest[1:close].strip()
        if not arg:
            raise ValueError(f"{source!r}: empty [] after {name!r}; write {name}[ARG] or leave the brackets out")
        rest = rest[close + 1:].lstrip()
    op = next((o for o in _OP_ORDER if rest.startswith(o)), None)
    if op is None:
        found = re.match(r"[^\s\d.+-]+", rest)
        got = f"found {found.group()!r}" if found else ("nothing" if not rest else f"found {rest[:10]!r}")
        raise ValueError(f"{source!r}: expected an operator (< <= > >= == !=) after {name}"
                         f"{f'[{arg}]' if arg is not None else ''}, {got}")
    rest = rest[len(op):].strip()
    if not rest:
        raise ValueError(f"{source!r}: expected a number after {op!r}")
    num = _NUMBER.fullmatch(rest)
    if not num:
        raise ValueError(f"{source!r}: expected a number after {op!r}, found {rest!r}")
    threshold = float(rest)
    if not math.isfinite(threshold):
        raise ValueError(f"{source!r}: the number {rest!r} is not finite")
    return Condition(source, name, arg, op, threshold)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_SHOWN])
    return shown + (f" and {len(names) - _MAX_SHOWN} more" if len(names) > _MAX_SHOWN else "") if names else "none"


def _hint(word: str, candidates: Sequence[str]) -> str:
    found = close_matches(word, list(candidates))
    return f"; did you mean {' or '.join(repr(f) for f in found)}?" if found else ""


def _resolve_arg(cond: Condition, table: Mapping[str, Number]) -> str:
    """The key of ``table`` that ``cond.arg`` names: itself, or the one ``column=value`` with that value."""
    assert cond.arg is not None
    if cond.arg in table:
        return cond.arg
    keys = sorted(table)
    if "=" not in cond.arg:
        by_value = [k for k in keys if "=" in k and k.split("=", 1)[1] == cond.arg]
        if len(by_value) == 1:
            return by_value[0]
        if len(by_value) > 1:
            raise ValueError(f"{cond.text!r}: {cond.arg!r} is a value of {len(by_value)} columns "
                             f"({', '.join(by_value)}); write {cond.name}[column={cond.arg}]")
    what = f"{cond.name}[...]"
    raise ValueError(f"{cond.text!r}: unknown {what} argument {cond.arg!r}; known: {_listed(keys)}"
                     + _hint(cond.arg, keys + [k.split('=', 1)[1] for k in keys if '=' in k]))


def _value(cond: Condition, facts: Facts) -> tuple[str, Number]:
    if cond.name not in facts:
        names = sorted(facts)
        raise ValueError(f"{cond.text!r}: unknown fact {cond.name!r}; known: {_listed(names)}"
                         + _hint(cond.name, names))
    fact = facts[cond.name]
    if isinstance(fact, Mapping):
        if cond.arg is None:
            raise ValueError(f"{cond.text!r}: {cond.name} needs an argument, {cond.name}[ARG], one of: "
                             f"{_listed(sorted(fact)) }")
        key = _resolve_arg(cond, fact)
        return f"{cond.name}[{key}]", fact[key]
    if cond.arg is not None:
        raise ValueError(f"{cond.text!r}: {cond.name} takes no argument; write '{cond.name} {cond.op} "
                         f"{cond.threshold:g}'")
    return cond.name, fact


def evaluate(conditions: Sequence[Condition], facts: Facts) -> list[CheckResult]:
    """Evaluate each condition against ``facts``; one result per condition, in order.

    Raises:
        ValueError: a condition names a fact (or an argument) that ``facts`` does not have, or an ambiguous group
            value; the message lists the known ones and close matches.
    """
    results = []
    for cond in conditions:
        subject, value = _value(cond, facts)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            results.append(CheckResult(cond.text, None, True, f"{subject} has no value here (e.g. no labelled or "
                                                              f"no common image): the gate cannot pass"))
            continue
        number = float(value)
        failed = OPERATORS[cond.op](number, cond.threshold)
        verdict = "failed" if failed else "passed"
        results.append(CheckResult(cond.text, number, failed,
                                   f"{verdict}: {subject} = {number:.6g} ({cond.op} {cond.threshold:g} is "
                                   f"{'true' if failed else 'false'})"))
    return results
