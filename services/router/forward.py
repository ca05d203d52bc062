"""Forwarding an inference request to a version, and answering when versions fail.

Per request: pick the arm (turnout.core.assign; a version in the path pins it), forward the body
untouched, retry a failed candidate once on stable, answer with the route's fallback when stable
fails too, hand a good reply to the shadow mirror, give a successful reply of a split its
assignment token (services/router/assignment.py), and write one access record. Nothing per
request is stored: the token carries what feedback needs.

``Client`` owns the pooled HTTP client: every call the router makes to a model server goes
through it (inference, shadow copies, metadata), so the client can be swapped in one place.

The hot-path methods take positional arguments, and the collaborators' methods are bound once
at construction, so splitting the router into modules added no await, allocation or lookup per
request; the one new step is a call of ``kind.upstream_url`` where a string was compared.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from services.router.access import AccessLog
from services.router.asgi import header, read_body, respond
from services.router.kinds import RequestKind
from services.router.metrics import RouterMetrics
from services.router.upstream import BadResponse, Response, UpstreamClient, UpstreamError
from turnout.core.assign import Arm, assign
from turnout.core.spec import ModelRoute, Upstream
from turnout.core.tokens import HEADER as ASSIGNMENT
from turnout_sdk import protocol as oip
from turnout_sdk.http import Receive, Scope, Send

#: Request ids the router makes (x-request-id, when the caller sent none): unique without a
#: syscall per request, 32 hex characters like a UUID's: a random per-process prefix and a count.
_ID_PREFIX = os.urandom(8).hex()
_ids = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"


#: Request headers passed on to the model server; everything else stays at the router.
FORWARDED = frozenset({b"content-type", b"inference-header-content-length", b"x-request-id"})
#: Response headers passed back from the model server.
RETURNED = frozenset({"content-type", "inference-header-content-length"})

#: A version named in the request path: the arm it counts under, and the version.
Pin = tuple[Arm, Upstream]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    #: False when the version failed (connection error, timeout, 5xx): try elsewhere.
    ok: bool
    reason: str = ""


#: Hands a good primary reply to the shadow: (model, route, kind, body, headers, reply).
Mirror = Callable[[str, ModelRoute, RequestKind, bytes, Mapping[str, str], Reply], None]
#: The assignment token for a reply: (model, route, assigned arm) -> token, None without a split.
Issue = Callable[[str, ModelRoute, Arm], "str | None"]


class Client:
    """The pooled HTTP client to the model servers, opened and closed with the router."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self._upstreams: UpstreamClient | None = None
        self._request: Callable[..., Awaitable[Response]] | None = None

    async def start(self) -> None:
        self._upstreams = UpstreamClient()
        self._request = self._upstreams.request

    async def stop(self) -> None:
        if self._upstreams is not None:
            await self._upstreams.close()

    async def attempt(
        self,
        target: Upstream,
        name: str,
        kind: RequestKind,
        body: bytes,
        headers: Mapping[str, str],
        timeout_ms: float,
        variant: str,
    ) -> Reply:
        """One inference attempt on ``target``, counted and timed under ``variant``."""
        url = kind.upstream_url(target, name)
        upstream = self.metrics.upstream(name, variant, target.version)
        started = time.perf_counter()
        reply = await self.call(target, url, "POST", body, headers, timeout_ms)
        upstream.duration.observe(time.perf_counter() - started)
        (upstream.ok if reply.ok else upstream.error).inc()
        return reply

    async def call(
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
        """One HTTP call; a timeout, a connection error, a malformed reply or a 5xx is a
        failed Reply."""
        if ready:
            url += "/ready"
        assert self._request is not None, "router not started"
        try:
            status, reply_headers, payload = await self._request(
                url, method, body, headers, timeout_ms / 1000
            )
        except TimeoutError:
            return Reply(504, b"", {}, ok=False, reason=f"{target.version} timed out")
        except BadResponse:
            reason = f"{target.version} sent a malformed response"
            return Reply(502, b"", {}, ok=False, reason=reason)
        except UpstreamError as exc:
            return Reply(502, b"", {}, ok=False, reason=f"{target.version} unreachable: {exc}")
        except OSError as exc:  # connecting failed: refused, no route, name not found
            reason = f"{target.version} unreachable: {type(exc).__name__}"
            return Reply(502, b"", {}, ok=False, reason=reason)
        if status >= 500:
            return Reply(
                status, payload, reply_headers, ok=False, reason=f"{target.version} {status}"
            )
        return Reply(status, payload, reply_headers, ok=True)


class Forwarder:
    """Answers inference requests: arm, attempt, retry, fallback, mirror, access record."""

    def __init__(
        self,
        client: Client,
        metrics: RouterMetrics,
        *,
        mirror: Mirror,
        log_payloads: bool,
        issue: Issue | None = None,
    ) -> None:
        self.metrics = metrics
        self._attempt = client.attempt
        self._mirror = mirror
        self._issue = issue
        self._log_payloads = log_payloads
        self._answered = metrics.answered
        self._access = AccessLog()

    async def infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        route: ModelRoute,
        pin: Pin | None,
        kind: RequestKind,
    ) -> None:
        started = time.perf_counter()
        body = await read_body(receive)
        request_id = header(scope, b"x-request-id") or new_request_id()
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in FORWARDED}
        headers["x-request-id"] = request_id
        if pin is not None:
            arm, target = pin
        else:
            key = header(scope, route.sticky_header.encode())
            weight = route.candidate.weight if route.candidate is not None else 0.0
            arm = assign(weight=weight, salt=route.salt, key=key, uniform=random.random())
            target = route.candidate if arm is Arm.CANDIDATE and route.candidate else route.stable

        reply = await self._attempt(target, name, kind, body, headers, route.timeout_ms, arm)
        assigned = arm
        retried = False
        if not reply.ok and arm is Arm.CANDIDATE and route.retry_on_stable and pin is None:
            self.metrics.retries.labels(name, reply.reason).inc()
            retried, arm, target = True, Arm.STABLE, route.stable
            reply = await self._attempt(target, name, kind, body, headers, route.timeout_ms, arm)

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
            self.metrics.fallbacks.labels(name).inc()
            status, payload, out = fallback(
                name=name, route=route, kind=kind, body=body, headers=headers, out=out, reply=reply
            )
        elif route.shadow is not None and reply.status == 200 and pin is None:
            self._mirror(name, route, kind, body, headers, reply)
        if (
            route.candidate is not None
            and pin is None
            and 200 <= status < 300
            and self._issue is not None
            and (token := self._issue(name, route, assigned)) is not None
        ):
            out[ASSIGNMENT] = token
        await respond(send, status, payload, out)

        elapsed = time.perf_counter() - started
        version = out["x-turnout-model-version"]
        answered = self._answered(name, arm.value, version, status)
        answered.requests.inc()
        answered.duration.observe(elapsed)
        if not self._access.enabled:
            return
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
        self._access.write(record)


def fallback(
    *,
    name: str,
    route: ModelRoute,
    kind: RequestKind,
    body: bytes,
    headers: Mapping[str, str],
    out: Mapping[str, str],
    reply: Reply,
) -> tuple[int, bytes, dict[str, str]]:
    """The answer when every version failed: the route's static prediction, or an error."""
    fb = route.fallback
    base = {
        "x-turnout-fallback": "true",
        "x-turnout-variant": out["x-turnout-variant"],
        "x-turnout-model-version": "fallback",
        "x-request-id": out["x-request-id"],
        "content-type": "application/json",
    }
    rows = kind.rows(body, headers)
    if fb.mode == "static" and fb.probability is not None and rows is not None:
        return 200, orjson.dumps(kind.fallback_doc(name, fb.probability, rows)), base
    return 503, oip.error_body(f"{fb.message} ({reply.reason})"), base
