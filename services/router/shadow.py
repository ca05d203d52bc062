"""Mirroring a sample of good requests to the shadow version, and comparing its replies.

A shadow is a version that answers nobody: the router copies a share of the requests the
primary answered with 200 to it, in the background, and compares the two replies row by row
(absolute score difference, and whether both sides of the agreement threshold match). The
caller never waits on the shadow, and in-flight copies are bounded: past the bound a copy is
dropped and counted, so a slow shadow cannot pile up memory or connections.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

import numpy as np
import orjson

from services.histograms import observe_many
from services.router.forward import Reply
from services.router.kinds import RequestKind
from services.router.metrics import RouterMetrics
from turnout.core import inference_protocol as oip
from turnout.core.spec import ModelRoute, Upstream

log = logging.getLogger("turnout.router")

#: The ``variant`` label of mirrored calls (the other two are the Arm values).
SHADOW = "shadow"

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
            self.metrics.shadow_requests.labels(name, "dropped").inc()
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
            reply = await self._attempt(
                shadow, name, kind, body, headers, route.shadow_timeout_ms, SHADOW
            )
            if not reply.ok or reply.status != 200:
                result = "timeout" if reply.status == 504 and not reply.body else "error"
                self.metrics.shadow_requests.labels(name, result).inc()
                return
            self.metrics.shadow_requests.labels(name, "ok").inc()
            self._compare(name, route, kind, primary, reply)
        except Exception:  # a shadow must never hurt the router
            log.exception("shadow call failed")
            self.metrics.shadow_requests.labels(name, "error").inc()
        finally:
            self._inflight -= 1

    def _compare(
        self, name: str, route: ModelRoute, kind: RequestKind, primary: Reply, shadow: Reply
    ) -> None:
        try:
            a = kind.scores(primary.body, primary.headers)
            b = kind.scores(shadow.body, shadow.headers)
        except (oip.ProtocolError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.metrics.shadow_requests.labels(name, "unreadable").inc()
            return
        if a.shape != b.shape:
            self.metrics.shadow_requests.labels(name, "shape_mismatch").inc()
            return
        observe_many(self.metrics.shadow_abs_diff.labels(name), np.abs(a - b))
        thr = route.agreement_threshold
        agree = int(np.sum((a >= thr) == (b >= thr)))
        if agree:
            self.metrics.shadow_agreement.labels(name, "true").inc(agree)
        if len(a) - agree:
            self.metrics.shadow_agreement.labels(name, "false").inc(len(a) - agree)
