"""Run a function every few seconds on the event loop, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Periodic:
    def __init__(self, fn: Callable[[], None], interval: float) -> None:
        self._fn = fn
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self._interval)
                self._fn()

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
