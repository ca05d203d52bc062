"""Shadow comparison by what a model outputs: which rows agree, and how far apart they are."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from turnout.core.compare import Incomparable, ShapeMismatch, compare
from turnout.core.spec import Comparison, ComparisonType, SpecError, parse_deployment

BINARY = Comparison()
AT_07 = Comparison(threshold=0.7)
TOP_CLASS = Comparison(type=ComparisonType.MULTI_CLASS)
WITHIN_01 = Comparison(type=ComparisonType.REGRESSION, tolerance=0.1)
WITHIN_10PCT = Comparison(type=ComparisonType.REGRESSION, relative_tolerance=0.1)
EITHER = Comparison(type=ComparisonType.REGRESSION, tolerance=0.5, relative_tolerance=0.1)
EXACT = Comparison(type=ComparisonType.EXACT)


def out(values: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    return {"y": np.asarray(values, dtype=dtype)}


@pytest.mark.parametrize(
    ("comparison", "primary", "shadow", "agree", "difference"),
    [
        pytest.param(
            BINARY, [0.1, 0.6, 0.5, 0.49], [0.4, 0.9, 0.49, 0.5],
            [True, True, False, False], [0.3, 0.3, 0.01, 0.01], id="binary-same-side-of-0.5",
        ),
        pytest.param(
            AT_07, [0.6, 0.8], [0.69, 0.7], [True, True], [0.09, 0.1], id="binary-threshold-0.7"
        ),
        pytest.param(
            BINARY, [[0.9], [0.1]], [[0.8], [0.7]], [True, False], [0.1, 0.6],
            id="binary-column-vector",
        ),
        pytest.param(
            BINARY, [[0.9, 0.1], [0.9, 0.1]], [[0.8, 0.2], [0.8, 0.6]],
            [True, False], [0.1, 0.5], id="binary-every-score-of-a-row",
        ),
        pytest.param(
            TOP_CLASS, [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], [[0.5, 0.3, 0.2], [0.3, 0.45, 0.25]],
            [True, False], [0.2, 0.1], id="multiclass-top-class-and-total-variation",
        ),
        pytest.param(
            TOP_CLASS, [3, 1, 4], [3, 2, 4], [True, False, True], [0, 1, 0],
            id="multiclass-labels",
        ),
        pytest.param(
            WITHIN_01, [10.0, 10.0, -3.0], [10.05, 10.2, -3.08],
            [True, False, True], [0.05, 0.2, 0.08], id="regression-absolute",
        ),
        pytest.param(
            WITHIN_10PCT, [100.0, 1.0, 0.0], [109.0, 1.2, 0.0],
            [True, False, True], [9.0, 0.2, 0.0], id="regression-relative-to-primary",
        ),
        pytest.param(
            EITHER, [100.0, 1.0, 1.0], [109.0, 1.4, 1.6],
            [True, True, False], [9.0, 0.4, 0.6], id="regression-whichever-is-looser",
        ),
        pytest.param(
            EXACT, [[1, 2], [3, 4]], [[1, 2], [3, 5]], [True, False], [0, 1], id="exact-rows",
        ),
        pytest.param(BINARY, np.zeros((0,)), np.zeros((0,)), [], [], id="no-rows"),
    ],
)  # fmt: skip
def test_rows_agree_as_the_comparison_says(
    comparison: Comparison, primary: Any, shadow: Any, agree: list[bool], difference: list[float]
) -> None:
    got = compare(comparison, out(primary, np.float64), out(shadow, np.float64))
    assert got.agree.tolist() == agree
    assert got.difference == pytest.approx(difference, abs=1e-6)


def test_the_named_output_is_compared_else_the_first() -> None:
    primary = {"label": np.array([1, 2]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]])}
    shadow = {"label": np.array([1, 1]), "probabilities": np.array([[0.8, 0.2], [0.3, 0.7]])}
    assert compare(TOP_CLASS, primary, shadow).agree.tolist() == [True, False]
    named = Comparison(type=ComparisonType.MULTI_CLASS, output="probabilities")
    assert compare(named, primary, shadow).agree.tolist() == [True, True]


def test_exact_compares_integers_without_rounding() -> None:
    big = 2**53 + 1  # not a float64
    got = compare(EXACT, out([big], np.int64), out([big - 1], np.int64))
    assert got.agree.tolist() == [False]


@pytest.mark.parametrize(
    ("comparison", "primary", "shadow", "error", "message"),
    [
        (BINARY, out([0.1, 0.2]), out([0.1, 0.2, 0.3]), ShapeMismatch, "shapes differ"),
        (BINARY, out([0.1]), {}, Incomparable, "no outputs"),
        (
            Comparison(output="probabilities"), out([0.1]), out([0.1]), Incomparable,
            "no output 'probabilities'; the reply has ['y']",
        ),
        (TOP_CLASS, out(np.zeros((2, 3, 4))), out(np.zeros((2, 3, 4))), Incomparable, "(N, C)"),
        (BINARY, out(0.5), out(0.5), Incomparable, "no rows"),
    ],
)  # fmt: skip
def test_replies_that_cannot_be_compared_say_why(
    comparison: Comparison, primary: Any, shadow: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        compare(comparison, primary, shadow)


FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)
COMPARISONS = [BINARY, AT_07, TOP_CLASS, WITHIN_01, WITHIN_10PCT, EITHER, EXACT]


@given(
    values=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1), elements=FINITE
    )
)
def test_identical_replies_agree_on_every_row_whatever_the_comparison(values: Any) -> None:
    for comparison in COMPARISONS:
        got = compare(comparison, {"y": values}, {"y": values.copy()})
        assert got.agree.all() and len(got.agree) == len(values), comparison
        assert (got.difference == 0).all(), comparison


@given(
    a=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 1)),
    b=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 1)),
)
def test_agreement_is_symmetric_where_the_rule_is(a: Any, b: Any) -> None:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    for comparison in (BINARY, WITHIN_01, EXACT):
        forth = compare(comparison, {"y": a}, {"y": b})
        back = compare(comparison, {"y": b}, {"y": a})
        assert forth.agree.tolist() == back.agree.tolist()
        assert forth.difference == pytest.approx(back.difference)


# --- the spec --------------------------------------------------------------------------------


def deployment(comparison: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits"},
        "spec": {"model": "digits", "stable": {"version": "v1"}, "comparison": comparison},
    }


@pytest.mark.parametrize(
    ("comparison", "measure"),
    [
        ({}, "same side of 0.5"),
        ({"type": "Binary", "threshold": 0.7}, "same side of 0.7"),
        ({"type": "MultiClass"}, "top class"),
        ({"type": "Regression", "tolerance": 0.05}, "within 0.05"),
        ({"type": "Regression", "relativeTolerance": 0.01}, "within 1%"),
        ({"type": "Regression", "tolerance": 0.05, "relativeTolerance": 0.01}, "within 0.05 or 1%"),
        ({"type": "Exact"}, "exact"),
        ({"type": "MultiClass", "output": "probabilities"}, "top class, output probabilities"),
    ],
)
def test_each_comparison_says_what_agreement_means(comparison: Any, measure: str) -> None:
    assert parse_deployment(deployment(comparison)).spec.comparison.measure == measure


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        ({"type": "Ranking"}, "spec.comparison.type: Input should be 'Binary', 'MultiClass'"),
        ({"type": "Regression"}, "spec.comparison: type Regression needs tolerance or"),
        ({"type": "Regression", "tolerance": -1}, "spec.comparison.tolerance: Input should be"),
        (
            {"type": "Binary", "tolerance": 0.1},
            "spec.comparison: tolerance applies to type Regression, not Binary",
        ),
        (
            {"type": "MultiClass", "relativeTolerance": 0.1},
            "spec.comparison: relativeTolerance applies to type Regression, not MultiClass",
        ),
        ({"threshold": "high"}, "spec.comparison.threshold: Input should be a valid number"),
        ({"threshold": float("nan")}, "spec.comparison.threshold: Input should be a finite"),
        ({"output": ""}, "spec.comparison.output: String should have at least 1 character"),
        ({"tolerence": 0.1}, "spec.comparison.tolerence: Extra inputs are not permitted"),
    ],
)
def test_a_bad_comparison_is_refused_naming_the_field(comparison: Any, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_deployment(deployment(comparison))
