"""The operator in a cluster: kopf handlers around ClusterController (`turnout operator`).

kopf watches ModelDeployments and the InferenceServices turnout owns, and calls in here:

- create / update / resume of a ModelDeployment → a pass at once (an edit of the spec or of
  the ``turnout.dev/action`` annotation takes effect without waiting for a tick);
- a timer every ``TICK_S`` → a pass when the last one asked for it (``requeue_after``);
- any change to an owned InferenceService (Ready flipped, deleted by hand) → a pass of its owner;
- deletion → its InferenceServices removed (ownerReferences would too, later).

Passes of one deployment never overlap (a lock per deployment); the blocking Kubernetes and
Prometheus calls run in a worker thread so the event loop keeps serving kopf. Only one
operator replica acts at a time: kopf peering pauses the others (``--peering``); each replica
draws its own priority, so when the active one dies the next takes over after the peering
lifetime.

Metrics for alerts and dashboards: ``turnout_modeldeployment_phase``,
``turnout_modeldeployment_candidate_weight`` and ``turnout_rollouts_total{result}``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from services.controller import decisions
from services.controller.cluster import ClusterController, Outcome
from turnout.core import isvc
from turnout.core.crd import GROUP, PLURAL, VERSION
from turnout.core.spec import Phase
from turnout.io.kube import KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION

log = logging.getLogger("turnout.operator")

#: Seconds between timer ticks; a tick runs a pass only when the deployment asked for one.
TICK_S = 1.0
#: Prefix of kopf's bookkeeping annotations.
KOPF_PREFIX = f"kopf.{GROUP}"
#: Results counted in turnout_rollouts_total.
RESULTS = (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED)

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


class Handlers:
    """What each kopf handler does; registered by :func:`register`, driven directly in tests."""

    def __init__(
        self,
        controller: ClusterController,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.controller = controller
        self.metrics = metrics
        self.clock = clock
        self._wake: dict[Key, datetime] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    async def changed(self, namespace: str, name: str) -> None:
        await self._pass((namespace, name))

    async def tick(self, namespace: str, name: str) -> None:
        wake = self._wake.get((namespace, name))
        if wake is None or self.clock() >= wake:
            await self._pass((namespace, name))

    async def isvc_changed(self, namespace: str, labels: dict[str, str]) -> None:
        owner = labels.get(isvc.DEPLOYMENT_LABEL)
        if owner:
            await self._pass((namespace, owner))

    async def deleted(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        removed = await asyncio.to_thread(self.controller.delete, namespace, name)
        log.info("%s/%s deleted; removed %s", namespace, name, ", ".join(removed) or "nothing")
        self._forget(key)

    def _forget(self, key: Key) -> None:
        self._wake.pop(key, None)
        self._locks.pop(key, None)
        self.metrics.forget(key)

    async def _pass(self, key: Key) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            outcome = await asyncio.to_thread(self.controller.reconcile, *key)
        if outcome is None:  # deleted meanwhile: stop reporting it
            self._forget(key)
            return
        self._wake[key] = self.clock() + timedelta(seconds=outcome.requeue_after)
        self.metrics.observe(key, outcome)


def register(handlers: Handlers, registry: kopf.OperatorRegistry) -> None:
    """Wire ``handlers`` into a kopf registry."""

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def on_change(namespace: str | None, name: str, **_: Any) -> None:
        await handlers.changed(namespace or "", name)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_S, initial_delay=TICK_S, registry=registry)
    async def on_tick(namespace: str | None, name: str, **_: Any) -> None:
        await handlers.tick(namespace or "", name)

    # Deletion as a plain event, not kopf.on.delete: no handler of ours holds a deletion up.
    # The timer above does: kopf gives every object with a timer its finalizer
    # (kopf.zalando.org/KopfFinalizerMarker) so that it can stop the timer first. A running
    # operator lets go at once; with none running, a deleted ModelDeployment stays
    # Terminating (and, deleted in the background, keeps its InferenceServices) until one runs.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_deployment_event(
        namespace: str | None, name: str, type: str | None, **_: Any
    ) -> None:
        if type == "DELETED":
            await handlers.deleted(namespace or "", name)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as turnout/io/kube.py: in-cluster service account or kubeconfig.
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(
        KSERVE_GROUP,
        KSERVE_VERSION,
        KSERVE_PLURAL,
        labels={isvc.MANAGED_BY: "turnout"},
        registry=registry,
    )
    async def on_isvc(
        namespace: str | None, labels: Mapping[str, str], type: str | None, **_: Any
    ) -> None:
        if type is not None:  # None is the initial listing; resume handlers cover it
            await handlers.isvc_changed(namespace or "", dict(labels))


def configure(settings: kopf.OperatorSettings, *, peering: str, clusterwide: bool) -> None:
    """Keep kopf's bookkeeping in annotations (the CRD's status schema has no room for it)."""
    # Not GROUP itself: kopf leaves its own prefix out of the diff it reacts to, and the
    # turnout.dev/action annotation must trigger an update at once.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
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
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus's")
    args = parser.parse_args(argv)
    # kopf logs each timer tick and handler success at INFO: a line a second per deployment.
    decisions.configure_logging(fmt="%(asctime)s %(name)s %(message)s", quiet=["kopf.objects"])
    run(args)


def run(args: argparse.Namespace) -> None:
    from services.controller.prometheus import PrometheusProvider
    from turnout.io.kube import Kube, KubeError

    try:
        kube = Kube.connect()
    except KubeError as exc:
        raise SystemExit(f"turnout operator: cannot reach the cluster: {exc}") from None
    metrics = OperatorMetrics()
    start_http_server(args.metrics_port, registry=metrics.registry)
    controller = ClusterController(
        kube=kube,
        metrics=PrometheusProvider(args.prometheus, scrape_interval_s=args.scrape_interval),
        prometheus_url=args.prometheus,
    )
    registry = kopf.OperatorRegistry()
    register(Handlers(controller, metrics), registry)
    settings = kopf.OperatorSettings()
    configure(settings, peering=args.peering, clusterwide=args.all_namespaces)
    kopf.run(
        registry=registry,
        settings=settings,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
