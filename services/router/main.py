"""Run the router: uvicorn (uvloop, httptools) around the ASGI app, fed by a route source.

Two sources: a route file (``--routes``), refused at start when bad, since there is no good
table to keep; or the cluster's ModelDeployments (``--kube``), where the router starts at once
and answers "not ready" until the first table arrives. ``--api-keys FILE`` turns
authentication on (services/router/auth.py); a bad keys file is refused at start either way.

A/B feedback: ``--token-secret FILE`` signs the replies' assignment tokens (a short or empty
secret is refused at start), ``--ledger`` says where accepted outcomes are kept (a directory,
$TURNOUT_HOME/ab by default with --routes; ConfigMaps in the router's namespace with --kube)
and ``--replica-id`` names this replica's ledger.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from services.router.assignment import Tokens
from services.router.auth import Auth
from services.router.dispatch import Router
from services.router.file_source import FileRouteSource
from services.router.kube_source import KubeRouteSource
from turnout.core.api_keys import KeysError
from turnout.core.spec import RouteTable, SpecError, seconds
from turnout.core.tokens import DEFAULT_TTL_S, TokenSecretError
from turnout.io.ab_store import DirectoryLedger, LedgerStore
from turnout.io.kube import Kube, KubeApi, KubeError
from turnout.io.settings import settings
from turnout_sdk.http import BodyLimit, Receive, Scope, Send

log = logging.getLogger("turnout.router")
#: --ledger's value for ConfigMaps in the router's namespace.
CONFIGMAPS = "configmaps"


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
        self.router.tokens.start()
        if self.router.auth is not None:
            self.router.auth.start()

    async def stop(self) -> None:
        await self.source.stop()
        await self.router.tokens.stop()
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


@dataclass(frozen=True)
class Feedback:
    """How the router takes A/B outcomes: the token secret and TTL, the ledger, the replica."""

    #: The token secret file; None: a random secret for this process (with a warning).
    token_secret: Path | None = None
    token_ttl_s: float = DEFAULT_TTL_S
    #: None: the outcomes are kept in memory only (a warning says so).
    ledger: LedgerStore | None = None
    replica: str | None = None


def _router(api_keys: Path | None, feedback: Feedback) -> Router:
    """The router, with authentication when ``api_keys`` names a keys file (KeysError if bad)
    and the token secret (TokenSecretError if bad)."""
    s = settings()
    if feedback.ledger is None:
        log.warning("no A/B ledger: accepted outcomes are kept in this process's memory only")
    router = Router(
        shadow_max_inflight=s.shadow_max_inflight,
        log_payloads=s.log_payloads,
        tokens=Tokens(feedback.token_secret, ttl_s=feedback.token_ttl_s),
        ledger=feedback.ledger,
        replica=feedback.replica,
    )
    if api_keys is not None:
        router.auth = Auth(api_keys, router.metrics.registry)
    return router


def build(
    routes: Path, *, api_keys: Path | None = None, feedback: Feedback = Feedback()
) -> _WithSource:
    router = _router(api_keys, feedback)
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
    kube: KubeApi,
    namespaces: Sequence[str] | None,
    *,
    api_keys: Path | None = None,
    feedback: Feedback = Feedback(),
) -> _WithSource:
    """The router fed by ModelDeployments in ``namespaces`` (None: every namespace)."""
    router = _router(api_keys, feedback)
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


def run(
    routes: Path,
    *,
    host: str,
    port: int,
    api_keys: Path | None = None,
    feedback: Feedback = Feedback(),
) -> None:
    _log_to_stdout()
    try:
        app = build(routes, api_keys=api_keys, feedback=feedback)
    except (SpecError, KeysError, TokenSecretError) as exc:
        raise SystemExit(f"turnout route: {exc}") from None
    _serve(app, host=host, port=port)


def run_kube(
    namespaces: Sequence[str] | None,
    *,
    host: str,
    port: int,
    api_keys: Path | None = None,
    feedback: Feedback = Feedback(),
    ledger: str | None = None,
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
    if ledger is None or ledger == CONFIGMAPS:
        from turnout.io.ab_store import ConfigMapLedger

        store: LedgerStore = ConfigMapLedger.from_kube(kube, namespace=kube.default_namespace())
    else:
        store = DirectoryLedger(Path(ledger))
    feedback = replace(feedback, ledger=store)
    try:
        app = build_kube(kube, namespaces, api_keys=api_keys, feedback=feedback)
    except (KeysError, TokenSecretError) as exc:
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
    parser.add_argument(
        "--token-secret",
        type=Path,
        metavar="FILE",
        help="secret that signs A/B assignment tokens, one per line (the first signs, all "
        "verify), at least 32 characters; re-read on change. Every replica needs the same one. "
        "Without it a random secret for this process only",
    )
    parser.add_argument(
        "--token-ttl",
        default="7d",
        metavar="DURATION",
        help="how long an assignment token is accepted, e.g. 1h, 7d (default: 7d)",
    )
    parser.add_argument(
        "--ledger",
        metavar="DIR|configmaps",
        help="where accepted A/B outcomes are kept: a directory (default with --routes: "
        "$TURNOUT_HOME/ab) or 'configmaps' in the router's namespace (default with --kube)",
    )
    parser.add_argument(
        "--replica-id",
        metavar="ID",
        help="this replica's name in the ledger, unique among running replicas "
        "(default: $POD_NAME, else host-pid)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        ttl = seconds(args.token_ttl)
    except ValueError as exc:
        parser.error(f"--token-ttl: {exc}")
    feedback = Feedback(token_secret=args.token_secret, token_ttl_s=ttl, replica=args.replica_id)
    if args.routes is not None:
        if args.namespace or args.all_namespaces:
            parser.error("--namespace and --all-namespaces go with --kube, not --routes")
        if args.ledger == CONFIGMAPS:
            parser.error("--ledger configmaps goes with --kube; give a directory with --routes")
        directory = Path(args.ledger) if args.ledger else settings().home / "ab"
        feedback = replace(feedback, ledger=DirectoryLedger(directory))
        run(args.routes, host=args.host, port=args.port, api_keys=args.api_keys, feedback=feedback)
    else:
        namespaces = None if args.all_namespaces else (args.namespace or [])
        run_kube(
            namespaces,
            host=args.host,
            port=args.port,
            api_keys=args.api_keys,
            feedback=feedback,
            ledger=args.ledger,
        )
