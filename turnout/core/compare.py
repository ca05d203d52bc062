"""Whether a shadow's reply agrees with the primary's, row by row, for what the model outputs.

The router mirrors requests to a shadow version and counts the rows whose replies agree; the
shadow gate passes when that share reaches ``analysis.minShadowAgreement``. What "agree" means
is declared per model (``spec.comparison``), because one rule cannot fit every model:

- Binary: a score per row; agree when both are on the same side of ``threshold`` (score >=
  threshold is positive). Difference: the absolute difference of the scores.
- MultiClass: class scores per row, (N, C); agree when the top class (argmax) is the same, so
  1 - agreement is the share of rows whose top class changed. Difference: half the L1 distance
  between the rows, which for probabilities is the total variation distance (0 identical, 1
  disjoint): it shows a shadow drifting before its top class flips. An (N,) or (N, 1) output
  holds class labels: agree when equal, difference 0 or 1.
- Regression: a value per row; agree when ``|a - b| <= tolerance``, or ``<= relativeTolerance
  * |a|`` (a is the primary's value), whichever is looser. Difference: ``|a - b|``.
- Exact: agree when a row's values are identical. Difference: 0 or 1.

A row holding several values (Binary or Regression with shape (N, k)) agrees when every value
does, and its difference is the largest. Pure: arrays in, arrays out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.core.spec import Comparison, ComparisonType

#: A reply's outputs by name, rows on the first axis.
Outputs = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Compared:
    #: Per row: did the shadow agree with the primary.
    agree: npt.NDArray[np.bool_]
    #: Per row: how far apart they were (0 = identical); see the module docstring per type.
    difference: npt.NDArray[np.float64]


class Incomparable(ValueError):
    """Replies that cannot be compared row by row (missing output, unsuitable shape)."""


class ShapeMismatch(Incomparable):
    """Both replies hold the output, in different shapes."""


def compare(comparison: Comparison, primary: Outputs, shadow: Outputs) -> Compared:
    """Row-by-row agreement and difference of the compared output of two replies."""
    a = _output(comparison.output, primary)
    b = _output(comparison.output, shadow)
    if a.shape != b.shape:
        raise ShapeMismatch(f"shapes differ: primary {a.shape}, shadow {b.shape}")
    if a.ndim == 0:
        raise Incomparable("a scalar output has no rows")
    return _BY_TYPE[comparison.type](comparison, a, b)


def _output(name: str | None, outputs: Outputs) -> npt.NDArray[Any]:
    if name is None:
        first = next(iter(outputs.values()), None)
        if first is None:
            raise Incomparable("the reply has no outputs")
        return np.asarray(first)
    if name not in outputs:
        raise Incomparable(f"no output {name!r}; the reply has {sorted(outputs)}")
    return np.asarray(outputs[name])


def _rows(x: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
    """One row per first-axis entry, every value of the row along the second axis."""
    return np.asarray(x, dtype=dtype).reshape(len(x), math.prod(x.shape[1:]))


def _largest(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    largest: npt.NDArray[np.float64] = np.max(values, axis=1, initial=0.0)
    return largest


def _binary(c: Comparison, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Compared:
    a, b = _rows(a, np.float64), _rows(b, np.float64)
    agree = np.all((a >= c.threshold) == (b >= c.threshold), axis=1)
    return Compared(agree, _largest(np.abs(a - b)))


def _multi_class(c: Comparison, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Compared:
    if a.ndim > 2:
        raise Incomparable(f"MultiClass compares (N,) labels or (N, C) class scores, not {a.shape}")
    a, b = _rows(a), _rows(b)
    if a.shape[1] == 0:
        raise Incomparable("MultiClass needs at least one class per row")
    if a.shape[1] == 1:  # class labels
        agree = a[:, 0] == b[:, 0]
        return Compared(agree, (~agree).astype(np.float64))
    agree = np.argmax(a, axis=1) == np.argmax(b, axis=1)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).sum(axis=1) / 2
    return Compared(agree, diff)


def _regression(c: Comparison, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Compared:
    a, b = _rows(a, np.float64), _rows(b, np.float64)
    diff = np.abs(a - b)
    bound = np.maximum(c.tolerance or 0.0, (c.relative_tolerance or 0.0) * np.abs(a))
    return Compared(np.all(diff <= bound, axis=1), _largest(diff))


def _exact(c: Comparison, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Compared:
    agree = np.all(_rows(a) == _rows(b), axis=1)
    return Compared(agree, (~agree).astype(np.float64))


_BY_TYPE: dict[
    ComparisonType, Callable[[Comparison, npt.NDArray[Any], npt.NDArray[Any]], Compared]
] = {
    ComparisonType.BINARY: _binary,
    ComparisonType.MULTI_CLASS: _multi_class,
    ComparisonType.REGRESSION: _regression,
    ComparisonType.EXACT: _exact,
}
