"""Arm assignment: sticky, proportional, monotone in the weight, reshuffled by the salt."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core.assign import Arm, assign, bucket

KEYS = [f"user-{i}" for i in range(100_000)]


@given(key=st.text(min_size=1, max_size=40), salt=st.text(max_size=20), weight=st.floats(0, 100))
def test_the_same_key_always_gets_the_same_arm(key: str, salt: str, weight: float) -> None:
    arms = {assign(weight=weight, salt=salt, key=key, uniform=random.random()) for _ in range(5)}
    assert len(arms) == 1


@pytest.mark.parametrize("weight", [0, 1, 5, 25, 50, 90, 100])
def test_shares_match_the_weight_over_100k_keys(weight: float) -> None:
    share = sum(assign(weight=weight, salt="s", key=k, uniform=0) is Arm.CANDIDATE for k in KEYS)
    expected = weight / 100
    tolerance = 4 * (expected * (1 - expected) / len(KEYS)) ** 0.5 + 1e-9  # 4 sigma
    assert abs(share / len(KEYS) - expected) <= tolerance


@settings(max_examples=200)
@given(key=st.text(min_size=1), low=st.floats(0, 100), high=st.floats(0, 100))
def test_raising_the_weight_never_moves_a_canary_user_back(
    key: str, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    if assign(weight=low, salt="x", key=key, uniform=0) is Arm.CANDIDATE:
        assert assign(weight=high, salt="x", key=key, uniform=0) is Arm.CANDIDATE


def test_a_new_salt_reshuffles_the_keys() -> None:
    a = [bucket("salt-a", k) for k in KEYS[:10_000]]
    b = [bucket("salt-b", k) for k in KEYS[:10_000]]
    same = sum(x < 5000 and y < 5000 for x, y in zip(a, b, strict=True))
    assert 2200 < same < 2800  # independent halves overlap by about a quarter


def test_without_a_key_the_uniform_draw_decides() -> None:
    assert assign(weight=30, salt="", key=None, uniform=0.29) is Arm.CANDIDATE
    assert assign(weight=30, salt="", key=None, uniform=0.30) is Arm.STABLE
    assert assign(weight=30, salt="", key="", uniform=0.1) is Arm.CANDIDATE
