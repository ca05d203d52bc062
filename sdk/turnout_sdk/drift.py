"""Drift primitives: reference distributions fixed at training time and PSI against them.

Pure: numbers in, numbers out. The model server's sliding window (turnout_sdk.monitor), the
validation gate and the retrain trigger (turnout.core.drift) all use these same functions,
so "drift" means one thing everywhere; they live in the SDK because a user's model server
needs them without the rest of turnout.

A reference is fixed at training time: numeric values get quantile bins (so every bin holds
about the same share of training rows), categorical values get one bin per known category
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
    x = finite_values(values)
    if x.size == 0:
        raise ValueError("cannot build a reference from no finite values")
    cuts = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    edges = tuple(float(c) for c in np.unique(cuts))
    ref = Reference(kind="numeric", edges=edges, proportions=(0.0,) * (len(edges) + 1))
    return with_proportions(ref, x)


def categorical_reference(values: npt.ArrayLike, categories: Sequence[float]) -> Reference:
    """One bin per known category code, plus a last bin for codes never seen in training."""
    ref = Reference(
        kind="categorical",
        edges=tuple(float(c) for c in categories),
        proportions=(0.0,) * (len(categories) + 1),
    )
    return with_proportions(ref, finite_values(values))


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


def finite_values(values: npt.ArrayLike) -> FloatArray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def with_proportions(ref: Reference, values: FloatArray) -> Reference:
    counts = bin_counts(ref, values).astype(np.float64)
    total = counts.sum()
    props = counts / total if total > 0 else counts
    return Reference(kind=ref.kind, edges=ref.edges, proportions=tuple(float(p) for p in props))
