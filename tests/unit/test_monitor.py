"""The drift window the model server keeps: incremental counts equal a recount of recent rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.model.monitor import SlidingWindow
from turnout import drift

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
