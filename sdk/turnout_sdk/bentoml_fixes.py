"""A fix to BentoML 1.4's request-timeout middleware, applied when the service is imported.

``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` for every request and never
cancels it. Each pending timer keeps its request's future, context and OpenTelemetry span
reachable for the whole timeout (60 s by default), so under load the heap holds hundreds of
thousands of dead request objects and the garbage collector's full passes grow to 300+ ms —
latency spikes that hit every in-flight request (bench/model_server.py measured them). The
fix is two lines upstream: keep the timer handle and cancel it when the request finishes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

PATCHED_FOR = "1.4.39"


async def _call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)  # type: ignore[no-any-return]
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()
    return None


def apply() -> None:
    import bentoml

    if bentoml.__version__ != PATCHED_FOR:
        # A newer BentoML may have fixed it or changed the middleware: do not guess.
        return
    traffic.TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
