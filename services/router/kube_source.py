"""Route table from the ModelDeployments in the cluster: list, then watch, forever.

Two layers, as in the rest of turnout:

- **Pure** (:func:`admit`, :func:`forget`, :func:`resync`, :func:`table_of`): what the router
  knows is a frozen :class:`Routes` -- the last good entry of every ModelDeployment seen and
  which object serves each model name. An event goes in, a new ``Routes`` and the errors to
  report come out. A malformed object is rejected and its previous entry kept, so one bad
  status write never takes a model off the air; an object the controller has not reconciled
  yet (no ``status.routing.stable``) routes nothing. Two objects claiming one model name: the
  first seen serves it, the other is reported, and takes over if the first is deleted.
  :func:`standing` says whether any of those problems still holds.
- **I/O** (:class:`KubeRouteSource`): per watched scope (one namespace, or all of them), a
  thread lists, then watches from the list's resourceVersion, re-watching when a watch times
  out, relisting on 410 Gone, and backing off (exponentially, capped) on any other API error.
  The kubernetes client is blocking, hence threads; tables and errors are handed to the
  asyncio loop with ``call_soon_threadsafe``, in the order they were computed, so the Router
  is only ever touched from its own loop. ``run_once()`` runs one step of every scope on the
  caller's thread (callbacks called directly), which is how the tests drive it.

The router shows the last problem on ``GET /routes`` until it is handed a table. So when the
last standing problem goes (the bad status corrected, possibly back to the very routing it
had, or the API answering again) the table is handed over again even if unchanged: otherwise
the router would go on reporting a problem that no longer exists.

The table handed over is ``None`` when no model is routed (none deployed yet, or the last
ModelDeployment was deleted): a RouteTable needs at least one model. The first list always
hands a table over, so a fresh install's router becomes ready (answering 404 for every model)
instead of failing readiness until the first deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from turnout.core.spec import (
    Comparison,
    Fallback,
    ModelRoute,
    RouteTable,
    Routing,
    SpecError,
    describe,
    route_from,
)
from turnout.io.kube import Gone, KubeApi, KubeError, Obj, WatchEvent

log = logging.getLogger("turnout.router")

#: A ModelDeployment's identity: (namespace, name).
Key = tuple[str, str]

# --- pure core -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What one valid ModelDeployment contributes."""

    model: str
    #: None until the controller has written ``status.routing.stable``.
    route: ModelRoute | None


