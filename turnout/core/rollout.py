"""The rollout core: given spec, status, what was observed and the time, decide what happens.

``decide()`` is pure — no I/O, no clock — so every transition is a table-driven test and the
same function runs in the kopf operator and the laptop's file-backed loop. Adapters do
fetch → decide → apply: read metrics when :func:`analysis_due` says so, call ``decide``,
then write ``Decision.status`` (one patch), ``Decision.spec`` if the spec must change
(promotion moves the candidate to stable; an ended rollout clears ``spec.candidate``), clear
the action annotation if :func:`clears_action`, emit ``Decision.events``, log what
:func:`narrate` says, and come back after ``Decision.requeue_after`` seconds.

The life of a candidate::

    spec.candidate set ──► wait until its server is ready ──► Canary: step weights, analyse
                                                          ├─► Shadow: mirror, gate, then ...
                                                          └─► ABTest: split, sequential test
    ... ──► Promoted (candidate becomes stable, history grows) or RolledBack (weight 0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from turnout.core import stats
from turnout.core.ab_ledger import experiment_id
from turnout.core.observation import Metrics, MetricsQuery, Observation, VersionMetrics
from turnout.core.spec import (
    Action,
    Analysis,
    ArmSummary,
    Check,
    Condition,
    Experiment,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Reason,
    Routing,
    ShadowTarget,
    StrategyType,
    Target,
    VersionRef,
    WeightedTarget,
    action_of,
    seconds,
)

#: Phases in which no rollout is in flight.
SETTLED = frozenset({Phase.IDLE, Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})
#: Phase while a rollout of each strategy runs.
RUNNING = {
    StrategyType.CANARY: Phase.PROGRESSING,
    StrategyType.SHADOW: Phase.SHADOWING,
    StrategyType.AB_TEST: Phase.EXPERIMENTING,
}
#: How soon to look again while waiting on something outside (a server, metrics, data).
RETRY_S = 2.0
#: How many past stable versions status.history keeps.
HISTORY_LIMIT = 20
#: Sample-ratio-mismatch p-value below which the A/B assignment is declared broken.
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str


@dataclass(frozen=True)
class Decision:
    #: The whole new status: adapters write it in one patch.
    status: ModelDeploymentStatus
    #: A changed spec to write back, or None to leave the spec alone.
    spec: ModelDeploymentSpec | None = None
    events: tuple[Event, ...] = ()
    #: Seconds until decide() wants to run again (sooner if the spec changes).
    requeue_after: float = 60.0
    #: The ``turnout.dev/action`` annotation was acted on and should be cleared.
    clear_action: bool = False


@dataclass(frozen=True)
class _Ctx:
    """The inputs of one decide() call, so helpers take one argument instead of five."""

    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus
    obs: Observation
    now: datetime
    generation: int
    events: list[Event] = field(default_factory=list)


# --- what the adapters ask before and after deciding --------------------------------------


def served_versions(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> set[str]:
    """Versions whose servers must run: the spec's, plus any still receiving traffic."""
    wanted = {spec.stable.version}
    if spec.candidate is not None:
        wanted.add(spec.candidate.version)
    r = status.routing
    for target in (r.stable, r.candidate, r.shadow):
        if target is not None:
            wanted.add(target.version)
    return wanted


def analysis_due(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
) -> MetricsQuery | None:
    """The metrics query to run before deciding, or None when no analysis is due now."""
    at = next_analysis_at(spec, status)
    if at is None or now < at:
        return None
    assert spec.candidate is not None
    strategy = status.rollout_strategy or spec.strategy.type
    variant: Literal["candidate", "shadow"] = (
        "shadow" if strategy is StrategyType.SHADOW else "candidate"
    )
    window = spec.analysis.window
    experiment = None
    if strategy is StrategyType.AB_TEST:
        experiment = experiment_id(
            model=spec.model, candidate=spec.candidate.version, salt=status.routing.salt
        )
    return MetricsQuery(
        model=spec.model,
        stable_version=spec.stable.version,
        candidate_version=spec.candidate.version,
        candidate_variant=variant,
        window_s=seconds(window) if window else _wait_s(spec, strategy),
        experiment=experiment,
    )


