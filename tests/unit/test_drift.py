"""PSI, KS and chi-square: the numbers every drift decision in turnout rests on."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core import drift


def test_same_distribution_has_psi_near_zero() -> None:
    rng = np.random.default_rng(0)
    ref = drift.numeric_reference(rng.normal(0, 1, 50_000))
    assert drift.psi_of_values(ref, rng.normal(0, 1, 50_000)) < 0.01
    assert drift.level(drift.psi_of_values(ref, rng.normal(0, 1, 50_000))) is drift.DriftLevel.OK


@pytest.mark.parametrize(
    ("shift", "expected"),
    [(0.0, drift.DriftLevel.OK), (0.4, drift.DriftLevel.WARN), (1.0, drift.DriftLevel.ALERT)],
)
def test_psi_grows_with_the_shift(shift: float, expected: drift.DriftLevel) -> None:
    rng = np.random.default_rng(1)
    ref = drift.numeric_reference(rng.normal(0, 1, 50_000))
    value = drift.psi_of_values(ref, rng.normal(shift, 1, 50_000))
    assert drift.level(value) is expected, value


def test_categorical_reference_counts_unseen_codes_in_their_own_bin() -> None:
    ref = drift.categorical_reference([0, 0, 1, 2, 2, 2], categories=[0, 1, 2])
    assert ref.proportions == pytest.approx((2 / 6, 1 / 6, 3 / 6, 0.0))
    assert drift.bin_counts(ref, [2, 7, 7, 1]).tolist() == [0, 1, 1, 2]
    # A new category taking over is a major shift.
    assert drift.psi_of_values(ref, [7] * 100) > drift.PSI_ALERT


def test_reference_round_trips_through_metadata() -> None:
    ref = drift.numeric_reference(np.arange(1000.0))
    assert drift.Reference.from_dict(ref.to_dict()) == ref
    with pytest.raises(ValueError, match="proportions"):
        drift.Reference.from_dict({"kind": "numeric", "edges": [1.0], "proportions": [1.0]})


def test_empty_window_reports_no_drift_and_reference_needs_data() -> None:
    ref = drift.numeric_reference([1.0, 2.0, 3.0])
    assert drift.psi(ref.proportions, [0] * ref.bins) == 0.0
    with pytest.raises(ValueError, match="no finite values"):
        drift.numeric_reference([float("nan")])


def test_ks_and_chi_square_detect_shift_and_accept_sameness() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 5000)
    assert drift.ks_test(base, rng.normal(0, 1, 5000)).p_value > 0.01
    assert drift.ks_test(base, rng.normal(0.3, 1, 5000)).p_value < 1e-6
    ref = drift.categorical_reference(rng.integers(0, 4, 10_000), categories=range(4))
    assert drift.chi_square_test(ref, rng.integers(0, 4, 4000)).p_value > 0.01
    assert drift.chi_square_test(ref, rng.choice(4, 4000, p=[0.4, 0.2, 0.2, 0.2])).p_value < 1e-6


def test_binned_ks_is_zero_on_the_reference_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = drift.numeric_reference(rng.normal(0, 1, 20_000))
    same = drift.binned_ks(ref, rng.normal(0, 1, 20_000))
    shifted = drift.binned_ks(ref, rng.normal(0.5, 1, 20_000))
    assert same < 0.02 < 0.15 < shifted
    exact = drift.ks_test(rng.normal(0, 1, 20_000), rng.normal(0.5, 1, 20_000)).statistic
    assert shifted <= exact + 0.02


def test_feature_drift_uses_ks_for_numbers_and_chi_square_for_categories() -> None:
    rng = np.random.default_rng(3)
    numeric = drift.numeric_reference(rng.normal(0, 1, 20_000))
    moved = drift.feature_drift("amount", numeric, rng.normal(1.0, 1, 5000))
    assert (moved.kind, moved.test, moved.level, moved.p_value) == (
        "numeric",
        "ks",
        drift.DriftLevel.ALERT,
        None,
    )
    assert moved.statistic > 0.3
    categorical = drift.categorical_reference(rng.integers(0, 4, 10_000), categories=range(4))
    still = drift.feature_drift("channel", categorical, rng.integers(0, 4, 4000))
    assert (still.kind, still.test, still.level) == ("categorical", "chi2", drift.DriftLevel.OK)
    assert still.p_value is not None and still.p_value > 0.01


def test_feature_drift_round_trips_through_json() -> None:
    rng = np.random.default_rng(4)
    ref = drift.categorical_reference(rng.integers(0, 3, 1000), categories=range(3))
    found = drift.feature_drift("channel", ref, [7] * 50)
    assert drift.FeatureDrift.from_dict(json.loads(json.dumps(asdict(found)))) == found
    with pytest.raises(ValueError, match="'sideways'"):
        drift.FeatureDrift.from_dict({**asdict(found), "level": "sideways"})


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=5, max_size=200),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
)
def test_psi_is_never_negative_and_zero_against_itself(ref_values, values) -> None:
    ref = drift.numeric_reference(ref_values)
    assert drift.psi_of_values(ref, values) >= 0
    assert drift.psi_of_values(ref, ref_values) == pytest.approx(0.0, abs=1e-9)
    assert drift.bin_counts(ref, values).sum() == len(values)