@dataclass(frozen=True)
class Routes:
    #: The last good entry of every ModelDeployment present, in the order first seen.
    entries: Mapping[Key, Entry] = field(default_factory=dict)
    #: The object serving each model name: the first one seen that claims it.
    owners: Mapping[str, Key] = field(default_factory=dict)
    #: Objects whose latest version was refused (their last good entry is kept), and why.
    rejected: Mapping[Key, str] = field(default_factory=dict)


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def named(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


#: route_for builds these models from status.routing; each names one field of it.
_ROUTING_FIELD = {"Upstream": "stable", "Candidate": "candidate", "Shadow": "shadow"}


def entry_of(obj: Obj) -> Entry:
    """What the router needs from one ModelDeployment; SpecError reads
    ``namespace/name: field: problem``.

    Only ``spec.model``, ``status.routing`` and ``spec.fallback`` matter here. The rest of the
    spec is the operator's to judge: a spec edit it rejects keeps the last good routing in
    status, and a router started after such an edit must still serve it.
    """
    where = named(key_of(obj))
    spec = _mapping(obj.get("spec"))
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise SpecError(f"{where}: spec.model: a model name is required")
    try:
        routing = Routing.model_validate(_mapping(obj.get("status")).get("routing") or {})
    except ValidationError as exc:
        raise SpecError(f"{where}: status.routing.{describe(exc)}") from None
    try:
        fallback = Fallback.model_validate(spec.get("fallback") or {})
    except ValidationError:
        fallback = Fallback()  # the operator reports the spec error; serve with the default
    try:
        comparison = Comparison.model_validate(spec.get("comparison") or {})
    except ValidationError:
        comparison = Comparison()  # likewise: compare as the default until the spec is fixed
    try:
        route = route_from(routing, fallback, comparison=comparison)
    except ValidationError as exc:  # the status is well-formed but routes somewhere impossible
        prefix = ".".join(("status.routing", _ROUTING_FIELD.get(exc.title, ""))).rstrip(".")
        problems = "; ".join(f"{prefix}.{line}" for line in describe(exc).split("; "))
        raise SpecError(f"{where}: {problems}") from None
    return Entry(model=model.lower(), route=route)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _hand_over(entries: Mapping[Key, Entry], owners: dict[str, Key], model: str) -> None:
    """The model's owner is gone: the next object claiming it, in order seen, serves it."""
    heir = next((key for key, entry in entries.items() if entry.model == model), None)
    if heir is None:
        owners.pop(model, None)
    else:
        owners[model] = heir


def admit(routes: Routes, obj: Obj) -> tuple[Routes, list[str]]:
    """An ADDED or MODIFIED object: its new entry, or an error and its old entry kept."""
    key = key_of(obj)
    try:
        entry = entry_of(obj)
    except SpecError as exc:
        rejected = {**routes.rejected, key: str(exc)}
        return Routes(routes.entries, routes.owners, rejected), [str(exc)]
    entries = {**routes.entries, key: entry}
    owners = dict(routes.owners)
    rejected = {k: why for k, why in routes.rejected.items() if k != key}
    old = routes.entries.get(key)
    if old is not None and old.model != entry.model and owners.get(old.model) == key:
        _hand_over(entries, owners, old.model)
    owner = owners.setdefault(entry.model, key)
    if owner != key:
        return Routes(entries, owners, rejected), [
            f"{named(key)}: spec.model: model {entry.model!r} is already served by "
            f"ModelDeployment {named(owner)}; this one is ignored while that one exists"
        ]
    return Routes(entries, owners, rejected), []


def forget(routes: Routes, obj: Obj) -> Routes:
    """A DELETED object: its model is no longer served by it."""
    return _drop(routes, key_of(obj))


def _drop(routes: Routes, key: Key) -> Routes:
    rejected = {k: why for k, why in routes.rejected.items() if k != key}
    old = routes.entries.get(key)
    if old is None:
        return Routes(routes.entries, routes.owners, rejected)
    entries = {k: e for k, e in routes.entries.items() if k != key}
    owners = dict(routes.owners)
    if owners.get(old.model) == key:
        _hand_over(entries, owners, old.model)
    return Routes(entries, owners, rejected)


def resync(
    routes: Routes, objs: Sequence[Obj], *, namespace: str | None
) -> tuple[Routes, list[str]]:
    """A fresh list of one scope (None: every namespace): what is not in it was deleted."""
    present = {key_of(obj) for obj in objs}
    for key in [*routes.entries, *routes.rejected]:
        if (namespace is None or key[0] == namespace) and key not in present:
            routes = _drop(routes, key)  # before admitting, so a duplicate can take over
    errors: list[str] = []
    for obj in objs:
        routes, found = admit(routes, obj)
        errors += found
    return routes, errors


def standing(routes: Routes) -> bool:
    """Whether some object's problem still holds: its latest version refused, or its model
    served by another object."""
    return bool(routes.rejected) or any(
        routes.owners.get(entry.model) != key for key, entry in routes.entries.items()
    )


def table_of(routes: Routes) -> RouteTable | None:
    """The table the router serves; None when no model is routed."""
    models: dict[str, ModelRoute] = {}
    for model, key in sorted(routes.owners.items()):
        route = routes.entries[key].route
        if route is not None:
            models[model] = route
    return RouteTable(models=models) if models else None


# --- I/O: list and watch ---------------------------------------------------------------------


@dataclass
class _Cursor:
    """Where one scope's list-and-watch stands; touched only by that scope's thread."""

    namespace: str | None  # None: every namespace
    #: Where the next watch starts; None: list first.
    resource_version: str | None = None
    #: API errors in a row, for the back-off.
    failures: int = 0

    @property
    def scope(self) -> str:
        return "all namespaces" if self.namespace is None else f"namespace {self.namespace}"


class KubeRouteSource:
    """Feeds the router from ModelDeployments' ``status.routing``.

    ``namespaces``: the namespaces to watch, or None for all of them. ``on_table`` receives
    each new table (None: no model routed), ``on_error`` each problem as one line. ``sleep``
    waits between retries (default: interruptible by ``stop``).
    """

    def __init__(
        self,
        kube: KubeApi,
        namespaces: Sequence[str] | None,
        *,
        on_table: Callable[[RouteTable | None], None],
        on_error: Callable[[str], None],
        sleep: Callable[[float], object] | None = None,
        watch_timeout_s: int = 240,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.kube = kube
        self.namespaces = None if namespaces is None else list(dict.fromkeys(namespaces))
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self._on_table = on_table
        self._on_error = on_error
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        scopes: list[str | None] = [None] if self.namespaces is None else [*self.namespaces]
        self._cursors = [_Cursor(ns) for ns in scopes]
        self._lock = threading.Lock()  # one scope's change and hand-over at a time, in order
        self._routes = Routes()
        self._served: RouteTable | None = None
        #: A table (perhaps None: nothing routed) was handed over at least once.
        self._synced = False
        #: The router was handed a problem after the last table: it shows it on /routes.
        self._error_shown = False
        #: Scopes whose last API call failed (None: all namespaces).
        self._failing: set[str | None] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    @property
    def description(self) -> str:
        if self.namespaces is None:
            return "kubernetes: all namespaces"
        label = "namespace" if len(self.namespaces) == 1 else "namespaces"
        return f"kubernetes: {label} {', '.join(self.namespaces)}"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """One thread per scope; call from the event loop that serves the router."""
        self._loop = asyncio.get_running_loop()
        for cursor in self._cursors:
            thread = threading.Thread(
                target=self._run, args=(cursor,), name=f"routes {cursor.scope}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        """Stop handing over tables; a thread blocked in a watch is left to end (daemon)."""
        self._stopping.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 1.0)
        self._threads.clear()

    def run_once(self) -> None:
        """One step of every scope on this thread: a list, or one watch to its end."""
        for cursor in self._cursors:
            self._step(cursor)

    def _run(self, cursor: _Cursor) -> None:
        while not self._stopping.is_set():
            self._step(cursor)

    # --- one step ---------------------------------------------------------------------------

    def _step(self, cursor: _Cursor) -> None:
        try:
            if cursor.resource_version is None:
                self._list(cursor)
            else:
                self._watch(cursor)
        except Gone as exc:
            log.info("ModelDeployments in %s: watch expired (%s); listing again", cursor.scope, exc)
            cursor.resource_version = None
        except KubeError as exc:
            self._back_off(cursor, f"kubernetes: ModelDeployments in {cursor.scope}: {exc}")
        except Exception as exc:  # a bug must not stop the routing: log it, resync from a list
            log.exception("route source failed on %s", cursor.scope)
            cursor.resource_version = None
            self._back_off(cursor, f"route source: {cursor.scope}: {exc!r}")

    def _list(self, cursor: _Cursor) -> None:
        items, resource_version = self.kube.list_deployments(cursor.namespace)
        cursor.failures = 0
        self._apply(lambda routes: resync(routes, items, namespace=cursor.namespace), cursor)
        cursor.resource_version = resource_version

    def _watch(self, cursor: _Cursor) -> None:
        assert cursor.resource_version is not None
        events = self.kube.watch_deployments(
            cursor.namespace, cursor.resource_version, timeout_s=self.watch_timeout_s
        )
        for event in events:
            if self._stopping.is_set():
                return
            cursor.failures = 0
            self._handle(cursor, event)
        cursor.failures = 0  # ended by its timeout: the next step watches again from here
        self._answered(cursor)

    def _handle(self, cursor: _Cursor, event: WatchEvent) -> None:
        if event.type in ("ADDED", "MODIFIED"):
            self._apply(lambda routes: admit(routes, event.object), cursor)
        elif event.type == "DELETED":
            self._apply(lambda routes: (forget(routes, event.object), []), cursor)
        else:
            if event.type != "BOOKMARK":
                log.warning("ignoring a %s watch event on ModelDeployments", event.type)
            self._answered(cursor)
        meta = event.object.get("metadata") or {}
        if meta.get("resourceVersion"):
            cursor.resource_version = str(meta["resourceVersion"])

    def _back_off(self, cursor: _Cursor, message: str) -> None:
        delay = min(self.max_backoff_s, 0.5 * 2**cursor.failures)
        cursor.failures += 1
        log.warning("%s; retrying in %.1fs", message, delay)
        with self._lock:
            self._failing.add(cursor.namespace)
            self._deliver(self._on_error, message)
            self._error_shown = True
        self._sleep(delay)

    def _answered(self, cursor: _Cursor) -> None:
        """The API server answered this scope: an error it reported before no longer stands."""
        if cursor.namespace in self._failing:  # only this scope's thread adds it
            self._apply(lambda routes: (routes, []), cursor)

    # --- hand-over to the router ------------------------------------------------------------

    def _apply(self, change: Callable[[Routes], tuple[Routes, list[str]]], cursor: _Cursor) -> None:
        """Make a change that ``cursor``'s scope heard from the API server."""
        with self._lock:
            self._failing.discard(cursor.namespace)
            self._routes, errors = change(self._routes)
            table = table_of(self._routes)
            # The router shows its last problem until it gets a table; hand it over again
            # when none stands any more.
            gone = self._error_shown and not (standing(self._routes) or self._failing)
            if table != self._served or not self._synced or gone:
                self._served, self._synced = table, True
                self._deliver(self._on_table, table)
                self._error_shown = False
            for error in errors:  # after the table: Router.set_table clears its last error
                log.error("ModelDeployment rejected, its previous route is kept: %s", error)
                self._deliver(self._on_error, error)
                self._error_shown = True

    def _deliver(self, callback: Callable[[Any], None], value: Any) -> None:
        """Run ``callback(value)`` on the router's loop (directly when not started)."""
        if self._loop is None:
            callback(value)
            return
        if self._stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us: shutting down
            self._loop.call_soon_threadsafe(callback, value)