def next_analysis_at(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> datetime | None:
    """When the running rollout's next analysis is due (None: no rollout, or paused).

    Canary steps and the shadow gate are judged once their interval (duration) has passed; an
    analysis that could not judge (too little data, metrics down) is retried every RETRY_S.
    An A/B test is evaluated every interval.
    """
    # Resuming restarts the interval, so nothing is due while the status still says Paused.
    if spec.paused or spec.candidate is None or status.phase in SETTLED | {Phase.PAUSED}:
        return None
    started = status.step_started_at
    if status.rollout_version != spec.candidate.version or started is None:
        return None
    strategy = status.rollout_strategy or spec.strategy.type
    wait = timedelta(seconds=_wait_s(spec, strategy))
    last = status.last_analysis_at
    if strategy is StrategyType.AB_TEST:
        return max(started, last or started) + wait
    due = started + wait
    if last is not None and last >= due:  # analysed this step already, but could not judge
        return last + timedelta(seconds=min(wait.total_seconds(), RETRY_S))
    return due


def _wait_s(spec: ModelDeploymentSpec, strategy: StrategyType) -> float:
    s = spec.strategy
    if strategy is StrategyType.SHADOW:
        return seconds(s.shadow.duration)
    if strategy is StrategyType.AB_TEST:
        return seconds(s.ab_test.interval)
    return seconds(s.canary.interval)


def clears_action(annotation: str | None, decision: Decision) -> bool:
    """Whether the ``turnout.dev/action`` annotation is removed after ``decision``: it was
    acted on, or it names no action (left in place it would be refused on every pass)."""
    return annotation is not None and (decision.clear_action or action_of(annotation) is None)


#: One line of a controller's log: type, label (a reason, or the phase), message.
Line = tuple[Literal["Normal", "Warning"], str, str]


def narrate(before: ModelDeploymentStatus, decision: Decision) -> tuple[Line, ...]:
    """What ``decision`` says in the controller's log, once, with its numbers.

    Each event is a line. A decision without an event (the first weight, a step held for
    data, waiting for a server) is told by the new status message when it changed; so is one
    whose events do not say how traffic moved (a rollout that starts and sends its first
    weight in the same pass). Nothing is said when nothing changed.
    """
    events = decision.events
    lines: list[Line] = [(e.type, e.reason.value, e.message) for e in events]
    after = decision.status
    if after.message in (before.message, *(e.message for e in events)):
        return tuple(lines)
    moved = (after.routing.candidate, after.routing.shadow) != (
        before.routing.candidate,
        before.routing.shadow,
    )
    if not events or (moved and all(e.reason is not Reason.STEP_PASSED for e in events)):
        # A hold or a wait names its condition's reason (InsufficientData, WaitingForReady).
        label = next(
            (c.reason for c in after.conditions if c.message == after.message), after.phase.value
        )
        lines.append(("Normal", label, after.message))
    return tuple(lines)


# --- decide -------------------------------------------------------------------------------


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observation: Observation,
    now: datetime,
    *,
    generation: int = 0,
    action: Action | None = None,
) -> Decision:
    """The next status (and spec change, events, requeue) for one ModelDeployment."""
    ctx = _Ctx(spec, status, observation, now, generation)
    ready, stable_status = _stable(ctx)
    ctx = _with_status(ctx, stable_status)
    if not ready:
        return _done(ctx, ctx.status, requeue=RETRY_S)

    # An action with no rollout in flight is cleared, or it would fire on the next rollout.
    stray = action is not None
    cand = spec.candidate
    if cand is None:
        if ctx.status.phase not in SETTLED:
            return _rollback(ctx, Reason.ABORTED, "spec.candidate was removed", warn=True)
        return _done(ctx, _settled(ctx.status, ctx.status.phase), clear_action=stray)

    if _new_rollout(ctx, cand):
        ctx = _with_status(ctx, _start(ctx, cand))
    elif ctx.status.phase in SETTLED:
        # The spec still names a candidate whose rollout has ended: the write-back that clears
        # it has not landed (it lost to a concurrent edit, or the adapter stopped). Ask again.
        return _done(ctx, ctx.status, spec=_ended_spec(ctx, cand), clear_action=stray)

    if action is Action.ABORT:
        return _rollback(ctx, Reason.ABORTED, "aborted by an operator", warn=True, acted=True)
    url = observation.endpoints.get(cand.version)
    if action is Action.PROMOTE:
        if url is None:
            return _wait_ready(ctx, cand)
        return _promote(ctx, Reason.MANUAL_PROMOTE, "promoted by an operator", acted=True)

    if spec.paused:
        return _pause(ctx)
    if ctx.status.phase is Phase.PAUSED:
        ctx = _resume(ctx)

    if ctx.status.step_started_at is None and url is None:
        return _wait_ready(ctx, cand)
    strategy = ctx.status.rollout_strategy or spec.strategy.type
    if strategy is StrategyType.SHADOW:
        return _shadow(ctx, cand, url)
    if strategy is StrategyType.AB_TEST:
        return _abtest(ctx, cand, url)
    return _canary(ctx, cand, url)


# --- stable -------------------------------------------------------------------------------


