"""The operator in a cluster: kopf handlers around ClusterController (`turnout operator`).

kopf watches ModelDeployments and the InferenceServices turnout owns, and calls in here:

- a ModelDeployment listed (operator start) or created, or its spec or ``turnout.dev/action``
  annotation edited → a pass at once, on the body the watch delivered (no read); its status
  changing (our own writes) is nothing to decide on;
- one of its InferenceServices deleted, edited or changing readiness → a pass of its owner;
- a pass asking to come back (``requeue_after``: the next analysis, a version's drain) → a
  pass then, from a timer of our own;
- deletion → its InferenceServices removed (ownerReferences would too, later).

No kopf change handler, timer or daemon is registered, so kopf writes nothing on the objects:
no annotations and no finalizer (kopf's timers would put one on every ModelDeployment, and a
deletion would then wait for a running operator). The InferenceServices a pass needs come
from a kopf index, kept by the watch: a pass reads nothing it does not have to.

Passes of one deployment never overlap (a lock per deployment); the blocking Kubernetes and
Prometheus calls run in worker threads so the event loop keeps serving kopf. Only one
operator replica acts at a time: kopf peering pauses the others' watches (``--peering``), and
:class:`PeeringGate` holds our own timers while it does; each replica draws its own priority,
so when the active one dies the next takes over after the peering lifetime.

Metrics for alerts and dashboards: ``turnout_modeldeployment_phase``,
``turnout_modeldeployment_candidate_weight``, ``turnout_rollouts_total{result}`` and
``turnout_operator_passes_total``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from services.controller import decisions
from services.controller.cluster import ClusterController, Outcome
from turnout.core import isvc
from turnout.core.crd import GROUP, PLURAL, VERSION
from turnout.core.spec import ACTION_ANNOTATION, Phase
from turnout.io.kube import KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION, Obj

log = logging.getLogger("turnout.operator")

#: Passes running at once (each blocks a thread on API and Prometheus calls), and as many
#: kept-alive connections to the API server.
WORKERS = 32
#: Results counted in turnout_rollouts_total.
RESULTS = (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED)
#: The kopf index of the InferenceServices turnout manages, by (namespace, owner).
INDEX = "inference_services"

Key = tuple[str, str]


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.phase = Gauge(
            "turnout_modeldeployment_phase",
            "1 for the ModelDeployment's current status.phase, 0 for the others",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.weight = Gauge(
            "turnout_modeldeployment_candidate_weight",
            "Percent of traffic routed to the candidate",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "turnout_rollouts",
            "Rollouts that ended, by result (Promoted, RolledBack, Failed)",
            ["namespace", "name", "result"],
            registry=self.registry,
        )
        self.passes = Counter(
            "turnout_operator_passes",
            "Passes over a ModelDeployment (fetch, decide, apply)",
            registry=self.registry,
        )
        self._phases: dict[Key, Phase] = {}

    def observe(self, key: Key, outcome: Outcome) -> None:
        phase = outcome.status.phase
        before = self._phases.get(key)
        if before is None:  # first sight (or operator restart): no transition to count
            for result in RESULTS:
                self.rollouts.labels(*key, result.value)
        elif phase != before and phase in RESULTS:
            self.rollouts.labels(*key, phase.value).inc()
        self._phases[key] = phase
        for p in Phase:
            self.phase.labels(*key, p.value).set(1.0 if p is phase else 0.0)
        candidate = outcome.status.routing.candidate
        self.weight.labels(*key).set(candidate.weight if candidate is not None else 0.0)

    def forget(self, key: Key) -> None:
        if self._phases.pop(key, None) is None:
            return  # never observed: no series to remove
        for p in Phase:
            self.phase.remove(*key, p.value)
        for result in RESULTS:
            self.rollouts.remove(*key, result.value)
        self.weight.remove(*key)


class PeeringGate(logging.Handler):
    """Whether kopf peering lets this replica act, for the timers kopf does not run.

    kopf pauses its watches while a replica of higher priority lives, but keeps that state to
    itself; it logs each change instead, once per peering (one per watched namespace), and
    each peering starts paused until its first look at the peers. This counts them."""

    PAUSING = ("Pausing operations", "Pausing all operators")
    RESUMING = ("Resuming operations",)

    def __init__(self, peerings: int) -> None:
        super().__init__()
        self._paused = peerings

    def active(self) -> bool:
        return self._paused == 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith(self.PAUSING):
            self._paused += 1
        elif text.startswith(self.RESUMING):
            self._paused = max(0, self._paused - 1)

    def install(self) -> None:
        logging.getLogger("kopf").addHandler(self)


class Handlers:
    """What each kopf handler does; registered by :func:`register`, driven directly in tests."""

    def __init__(
        self,
        controller: ClusterController,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.controller = controller
        self.metrics = metrics
        self.clock = clock
        self.active = active
        #: The owned InferenceServices of a deployment as a watch holds them (kopf's index);
        #: None: each pass lists them.
        self.inference_services: Callable[[Key], list[Obj]] | None = None
        #: (generation, action annotation) of each deployment, as the watch last showed it.
        self._seen: dict[Key, tuple[Any, Any]] = {}
        #: (generation, ready URL) of each owned InferenceService, as the watch last showed it.
        self._servers: dict[Key, tuple[Any, str | None]] = {}
        self._wake: dict[Key, datetime] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._locks: dict[Key, asyncio.Lock] = {}

    async def changed(self, namespace: str, name: str, body: Obj | None = None) -> None:
        """A pass now; on ``body`` if the watch just delivered it."""
        await self._pass((namespace, name), body)

    async def deployment_event(self, type_: str | None, body: Obj) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        if type_ == "DELETED":
            await self.deleted(*key)
            return
        basis = (meta.get("generation"), (meta.get("annotations") or {}).get(ACTION_ANNOTATION))
        # Listed (operator start, or resumed after a pause) or created: a pass. After that,
        # only spec and action edits; a status change is this operator's own write.
        if type_ in (None, "ADDED") or self._seen.get(key) != basis:
            self._seen[key] = basis
            await self.changed(*key, body)

    async def tick(self, namespace: str, name: str) -> None:
        """The pass a deployment asked for, if it is due."""
        wake = self._wake.get((namespace, name))
        if wake is None or self.clock() >= wake:
            await self._pass((namespace, name), None)

    async def isvc_event(self, type_: str | None, body: Obj) -> None:
        meta = body["metadata"]
        namespace = meta.get("namespace") or ""
        owner = (meta.get("labels") or {}).get(isvc.DEPLOYMENT_LABEL)
        server = (namespace, meta["name"])
        before = self._servers.pop(server, None)
        if type_ != "DELETED":
            self._servers[server] = (meta.get("generation"), isvc.ready_url(body))
        if not owner or type_ is None:  # None: listed; the deployments' own listing covers it
            return
        if type_ == "ADDED" and self._servers[server][1] is None:
            return  # created (by a pass of its owner) and not serving yet: nothing to decide
        if before != self._servers.get(server):
            await self._pass((namespace, owner), None)

    async def isvc_changed(self, namespace: str, labels: dict[str, str]) -> None:
        """A pass of the InferenceService's owner (in tests: what any change of it causes)."""
        owner = labels.get(isvc.DEPLOYMENT_LABEL)
        if owner:
            await self._pass((namespace, owner), None)

    async def deleted(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        removed = await asyncio.to_thread(self.controller.delete, namespace, name)
        log.info("%s/%s deleted; removed %s", namespace, name, ", ".join(removed) or "nothing")
        self._forget(key)

    def _forget(self, key: Key) -> None:
        self._seen.pop(key, None)
        self._wake.pop(key, None)
        self._locks.pop(key, None)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self.metrics.forget(key)

    async def _pass(self, key: Key, body: Obj | None) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            owned = self.inference_services(key) if self.inference_services else None
            outcome = await asyncio.to_thread(
                self.controller.reconcile, *key, obj=body, inference_services=owned
            )
        self.metrics.passes.inc()
        if outcome is None:  # deleted meanwhile: stop reporting it
            self._forget(key)
            return
        self._wake[key] = self.clock() + timedelta(seconds=outcome.requeue_after)
        self._schedule(key, outcome.requeue_after)
        self.metrics.observe(key, outcome)

    def _schedule(self, key: Key, delay: float) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        if math.isfinite(delay):
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._due, key)

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        if not self.active():
            return  # paused by peering: on resuming, kopf lists every deployment again
        task = asyncio.get_running_loop().create_task(self.tick(*key))
        self._running.add(task)
        task.add_done_callback(self._running.discard)


