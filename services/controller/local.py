"""The controller on a laptop: fetch → decide → apply over the files in ``$TURNOUT_HOME``.

Each pass, for every ModelDeployment file: accept the spec (or keep the last good one and say
why), make the supervisor serve the versions it names, decide as the operator does
(decisions.py: metrics read when an analysis is due, the pure ``decide()``), and apply the
decision — one state write, the events, a spec write-back when the rollout promoted or ended,
its line in the log — then write the router's route table. All state is in files, so a crash
loses nothing and a restart resumes at the same step.

A version whose server the supervisor gave up on (it failed every start) is decided by
``rollout.server_failed``: a candidate is rolled back with the reason from its log, a stable is
reported in status. Any edit of the spec starts the given-up versions afresh.

Passes run every ``poll_s`` (0.1 s): a ``turnout rollback`` reaches the route table within
about one pass, and the router picks the table up within its own poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from services.controller import decisions
from services.controller.supervisor import Supervisor, Want
from turnout.core import rollout
from turnout.core.ab_ledger import LedgerKeeper
from turnout.core.observation import MetricsProvider, Observation
from turnout.core.spec import (
    ACTION_ANNOTATION,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelRoute,
    Reason,
    RouteTable,
    SpecError,
    dump,
    route_for,
)
from turnout.io.deployments import DeploymentStore, NotFound, State

log = logging.getLogger("turnout.controller")


@dataclass
class _Seen:
    """What the loop last acted on for one deployment, to decide only when something moved."""

    spec: ModelDeploymentSpec | None = None
    endpoints: dict[str, str] | None = None
    #: Versions whose servers were given up on, with why.
    failures: dict[str, str] | None = None
    wake_at: datetime | None = None


class LocalController:
    def __init__(
        self,
        *,
        store: DeploymentStore,
        supervisor: Supervisor,
        metrics: MetricsProvider,
        routes_file: Path,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = 0.1,
        ledgers: LedgerKeeper | None = None,
    ) -> None:
        self.store = store
        #: The router's A/B ledgers, whose finished experiments it removes (None: kept).
        self.ledgers = ledgers
        self.supervisor = supervisor
        self.metrics = metrics
        self.routes_file = routes_file
        self.clock = clock
        self.poll_s = poll_s
        self._seen: dict[str, _Seen] = {}
        #: The spec generation each deployment's servers were last asked for at.
        self._generations: dict[str, int] = {}
        self._routes_text: str | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # one bad pass must not end the loop; the next one retries
                log.exception("controller pass failed")
            stop.wait(self.poll_s)

    def run_once(self) -> None:
        accepted = [(name, a) for name in self.store.names() if (a := self._accept(name))]
        # Per deployment, the server each served version needs (version -> Want).
        running = {s.want.tag: s.want for s in self.supervisor.servers.values()}
        wants = {
            name: {v: _want(spec, v, running) for v in rollout.served_versions(spec, state.status)}
            for name, (spec, state, _) in accepted
        }
        edited = [
            w.key
            for name, (_, state, _) in accepted
            if self._generations.get(name, state.generation) != state.generation
            for w in wants[name].values()
        ]
        self._generations = {name: state.generation for name, (_, state, _) in accepted}
        ready = self.supervisor.ensure(
            {w.key: w for ws in wants.values() for w in ws.values()}, retry=edited
        )
        failures = self.supervisor.failures
        routes: dict[str, ModelRoute] = {}
        for name, (spec, state, action) in accepted:
            endpoints = {v: ready[w.key] for v, w in wants[name].items() if w.key in ready}
            failed = {
                v: failures[w.key].describe() for v, w in wants[name].items() if w.key in failures
            }
            state = self._reconcile(name, spec, state, endpoints, failed, action)
            route = route_for(state.spec or spec, state.status.routing)
            if route is not None:
                routes[spec.model] = route
        self._write_routes(routes)

    # --- fetch --------------------------------------------------------------------------

    def _accept(self, name: str) -> tuple[ModelDeploymentSpec, State, str | None] | None:
        """The spec to run: the file's if it validates, else the last good one (with why);
        and the ``turnout.dev/action`` annotation, if set."""
        state = self.store.state(name)
        try:
            md = self.store.load(name)
        except NotFound:
            return None
        except SpecError as exc:
            message = str(exc)
            if state.spec_error != message:
                why = f"spec rejected, the last good spec keeps running: {message}"
                decisions.log_event(
                    log, name, type="Warning", reason=Reason.INVALID_SPEC, message=why
                )
                status = rollout.spec_validity(
                    state.status, valid=False, message=message, now=self.clock()
                )
                state = replace(state, status=status, spec_error=message)
                self.store.save_state(name, state)
                self._record(name, state, [("Warning", Reason.INVALID_SPEC, message)])
            return None if state.spec is None else (state.spec, state, None)
        if state.spec != md.spec or state.spec_error is not None:
            generation = state.generation + (state.spec != md.spec)
            status = state.status
            if state.spec_error is not None:
                status = rollout.spec_validity(
                    status, valid=True, message="spec accepted", now=self.clock()
                )
            state = replace(
                state, spec=md.spec, generation=generation, spec_error=None, status=status
            )
            self.store.save_state(name, state)
        return md.spec, state, md.metadata.annotations.get(ACTION_ANNOTATION)

    # --- decide and apply -----------------------------------------------------------------

    def _reconcile(
        self,
        name: str,
        spec: ModelDeploymentSpec,
        state: State,
        endpoints: dict[str, str],
        failures: dict[str, str],
        action_text: str | None,
    ) -> State:
        now = self.clock()
        seen = self._seen.setdefault(name, _Seen())
        moved = (
            seen.spec != spec
            or seen.endpoints != endpoints
            or seen.failures != failures
            or action_text is not None
        )
        if not moved and seen.wake_at is not None and now < seen.wake_at:
            return state
        decision = rollout.server_failed(
            spec,
            state.status,
            Observation(endpoints=endpoints),
            now,
            failures=failures,
            generation=state.generation,
        ) or decisions.decide(
            self.metrics,
            spec=spec,
            status=state.status,
            endpoints=endpoints,
            now=now,
            generation=state.generation,
            annotation=action_text,
        )
        new = replace(state, status=decision.status)
        if decision.spec is not None:
            new = self._write_back(name, new, decision.spec)
        if rollout.clears_action(action_text, decision):
            self._clear_action(name)
        if new.status != state.status:
            self.store.save_state(name, new)
            decisions.forget_finished_experiments(
                self.ledgers, log, spec.model, before=state.status, after=new.status
            )
        if decision.events or _visible(state, new):
            self._record(name, new, [(e.type, e.reason, e.message) for e in decision.events])
        decisions.log_decision(
            log, name, before=state.status, decision=decision, annotation=action_text
        )
        seen.spec = new.spec or spec
        seen.endpoints = endpoints
        seen.failures = failures
        seen.wake_at = now + timedelta(seconds=decision.requeue_after)
        return new

    def _write_back(self, name: str, state: State, spec: ModelDeploymentSpec) -> State:
        """Promotion and ended rollouts change the spec; write it to the user's file."""
        with self.store.locked(name):
            try:
                md = self.store.load(name)
            except (SpecError, NotFound):
                # The file holds a bad edit (or vanished): rebuild it from the accepted spec.
                md = ModelDeployment.model_validate(
                    {"metadata": {"name": name}, "spec": dump(spec)}
                )
            self.store.save(md.model_copy(update={"spec": spec}))
        new = replace(state, spec=spec, generation=state.generation + 1, spec_error=None)
        self.store.save_state(name, new)
        return new

    def _clear_action(self, name: str) -> None:
        def clear(md: ModelDeployment) -> ModelDeployment:
            notes = {k: v for k, v in md.metadata.annotations.items() if k != ACTION_ANNOTATION}
            return md.model_copy(
                update={"metadata": md.metadata.model_copy(update={"annotations": notes})}
            )

        with contextlib.suppress(SpecError, NotFound):
            self.store.update(name, clear)

    def _record(self, name: str, state: State, events: list[tuple[str, str, str]]) -> None:
        self.store.append_record(
            name,
            at=self.clock(),
            status=state.status,
            events=[{"type": t, "reason": str(r), "message": m} for t, r, m in events],
        )

    def _write_routes(self, routes: dict[str, ModelRoute]) -> None:
        if not routes:
            return
        table = RouteTable(models=routes)
        text = "# Written by the turnout controller from each ModelDeployment's status.routing.\n"
        text += yaml.safe_dump(dump(table), sort_keys=False)
        if text == self._routes_text:
            return
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.routes_file)
        self._routes_text = text


def _want(spec: ModelDeploymentSpec, version: str, running: Mapping[str, Want]) -> Want:
    """The server ``version`` needs: as the spec names it, else (a version only the routing
    still names, e.g. the stable being rolled back from) the one already serving it."""
    tag = f"{spec.model}:{version}"
    ref = next(
        (r for r in (spec.stable, spec.candidate) if r is not None and r.version == version), None
    )
    if ref is None:
        return running.get(tag, Want(tag))
    return Want(tag, tuple(sorted(ref.env.items())), ref.service)


def _visible(old: State, new: State) -> bool:
    """A change worth a line in the event log: phase, weights, checks or experiment."""
    a, b = old.status, new.status
    return (a.phase, a.routing, a.checks, a.experiment, a.message) != (
        b.phase,
        b.routing,
        b.checks,
        b.experiment,
        b.message,
    )
