"""Mirroring a sample of good requests to the shadow version, and comparing its replies.

A shadow is a version that answers nobody: the router copies a share of the requests the
primary answered with 200 to it, in the background, and compares the two replies row by row as
the model's route says (turnout/core/compare.py: same side of a threshold, same top class,
within a tolerance, or identical), counting rows that agree and observing each row's
difference. The caller never waits on the shadow, and in-flight copies are bounded: past the
bound a copy is dropped and counted, so a slow shadow cannot pile up memory or connections.

A copy leaves a millisecond after the primary's reply (``COPY_DELAY_S``), not in the same
instant. Sent at once, the shadow's model server wakes just as the caller is woken to read
its reply, and where they share CPUs the caller loses: on 2 cores that put the primary's p99
at 1.14-1.16x with 100 % shadow; a millisecond later it is 0.91-1.12x, median 1.02x
(bench/shadow_impact.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

import numpy as np
import orjson

from services.router.forward import Reply
from services.router.kinds import RequestKind
from services.router.metrics import RouterMetrics
from turnout.core.compare import Incomparable, Outputs, ShapeMismatch, compare
from turnout.core.spec import Comparison, ModelRoute, Upstream
from turnout_sdk import protocol as oip
from turnout_sdk.histograms import observe_many

log = logging.getLogger("turnout.router")

#: The ``variant`` label of mirrored calls (the other two are the Arm values).
SHADOW = "shadow"

#: How long after the primary's reply its copy goes to the shadow (see the module docstring).
COPY_DELAY_S = 0.001

#: Why a pair of replies may not be compared: a body that does not decode, or outputs that do
#: not fit the comparison (a named output missing, a shape it cannot read).
_UNREADABLE = (
    Incomparable,
    oip.ProtocolError,
    orjson.JSONDecodeError,
    KeyError,
    TypeError,
    ValueError,
)

#: ``forward.Client.attempt``: one counted, timed call of a version.
Attempt = Callable[
    [Upstream, str, RequestKind, bytes, Mapping[str, str], float, str], Awaitable[Reply]
]


class ShadowMirror:
    def __init__(self, attempt: Attempt, metrics: RouterMetrics, *, max_inflight: int) -> None:
        self.metrics = metrics
        self._attempt = attempt
        self._inflight = 0
        self._max = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(
        self,
        name: str,
        route: ModelRoute,
        kind: RequestKind,
        body: bytes,
        headers: Mapping[str, str],
        primary: Reply,
    ) -> None:
        """Copy the request to the route's shadow, sampled, unless too many copies are out."""
        shadow = route.shadow
        assert shadow is not None
        if shadow.percent < 100 and random.random() * 100 >= shadow.percent:
            return
        if self._inflight >= self._max:
            self.metrics.shadow_result(name, "dropped").inc()
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(
            self._call(name, route, shadow, kind, body, headers, primary)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Give the copies still out a few seconds to finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _call(
        self,
        name: str,
        route: ModelRoute,
        shadow: Upstream,
        kind: RequestKind,
        body: bytes,
        headers: Mapping[str, str],
        primary: Reply,
    ) -> None:
        try:
            await asyncio.sleep(COPY_DELAY_S)  # let the caller read its reply first
            reply = await self._attempt(
                shadow, name, kind, body, headers, route.shadow_timeout_ms, SHADOW
            )
            if not reply.ok or reply.status != 200:
                result = "timeout" if reply.status == 504 and not reply.body else "error"
                self.metrics.shadow_result(name, result).inc()
                return
            self.metrics.shadow_result(name, "ok").inc()
            rows = kind.rows(body, headers)
            self._compare(name, route.comparison, kind=kind, rows=rows, replies=(primary, reply))
        except Exception:  # a shadow must never hurt the router
            log.exception("shadow call failed")
            self.metrics.shadow_result(name, "error").inc()
        finally:
            self._inflight -= 1

    def _compare(
        self,
        name: str,
        comparison: Comparison,
        *,
        kind: RequestKind,
        rows: int | None,
        replies: tuple[Reply, Reply],
    ) -> None:
        """Count the rows of the primary's and the shadow's replies that agree."""
        primary, shadow = replies
        try:
            compared = compare(
                comparison, _outputs(kind, rows, primary), _outputs(kind, rows, shadow)
            )
        except ShapeMismatch:
            self.metrics.shadow_result(name, "shape_mismatch").inc()
            return
        except _UNREADABLE:
            self.metrics.shadow_result(name, "unreadable").inc()
            return
        children = self.metrics.comparisons(name)
        observe_many(children.abs_diff, compared.difference)
        agree = int(np.count_nonzero(compared.agree))
        if agree:
            children.agree.inc(agree)
        if len(compared.agree) - agree:
            children.disagree.inc(len(compared.agree) - agree)


def _outputs(kind: RequestKind, rows: int | None, reply: Reply) -> Outputs:
    """A 200 reply's outputs by name, rows first; a reply whose rows differ from the
    request's cannot be compared."""
    outputs = kind.outputs(reply.body, reply.headers)
    for name, value in outputs.items():
        if not rows or len(value) != rows:
            raise Incomparable(f"output {name!r} has {len(value)} rows, the request {rows}")
    return outputs