def register(handlers: Handlers, registry: kopf.OperatorRegistry) -> None:
    """Wire ``handlers`` into a kopf registry."""

    @kopf.on.startup(registry=registry)
    async def startup(**kwargs: Any) -> None:
        # Passes block threads on API calls: as many threads as passes may run at once.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(WORKERS, thread_name_prefix="pass")
        )
        index: kopf.Index[Key, Obj] = kwargs[INDEX]
        handlers.inference_services = lambda key: list(index.get(key, ()))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_deployment(type: str | None, body: kopf.Body, **_: Any) -> None:
        await handlers.deployment_event(type, dict(body))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as turnout/io/kube.py: in-cluster service account or kubeconfig.
        return kopf.login_via_client(**kwargs)

    owned: dict[str, Any] = {
        isvc.MANAGED_BY: "turnout",
        isvc.DEPLOYMENT_LABEL: kopf.PRESENT,
    }

    @kopf.index(
        KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL, id=INDEX, labels=owned, registry=registry
    )
    def inference_services(
        namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> dict[Key, Obj]:
        return {(namespace or "", labels[isvc.DEPLOYMENT_LABEL]): dict(body)}

    @kopf.on.event(KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL, labels=owned, registry=registry)
    async def on_isvc(type: str | None, body: kopf.Body, **_: Any) -> None:
        await handlers.isvc_event(type, dict(body))


def configure(settings: kopf.OperatorSettings, *, peering: str, clusterwide: bool) -> None:
    settings.peering.name = peering
    settings.peering.mandatory = True
    settings.peering.clusterwide = clusterwide
    # Watching listed namespaces, the operator has no right to list namespaces (least
    # privilege); kopf need not scan for them.
    settings.scanning.disabled = not clusterwide
    settings.posting.reporting_component = "turnout-operator"
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="turnout operator",
        description="Reconcile ModelDeployments into KServe InferenceServices and rollouts.",
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--peering", default="turnout", help="kopf peering object name")
    parser.add_argument("--priority", type=int, help="peering priority (default: random)")
    parser.add_argument(
        "--listen-address",
        default="0.0.0.0",
        help="address of the metrics and health listeners (default: every interface, as a "
        "pod's probes and Prometheus need)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus's")
    parser.add_argument(
        "--ledger-namespace",
        help="namespace of the routers' A/B ledger ConfigMaps (default: the operator's own)",
    )
    args = parser.parse_args(argv)
    # kopf logs each handler success at INFO: a line per event per deployment.
    decisions.configure_logging(fmt="%(asctime)s %(name)s %(message)s", quiet=["kopf.objects"])
    run(args)


def run(args: argparse.Namespace) -> None:
    from services.controller.prometheus import PrometheusProvider
    from turnout.core.observation import WithLedger
    from turnout.io.ab_store import ConfigMapLedger
    from turnout.io.kube import Kube, KubeError

    try:
        kube = Kube.connect(connections=WORKERS)
    except KubeError as exc:
        raise SystemExit(f"turnout operator: cannot reach the cluster: {exc}") from None
    metrics = OperatorMetrics()
    start_http_server(args.metrics_port, addr=args.listen_address, registry=metrics.registry)
    # Serving metrics from Prometheus; A/B outcomes from the routers' ledgers.
    ledger = ConfigMapLedger.from_kube(
        kube, namespace=args.ledger_namespace or kube.default_namespace()
    )
    controller = ClusterController(
        kube=kube,
        metrics=WithLedger(
            PrometheusProvider(args.prometheus, scrape_interval_s=args.scrape_interval), ledger
        ),
        prometheus_url=args.prometheus,
        ledgers=ledger,
    )
    gate = PeeringGate(peerings=1 if args.all_namespaces else len(set(args.namespace)))
    gate.install()
    registry = kopf.OperatorRegistry()
    register(Handlers(controller, metrics, active=gate.active), registry)
    settings = kopf.OperatorSettings()
    configure(settings, peering=args.peering, clusterwide=args.all_namespaces)
    host = f"[{args.listen_address}]" if ":" in args.listen_address else args.listen_address
    kopf.run(
        registry=registry,
        settings=settings,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=f"http://{host}:{args.health_port}/healthz",
    )
