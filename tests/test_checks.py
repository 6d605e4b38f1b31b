"""Gate conditions (reportgen.checks): the grammar, its error messages, and evaluation against facts."""

from __future__ import annotations

import math

import pytest

from reportgen.checks import CheckResult, Condition, evaluate, parse_condition


@pytest.mark.parametrize(("text", "name", "arg", "op", "threshold"), [
    ("accuracy < 0.9", "accuracy", None, "<", 0.9),
    ("group_accuracy[marked] < 0.8", "group_accuracy", "marked", "<", 0.8),
    ("accuracy_drop > 0.02", "accuracy_drop", None, ">", 0.02),
    ("flips > 10", "flips", None, ">", 10.0),
    ("map_similarity[gradcam] < 0.5", "map_similarity", "gradcam", "<", 0.5),
    ("sanity_similarity[gradcam] > 0.5", "sanity_similarity", "gradcam", ">", 0.5),
    ("  flips>=3 ", "flips", None, ">=", 3.0),
    ("x<=-1e-3", "x", None, "<=", -0.001),
    ("group_accuracy[ shape = round ] == .5", "group_accuracy", "shape = round", "==", 0.5),
    ("deletion_auc[gradcam@layer4] != 1", "deletion_auc", "gradcam@layer4", "!=", 1.0),
])
def test_parse_reads_name_arg_operator_and_number(text, name, arg, op, threshold):
    cond = parse_condition(text)
    assert (cond.name, cond.arg, cond.op) == (name, arg, op)
    assert cond.threshold == pytest.approx(threshold) and cond.text == text.strip()


@pytest.mark.parametrize(("text", "message"), [
    ("", r"empty condition"),
    ("   ", r"empty condition"),
    ("< 0.9", r"starts with a fact's name"),
    ("9flips > 1", r"starts with a fact's name"),
    ("accuracy 0.9", r"expected an operator \(< <= > >= == !=\) after accuracy, found nothing|found '0.9'"),
    ("accuracy = 0.9", r"expected an operator .* after accuracy, found '='"),
    ("accuracy => 0.9", r"found '=>'"),
    ("group_accuracy[marked < 0.8", r"'\[' after 'group_accuracy' is not closed"),
    ("group_accuracy[] < 0.8", r"empty \[\] after 'group_accuracy'"),
    ("accuracy <", r"expected a number after '<'"),
    ("accuracy < high", r"expected a number after '<', found 'high'"),
    ("accuracy < 0.9 and flips > 1", r"expected a number after '<', found '0.9 and flips > 1'"),
    ("accuracy < 1e999", r"is not finite"),
    ("accuracy < nan", r"expected a number"),
])
def test_parse_errors_say_what_was_expected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(text)


def test_parse_refuses_what_is_not_text():
    with pytest.raises(ValueError, match="expected a condition as text, got int"):
        parse_condition(3)  # type: ignore[arg-type]


FACTS = {
    "accuracy": 0.85, "flips": 12, "accuracy_drop": 0.02,
    "group_accuracy": {"mark=marked": 0.5, "mark=clean": 0.95, "size=small": 0.7, "shape=small": 0.6},
    "map_similarity": {"gradcam": 0.4, "saliency": float("nan")},
    "class_accuracy": {"cat": None, "dog": 1.0},
}


@pytest.mark.parametrize(("text", "value", "failed"), [
    ("accuracy < 0.9", 0.85, True),
    ("accuracy < 0.85", 0.85, False),
    ("accuracy <= 0.85", 0.85, True),
    ("accuracy > 0.85", 0.85, False),
    ("accuracy >= 0.85", 0.85, True),
    ("accuracy == 0.85", 0.85, True),
    ("accuracy != 0.85", 0.85, False),
    ("flips > 10", 12, True),
    ("flips > 12", 12, False),
    ("accuracy_drop > 0.02", 0.02, False),
    ("group_accuracy[marked] < 0.8", 0.5, True),          # a bare value: the one column that has it
    ("group_accuracy[mark=clean] < 0.8", 0.95, False),
    ("group_accuracy[size=small] < 0.8", 0.7, True),      # column=value always works
    ("map_similarity[gradcam] < 0.5", 0.4, True),
])
def test_evaluate_applies_the_operator_to_the_fact(text, value, failed):
    (result,) = evaluate([parse_condition(text)], FACTS)
    assert isinstance(result, CheckResult) and result.condition == text
    assert result.value == pytest.approx(value) and result.failed is failed
    assert result.detail.startswith("failed" if failed else "passed")


def test_a_fact_without_value_fails_the_gate():
    results = evaluate([parse_condition("map_similarity[saliency] < 0.5"),
                        parse_condition("class_accuracy[cat] < 0.5"),
                        parse_condition("class_accuracy[dog] < 0.5")], FACTS)
    assert [(r.value, r.failed) for r in results] == [(None, True), (None, True), (1.0, False)]
    assert "has no value" in results[0].detail and "map_similarity[saliency]" in results[0].detail


@pytest.mark.parametrize(("text", "message"), [
    ("acuracy < 0.9", r"unknown fact 'acuracy'; known: accuracy, accuracy_drop, class_accuracy.*did you mean 'accuracy'"),
    ("group_accuracy[small] < 0.5", r"'small' is a value of 2 columns \(shape=small, size=small\); "
                                    r"write group_accuracy\[column=small\]"),
    ("group_accuracy[marke] < 0.5", r"unknown group_accuracy\[...\] argument 'marke'; known: mark=clean, mark=marked.*"
                                    r"did you mean 'marked'"),
    ("map_similarity[gradcma] < 0.5", r"did you mean 'gradcam'"),
    ("group_accuracy < 0.5", r"group_accuracy needs an argument, group_accuracy\[ARG\], one of: mark=clean"),
    ("flips[gradcam] > 1", r"flips takes no argument; write 'flips > 1'"),
])
def test_unknown_names_and_args_are_errors_naming_the_known_ones(text, message):
    with pytest.raises(ValueError, match=message):
        evaluate([parse_condition(text)], FACTS)


def test_results_follow_the_conditions_order_and_canonical_text():
    conds = [parse_condition(t) for t in ("flips>1", "accuracy  <  0.9")]
    assert [r.condition for r in evaluate(conds, FACTS)] == ["flips>1", "accuracy  <  0.9"]
    assert [str(c) for c in conds] == ["flips > 1", "accuracy < 0.9"]
    assert Condition("x", "g", "a=b", "<", 0.5).subject == "g[a=b]"
    assert evaluate([], FACTS) == []
    assert math.isnan(FACTS["map_similarity"]["saliency"])  # the facts are not modified
