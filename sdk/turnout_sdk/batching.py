"""Event-driven micro-batching for a model that is fast per call and faster per row in bulk.

Why not BentoML's adaptive batching (``@bentoml.api(batchable=True)``)? Its CorkDispatcher
is built for models that take tens of milliseconds: a controller coroutine polls the queue
every 1 ms (``asyncio.sleep(0.001)``), lets one batch run at a time, first spends its early
requests "training" a latency model, and hops every batch through a thread pool. For this MLP
a forward pass takes 0.1-0.25 ms, so the 1 ms poll quantum alone is several model calls:
requests wait on the clock instead of the model (bench/model_server.py measures it).

This batcher is driven by arrivals instead of a clock:
- an idle batcher runs a request at once (no batching window for a lone request);
- while a batch is running, new requests queue; when it finishes, everything queued (up to
  ``max_rows``) runs as the next batch. Batch size thus adapts to load by itself;
- an optional ``wait_s`` holds a batch briefly to collect more rows (default 0).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
#: One request's tensors (or one reply's), in declaration order; rows on axis 0 of each.
Arrays = tuple[Array, ...]


@dataclass
class _Job:
    arrays: Arrays
    future: asyncio.Future[Arrays]

    @property
    def rows(self) -> int:
        return len(self.arrays[0])


class MicroBatcher:
    def __init__(
        self,
        fn: Callable[[Arrays], Arrays],
        *,
        max_rows: int,
        wait_s: float = 0.0,
        inline_rows: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``fn`` maps a tuple of input arrays with N rows each to a tuple of output arrays
        with N rows each. Batches of at most ``inline_rows`` rows run on the event
        loop (a thread hop costs more than a tiny forward pass); larger ones on a worker thread
        so the loop keeps accepting requests."""
        self._fn = fn
        self._max_rows = max_rows
        self._wait_s = wait_s
        self._inline_rows = inline_rows
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def __call__(self, arrays: Arrays) -> Arrays:
        loop = asyncio.get_running_loop()
        job = _Job(arrays, loop.create_future())
        self._queue.append(job)
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self._wait_s > 0 and self._queued_rows() < self._max_rows:
                    await asyncio.sleep(self._wait_s)
                jobs = self._take()
                batch = jobs[0].arrays if len(jobs) == 1 else _concatenate(jobs)
                rows = len(batch[0])
                try:
                    if rows <= self._inline_rows:
                        out = self._fn(batch)
                    else:
                        out = await loop.run_in_executor(self._executor, self._fn, batch)
                except Exception as exc:
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                if self._on_batch is not None:
                    self._on_batch(rows)
                if len(jobs) == 1:
                    if not jobs[0].future.done():
                        jobs[0].future.set_result(out)
                    continue
                start = 0
                for job in jobs:
                    end = start + job.rows
                    if not job.future.done():  # the caller may have gone away
                        job.future.set_result(tuple(o[start:end] for o in out))
                    start = end
        finally:
            self._drainer = None

    def _queued_rows(self) -> int:
        return sum(j.rows for j in self._queue)

    def _take(self) -> list[_Job]:
        """Whole requests, oldest first, up to max_rows (a larger single request goes alone)."""
        jobs = [self._queue.popleft()]
        rows = jobs[0].rows
        while self._queue and rows + self._queue[0].rows <= self._max_rows:
            job = self._queue.popleft()
            rows += job.rows
            jobs.append(job)
        return jobs

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _concatenate(jobs: list[_Job]) -> Arrays:
    """The jobs' tensors joined row-wise, tensor by tensor."""
    return tuple(np.concatenate(parts) for parts in zip(*(j.arrays for j in jobs), strict=True))