def _stable(ctx: _Ctx) -> tuple[bool, ModelDeploymentStatus]:
    """Route stable to spec.stable once its server is ready; False while there is none."""
    spec, status = ctx.spec, ctx.status
    routed = status.routing.stable
    url = ctx.obs.endpoints.get(spec.stable.version)
    if _promotion_pending(ctx):
        return True, status
    if routed is not None and routed.version == spec.stable.version:
        if url is not None and url != routed.url:  # the server moved (restarted elsewhere)
            routing = status.routing.model_copy(
                update={"stable": Target(version=routed.version, url=url)}
            )
            status = status.model_copy(update={"routing": routing})
        history = status.history
        if not history or history[0].version != spec.stable.version:
            history = _push_history(history, spec.stable, ctx.now, "serving as stable")
            status = status.model_copy(update={"history": history})
        return True, status
    if url is None:
        message = f"waiting for {spec.stable.version}'s server to be ready"
        if routed is not None:
            message += f" (stable {routed.version} keeps serving meanwhile)"
        patch = _condition(
            status,
            "Ready",
            "False" if routed is None else "True",
            Reason.WAITING_FOR_READY,
            message,
            ctx.now,
        )
        return False, status.model_copy(update={"message": message, "conditions": patch})
    if routed is None:
        reason = "serving as stable"
    elif any(h.version == spec.stable.version for h in status.history):
        reason = f"rolled back from {routed.version}"
    else:
        reason = f"replaced {routed.version} (spec.stable edited)"
    if routed is not None:
        ctx.events.append(
            Event(
                "Normal",
                Reason.STABLE_CHANGED,
                f"stable {routed.version} -> {spec.stable.version}: {reason}",
            )
        )
    routing = status.routing.model_copy(
        update={"stable": Target(version=spec.stable.version, url=url)}
    )
    conditions = _condition(
        status,
        "Ready",
        "True",
        Reason.STABLE_ONLY,
        f"{spec.stable.version} serves as stable",
        ctx.now,
    )
    return True, status.model_copy(
        update={
            "routing": routing,
            "history": _push_history(status.history, spec.stable, ctx.now, reason),
            "conditions": conditions,
            # Failed meant no stable could start (server_failed); one serves now.
            "phase": Phase.IDLE if status.phase is Phase.FAILED else status.phase,
        }
    )


def _promotion_pending(ctx: _Ctx) -> bool:
    """The candidate was promoted but the spec still names it as candidate (the write-back
    has not landed): stable stays on it instead of switching back to spec.stable."""
    status, cand, routed = ctx.status, ctx.spec.candidate, ctx.status.routing.stable
    return (
        status.phase is Phase.PROMOTED
        and cand is not None
        and routed is not None
        and routed.version == cand.version == status.rollout_version
        and ctx.generation <= status.observed_generation
    )


def _push_history(
    history: list[HistoryEntry], ref: VersionRef, now: datetime, reason: str
) -> list[HistoryEntry]:
    entry = HistoryEntry(
        version=ref.version, image=ref.image, service=ref.service, promoted_at=now, reason=reason
    )
    return [entry, *history][:HISTORY_LIMIT]


def _settled(status: ModelDeploymentStatus, phase: Phase) -> ModelDeploymentStatus:
    routing = status.routing.model_copy(update={"candidate": None, "shadow": None})
    if phase is Phase.PAUSED:
        phase = Phase.IDLE
    message = status.message
    if phase is Phase.IDLE and status.routing.stable is not None:
        message = f"{status.routing.stable.version} serves all traffic"
    return status.model_copy(update={"routing": routing, "phase": phase, "message": message})


# --- rollout lifecycle --------------------------------------------------------------------


def _new_rollout(ctx: _Ctx, cand: VersionRef) -> bool:
    status = ctx.status
    if status.rollout_version != cand.version:
        return True
    # Same version again after its rollout ended: a new rollout only if the spec was edited
    # since (e.g. `turnout deploy` of the same version after a rollback).
    return status.phase in SETTLED and ctx.generation > status.observed_generation


def _ended_spec(ctx: _Ctx, cand: VersionRef) -> ModelDeploymentSpec | None:
    """The spec an ended rollout of ``cand`` writes back (None: nothing to write)."""
    status = ctx.status
    if status.rollout_version != cand.version:
        return None
    routed = status.routing.stable
    if status.phase is Phase.PROMOTED and routed is not None and routed.version == cand.version:
        return ctx.spec.model_copy(update={"stable": cand, "candidate": None})
    if status.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        return ctx.spec.model_copy(update={"candidate": None})
    return None


