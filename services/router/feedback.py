"""A/B feedback: outcomes reported after the fact, counted under the arm that served them.

An A/B test compares a business outcome (a conversion, a chargeback) between the arms, and the
outcome arrives long after the prediction. The router stores nothing per request: the caller
sends back the sticky key the request carried, and the arm is recomputed from it
(turnout.core.assign with the route's weight and salt, as at request time). Per arm the router
keeps the sufficient statistics (count, sum, sum of squares) the controller's sequential test
reads. A new candidate or a new salt is a new experiment, so its statistics start from zero.
"""

from __future__ import annotations

import math

import orjson

from services.router.asgi import error, read_body, respond
from services.router.metrics import RouterMetrics
from turnout.core.assign import Arm, assign
from turnout.core.spec import ModelRoute, RouteTable
from turnout_sdk.http import Receive, Send


class Feedback:
    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        #: Per model, the A/B experiment its statistics belong to: (candidate version, salt).
        self._experiments: dict[str, tuple[str | None, str]] = {}

    def on_table(self, table: RouteTable) -> None:
        """Zero the statistics of every model whose experiment the new table changes."""
        for name, route in table.models.items():
            experiment = (route.candidate.version if route.candidate else None, route.salt)
            if self._experiments.get(name, experiment) != experiment:
                self.metrics.reset_ab(name)  # new candidate or reshuffled keys: start from zero
            self._experiments[name] = experiment

    async def handle(self, receive: Receive, send: Send, name: str, route: ModelRoute) -> None:
        """``POST /v2/models/{name}/feedback`` with ``{"key": "...", "outcome": number}``."""
        body = await read_body(receive)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            await error(send, 400, 'feedback must be JSON: {"key": "...", "outcome": number}')
            return
        key = doc.get("key") if isinstance(doc, dict) else None
        outcome = doc.get("outcome") if isinstance(doc, dict) else None
        if not isinstance(key, str) or not key:
            await error(send, 400, "feedback needs 'key': the sticky key the request carried")
            return
        if (
            isinstance(outcome, bool)
            or not isinstance(outcome, int | float)
            or not math.isfinite(outcome)
        ):
            await error(send, 400, "feedback needs 'outcome': a finite number")
            return
        weight = route.candidate.weight if route.candidate is not None else 0.0
        arm = assign(weight=weight, salt=route.salt, key=key, uniform=0.0)
        value = float(outcome)
        self.metrics.ab_outcomes.labels(name, arm.value, "count").inc()
        self.metrics.ab_outcomes.labels(name, arm.value, "sum").inc(value)
        self.metrics.ab_outcomes.labels(name, arm.value, "sumsq").inc(value * value)
        version = (
            route.candidate.version
            if arm is Arm.CANDIDATE and route.candidate
            else route.stable.version
        )
        doc = {"model": name, "arm": arm.value, "version": version}
        await respond(send, 200, orjson.dumps(doc), {"content-type": "application/json"})
