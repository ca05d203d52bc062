"""The patched BentoML timeout middleware: still times out, no longer leaks a timer per request."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from turnout_sdk import bentoml_fixes


def _run(app, timeout: float, n: int) -> tuple[list[int], int]:
    bentoml_fixes.apply()
    middleware = TimeoutMiddleware(app, timeout=timeout)

    async def main() -> tuple[list[int], int]:
        statuses: list[int] = []

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def receive():
            return {"type": "http.request", "body": b""}

        for _ in range(n):
            await middleware({"type": "http", "path": "/"}, receive, send)
        pending = sum(not h.cancelled() for h in asyncio.get_running_loop()._scheduled)
        return statuses, pending

    return asyncio.run(main())


async def ok_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send) -> None:
    await asyncio.sleep(5)


def test_finished_requests_leave_no_timer_behind() -> None:
    statuses, pending = _run(ok_app, timeout=60, n=200)
    assert statuses == [200] * 200
    assert pending == 0


def test_a_slow_request_still_gets_504() -> None:
    statuses, _ = _run(slow_app, timeout=0.05, n=1)
    assert statuses == [504]