def _start(ctx: _Ctx, cand: VersionRef) -> ModelDeploymentStatus:
    strategy = ctx.spec.strategy.type
    sticky = ctx.spec.strategy.ab_test.sticky_header
    routing = Routing(
        stable=ctx.status.routing.stable,
        sticky_header=sticky,
        salt=f"{ctx.spec.model}/{cand.version}/{int(ctx.now.timestamp())}",
    )
    experiment = None
    if strategy is StrategyType.AB_TEST:
        experiment = Experiment(metric=ctx.spec.strategy.ab_test.metric)
    ctx.events.append(
        Event(
            "Normal",
            Reason.STARTED,
            f"{strategy.value} of {cand.version} over stable {ctx.spec.stable.version} started",
        )
    )
    return ctx.status.model_copy(
        update={
            "phase": RUNNING[strategy],
            "message": f"waiting for {cand.version}'s server to be ready",
            "routing": routing,
            "rollout_version": cand.version,
            "rollout_strategy": strategy,
            "step": 0,
            "step_started_at": None,
            "rollout_started_at": ctx.now,
            "last_analysis_at": None,
            "checks": [],
            "failed_checks": 0,
            "experiment": experiment,
            "conditions": [c for c in ctx.status.conditions if c.type != "Analysis"],
        }
    )


def _wait_ready(ctx: _Ctx, cand: VersionRef) -> Decision:
    message = f"waiting for {cand.version}'s server to be ready"
    return _done(ctx, ctx.status.model_copy(update={"message": message}), requeue=RETRY_S)


def _pause(ctx: _Ctx) -> Decision:
    status = ctx.status
    if status.phase is not Phase.PAUSED:
        ctx.events.append(Event("Normal", Reason.PAUSED, "rollout paused; weights frozen"))
    weight = status.routing.candidate.weight if status.routing.candidate else 0.0
    message = f"paused at candidate weight {weight:g}%; `turnout resume` continues"
    return _done(ctx, status.model_copy(update={"phase": Phase.PAUSED, "message": message}))


def _resume(ctx: _Ctx) -> _Ctx:
    """Leave Paused: the current step's interval starts again from now."""
    strategy = ctx.status.rollout_strategy or ctx.spec.strategy.type
    ctx.events.append(Event("Normal", Reason.RESUMED, "rollout resumed"))
    started = ctx.now if ctx.status.step_started_at is not None else None
    return _with_status(
        ctx,
        ctx.status.model_copy(update={"phase": RUNNING[strategy], "step_started_at": started}),
    )


def _promote(ctx: _Ctx, reason: Reason, why: str, *, acted: bool = False) -> Decision:
    cand = ctx.spec.candidate
    assert cand is not None
    url = ctx.obs.endpoints.get(cand.version)
    if url is None:  # stable must not point at a server that is not ready
        return _wait_ready(ctx, cand)
    old = ctx.spec.stable.version
    status = ctx.status
    routing = status.routing.model_copy(
        update={"stable": Target(version=cand.version, url=url), "candidate": None, "shadow": None}
    )
    message = f"{cand.version} promoted over {old}: {why}"
    ctx.events.append(Event("Normal", reason, message))
    new_status = status.model_copy(
        update={
            "phase": Phase.PROMOTED,
            "message": message,
            "routing": routing,
            "history": _push_history(status.history, cand, ctx.now, why),
            "observed_generation": ctx.generation,
        }
    )
    new_spec = ctx.spec.model_copy(update={"stable": cand, "candidate": None})
    return _done(ctx, new_status, spec=new_spec, clear_action=acted)


def _rollback(ctx: _Ctx, reason: Reason, why: str, *, warn: bool, acted: bool = False) -> Decision:
    version = ctx.status.rollout_version or "the candidate"
    routing = ctx.status.routing.model_copy(update={"candidate": None, "shadow": None})
    message = f"{version} rolled back; {ctx.spec.stable.version} serves all traffic: {why}"
    ctx.events.append(Event("Warning" if warn else "Normal", reason, message))
    status = ctx.status.model_copy(
        update={
            "phase": Phase.ROLLED_BACK,
            "message": message,
            "routing": routing,
            "observed_generation": ctx.generation,
        }
    )
    new_spec = None
    if ctx.spec.candidate is not None:
        new_spec = ctx.spec.model_copy(update={"candidate": None})
    return _done(ctx, status, spec=new_spec, clear_action=acted)


# --- strategies ---------------------------------------------------------------------------


def _canary(ctx: _Ctx, cand: VersionRef, url: str | None) -> Decision:
    canary = ctx.spec.strategy.canary
    status = ctx.status
    interval = seconds(canary.interval)
    if status.step_started_at is None:
        assert url is not None
        weight = canary.steps[0]
        return _advance(
            ctx,
            cand,
            url,
            step=0,
            weight=weight,
            message=f"canary {cand.version} at {weight:g}%",
            requeue=interval,
        )
    analysed = _analyse(ctx, _canary_checks(ctx))
    if isinstance(analysed, Decision):
        return analysed
    ctx, checks, failing = analysed
    if failing:
        return _failed(ctx, failing, interval)
    nxt = status.step + 1
    if nxt >= len(canary.steps):
        summary = _summary(checks)
        return _promote(
            ctx, Reason.PROMOTED, f"passed {len(canary.steps)} canary steps ({summary})"
        )
    weight = canary.steps[nxt]
    before = status.routing.candidate.weight if status.routing.candidate else 0.0
    ctx.events.append(
        Event(
            "Normal",
            Reason.STEP_PASSED,
            f"{cand.version} {before:g}% -> {weight:g}%: {_summary(checks)}",
        )
    )
    return _advance(
        ctx,
        cand,
        url or _routed_url(status, cand),
        step=nxt,
        weight=weight,
        message=f"canary {cand.version} at {weight:g}% (step {nxt + 1} of {len(canary.steps)})",
        requeue=interval,
    )


