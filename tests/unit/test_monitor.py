"""The drift window the model server keeps: incremental counts equal a recount of recent rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core import drift
from turnout_sdk.monitor import SlidingWindow

REFS = [
    drift.numeric_reference(np.linspace(0, 100, 1000)),
    drift.categorical_reference([0, 1, 2, 2], categories=[0, 1, 2]),
]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 50),
    chunks=st.lists(st.integers(0, 80), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_window_psi_equals_psi_of_the_last_rows(size: int, chunks: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    window = SlidingWindow(REFS, size)
    seen = np.zeros((0, 2))
    for n in chunks:
        rows = np.column_stack([rng.uniform(-10, 120, n), rng.integers(0, 5, n)]).astype(float)
        window.add(rows)
        seen = np.concatenate([seen, rows])
    recent = seen[-size:]
    assert window.rows == len(recent)
    expected = [drift.psi_of_values(ref, recent[:, j]) for j, ref in enumerate(REFS)]
    np.testing.assert_allclose(window.psi(), expected, atol=1e-12)


def test_observe_many_equals_observing_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from turnout_sdk.histograms import observe_many
    from turnout_sdk.tasks import BinaryScore

    SCORE_BUCKETS = tuple(BinaryScore().buckets)

    values = np.random.default_rng(0).random(500) ** 3
    values[:3] = [0.0, 1.0, SCORE_BUCKETS[2]]  # edges: le is inclusive
    registries = []
    for bulk in (True, False):
        registry = CollectorRegistry()
        hist = Histogram("score", "s", buckets=SCORE_BUCKETS, registry=registry)
        if bulk:
            observe_many(hist, values)
        else:
            for v in values:
                hist.observe(float(v))
        registries.append(registry)
    bulk_reg, loop_reg = registries
    for le in [*SCORE_BUCKETS, float("inf")]:
        labels = {"le": str(float(le)) if le != float("inf") else "+Inf"}
        assert bulk_reg.get_sample_value("score_bucket", labels) == loop_reg.get_sample_value(
            "score_bucket", labels
        ), le
    assert bulk_reg.get_sample_value("score_count") == 500
    assert bulk_reg.get_sample_value("score_sum") == pytest.approx(values.sum())
