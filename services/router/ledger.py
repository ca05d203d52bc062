"""This replica's A/B ledger: outcomes made durable in groups before they are acknowledged.

Feedback is answered 200 only once its record is durable (fsynced, or stored by the API
server), so an acknowledged outcome survives the router. One durable write per outcome would
cap feedback at the storage's sync rate, so writes are grouped (group commit): while one write
is under way, the outcomes arriving queue up, and the next write takes them all (up to
MAX_GROUP), then every request in the group is answered. An idle router writes at once: no
fixed window adds latency, yet under load one sync serves hundreds of outcomes.

The store's calls block (fsync, HTTP), so they run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from turnout.core.ab_ledger import Outcome
from turnout.io.ab_store import LedgerStore

log = logging.getLogger("turnout.router")

#: Most records written in one group.
MAX_GROUP = 1024

_Pending = tuple[str, str, Outcome, "asyncio.Future[None]"]


class LedgerWriter:
    def __init__(self, store: LedgerStore, replica: str) -> None:
        self.store = store
        self.replica = replica
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def append(self, model: str, experiment: str, outcome: Outcome) -> None:
        """Return once ``outcome`` is durable in this replica's ledger; raise if it could not
        be written (it is then not counted)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((model, experiment, outcome, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                failures = await asyncio.to_thread(self._write, group)
                for model, experiment, _, done in group:
                    if done.done():
                        continue
                    failed = failures.get((model, experiment))
                    if failed is None:
                        done.set_result(None)
                    else:
                        done.set_exception(failed)
            if self._stopping:
                return

    def _write(self, group: list[_Pending]) -> dict[tuple[str, str], Exception]:
        """Write each experiment's records of the group; the failures by experiment."""
        by_experiment: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
        for model, experiment, outcome, _ in group:
            by_experiment[(model, experiment)].append(outcome)
        failures: dict[tuple[str, str], Exception] = {}
        for (model, experiment), records in by_experiment.items():
            try:
                self.store.append(
                    model=model, experiment=experiment, replica=self.replica, records=records
                )
            except Exception as exc:  # the requests are told; the router carries on
                log.error(
                    "A/B ledger write failed for %s (%d outcomes): %s", model, len(records), exc
                )
                failures[(model, experiment)] = exc
        return failures