def _advance(
    ctx: _Ctx, cand: VersionRef, url: str, *, step: int, weight: float, message: str, requeue: float
) -> Decision:
    routing = ctx.status.routing.model_copy(
        update={
            "candidate": WeightedTarget(version=cand.version, url=url, weight=weight),
            "shadow": None,
        }
    )
    status = ctx.status.model_copy(
        update={
            "routing": routing,
            "step": step,
            "step_started_at": ctx.now,
            "message": message,
            "phase": RUNNING[ctx.status.rollout_strategy or StrategyType.CANARY],
        }
    )
    return _done(ctx, status, requeue=requeue)


def _routed_url(status: ModelDeploymentStatus, cand: VersionRef) -> str:
    r = status.routing
    for target in (r.candidate, r.shadow):
        if target is not None and target.version == cand.version:
            return target.url
    raise ValueError(f"{cand.version} has no routed URL")


def _failed(ctx: _Ctx, failing: list[Check], interval: float) -> Decision:
    canary = ctx.spec.strategy.canary
    count = ctx.status.failed_checks + 1
    detail = _summary(failing)
    status = ctx.status.model_copy(update={"failed_checks": count})
    ctx = _with_status(ctx, status)
    if count >= canary.max_failed_checks:
        return _rollback(
            ctx,
            Reason.ROLLED_BACK,
            f"{count} failed analyses (maxFailedChecks {canary.max_failed_checks}): {detail}",
            warn=True,
        )
    message = f"analysis failed ({count} of {canary.max_failed_checks}): {detail}"
    ctx.events.append(Event("Warning", Reason.CHECKS_FAILED, message))
    # Stay at this weight for another interval before judging again.
    status = status.model_copy(update={"message": message, "step_started_at": ctx.now})
    return _done(ctx, status, requeue=interval)


def _shadow(ctx: _Ctx, cand: VersionRef, url: str | None) -> Decision:
    shadow = ctx.spec.strategy.shadow
    duration = seconds(shadow.duration)
    status = ctx.status
    if status.step_started_at is None:
        assert url is not None
        routing = status.routing.model_copy(
            update={
                "candidate": None,
                "shadow": ShadowTarget(version=cand.version, url=url, percent=shadow.percent),
            }
        )
        message = (
            f"mirroring {shadow.percent:g}% of traffic to {cand.version} for {shadow.duration}"
        )
        status = status.model_copy(
            update={
                "routing": routing,
                "step_started_at": ctx.now,
                "message": message,
                "phase": Phase.SHADOWING,
            }
        )
        return _done(ctx, status, requeue=duration)
    analysed = _analyse(ctx, _shadow_checks(ctx))
    if isinstance(analysed, Decision):
        return analysed
    ctx, checks, failing = analysed
    if failing:
        why = f"shadow gate failed: {_summary(failing)}"
        return _rollback(ctx, Reason.SHADOW_BLOCKED, why, warn=True)
    passed = f"shadow gate passed ({_summary(checks)})"
    if shadow.then == "Promote":
        return _promote(ctx, Reason.SHADOW_PASSED, passed)
    if shadow.then == "Stop":
        return _rollback(ctx, Reason.SHADOW_PASSED, passed + "; then: Stop", warn=False)
    ctx.events.append(Event("Normal", Reason.SHADOW_PASSED, passed + "; canary begins"))
    status = ctx.status.model_copy(
        update={
            "rollout_strategy": StrategyType.CANARY,
            "step_started_at": None,
            "failed_checks": 0,
        }
    )
    return _canary(_with_status(ctx, status), cand, url or _routed_url(ctx.status, cand))


