"""A/B feedback: outcomes reported after the fact, for requests the router really assigned.

An A/B test compares a business outcome (a conversion, a chargeback) between the arms, and the
outcome arrives long after the prediction. The infer reply carried an assignment token
(services/router/assignment.py); ``POST /v2/models/{name}/feedback`` with ``{"token": "...",
"outcome": number}`` is counted only when the token is genuine, unexpired, for this model and
for the experiment running now, and its request was not counted before. Every refusal is a 4xx
naming the problem (``{"error": ..., "reason": ...}``), counted by reason, never an outcome.

An accepted outcome is appended to this replica's ledger (services/router/ledger.py) and
answered once durable; the controller merges every replica's ledger (turnout.core.ab_ledger).
Each replica remembers the request ids of the running experiment, loaded from every replica's
ledger when it first meets the experiment, so a repeated post is refused here; one posted to
two replicas at once may be accepted by both and still counts once in the merge.

``turnout_ab_outcomes{model,arm,stat}`` shows what this replica accepted since it started
(zeroed on a new experiment): for watching, not for deciding.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from prometheus_client import Counter

from services.router.asgi import read_body, respond
from services.router.assignment import Tokens
from services.router.ledger import LedgerWriter
from services.router.metrics import RouterMetrics
from turnout.core import tokens
from turnout.core.ab_ledger import Outcome, route_experiment
from turnout.core.spec import ModelRoute, RouteTable
from turnout.core.tokens import Problem, Refused
from turnout.io.ab_store import LedgerStore
from turnout_sdk.http import Receive, Send

log = logging.getLogger("turnout.router")
_JSON = {"content-type": "application/json"}


class Feedback:
    def __init__(
        self, metrics: RouterMetrics, tokens: Tokens, store: LedgerStore, *, replica: str
    ) -> None:
        self.metrics = metrics
        self.tokens = tokens
        self.store = store
        self.replica = replica
        self.writer = LedgerWriter(store, replica)
        #: Per model, the A/B experiment running (None: no candidate).
        self._experiments: dict[str, str | None] = {}
        #: Per (model, experiment) running, the request ids counted, loaded on first use.
        self._counted: dict[tuple[str, str], asyncio.Future[set[str]]] = {}
        refusals = Counter(
            "turnout_router_feedback_refusals",
            "Feedback refused, by reason (turnout.core.tokens.Problem): never counted",
            ["reason"],
            registry=metrics.registry,
        )
        self._refusals = {p: refusals.labels(p.value) for p in Problem}
        self._failures = Counter(
            "turnout_router_feedback_write_failures",
            "Outcomes that could not be written to the ledger (answered 503, not counted)",
            registry=metrics.registry,
        )

    def start(self) -> None:
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    def on_table(self, table: RouteTable) -> None:
        """Zero the gauges of every model whose experiment the new table changes, and forget
        the request ids of experiments that no longer run."""
        for name, route in table.models.items():
            experiment = route_experiment(name, route)
            if self._experiments.get(name, experiment) != experiment:
                self.metrics.reset_ab(name)  # new candidate or reshuffled keys: start from zero
            self._experiments[name] = experiment
        running = {(m, x) for m, x in self._experiments.items() if x is not None}
        for key in [k for k in self._counted if k not in running]:
            del self._counted[key]

    async def handle(self, receive: Receive, send: Send, name: str, route: ModelRoute) -> None:
        """``POST /v2/models/{name}/feedback`` with ``{"token": "...", "outcome": number}``."""
        body = await read_body(receive)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed: tokens.Feedback | Refused = Refused(
                400,
                Problem.BODY,
                'feedback must be JSON: {"token": "<the turnout-assignment header>", '
                '"outcome": number}',
            )
        else:
            parsed = tokens.parse_feedback(doc)
        if isinstance(parsed, Refused):
            await self._refuse(send, parsed)
            return
        now = time.time()
        experiment = self.tokens.experiment(name, route)
        found = tokens.admit(
            parsed.token, secrets=self.tokens.secrets, model=name, experiment=experiment, now=now
        )
        if isinstance(found, Refused):
            await self._refuse(send, found)
            return
        assert experiment is not None  # admit() matched the token's experiment
        try:
            counted = await self._counted_ids(name, experiment)
        except Exception as exc:
            message = f"the A/B ledger could not be read ({exc}); post the outcome again"
            await respond(send, 503, orjson.dumps({"error": message}), _JSON)
            return
        if found.request in counted:
            await self._refuse(send, tokens.replayed(found))
            return
        counted.add(found.request)  # before the write: a second post meanwhile is a replay
        outcome = Outcome(request=found.request, arm=found.arm, value=parsed.outcome, at=now)
        try:
            await self.writer.append(name, experiment, outcome)
        except Exception as exc:
            counted.discard(found.request)
            self._failures.inc()
            message = f"the outcome could not be recorded ({type(exc).__name__}); post it again"
            await respond(send, 503, orjson.dumps({"error": message}), _JSON)
            return
        arm, value = found.arm.value, parsed.outcome
        self.metrics.ab_outcomes.labels(name, arm, "count").inc()
        self.metrics.ab_outcomes.labels(name, arm, "sum").inc(value)
        self.metrics.ab_outcomes.labels(name, arm, "sumsq").inc(value * value)
        reply = {
            "model": name,
            "arm": arm,
            "version": found.version,
            "request": found.request,
            "counted": True,
        }
        await respond(send, 200, orjson.dumps(reply), _JSON)

    async def _counted_ids(self, model: str, experiment: str) -> set[str]:
        """The request ids counted in the experiment so far, by any replica: read from the
        ledgers once (concurrent first posts share the read), then kept up to date here."""
        key = (model, experiment)
        found = self._counted.get(key)
        if found is None:
            found = self._counted[key] = asyncio.get_running_loop().create_future()
            try:
                ledgers = await asyncio.to_thread(
                    self.store.read, model=model, experiment=experiment
                )
            except Exception as exc:
                del self._counted[key]
                found.set_exception(exc)
                found.exception()  # retrieved: the waiters below get it too
                raise
            found.set_result({r.request for records in ledgers.values() for r in records})
        return await asyncio.shield(found)

    async def _refuse(self, send: Send, refused: Refused) -> None:
        self._refusals[refused.problem].inc()
        doc: dict[str, object] = {"error": refused.message, "reason": refused.problem.value}
        if refused.problem is Problem.REPLAYED:
            doc["counted"] = False
        await respond(send, refused.status, orjson.dumps(doc), _JSON)
