"""The stable endpoint: one URL per model, traffic moved between its versions.

A raw ASGI app (no framework in the hot path) with one pooled aiohttp session. Per request:
pick the arm (turnout.core.assign), forward the body untouched, retry a failed candidate once on
stable, answer with the fallback when stable fails too, and mirror a sample to the shadow in the
background. Nothing per request is stored: A/B feedback recomputes the arm from its key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.histograms import observe_many
from services.http import Receive, Scope, Send
from services.router.metrics import RouterMetrics
from turnout import __version__
from turnout.core import inference_protocol as oip
from turnout.core.assign import Arm, assign
from turnout.core.spec import ModelRoute, RouteTable, Upstream

log = logging.getLogger("turnout.router")
access = logging.getLogger("turnout.router.access")

#: Request headers passed on to the model server; everything else stays at the router.
FORWARDED = frozenset({b"content-type", b"inference-header-content-length", b"x-request-id"})
#: Response headers passed back from the model server.
RETURNED = frozenset({"content-type", "inference-header-content-length"})
#: The ``variant`` label of mirrored calls (the other two are the Arm values).
SHADOW = "shadow"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    #: False when the version failed (connection error, timeout, 5xx): try elsewhere.
    ok: bool
    reason: str = ""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _json(doc: Any) -> bytes:
    return orjson.dumps(doc)


class Router:
    def __init__(self, *, shadow_max_inflight: int = 64, log_payloads: bool = False) -> None:
        self.metrics = RouterMetrics()
        self.table: RouteTable | None = None
        #: The source has loaded and routes no model (a cluster with no ModelDeployment yet):
        #: ready, answering 404 for every model, rather than failing readiness forever.
        self.routes_nothing = False
        self.loaded_at: datetime | None = None
        self.source = ""
        self.last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._shadow_inflight = 0
        self._shadow_max = shadow_max_inflight
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._log_payloads = log_payloads
        #: Per model, the A/B experiment its statistics belong to: (candidate version, salt).
        self._experiments: dict[str, tuple[str | None, str]] = {}

    # --- route table --------------------------------------------------------------------

    def set_table(self, table: RouteTable) -> None:
        for name, route in table.models.items():
            experiment = (route.candidate.version if route.candidate else None, route.salt)
            if self._experiments.get(name, experiment) != experiment:
                self.metrics.reset_ab(name)  # new candidate or reshuffled keys: start from zero
            self._experiments[name] = experiment
            # Export every upstream's series at zero before its first call: Prometheus' rate()
            # cannot see the increase that makes a counter appear.
            self.metrics.upstream(name, Arm.STABLE, route.stable.version)
            if route.candidate is not None:
                self.metrics.upstream(name, Arm.CANDIDATE, route.candidate.version)
            if route.shadow is not None:
                self.metrics.upstream(name, SHADOW, route.shadow.version)
        self.table = table
        self.routes_nothing = False
        self.loaded_at = datetime.now(UTC)
        self.last_error = None
        self.metrics.table_loaded.set(time.time())
        log.info("route table loaded: %s", ", ".join(sorted(table.models)))

    def reject_table(self, reason: str) -> None:
        self.last_error = reason
        self.metrics.table_errors.inc()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def stop(self) -> None:
        if self._shadow_tasks:
            await asyncio.wait(self._shadow_tasks, timeout=5)
        if self._session is not None:
            await self._session.close()

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "models"] and len(parts) >= 3:
            await self._model_route(scope, receive, send, method, parts[2], parts[3:])
        elif path == "/predict" and method == "POST":
            await self._predict(scope, receive, send)
        elif path == "/v2/health/live" and method == "GET":
            await _respond(send, 200, b'{"live":true}', {"content-type": "application/json"})
        elif path == "/v2/health/ready" and method == "GET":
            ready = self.table is not None or self.routes_nothing
            await _respond(
                send,
                200 if ready else 503,
                _json({"ready": ready}),
                {"content-type": "application/json"},
            )
        elif path == "/v2" and method == "GET":
            doc = {
                "name": "turnout-router",
                "version": __version__,
                "extensions": ["binary_tensor_data"],
            }
            await _respond(send, 200, _json(doc), {"content-type": "application/json"})
        elif path == "/routes" and method == "GET":
            await _respond(send, 200, _json(self.describe()), {"content-type": "application/json"})
        elif path == "/metrics" and method == "GET":
            body = generate_latest(self.metrics.registry)
            await _respond(send, 200, body, {"content-type": CONTENT_TYPE_LATEST})
        else:
            await self._error(send, 404, f"no route for {method} {path}")

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

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loadedAt": self.loaded_at.isoformat() if self.loaded_at else None,
            "lastError": self.last_error,
            "table": self.table.model_dump(mode="json", by_alias=True) if self.table else None,
        }

    async def _error(self, send: Send, status: int, message: str, **extra: str) -> None:
        await _respond(
            send, status, oip.error_body(message), {"content-type": "application/json", **extra}
        )

    def _route(self, name: str) -> ModelRoute | None:
        return self.table.models.get(name) if self.table else None

    async def _unknown_model(self, send: Send, name: str) -> None:
        known = sorted(self.table.models) if self.table else []
        await self._error(send, 404, f"model {name!r} not found; known models: {known}")

    # --- /v2/models/{name}/... ----------------------------------------------------------

    async def _model_route(
        self, scope: Scope, receive: Receive, send: Send, method: str, name: str, rest: list[str]
    ) -> None:
        route = self._route(name)
        if route is None:
            await self._unknown_model(send, name)
            return
        pin: tuple[Arm, Upstream] | None = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            pin = self._pinned(route, rest[1])
            if pin is None:
                await self._error(send, 404, f"version {rest[1]!r} of model {name!r} is not routed")
                return
            rest = rest[2:]
        action = rest[0] if rest else ""
        if method == "POST" and action == "infer" and len(rest) == 1:
            await self._infer(scope, receive, send, name, route, pin, "infer")
        elif method == "POST" and action == "feedback" and len(rest) == 1 and pin is None:
            await self._feedback(receive, send, name, route)
        elif method == "GET" and (not rest or rest == ["ready"]):
            await self._metadata(send, name, route, pin, action)
        else:
            await self._error(send, 404, f"no route for {method} {scope['path']}")

    def _pinned(self, route: ModelRoute, version: str) -> tuple[Arm, Upstream] | None:
        if route.stable.version == version:
            return Arm.STABLE, route.stable
        if route.candidate is not None and route.candidate.version == version:
            return Arm.CANDIDATE, route.candidate
        return None

    async def _metadata(
        self,
        send: Send,
        name: str,
        route: ModelRoute,
        pin: tuple[Arm, Upstream] | None,
        action: str,
    ) -> None:
        arm, target = pin or (Arm.STABLE, route.stable)
        url = f"{target.url}/v2/models/{name}/versions/{target.version}"
        reply = await self._call(
            target, url, "GET", b"", {}, route.timeout_ms, ready=action == "ready"
        )
        headers = {k: v for k, v in reply.headers.items() if k in RETURNED}
        headers["x-turnout-variant"] = arm.value
        headers["x-turnout-model-version"] = target.version
        await _respond(send, reply.status, reply.body, headers)

    # --- inference ----------------------------------------------------------------------

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = _header(scope, b"x-turnout-model")
        if name is None:
            models = sorted(self.table.models) if self.table else []
            if len(models) != 1:
                await self._error(
                    send, 400, f"several models are routed; name one with x-turnout-model: {models}"
                )
                return
            name = models[0]
        route = self._route(name)
        if route is None:
            await self._unknown_model(send, name)
            return
        await self._infer(scope, receive, send, name, route, None, "predict")

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        route: ModelRoute,
        pin: tuple[Arm, Upstream] | None,
        kind: str,
    ) -> None:
        started = time.perf_counter()
        body = await _read_body(receive)
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in FORWARDED}
        headers["x-request-id"] = request_id
        if pin is not None:
            arm, target = pin
        else:
            key = _header(scope, route.sticky_header.encode())
            weight = route.candidate.weight if route.candidate is not None else 0.0
            arm = assign(weight=weight, salt=route.salt, key=key, uniform=random.random())
            target = route.candidate if arm is Arm.CANDIDATE and route.candidate else route.stable

        reply = await self._forward(target, name, kind, body, headers, route.timeout_ms, arm)
        retried = False
        if not reply.ok and arm is Arm.CANDIDATE and route.retry_on_stable and pin is None:
            self.metrics.retries.labels(name, reply.reason).inc()
            retried, arm, target = True, Arm.STABLE, route.stable
            reply = await self._forward(target, name, kind, body, headers, route.timeout_ms, arm)

        out = {k: v for k, v in reply.headers.items() if k in RETURNED}
        out["x-turnout-variant"] = arm.value
        out["x-turnout-model-version"] = reply.headers.get(
            "x-turnout-model-version", target.version
        )
        out["x-request-id"] = request_id
        if retried:
            out["x-turnout-retried"] = "true"
        status, payload = reply.status, reply.body
        if not reply.ok:
            status, payload, out = self._fallback(name, route, kind, body, headers, out, reply)
        elif route.shadow is not None and reply.status == 200 and pin is None:
            self._mirror(name, route, kind, body, headers, reply)
        await _respond(send, status, payload, out)

        elapsed = time.perf_counter() - started
        version = out["x-turnout-model-version"]
        self.metrics.requests.labels(name, arm.value, version, str(status)).inc()
        self.metrics.duration.labels(name, arm.value).observe(elapsed)
        record: dict[str, Any] = {
            "request_id": request_id,
            "model": name,
            "variant": arm.value,
            "version": version,
            "status": status,
            "latency_ms": round(elapsed * 1000, 3),
        }
        if retried:
            record["retried"] = reply.reason or True
        if not reply.ok:
            record["fallback"] = reply.reason
        if self._log_payloads:
            record["payload"] = body.decode("utf-8", "replace")
        access.info(orjson.dumps(record).decode())

    def _fallback(
        self,
        name: str,
        route: ModelRoute,
        kind: str,
        body: bytes,
        headers: Mapping[str, str],
        out: dict[str, str],
        reply: Reply,
    ) -> tuple[int, bytes, dict[str, str]]:
        self.metrics.fallbacks.labels(name).inc()
        fb = route.fallback
        base = {
            "x-turnout-fallback": "true",
            "x-turnout-variant": out["x-turnout-variant"],
            "x-turnout-model-version": "fallback",
            "x-request-id": out["x-request-id"],
            "content-type": "application/json",
        }
        rows = oip.rows_of(body, header_length=headers.get("inference-header-content-length"))
        if kind == "predict":
            try:
                rows = len(orjson.loads(body)["features"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                rows = None
        if fb.mode == "static" and fb.probability is not None and rows is not None:
            scores = [fb.probability] * rows
            if kind == "predict":
                doc: dict[str, Any] = {"model_version": "fallback", "probability": scores}
            else:
                doc = {
                    "model_name": name,
                    "model_version": "fallback",
                    "outputs": [
                        {"name": "probability", "datatype": "FP32", "shape": [rows], "data": scores}
                    ],
                }
            return 200, _json(doc), base
        message = f"{fb.message} ({reply.reason})"
        return 503, oip.error_body(message), base

    async def _forward(
        self,
        target: Upstream,
        name: str,
        kind: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_ms: float,
        variant: str,
    ) -> Reply:
        """One inference attempt on ``target``, counted and timed under ``variant``."""
        if kind == "predict":
            url = f"{target.url}/predict"
        else:
            url = f"{target.url}/v2/models/{name}/versions/{target.version}/infer"
        upstream = self.metrics.upstream(name, variant, target.version)
        started = time.perf_counter()
        reply = await self._call(target, url, "POST", body, headers, timeout_ms)
        upstream.duration.observe(time.perf_counter() - started)
        (upstream.ok if reply.ok else upstream.error).inc()
        return reply

    async def _call(
        self,
        target: Upstream,
        url: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_ms: float,
        *,
        ready: bool = False,
    ) -> Reply:
        if ready:
            url += "/ready"
        assert self._session is not None, "router not started"
        try:
            async with self._session.request(
                method,
                url,
                data=body if method == "POST" else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000),
            ) as resp:
                payload = await resp.read()
                reply_headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except TimeoutError:
            return Reply(504, b"", {}, ok=False, reason=f"{target.version} timed out")
        except aiohttp.ClientError as exc:
            reason = f"{target.version} unreachable: {type(exc).__name__}"
            return Reply(502, b"", {}, ok=False, reason=reason)
        if status >= 500:
            return Reply(
                status, payload, reply_headers, ok=False, reason=f"{target.version} {status}"
            )
        return Reply(status, payload, reply_headers, ok=True)

    # --- shadow -------------------------------------------------------------------------

    def _mirror(
        self,
        name: str,
        route: ModelRoute,
        kind: str,
        body: bytes,
        headers: Mapping[str, str],
        primary: Reply,
    ) -> None:
        shadow = route.shadow
        assert shadow is not None
        if shadow.percent < 100 and random.random() * 100 >= shadow.percent:
            return
        if self._shadow_inflight >= self._shadow_max:
            self.metrics.shadow_requests.labels(name, "dropped").inc()
            return
        self._shadow_inflight += 1
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(name, route, shadow, kind, body, headers, primary)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(
        self,
        name: str,
        route: ModelRoute,
        shadow: Upstream,
        kind: str,
        body: bytes,
        headers: Mapping[str, str],
        primary: Reply,
    ) -> None:
        try:
            reply = await self._forward(
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
            self._shadow_inflight -= 1

    def _compare(
        self, name: str, route: ModelRoute, kind: str, primary: Reply, shadow: Reply
    ) -> None:
        try:
            if kind == "predict":
                a = np.asarray(orjson.loads(primary.body)["probability"], dtype=np.float64)
                b = np.asarray(orjson.loads(shadow.body)["probability"], dtype=np.float64)
            else:
                a = oip.decode_output(
                    primary.body, header_length=primary.headers.get(oip.HEADER_LENGTH)
                ).astype(np.float64)
                b = oip.decode_output(
                    shadow.body, header_length=shadow.headers.get(oip.HEADER_LENGTH)
                ).astype(np.float64)
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

    # --- A/B feedback -------------------------------------------------------------------

    async def _feedback(self, receive: Receive, send: Send, name: str, route: ModelRoute) -> None:
        body = await _read_body(receive)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            await self._error(send, 400, 'feedback must be JSON: {"key": "...", "outcome": number}')
            return
        key = doc.get("key") if isinstance(doc, dict) else None
        outcome = doc.get("outcome") if isinstance(doc, dict) else None
        if not isinstance(key, str) or not key:
            await self._error(send, 400, "feedback needs 'key': the sticky key the request carried")
            return
        if (
            isinstance(outcome, bool)
            or not isinstance(outcome, int | float)
            or not math.isfinite(outcome)
        ):
            await self._error(send, 400, "feedback needs 'outcome': a finite number")
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
        await _respond(
            send,
            200,
            _json({"model": name, "arm": arm.value, "version": version}),
            {"content-type": "application/json"},
        )
