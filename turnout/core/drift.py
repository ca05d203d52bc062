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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from turnout_sdk.drift import (  # re-exported: one implementation, in the SDK
    PSI_ALERT,
    PSI_EPSILON,
    PSI_WARN,
    DriftLevel,
    FloatArray,
    IntArray,
    Reference,
    bin_counts,
    bin_index,
    categorical_reference,
    finite_values,
    level,
    numeric_reference,
    psi,
    psi_of_values,
    with_proportions,
)

__all__ = [
    "PSI_ALERT",
    "PSI_EPSILON",
    "PSI_WARN",
    "DriftLevel",
    "FeatureDrift",
    "FloatArray",
    "IntArray",
    "Reference",
    "TestResult",
    "bin_counts",
    "bin_index",
    "binned_ks",
    "categorical_reference",
    "chi_square_test",
    "feature_drift",
    "finite_values",
    "ks_test",
    "level",
    "numeric_reference",
    "psi",
    "psi_of_values",
    "with_proportions",
]


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def ks_test(reference_sample: npt.ArrayLike, sample: npt.ArrayLike) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test for a numeric feature."""
    res = stats.ks_2samp(finite_values(reference_sample), finite_values(sample))
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