def _abtest(ctx: _Ctx, cand: VersionRef, url: str | None) -> Decision:
    ab = ctx.spec.strategy.ab_test
    interval = seconds(ab.interval)
    status = ctx.status
    if status.step_started_at is None:
        assert url is not None
        return _advance(
            ctx,
            cand,
            url,
            step=0,
            weight=ab.split,
            message=f"A/B test: {ab.split:g}% of {ab.sticky_header} keys on {cand.version}",
            requeue=interval,
        )
    # Guardrails (errors, latency) are judged when there is enough traffic; the experiment
    # itself is evaluated at every look regardless.
    analysed = _analyse(ctx, _canary_checks(ctx) or [])
    if isinstance(analysed, Decision):
        return analysed
    ctx, _, failing = analysed
    if failing:
        return _failed(ctx, failing, interval)
    if ctx.status.failed_checks:  # guardrails count consecutive failures over a long test
        ctx = _with_status(ctx, ctx.status.model_copy(update={"failed_checks": 0}))
    metrics = ctx.obs.metrics
    assert metrics is not None
    before = ctx.status.experiment
    experiment, verdict = _evaluate(ctx, metrics)
    status = ctx.status.model_copy(update={"experiment": experiment})
    ctx = _with_status(ctx, status)
    if verdict is None:
        arms = experiment.arms
        n = min(arms["stable"].n, arms["candidate"].n) if len(arms) == 2 else 0
        message = (
            f"A/B test collecting outcomes: {n:.0f} per arm so far "
            f"(decides from {ab.min_samples_per_arm}); p={experiment.p_value:.3g}"
        )
        return _done(ctx, status.model_copy(update={"message": message}), requeue=interval)
    reason, why = verdict
    if reason is Reason.EXPERIMENT_WON:
        if ab.auto_promote:
            return _promote(ctx, reason, why)
        if before is None or before.decision != "Candidate":  # announce once, not every look
            ctx.events.append(Event("Normal", reason, why + "; awaiting `turnout promote`"))
        message = why + "; autoPromote is off: `turnout promote` or `turnout abort`"
        return _done(ctx, status.model_copy(update={"message": message}), requeue=interval)
    return _rollback(ctx, reason, why, warn=reason is Reason.SRM)


def _evaluate(ctx: _Ctx, metrics: Metrics) -> tuple[Experiment, tuple[Reason, str] | None]:
    """Update the experiment from the arms' moments; a verdict when the test has concluded."""
    ab = ctx.spec.strategy.ab_test
    prev = ctx.status.experiment or Experiment(metric=ab.metric)
    s = metrics.ab.get("stable", stats.Moments())
    c = metrics.ab.get("candidate", stats.Moments())
    arms = {
        "stable": ArmSummary(n=s.n, mean=_finite(s.mean)),
        "candidate": ArmSummary(n=c.n, mean=_finite(c.mean)),
    }
    experiment = prev.model_copy(update={"arms": arms})
    if min(s.n, c.n) < ab.min_samples_per_arm:
        return experiment, None
    split = ab.split / 100
    srm = stats.srm([s.n, c.n], [1 - split, split])
    experiment = experiment.model_copy(update={"srm_p_value": srm.p_value})
    if srm.p_value < SRM_ALPHA:
        why = (
            f"sample ratio mismatch: {s.n:.0f} stable vs {c.n:.0f} candidate outcomes for a "
            f"{100 - ab.split:g}/{ab.split:g} split (p={srm.p_value:.2g}); the test cannot be "
            "trusted"
        )
        return experiment.model_copy(update={"decision": "Inconclusive"}), (Reason.SRM, why)
    sigma2 = ((s.n - 1) * s.variance + (c.n - 1) * c.variance) / max(s.n + c.n - 2, 1)
    planned = stats.sample_size_per_arm(
        sd=math.sqrt(max(sigma2, 1e-12)), mde=ab.min_detectable_effect, alpha=ab.alpha
    )
    tau2 = stats.mixture_tau2(sigma2=max(sigma2, 1e-12), planned_n=planned, alpha=ab.alpha)
    previous = None
    if prev.ci is not None:
        previous = stats.SequentialResult(
            difference=prev.lift or 0.0, ci=prev.ci, p_value=prev.p_value, reject=False
        )
    result = stats.msprt(s, c, alpha=ab.alpha, tau2=tau2, previous=previous)
    lift = result.difference
    rel = lift / s.mean if s.mean else None
    experiment = experiment.model_copy(
        update={
            "lift": lift,
            "relative_lift": rel,
            "ci": _finite_ci(result.ci),
            "p_value": result.p_value,
        }
    )
    numbers = (
        f"{ab.metric} stable {s.mean:.4g} vs candidate {c.mean:.4g}, lift {lift:+.4g} "
        f"(CI {_ci_text(result.ci)}), p={result.p_value:.3g}, n={s.n:.0f}/{c.n:.0f}"
    )
    if result.reject:
        better = (lift > 0) == ab.higher_is_better
        decision: Literal["Candidate", "Stable"] = "Candidate" if better else "Stable"
        reason = Reason.EXPERIMENT_WON if better else Reason.EXPERIMENT_LOST
        return experiment.model_copy(update={"decision": decision}), (
            reason,
            f"A/B test concluded for {decision.lower()}: {numbers}",
        )
    if min(s.n, c.n) >= ab.max_samples_per_arm:
        return experiment.model_copy(update={"decision": "Inconclusive"}), (
            Reason.INCONCLUSIVE,
            f"A/B test inconclusive after {ab.max_samples_per_arm} outcomes per arm: {numbers}",
        )
    return experiment, None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _finite_ci(ci: tuple[float, float]) -> tuple[float, float] | None:
    return ci if all(math.isfinite(v) for v in ci) else None


