"""Drift measures against a training reference: PSI on fixed bins, KS and chi-square.

Pure: numbers in, numbers out. The model server's sliding window, the validation gate and the
retrain trigger all call these same functions, so "drift" means one thing everywhere.
:func:`feature_drift` is the retrain trigger's verdict on one feature: its PSI and reading
plus the test that fits the feature's kind.

A reference is fixed at training time: numeric features get quantile bins (so every bin holds
about the same share of training rows), categorical features get one bin per known category
plus one for anything unseen. PSI then compares bin shares; its conventional reading is
< 0.1 stable, 0.1-0.25 moderate shift (warn), > 0.25 major shift (alert).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

PSI_WARN = 0.1
PSI_ALERT = 0.25
#: Floor for a bin share inside the PSI logarithm; an empty bin would otherwise be infinite.
PSI_EPSILON = 1e-4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class DriftLevel(StrEnum):
    OK = "ok"  # PSI below 0.1: distribution unchanged for practical purposes
    WARN = "warn"  # PSI 0.1-0.25: worth a look
    ALERT = "alert"  # PSI above 0.25: the model sees a different world than it was trained on


@dataclass(frozen=True)
class Reference:
    """Binned training distribution of one feature (or of the model's predictions).

    Numeric: ``edges`` are the interior cut points; bin i holds edges[i-1] <= x < edges[i].
    Categorical: ``edges`` are the known category codes; the last bin holds unseen codes.
    """

    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    @property
    def bins(self) -> int:
        return len(self.proportions)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        kind = data["kind"]
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"unknown reference kind {kind!r}")
        ref = cls(
            kind=kind,
            edges=tuple(float(e) for e in data["edges"]),
            proportions=tuple(float(p) for p in data["proportions"]),
        )
        expected_bins = len(ref.edges) + 1
        if ref.bins != expected_bins:
            raise ValueError(f"reference has {ref.bins} proportions for {expected_bins} bins")
        return ref


def numeric_reference(values: npt.ArrayLike, bins: int = 10) -> Reference:
    """Quantile bins over training values; ties collapse, so a near-constant feature has few."""
    x = _finite(values)
    if x.size == 0:
        raise ValueError("cannot build a reference from no finite values")
    cuts = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    edges = tuple(float(c) for c in np.unique(cuts))
    ref = Reference(kind="numeric", edges=edges, proportions=(0.0,) * (len(edges) + 1))
    return _with_proportions(ref, x)


def categorical_reference(values: npt.ArrayLike, categories: Sequence[float]) -> Reference:
    """One bin per known category code, plus a last bin for codes never seen in training."""
    ref = Reference(
        kind="categorical",
        edges=tuple(float(c) for c in categories),
        proportions=(0.0,) * (len(categories) + 1),
    )
    return _with_proportions(ref, _finite(values))


def bin_index(ref: Reference, values: npt.ArrayLike) -> IntArray:
    """Bin of each value under ``ref`` (non-finite values land in the last bin)."""
    x = np.asarray(values, dtype=np.float64)
    edges = np.asarray(ref.edges, dtype=np.float64)
    if ref.kind == "numeric":
        idx = np.searchsorted(edges, x, side="right")
    else:
        order = np.argsort(edges)
        pos = np.searchsorted(edges, x, sorter=order)
        pos = np.clip(pos, 0, len(edges) - 1)
        known = edges[order[pos]] == x
        idx = np.where(known, order[pos], len(edges))
    idx = np.where(np.isfinite(x), idx, ref.bins - 1)
    return idx.astype(np.int64)


def bin_counts(ref: Reference, values: npt.ArrayLike) -> IntArray:
    return np.bincount(bin_index(ref, values), minlength=ref.bins).astype(np.int64)


def psi(expected: Sequence[float] | FloatArray, actual_counts: Sequence[int] | IntArray) -> float:
    """Population stability index of observed bin counts against expected bin shares."""
    e = np.asarray(expected, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if e.shape != counts.shape:
        raise ValueError(f"expected {e.shape[0]} bins, got {counts.shape[0]}")
    total = counts.sum()
    if total <= 0:
        return 0.0
    a = np.maximum(counts / total, PSI_EPSILON)
    e = np.maximum(e, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_of_values(ref: Reference, values: npt.ArrayLike) -> float:
    return psi(ref.proportions, bin_counts(ref, values))


def level(value: float) -> DriftLevel:
    if value > PSI_ALERT:
        return DriftLevel.ALERT
    if value > PSI_WARN:
        return DriftLevel.WARN
    return DriftLevel.OK


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def ks_test(reference_sample: npt.ArrayLike, sample: npt.ArrayLike) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test for a numeric feature."""
    res = stats.ks_2samp(_finite(reference_sample), _finite(sample))
    return TestResult(statistic=float(res.statistic), p_value=float(res.pvalue))


def chi_square_test(ref: Reference, values: npt.ArrayLike) -> TestResult:
    """Chi-square goodness of fit of observed category counts against the reference shares."""
    counts = bin_counts(ref, values).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return TestResult(statistic=0.0, p_value=1.0)
    expected = np.maximum(np.asarray(ref.proportions), PSI_EPSILON)
    expected = expected / expected.sum() * total
    res = stats.chisquare(counts, expected)
    return TestResult(statistic=float(res.statistic), p_value=float(res.pvalue))


def binned_ks(ref: Reference, values: npt.ArrayLike) -> float:
    """Kolmogorov-Smirnov statistic measured at the reference's bin edges.

    The stored reference keeps quantile bins, not the training sample, so the largest gap
    between the two CDFs is taken over the edges: a lower bound of the exact statistic that
    moves with it.
    """
    counts = bin_counts(ref, values)
    total = counts.sum()
    if total == 0 or ref.bins < 2:
        return 0.0
    observed = np.cumsum(counts[:-1]) / total
    expected = np.cumsum(np.asarray(ref.proportions[:-1], dtype=np.float64))
    return float(np.max(np.abs(observed - expected)))


@dataclass(frozen=True)
class FeatureDrift:
    """How far one feature moved from its reference."""

    name: str
    kind: Literal["numeric", "categorical"]
    psi: float
    level: DriftLevel
    #: "ks" (numeric) or "chi2" (categorical).
    test: str
    statistic: float
    #: Chi-square p-value; None for KS, whose reference is binned (no sample is kept).
    p_value: float | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDrift:
        """From its fields as JSON gives them back; ValueError for an unknown kind or level."""
        kind = data["kind"]
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"unknown feature kind {kind!r}")
        p_value = data["p_value"]
        return cls(
            name=str(data["name"]),
            kind=kind,
            psi=float(data["psi"]),
            level=DriftLevel(data["level"]),
            test=str(data["test"]),
            statistic=float(data["statistic"]),
            p_value=None if p_value is None else float(p_value),
        )


def feature_drift(name: str, ref: Reference, values: npt.ArrayLike) -> FeatureDrift:
    """PSI of ``values`` against ``ref`` with its reading, plus chi-square for a categorical
    feature or the binned KS statistic for a numeric one."""
    x = np.asarray(values)
    value = psi_of_values(ref, x)
    p_value: float | None = None
    if ref.kind == "categorical":
        chi2 = chi_square_test(ref, x)
        test, statistic, p_value = "chi2", chi2.statistic, chi2.p_value
    else:
        test, statistic = "ks", binned_ks(ref, x)
    return FeatureDrift(
        name=name,
        kind=ref.kind,
        psi=value,
        level=level(value),
        test=test,
        statistic=statistic,
        p_value=p_value,
    )


def _finite(values: npt.ArrayLike) -> FloatArray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _with_proportions(ref: Reference, values: FloatArray) -> Reference:
    counts = bin_counts(ref, values).astype(np.float64)
    total = counts.sum()
    props = counts / total if total > 0 else counts
    return Reference(kind=ref.kind, edges=ref.edges, proportions=tuple(float(p) for p in props))
