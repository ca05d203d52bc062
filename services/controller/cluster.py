"""The controller in a cluster: fetch → decide → apply for one ModelDeployment.

kopf calls :meth:`ClusterController.reconcile` from its handlers (services/controller/
operator.py) on every create, update, resume and timer tick, and when one of the
deployment's InferenceServices changes. One pass:

1. **fetch** the ModelDeployment and its InferenceServices (the operator passes in what its
   watches already hold: a pass then costs no read; tests and callers without a watch
   leave them out and they are read here). A spec the CRD admitted but that
   cannot run (no image for a version, a rule only the models check) gets ``SpecValid=False``
   and an ``InvalidSpec`` event naming the field; nothing else changes, so the versions
   serving keep their traffic.
2. **serve** every version ``served_versions()`` names: create its InferenceService, or patch
   it back to what the spec says. A version that left the routing is marked retired and
   deleted ``drain_s`` later, so routers still holding the old table drain onto it.
3. **decide** as the laptop's loop does (decisions.py: the pure ``decide()``, metrics read
   only when an analysis is due); only Ready InferenceServices count as endpoints.
4. **apply**: one status patch (only if the status changed), then a spec write-back when the
   rollout promoted or ended, the action annotation cleared, the decision's events, and its
   line in the log. Both writes carry the ``resourceVersion`` they follow (the status patch
   the one fetched), so an edit made while deciding wins: the API server answers 409, nothing
   more of the pass is written, and the next pass decides again on the edited spec. (A 409
   caused only by kopf's own annotations, which leave spec and action alone, is retried.)

The status is written before the spec: a promotion recorded in status with the spec still
naming the candidate is a state ``decide()`` recognises (the write-back is pending); the
reverse order would read as "candidate removed" and roll back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from services.controller import decisions
from turnout.core import actions, isvc, rollout
from turnout.core.ab_ledger import LedgerKeeper
from turnout.core.observation import MetricsProvider
from turnout.core.rollout import Decision
from turnout.core.spec import (
    ACTION_ANNOTATION,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Reason,
    SpecError,
    VersionRef,
    describe,
    dump,
    parse_deployment,
)
from turnout.io.kube import Conflict, KubeApi, KubeError, NotFound, Obj

log = logging.getLogger("turnout.operator")

#: Seconds a version keeps its InferenceService after leaving the routing table.
DRAIN_S = 30.0
#: Seconds until the next pass after a write that did not land.
RETRY_S = rollout.RETRY_S
#: Seconds until the next pass when the spec cannot run (an edit triggers one sooner).
INVALID_REQUEUE_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """What one pass did, for the operator's metrics and logs."""

    status: ModelDeploymentStatus
    #: Seconds until this deployment wants another pass.
    requeue_after: float
    events: tuple[tuple[str, str, str], ...] = field(default=())


