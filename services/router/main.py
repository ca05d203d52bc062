"""Run the router: uvicorn (uvloop, httptools) around the ASGI app, fed by a route source.

Two sources: a route file (``--routes``), refused at start when bad, since there is no good
table to keep; or the cluster's ModelDeployments (``--kube``), where the router starts at once
and answers "not ready" until the first table arrives. ``--api-keys FILE`` turns
authentication on (services/router/auth.py); a bad keys file is refused at start either way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from services.router.auth import Auth
from services.router.dispatch import Router
from services.router.file_source import FileRouteSource
from services.router.kube_source import KubeRouteSource
from turnout.core.api_keys import KeysError
from turnout.core.spec import RouteTable, SpecError
from turnout.io.kube import Kube, KubeApi, KubeError
from turnout.io.settings import settings
from turnout_sdk.http import BodyLimit, Receive, Scope, Send

log = logging.getLogger("turnout.router")


class RouteSource(Protocol):
    """Where the table comes from; started and stopped with the server."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class _WithSource:
    """The router app plus its route source (and keys file), started and stopped with the
    server."""

    def __init__(self, router: Router, source: RouteSource, max_body: int) -> None:
        self.router = router
        self.source = source
        self.app = BodyLimit(router, max_body)

    def start(self) -> None:
        self.source.start()
        if self.router.auth is not None:
            self.router.auth.start()

    async def stop(self) -> None:
        await self.source.stop()
        if self.router.auth is not None:
            await self.router.auth.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def wrapped_send(message: Any) -> None:
                if message["type"] == "lifespan.startup.complete":
                    self.start()
                elif message["type"] == "lifespan.shutdown.complete":
                    await self.stop()
                await send(message)

            await self.router(scope, receive, wrapped_send)
            return
        await self.app(scope, receive, send)


def _router(api_keys: Path | None) -> Router:
    """The router, with authentication when ``api_keys`` names a keys file (KeysError if bad)."""
    s = settings()
    router = Router(shadow_max_inflight=s.shadow_max_inflight, log_payloads=s.log_payloads)
    if api_keys is not None:
        router.auth = Auth(api_keys, router.metrics.registry)
    return router


def build(routes: Path, *, api_keys: Path | None = None) -> _WithSource:
    router = _router(api_keys)
    router.source = str(routes)
    source = FileRouteSource(routes, on_table=router.set_table, on_error=router.reject_table)
    source.poll()
    if router.table is None:  # refuse to start on a bad file: there is no good table to keep
        raise SpecError(router.last_error or f"{routes}: no route table")
    return _WithSource(router, source, settings().max_body_bytes)


def table_setter(router: Router) -> Callable[[RouteTable | None], None]:
    """``router.set_table``, plus None: no model is routed (ready, every model 404)."""

    def apply(table: RouteTable | None) -> None:
        if table is not None:
            router.set_table(table)
            return
        router.table = None
        router.routes_nothing = True
        router.loaded_at = datetime.now(UTC)
        router.last_error = None  # handed a (empty) table: no problem stands any more
        log.warning("route table empty: no ModelDeployment routes traffic yet")

    return apply


def build_kube(
    kube: KubeApi, namespaces: Sequence[str] | None, *, api_keys: Path | None = None
) -> _WithSource:
    """The router fed by ModelDeployments in ``namespaces`` (None: every namespace)."""
    router = _router(api_keys)
    source = KubeRouteSource(
        kube, namespaces, on_table=table_setter(router), on_error=router.reject_table
    )
    router.source = source.description
    return _WithSource(router, source, settings().max_body_bytes)


def _serve(app: _WithSource, *, host: str, port: int) -> None:
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


def _log_to_stdout() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)


def run(routes: Path, *, host: str, port: int, api_keys: Path | None = None) -> None:
    _log_to_stdout()
    try:
        app = build(routes, api_keys=api_keys)
    except (SpecError, KeysError) as exc:
        raise SystemExit(f"turnout route: {exc}") from None
    _serve(app, host=host, port=port)


def run_kube(
    namespaces: Sequence[str] | None, *, host: str, port: int, api_keys: Path | None = None
) -> None:
    """Serve the routes of the cluster's ModelDeployments.

    ``namespaces``: None watches every namespace; an empty sequence, the current one (the
    pod's service account namespace, or the kubeconfig context's).
    """
    _log_to_stdout()
    try:
        kube = Kube.connect()
    except KubeError as exc:
        raise SystemExit(f"turnout route: {exc}") from None
    if namespaces is not None and not namespaces:
        namespaces = [kube.default_namespace()]
    try:
        app = build_kube(kube, namespaces, api_keys=api_keys)
    except KeysError as exc:
        raise SystemExit(f"turnout route: {exc}") from None
    _serve(app, host=host, port=port)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="turnout route", description="Run the router: one stable endpoint per model."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--routes", type=Path, help="route table, YAML or JSON")
    source.add_argument(
        "--kube", action="store_true", help="route by the cluster's ModelDeployments"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="with --kube: a namespace to watch, repeatable (default: the current one)",
    )
    scope.add_argument(
        "--all-namespaces", action="store_true", help="with --kube: watch every namespace"
    )
    parser.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help="keys file (hashes, YAML or JSON): every request but health and metrics needs a "
        "key from it (re-read on change); without it the router is open",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.routes is not None:
        if args.namespace or args.all_namespaces:
            parser.error("--namespace and --all-namespaces go with --kube, not --routes")
        run(args.routes, host=args.host, port=args.port, api_keys=args.api_keys)
    else:
        namespaces = None if args.all_namespaces else (args.namespace or [])
        run_kube(namespaces, host=args.host, port=args.port, api_keys=args.api_keys)
