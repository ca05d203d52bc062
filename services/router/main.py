"""Run the router: uvicorn (uvloop, httptools) around the ASGI app, fed by a route file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from services.http import BodyLimit, Receive, Scope, Send
from services.router.app import Router
from services.router.file_source import FileRouteSource
from turnout.settings import settings
from turnout.spec import SpecError


class _WithSource:
    """The router app plus its file watcher, started and stopped with the server."""

    def __init__(self, router: Router, source: FileRouteSource, max_body: int) -> None:
        self.router = router
        self.source = source
        self.app = BodyLimit(router, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def wrapped_send(message: Any) -> None:
                if message["type"] == "lifespan.startup.complete":
                    self.source.start()
                elif message["type"] == "lifespan.shutdown.complete":
                    await self.source.stop()
                await send(message)

            await self.router(scope, receive, wrapped_send)
            return
        await self.app(scope, receive, send)


def build(routes: Path) -> _WithSource:
    s = settings()
    router = Router(shadow_max_inflight=s.shadow_max_inflight, log_payloads=s.log_payloads)
    router.source = str(routes)
    source = FileRouteSource(routes, on_table=router.set_table, on_error=router.reject_table)
    source.poll()
    if router.table is None:  # refuse to start on a bad file: there is no good table to keep
        raise SpecError(router.last_error or f"{routes}: no route table")
    return _WithSource(router, source, s.max_body_bytes)


def run(routes: Path, *, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        app = build(routes)
    except SpecError as exc:
        raise SystemExit(f"turnout route: {exc}") from None
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=False,  # the router is the edge: no X-Forwarded-* rewriting per request
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="turnout route", description=__doc__)
    parser.add_argument("--routes", type=Path, required=True, help="route table, YAML or JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    run(args.routes, host=args.host, port=args.port)
