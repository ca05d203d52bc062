"""The stable endpoint: one URL per model, traffic moved between its versions.

A raw ASGI app (no framework in the hot path). ``Router`` is the entry point: it holds the route
table, runs the lifespan, matches paths, checks the caller's API key (auth), looks the model up
and answers what needs no model server (health, metadata passed through, errors). Inference
goes to forward (arm, retry, fallback, assignment token), good replies to shadow (mirroring),
outcomes to feedback (checked against their token, written to this replica's A/B ledger).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.router.asgi import error, header, respond
from services.router.assignment import Tokens
from services.router.auth import OPEN_PATHS, Auth
from services.router.feedback import Feedback
from services.router.forward import RETURNED, Client, Forwarder, Pin
from services.router.kinds import INFER, PREDICT
from services.router.metrics import RouterMetrics
from services.router.shadow import SHADOW, ShadowMirror
from turnout import __version__
from turnout.core.api_keys import Action, ApiKey, Denied, permit
from turnout.core.assign import Arm
from turnout.core.spec import ModelRoute, RouteTable
from turnout.io.ab_store import LedgerStore, MemoryLedger, default_replica_id
from turnout_sdk.http import Receive, Scope, Send

log = logging.getLogger("turnout.router")


class Router:
    def __init__(
        self,
        *,
        shadow_max_inflight: int = 64,
        log_payloads: bool = False,
        tokens: Tokens | None = None,
        ledger: LedgerStore | None = None,
        replica: str | None = None,
    ) -> None:
        """``tokens``: the assignment-token secret (default: a random one for this process);
        ``ledger``: where accepted A/B outcomes go (default: memory, for tests);
        ``replica``: this replica's id in the ledger."""
        self.metrics = RouterMetrics()
        self.table: RouteTable | None = None
        #: The source has loaded and routes no model (a cluster with no ModelDeployment yet):
        #: ready, answering 404 for every model, rather than failing readiness forever.
        self.routes_nothing = False
        self.loaded_at: datetime | None = None
        self.source = ""
        self.last_error: str | None = None
        #: API keys in force; None: authentication is off (no --api-keys).
        self.auth: Auth | None = None
        self.client = Client(self.metrics)
        self.shadow = ShadowMirror(
            self.client.attempt, self.metrics, max_inflight=shadow_max_inflight
        )
        self.tokens = tokens if tokens is not None else Tokens(None)
        self.feedback = Feedback(
            self.metrics,
            self.tokens,
            ledger if ledger is not None else MemoryLedger(),
            replica=replica or default_replica_id(),
        )
        forwarder = Forwarder(
            self.client,
            self.metrics,
            mirror=self.shadow.mirror,
            log_payloads=log_payloads,
            issue=self.tokens.issue,
        )
        # Bound once: an inference request looks up one attribute here, as it did when
        # forwarding was a method of this class.
        self._infer = forwarder.infer

    # --- route table --------------------------------------------------------------------

    def set_table(self, table: RouteTable) -> None:
        self.feedback.on_table(table)
        for name, route in table.models.items():
            # Export every upstream's series at zero before its first call: Prometheus' rate()
            # cannot see the increase that makes a counter appear.
            self.metrics.upstream(name, Arm.STABLE, route.stable.version)
            if route.candidate is not None:
                self.metrics.upstream(name, Arm.CANDIDATE, route.candidate.version)
            if route.shadow is not None:
                self.metrics.upstream(name, SHADOW, route.shadow.version)
                # Likewise the agreement counts: else the first window of a shadow rollout
                # misses the comparisons that made the series appear.
                for agree in ("true", "false"):
                    self.metrics.shadow_agreement.labels(name, agree)
        self.table = table
        self.routes_nothing = False
        self.loaded_at = datetime.now(UTC)
        self.last_error = None
        self.metrics.table_loaded.set(time.time())
        log.info("route table loaded: %s", ", ".join(sorted(table.models)))

    def reject_table(self, reason: str) -> None:
        self.last_error = reason
        self.metrics.table_errors.inc()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loadedAt": self.loaded_at.isoformat() if self.loaded_at else None,
            "lastError": self.last_error,
            "table": self.table.model_dump(mode="json", by_alias=True) if self.table else None,
            "auth": self.auth.describe() if self.auth else {"enabled": False},
            "feedback": {**self.tokens.describe(), "replica": self.feedback.replica},
        }

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.client.start()
        self.feedback.start()

    async def stop(self) -> None:
        await self.shadow.drain()
        await self.feedback.stop()
        await self.client.stop()

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path in OPEN_PATHS and method == "GET":
            await self._open(send, path)
            return
        key: ApiKey | None = None
        if self.auth is not None:
            found = self.auth.identify(scope)
            if isinstance(found, Denied):
                await self.auth.refuse(send, found)
                return
            key = found
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "models"] and len(parts) >= 3:
            await self._model_route(scope, receive, send, key, parts[2], parts[3:])
        elif path == "/predict" and method == "POST":
            await self._predict(scope, receive, send, key)
        elif path == "/routes" and method == "GET":
            if await self._allowed(send, key, None, Action.ADMIN):
                body = orjson.dumps(self.describe())
                await respond(send, 200, body, {"content-type": "application/json"})
        else:
            await error(send, 404, f"no route for {method} {path}")

    async def _open(self, send: Send, path: str) -> None:
        """What answers without a key: probes, Prometheus, the server's metadata."""
        if path == "/v2/health/live":
            await respond(send, 200, b'{"live":true}', {"content-type": "application/json"})
        elif path == "/v2/health/ready":
            ready = self.table is not None or self.routes_nothing
            await respond(
                send,
                200 if ready else 503,
                orjson.dumps({"ready": ready}),
                {"content-type": "application/json"},
            )
        elif path == "/v2":
            doc = {
                "name": "turnout-router",
                "version": __version__,
                "extensions": ["binary_tensor_data"],
            }
            await respond(send, 200, orjson.dumps(doc), {"content-type": "application/json"})
        else:  # /metrics
            body = generate_latest(self.metrics.registry)
            await respond(send, 200, body, {"content-type": CONTENT_TYPE_LATEST})

    async def _allowed(
        self, send: Send, key: ApiKey | None, model: str | None, action: Action
    ) -> bool:
        """Whether the caller's key may do ``action`` on ``model``; if not, the 403 is sent."""
        if key is None or self.auth is None:  # authentication is off
            return True
        denied = permit(key, model, action)
        if denied is None:
            return True
        await self.auth.refuse(send, denied)
        return False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, name: str) -> ModelRoute | None:
        return self.table.models.get(name) if self.table else None

    async def _unknown_model(self, send: Send, name: str) -> None:
        known = sorted(self.table.models) if self.table else []
        await error(send, 404, f"model {name!r} not found; known models: {known}")

    # --- /v2/models/{name}/... ----------------------------------------------------------

    async def _model_route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: ApiKey | None,
        name: str,
        rest: list[str],
    ) -> None:
        method: str = scope["method"]
        # Before the model is looked up: a key without the scope learns nothing of which
        # models exist.
        wanted = Action.FEEDBACK if rest == ["feedback"] else Action.INFER
        if not await self._allowed(send, key, name, wanted):
            return
        route = self._route(name)
        if route is None:
            await self._unknown_model(send, name)
            return
        pin: Pin | None = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            pin = _pinned(route, rest[1])
            if pin is None:
                await error(send, 404, f"version {rest[1]!r} of model {name!r} is not routed")
                return
            rest = rest[2:]
        action = rest[0] if rest else ""
        if method == "POST" and action == "infer" and len(rest) == 1:
            await self._infer(scope, receive, send, name, route, pin, INFER)
        elif method == "POST" and action == "feedback" and len(rest) == 1 and pin is None:
            await self.feedback.handle(receive, send, name, route)
        elif method == "GET" and (not rest or rest == ["ready"]):
            await self._metadata(send, name, route, pin, action)
        else:
            await error(send, 404, f"no route for {method} {scope['path']}")

    async def _metadata(
        self, send: Send, name: str, route: ModelRoute, pin: Pin | None, action: str
    ) -> None:
        """Model metadata or readiness: the version's own answer, labelled like inference."""
        arm, target = pin or (Arm.STABLE, route.stable)
        url = f"{target.url}/v2/models/{name}"  # unversioned, as for inference (kinds.py)
        reply = await self.client.call(
            target, url, "GET", b"", {}, route.timeout_ms, ready=action == "ready"
        )
        headers = {k: v for k, v in reply.headers.items() if k in RETURNED}
        headers["x-turnout-variant"] = arm.value
        headers["x-turnout-model-version"] = target.version
        await respond(send, reply.status, reply.body, headers)

    # --- /predict -----------------------------------------------------------------------

    async def _predict(
        self, scope: Scope, receive: Receive, send: Send, key: ApiKey | None
    ) -> None:
        name = header(scope, b"x-turnout-model")
        if name is None:
            models = sorted(self.table.models) if self.table else []
            if len(models) != 1:
                await error(
                    send, 400, f"several models are routed; name one with x-turnout-model: {models}"
                )
                return
            name = models[0]
        if not await self._allowed(send, key, name, Action.INFER):
            return
        route = self._route(name)
        if route is None:
            await self._unknown_model(send, name)
            return
        await self._infer(scope, receive, send, name, route, None, PREDICT)


def _pinned(route: ModelRoute, version: str) -> Pin | None:
    """The arm a version named in the path counts under; None when the route has no such one."""
    if route.stable.version == version:
        return Arm.STABLE, route.stable
    if route.candidate is not None and route.candidate.version == version:
        return Arm.CANDIDATE, route.candidate
    return None