def _ci_text(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"


# --- analysis -----------------------------------------------------------------------------


def _analyse(
    ctx: _Ctx, checks: list[Check] | None
) -> tuple[_Ctx, list[Check], list[Check]] | Decision:
    """Once an analysis is due: the context with checks recorded, the checks and the failing
    ones. Before that, or when the analysis cannot judge: a Decision to wait."""
    due = next_analysis_at(ctx.spec, ctx.status)
    assert due is not None
    if ctx.now < due:
        return _done(ctx, ctx.status, requeue=(due - ctx.now).total_seconds())
    if ctx.obs.metrics is None:
        why = ctx.obs.metrics_error or "no metrics were read"
        return _hold(ctx, Reason.METRICS_UNAVAILABLE, f"metrics unavailable: {why}")
    if checks is None:
        have = ctx.obs.metrics.candidate.requests
        need = ctx.spec.analysis.min_requests
        return _hold(
            ctx,
            Reason.INSUFFICIENT_DATA,
            f"{have:.0f} {ctx.status.rollout_version} requests in the window; the analysis "
            f"needs {need} (analysis.minRequests)",
        )
    failing = [c for c in checks if not c.passed]
    verdict: Literal["True", "False"] = "True" if not failing else "False"
    reason = Reason.STEP_PASSED if not failing else Reason.CHECKS_FAILED
    status = ctx.status.model_copy(
        update={
            "checks": checks,
            "last_analysis_at": ctx.now,
            "conditions": _condition(
                ctx.status, "Analysis", verdict, reason, _summary(checks) or "no checks", ctx.now
            ),
        }
    )
    return _with_status(ctx, status), checks, failing


def _hold(ctx: _Ctx, reason: Reason, message: str) -> Decision:
    status = ctx.status.model_copy(
        update={
            "message": message,
            "last_analysis_at": ctx.now,
            "conditions": _condition(ctx.status, "Analysis", "Unknown", reason, message, ctx.now),
        }
    )
    return _done(ctx, status, requeue=RETRY_S)


def _check(
    name: str, value: float | None, threshold: float, kind: Literal["max", "min"], now: datetime
) -> Check:
    passed = value is not None and (value <= threshold if kind == "max" else value >= threshold)
    return Check(name=name, value=value, threshold=threshold, kind=kind, passed=passed, at=now)


def _canary_checks(ctx: _Ctx) -> list[Check] | None:
    """Checks on the candidate's weighted traffic; None when there is too little to judge."""
    metrics = ctx.obs.metrics
    if metrics is None:
        return None
    a: Analysis = ctx.spec.analysis
    cand, stable = metrics.candidate, metrics.stable
    if cand.requests < a.min_requests:
        return None
    now = ctx.now
    checks = [
        _check("errorRate", cand.error_rate, a.max_error_rate, "max", now),
        _check("latencyP99Ms", cand.p99_ms, a.max_latency_p99_ms, "max", now),
    ]
    return checks + _relative_checks(a, cand, stable, now)


def _shadow_checks(ctx: _Ctx) -> list[Check] | None:
    """Checks on the mirrored traffic; None when too few requests or rows were compared.

    The agreement check is named with what agreement means for the model (``shadowAgreement
    (top class)``), so every view says what was measured.
    """
    metrics = ctx.obs.metrics
    if metrics is None:
        return None
    a = ctx.spec.analysis
    cand, stable = metrics.candidate, metrics.stable
    if cand.requests < a.min_requests or metrics.shadow_compared < a.min_requests:
        return None
    now = ctx.now
    checks = [
        _check("shadowErrorRate", cand.error_rate, a.max_error_rate, "max", now),
        _check(
            f"shadowAgreement ({ctx.spec.comparison.measure})",
            metrics.shadow_agreement,
            a.min_shadow_agreement,
            "min",
            now,
        ),
    ]
    return checks + _relative_checks(a, cand, stable, now)


def _relative_checks(
    a: Analysis, cand: VersionMetrics, stable: VersionMetrics, now: datetime
) -> list[Check]:
    """Checks shared by canary and shadow, each only when its numbers exist.

    latencyRatio is candidate p99 over stable p99; a candidate at most ``latencyToleranceMs``
    slower passes whatever the ratio (at a few milliseconds, histogram buckets alone differ
    by 1.5x). predictionPsi compares the candidate's live scores with its training reference.
    """
    checks = []
    ratio = _ratio(cand.p99_ms, stable.p99_ms)
    if ratio is not None:
        check = _check("latencyRatio", ratio, a.max_latency_ratio, "max", now)
        assert cand.p99_ms is not None and stable.p99_ms is not None
        if not check.passed and cand.p99_ms - stable.p99_ms <= a.latency_tolerance_ms:
            check = check.model_copy(update={"passed": True})
        checks.append(check)
    if cand.prediction_psi is not None:
        checks.append(
            _check("predictionPsi", cand.prediction_psi, a.max_prediction_psi, "max", now)
        )
    return checks


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _summary(checks: list[Check]) -> str:
    return ", ".join(c.describe() for c in checks)


def spec_validity(
    status: ModelDeploymentStatus, *, valid: bool, message: str, now: datetime
) -> ModelDeploymentStatus:
    """Status with its ``SpecValid`` condition set: False names why the spec was rejected
    (the last good spec keeps running), True says an edit was accepted again."""
    if valid:
        conditions = _condition(status, "SpecValid", "True", Reason.ACCEPTED, message, now)
    else:
        conditions = _condition(status, "SpecValid", "False", Reason.INVALID_SPEC, message, now)
    return status.model_copy(update={"conditions": conditions})


def serving_sync(
    status: ModelDeploymentStatus, *, problems: list[str], now: datetime
) -> ModelDeploymentStatus:
    """Status with its ``Synced`` condition: False names each InferenceService that could not
    be brought to what the spec says (the versions already serving keep serving)."""
    if problems:
        conditions = _condition(
            status, "Synced", "False", Reason.SYNC_FAILED, "; ".join(problems), now
        )
    else:
        conditions = _condition(
            status, "Synced", "True", Reason.SYNCED, "every version is as the spec says", now
        )
    return status.model_copy(update={"conditions": conditions})


def server_failed(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observation: Observation,
    now: datetime,
    *,
    failures: Mapping[str, str],
    generation: int = 0,
) -> Decision | None:
    """The decision when servers gave up starting (``failures``: version -> why), or None
    when no version the spec names is among them (``decide()`` then runs as usual).

    A candidate whose server cannot start is rolled back at once with the reason; stable keeps
    serving. A stable whose server cannot start is reported (the Ready condition, reason
    ServerFailed, and the message) instead of being waited for forever; with nothing serving
    at all the phase is Failed.
    """
    cand = spec.candidate
    if spec.stable.version not in failures and (cand is None or cand.version not in failures):
        return None
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    ctx = _Ctx(spec, status, observation, now, generation)
    ctx = _with_status(ctx, _stable(ctx)[1])
    why = failures.get(spec.stable.version)
    if why is not None:
        routed, status = ctx.status.routing.stable, ctx.status
        older = routed is not None and routed.version != spec.stable.version
        message = f"{why}; stable {routed.version} keeps serving" if older and routed else why
        if ready is None or (ready.reason, ready.message) != (Reason.SERVER_FAILED, message):
            ctx.events.append(Event("Warning", Reason.SERVER_FAILED, message))
        conditions = _condition(
            status, "Ready", "True" if older else "False", Reason.SERVER_FAILED, message, now
        )
        update = {"message": message, "conditions": conditions}
        if routed is None:
            update["phase"] = Phase.FAILED
        return _done(ctx, status.model_copy(update=update), requeue=RETRY_S)
    assert cand is not None
    if _new_rollout(ctx, cand):
        ctx = _with_status(ctx, _start(ctx, cand))
    elif ctx.status.phase in SETTLED:
        return None  # ended already; decide() writes the spec back
    return _rollback(ctx, Reason.SERVER_FAILED, failures[cand.version], warn=True)


# --- plumbing -----------------------------------------------------------------------------


def _condition(
    status: ModelDeploymentStatus,
    type_: str,
    value: Literal["True", "False", "Unknown"],
    reason: Reason,
    message: str,
    now: datetime,
) -> list[Condition]:
    """Conditions with ``type_`` set; lastTransitionTime moves only when the value changes."""
    old = next((c for c in status.conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(
        type=type_, status=value, reason=reason.value, message=message, last_transition_time=since
    )
    return [c for c in status.conditions if c.type != type_] + [new]


def _with_status(ctx: _Ctx, status: ModelDeploymentStatus) -> _Ctx:
    return _Ctx(ctx.spec, status, ctx.obs, ctx.now, ctx.generation, ctx.events)


def _done(
    ctx: _Ctx,
    status: ModelDeploymentStatus,
    *,
    spec: ModelDeploymentSpec | None = None,
    requeue: float = 60.0,
    clear_action: bool = False,
) -> Decision:
    status = status.model_copy(update={"observed_generation": ctx.generation})
    return Decision(
        status=status,
        spec=spec,
        events=tuple(ctx.events),
        requeue_after=max(requeue, 0.0),
        clear_action=clear_action,
    )