@dataclass
class ClusterController:
    kube: KubeApi
    metrics: MetricsProvider
    #: Where KEDA reads rps and concurrency (spec.serving.autoscalerClass keda).
    prometheus_url: str | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    drain_s: float = DRAIN_S
    #: The routers' A/B ledgers, whose finished experiments it removes (None: kept).
    ledgers: LedgerKeeper | None = None

    def reconcile(
        self,
        namespace: str,
        name: str,
        *,
        obj: Obj | None = None,
        inference_services: list[Obj] | None = None,
    ) -> Outcome | None:
        """One pass. ``obj``: the ModelDeployment as a watch delivered it (else it is read);
        a stale one is safe, as its status patch carries its resourceVersion.
        ``inference_services``: the deployment's own, as a watch holds them (else listed)."""
        if obj is None:
            try:
                obj = self.kube.get_deployment(namespace, name)
            except NotFound:
                return None
        now = self.clock()
        status = _status(obj)
        try:
            # Status is ours and read leniently above; a bad one is not the user's spec error.
            md = parse_deployment({k: v for k, v in obj.items() if k != "status"})
            _runnable(md.spec)
        except SpecError as exc:
            return self._reject(obj, status, str(exc), now)
        events: list[tuple[str, str, str]] = []
        if _condition_is(status, "SpecValid", "False"):
            status = rollout.spec_validity(status, valid=True, message="spec accepted", now=now)
            events.append(("Normal", Reason.ACCEPTED.value, "spec accepted"))
        endpoints, drain_s, problems = self._serve(obj, md, status, now, inference_services)
        annotation = md.metadata.annotations.get(ACTION_ANNOTATION)
        decision = decisions.decide(
            self.metrics,
            spec=md.spec,
            status=status,
            endpoints=endpoints,
            now=now,
            generation=md.metadata.generation,
            annotation=annotation,
        )
        decision = _with_sync(decision, status, problems, now, events)
        landed = self._apply(obj, md, status, decision)
        if landed is None:  # decided on a stale read: nothing of this pass happened
            return Outcome(status, RETRY_S)
        decisions.forget_finished_experiments(
            self.ledgers, log, md.spec.model, before=status, after=decision.status
        )
        key = f"{namespace}/{name}"
        for type_, reason, message in events:
            decisions.log_event(log, key, type=type_, reason=reason, message=message)
        decisions.log_decision(log, key, before=status, decision=decision, annotation=annotation)
        events += [(e.type, e.reason.value, e.message) for e in decision.events]
        for type_, reason, message in events:
            self.kube.emit_event(obj, type=type_, reason=reason, message=message)
        requeue = min(decision.requeue_after, drain_s, RETRY_S if not landed else math.inf)
        return Outcome(decision.status, requeue, tuple(events))

    def delete(self, namespace: str, name: str) -> list[str]:
        """The deployment is being deleted: remove its InferenceServices (ownerReferences
        would too; deleting them now frees the capacity without waiting for the collector)."""
        removed = []
        for obj in self.kube.list_inference_services(namespace, isvc.selector(name)):
            self.kube.delete_inference_service(namespace, obj["metadata"]["name"])
            removed.append(obj["metadata"]["name"])
        return removed

    # --- fetch ---------------------------------------------------------------------------

    def _reject(
        self, obj: Obj, status: ModelDeploymentStatus, message: str, now: datetime
    ) -> Outcome:
        meta = obj["metadata"]
        old = next((c for c in status.conditions if c.type == "SpecValid"), None)
        if old is not None and old.status == "False" and old.message == message:
            return Outcome(status, INVALID_REQUEUE_S)  # said already
        new = rollout.spec_validity(status, valid=False, message=message, now=now)
        self.kube.patch_deployment_status(meta["namespace"], meta["name"], dump(new))
        text = f"spec rejected, the versions serving keep their traffic: {message}"
        self.kube.emit_event(obj, type="Warning", reason=Reason.INVALID_SPEC.value, message=text)
        key = f"{meta['namespace']}/{meta['name']}"
        decisions.log_event(log, key, type="Warning", reason=Reason.INVALID_SPEC, message=text)
        return Outcome(new, INVALID_REQUEUE_S, (("Warning", Reason.INVALID_SPEC.value, text),))

    # --- serve ---------------------------------------------------------------------------

    def _serve(
        self,
        obj: Obj,
        md: ModelDeployment,
        status: ModelDeploymentStatus,
        now: datetime,
        owned: list[Obj] | None,
    ) -> tuple[dict[str, str], float, list[str]]:
        """Make the InferenceServices match the versions to serve. Returns the Ready ones'
        URLs, the seconds until a retired one is due for deletion (inf: none), and what could
        not be done (one failing version must not stop the others, nor a rollback)."""
        meta, spec = obj["metadata"], md.spec
        namespace = meta["namespace"]
        if owned is None:
            owned = self.kube.list_inference_services(namespace, isvc.selector(meta["name"]))
        existing = {o["metadata"].get("labels", {}).get(isvc.VERSION_LABEL): o for o in owned}
        served = rollout.served_versions(spec, status)
        endpoints: dict[str, str] = {}
        problems: list[str] = []
        for version in sorted(served):
            ref = _ref(spec, status, version)
            current = existing.get(version)
            if ref is None:  # routed but gone from the spec and history: keep what runs
                if current is not None and (url := isvc.ready_url(current)):
                    endpoints[version] = url
                continue
            body = isvc.inference_service(
                deployment=meta["name"],
                namespace=namespace,
                uid=meta.get("uid", ""),
                spec=spec,
                ref=ref,
                prometheus_url=self.prometheus_url,
            )
            try:
                current = self._ensure(current, body)
            except KubeError as exc:
                problems.append(f"InferenceService {body['metadata']['name']}: {exc}")
            if current is not None and (url := isvc.ready_url(current)):
                endpoints[version] = url
        drain_s = math.inf
        for version, current in existing.items():
            if version not in served:
                try:
                    drain_s = min(drain_s, self._retire(current, now))
                except KubeError as exc:
                    problems.append(f"InferenceService {current['metadata']['name']}: {exc}")
        return endpoints, drain_s, problems

    def _ensure(self, current: Obj | None, body: Obj) -> Obj | None:
        meta = body["metadata"]
        if current is None:
            try:
                return self.kube.create_inference_service(body)
            except Conflict:
                # Ours already, if the watch we read them from had not caught up with our own
                # create; else the name is taken by an object we do not manage.
                taken = self.kube.get_inference_service(meta["namespace"], meta["name"])
                if _controller(taken) == _controller(body):
                    return self._ensure(taken, body)
                raise KubeError(
                    409,
                    f"an InferenceService named {meta['name']} already exists in "
                    f"{meta['namespace']} and is not managed by this ModelDeployment",
                ) from None
        if isvc.mode(current) not in (None, isvc.mode(body)):
            # KServe refuses to change a running InferenceService's mode.
            raise KubeError(
                422,
                f"runs in {isvc.mode(current)} mode and KServe cannot switch it to "
                f"{isvc.mode(body)}; roll out a new version to serve in {isvc.mode(body)} mode",
            )
        if isvc.outdated(current, body):
            patch = isvc.update_patch(body)
            return self.kube.patch_inference_service(meta["namespace"], meta["name"], patch)
        return current

    def _retire(self, current: Obj, now: datetime) -> float:
        """Mark a version that left the routing, or delete it once drained; seconds left."""
        meta = current["metadata"]
        since = meta.get("annotations", {}).get(isvc.RETIRED_ANNOTATION)
        if since is None:
            note = {"metadata": {"annotations": {isvc.RETIRED_ANNOTATION: now.isoformat()}}}
            self.kube.patch_inference_service(meta["namespace"], meta["name"], note)
            return self.drain_s
        left = self.drain_s - (now - datetime.fromisoformat(since)).total_seconds()
        if left > 0:
            return left
        self.kube.delete_inference_service(meta["namespace"], meta["name"])
        return math.inf

    # --- apply ----------------------------------------------------------------------------

    def _apply(
        self, obj: Obj, md: ModelDeployment, old: ModelDeploymentStatus, decision: Decision
    ) -> bool | None:
        """Write the decision. None when the object changed since it was read (nothing
        written); False when only the spec write-back lost to a concurrent edit."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if decision.status != old or not obj.get("status"):
            written = self._write_status(obj, decision.status)
            if written is None:
                log.info(
                    "%s/%s changed while deciding; the next pass decides again", namespace, name
                )
                return None
            meta = written["metadata"]
        patch: dict[str, Any] = {}
        if decision.spec is not None and decision.spec != md.spec:
            # Map keys the new spec drops are nulled: a promoted stable must not inherit the
            # old stable's env.
            patch.update(actions.merge_patch(md.spec, actions.Change(spec=decision.spec)))
        if rollout.clears_action(md.metadata.annotations.get(ACTION_ANNOTATION), decision):
            patch["metadata"] = {"annotations": {ACTION_ANNOTATION: None}}
        if not patch:
            return True
        # Our own status write moved resourceVersion; anyone else's write makes this a Conflict.
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
        try:
            self.kube.patch_deployment(namespace, name, patch)
        except Conflict:
            log.info("%s/%s changed while deciding; the next pass decides again", namespace, name)
            return False
        except KubeError as exc:
            log.error("%s/%s: spec write-back failed: %s", namespace, name, exc)
            return False
        return True

    def _write_status(self, obj: Obj, status: ModelDeploymentStatus) -> Obj | None:
        """Patch the status over the object as read; None, writing nothing, when what the
        decision rests on has changed since (say, a new candidate edited in meanwhile, or
        a pass on a body older than this operator's own last status).

        Writes that only touch other metadata (labels, annotations other than the action)
        are no reason to decide again: the patch is retried over them."""
        meta = obj["metadata"]
        namespace, name, version = meta["namespace"], meta["name"], meta["resourceVersion"]
        for _ in range(3):
            try:
                return self.kube.patch_deployment_status(
                    namespace, name, dump(status), resource_version=version
                )
            except Conflict:
                try:
                    fresh = self.kube.get_deployment(namespace, name)
                except NotFound:
                    return None
                if _decided_on(fresh) != _decided_on(obj):
                    return None
                version = fresh["metadata"]["resourceVersion"]
        return None


def _controller(obj: Obj) -> str | None:
    """The uid of the object's controlling owner."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def _decided_on(obj: Obj) -> tuple[Any, ...]:
    """What a pass's decision rests on: the spec, whose every change moves the generation,
    the action annotation, and the status it started from (the operator's own, but a body
    from a watch may predate the operator's last write)."""
    meta = obj["metadata"]
    action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    return meta.get("generation"), action, obj.get("status")


def _status(obj: Obj) -> ModelDeploymentStatus:
    try:
        return ModelDeploymentStatus.model_validate(obj.get("status") or {})
    except ValidationError as exc:
        # Only the operator writes status; an unreadable one starts over rather than stalls.
        log.error(
            "%s: unreadable status, starting afresh: %s", obj["metadata"]["name"], describe(exc)
        )
        return ModelDeploymentStatus()


def _runnable(spec: ModelDeploymentSpec) -> None:
    """Rules the CRD does not state: local runs need no image and name no InferenceService."""
    for field_name, ref in (("stable", spec.stable), ("candidate", spec.candidate)):
        if ref is None:
            continue
        if problem := isvc.name_problem(spec.model, ref.version):
            raise SpecError(f"spec.{field_name}.version: {problem}")
        if not ref.image:
            raise SpecError(
                f"spec.{field_name}.image: required in a cluster: the container image of "
                f"version {ref.version}'s Bento (e.g. registry.example.com/{spec.model}:"
                f"{ref.version})"
            )


def _ref(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, version: str
) -> VersionRef | None:
    """The version's image: from the spec, else from history (a version still draining)."""
    for ref in (spec.stable, spec.candidate):
        if ref is not None and ref.version == version:
            return ref
    for entry in status.history:
        if entry.version == version and entry.image:
            return VersionRef(version=version, image=entry.image)
    return None


def _with_sync(
    decision: Decision,
    old: ModelDeploymentStatus,
    problems: list[str],
    now: datetime,
    events: list[tuple[str, str, str]],
) -> Decision:
    """The decision with the Synced condition set; a Warning event when problems change."""
    status = rollout.serving_sync(decision.status, problems=problems, now=now)
    before = next((c for c in old.conditions if c.type == "Synced"), None)
    if problems and (
        before is None or before.status != "False" or before.message != "; ".join(problems)
    ):
        events.append(("Warning", Reason.SYNC_FAILED.value, "; ".join(problems)))
    return replace(decision, status=status)


def _condition_is(status: ModelDeploymentStatus, type_: str, value: str) -> bool:
    return any(c.type == type_ and c.status == value for c in status.conditions)
