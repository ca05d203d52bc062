"""The micro-batcher: idle requests run at once, concurrent ones share a forward pass."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from turnout_sdk.batching import MicroBatcher


def _rows(*values: float) -> tuple[np.ndarray, np.ndarray]:
    """One request's two inputs: the values as rows, and a second tensor of row numbers."""
    return (
        np.array([[v] for v in values], dtype=np.float32),
        np.arange(len(values), dtype=np.int64),
    )


class Recorder:
    """A model that doubles its input and remembers each batch it was given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate

    def __call__(self, batch: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        x, index = batch
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(x))
        return x[:, 0] * 2, index


def test_a_lone_request_is_answered_alone() -> None:
    model = Recorder()

    async def main() -> np.ndarray:
        doubled, _ = await MicroBatcher(model, max_rows=64)(_rows(1, 2))
        return doubled

    assert asyncio.run(main()).tolist() == [2, 4]
    assert model.batches == [2]


@pytest.mark.parametrize("inline_rows", [0, 64])
def test_requests_arriving_while_busy_share_the_next_batch(inline_rows: int) -> None:
    gate = threading.Event()
    model = Recorder(gate)

    async def main() -> list[list[float]]:
        batcher = MicroBatcher(model, max_rows=64, inline_rows=inline_rows)
        first = asyncio.ensure_future(batcher(_rows(0)))
        await asyncio.sleep(0.01)  # the first batch is now running (blocked on the gate)
        rest = [asyncio.ensure_future(batcher(_rows(i, i + 0.5))) for i in range(1, 11)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *rest)
        # The second output comes back split the same way: each caller its own row numbers.
        assert all(r[1].tolist() == list(range(len(r[1]))) for r in results)
        return [r[0].tolist() for r in results]

    if inline_rows:  # an inline batch blocks the loop, so nothing queues behind it: skip
        model.gate = None
        gate.set()
    results = asyncio.run(main())
    # Every caller gets exactly its own rows back.
    assert results == [[0.0]] + [[2.0 * i, 2.0 * i + 1] for i in range(1, 11)]
    if not inline_rows:
        assert model.batches == [1, 20]


def test_batches_respect_max_rows_and_an_oversized_request_goes_alone() -> None:
    gate = threading.Event()
    model = Recorder(gate)

    async def main() -> None:
        batcher = MicroBatcher(model, max_rows=4)
        first = asyncio.ensure_future(batcher(_rows(0)))
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(batcher(_rows(*range(n)))) for n in (3, 1, 6, 1)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert model.batches == [1, 4, 6, 1]


def test_a_failing_model_fails_every_request_in_its_batch_and_recovers() -> None:
    calls = 0

    def flaky(batch: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return (batch[0][:, 0],)

    async def main() -> np.ndarray:
        batcher = MicroBatcher(flaky, max_rows=8)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher(_rows(1))
        (out,) = await batcher(_rows(3))
        return out

    assert asyncio.run(main()).tolist() == [3]
