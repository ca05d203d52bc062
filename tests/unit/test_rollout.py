"""The rollout core: every transition an operator can see, driven through the pure ``decide()``.

Each test feeds spec, status, what the controller observed and the time, and asserts what
``kubectl get mdep`` / ``turnout status`` would show: phase, routing (weights, targets),
events with their reasons and numbers, the spec written back, history and when the controller
comes back. :class:`World` plays the controller loop (write the status, write back the spec,
bump the generation) so multi-step scenarios read like a rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core import rollout
from turnout.core.ab_ledger import experiment_id
from turnout.core.observation import Metrics, MetricsQuery, Observation, VersionMetrics
from turnout.core.rollout import Decision, analysis_due, decide, next_analysis_at, served_versions
from turnout.core.spec import (
    Action,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Reason,
    Routing,
    StrategyType,
    Target,
    action_of,
)
from turnout.core.stats import Moments

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
URL = {v: f"http://fraud-{v}.models:3000" for v in ("v0", "v1", "v2", "v3", "v9")}
READY = ("v1", "v2")


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


# --- builders -------------------------------------------------------------------------------


def spec(
    *,
    stable: str = "v1",
    candidate: str | None = "v2",
    strategy: str = "Canary",
    canary: dict[str, Any] | None = None,
    shadow: dict[str, Any] | None = None,
    ab: dict[str, Any] | None = None,
    analysis: dict[str, Any] | None = None,
    comparison: dict[str, Any] | None = None,
    paused: bool = False,
) -> ModelDeploymentSpec:
    """A spec as an operator writes it (camelCase keys), validated like a real document."""
    doc: dict[str, Any] = {
        "model": "fraud",
        "stable": {"version": stable, "image": f"registry/fraud:{stable}"},
        "strategy": {
            "type": strategy,
            "canary": {"steps": [5, 25, 50], "interval": "60s", "maxFailedChecks": 2}
            | (canary or {}),
            "shadow": {"percent": 50, "duration": "10m", "then": "Canary"} | (shadow or {}),
            "abTest": {"split": 50, "stickyHeader": "X-User-Id", "minSamplesPerArm": 1000}
            | (ab or {}),
        },
        "analysis": analysis or {},
        "comparison": comparison or {},
        "paused": paused,
    }
    if candidate is not None:
        doc["candidate"] = {"version": candidate, "image": f"registry/fraud:{candidate}"}
    return ModelDeploymentSpec.model_validate(doc)


def metrics(
    *,
    error_rate: float | None = 0.001,
    p99: float | None = 40.0,
    requests: float = 500,
    stable_p99: float | None = None,
    psi: float | None = None,
    agreement: float | None = None,
    compared: float | None = None,
    ab: dict[str, Moments] | None = None,
) -> Metrics:
    return Metrics(
        stable=VersionMetrics(requests=5000, error_rate=0.001, p99_ms=stable_p99),
        candidate=VersionMetrics(
            requests=requests, error_rate=error_rate, p99_ms=p99, prediction_psi=psi
        ),
        shadow_agreement=agreement,
        shadow_compared=requests if compared is None else compared,
        ab=ab or {},
    )


HEALTHY = metrics()


def obs(*ready: str, m: Metrics | None = None, error: str | None = None) -> Observation:
    return Observation(endpoints={v: URL[v] for v in ready}, metrics=m, metrics_error=error)


def arm(n: float, rate: float) -> Moments:
    """Moments of n binary outcomes (conversions) at the given rate."""
    return Moments(n=n, sum=n * rate, sumsq=n * rate)


def reasons(d: Decision) -> list[Reason]:
    return [e.reason for e in d.events]


def event(d: Decision, reason: Reason) -> rollout.Event:
    found = [e for e in d.events if e.reason is reason]
    assert found, f"no {reason} event in {d.events}"
    return found[0]


def weight(status: ModelDeploymentStatus) -> float | None:
    c = status.routing.candidate
    return None if c is None else c.weight


@dataclass
class World:
    """The controller loop around decide(): status and spec write-back, generations."""

    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    generation: int = 1
    now: datetime = T0
    last: Decision | None = None

    def tick(
        self,
        s: float | None = None,
        *,
        ready: tuple[str, ...] = READY,
        m: Metrics | None = None,
        error: str | None = None,
        action: Action | None = None,
    ) -> Decision:
        """Decide at T0 + s (default: now); metrics are passed only when an analysis is due."""
        if s is not None:
            self.now = at(s)
        due = analysis_due(self.spec, self.status, self.now)
        o = obs(*ready, m=m if due is not None else None, error=error if due else None)
        d = decide(self.spec, self.status, o, self.now, generation=self.generation, action=action)
        self.status = d.status
        if d.spec is not None:
            self.spec, self.generation = d.spec, self.generation + 1
        self.last = d
        return d

    def edit(self, **overrides: Any) -> None:
        """An operator edits the spec (the API server bumps metadata.generation)."""
        self.spec = spec(**overrides)
        self.generation += 1

    def due_at(self) -> float:
        at_ = next_analysis_at(self.spec, self.status)
        assert at_ is not None
        return (at_ - T0).total_seconds()

    def analyse(self, m: Metrics = HEALTHY, **kw: Any) -> Decision:
        """Jump to the next analysis and run it with these metrics."""
        return self.tick(self.due_at(), m=m, **kw)


def canary_at(step: int, *, failed: int = 0, **overrides: Any) -> World:
    """A canary that reached ``step`` through passing analyses, with ``failed`` failures."""
    w = World(spec(**overrides))
    w.tick(0)
    for _ in range(step):
        w.analyse()
    for _ in range(failed):
        w.analyse(metrics(error_rate=0.5))
    assert w.status.phase is Phase.PROGRESSING and w.status.step == step
    assert w.status.failed_checks == failed
    return w


# --- stable only ----------------------------------------------------------------------------


def test_stable_only_is_idle_and_routes_everything_to_stable() -> None:
    d = decide(spec(candidate=None), ModelDeploymentStatus(), obs("v1"), T0, generation=1)
    assert d.status.phase is Phase.IDLE
    assert d.status.routing == Routing(stable=Target(version="v1", url=URL["v1"]))
    assert d.status.message == "v1 serves all traffic"
    assert [(h.version, h.reason) for h in d.status.history] == [("v1", "serving as stable")]
    assert d.status.observed_generation == 1
    assert (d.spec, d.events, d.requeue_after) == (None, (), 60.0)


def test_stable_waits_for_its_server_before_any_routing() -> None:
    d = decide(spec(candidate=None), ModelDeploymentStatus(), obs(), T0)
    assert d.status.routing.stable is None
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)
    assert "waiting for v1's server" in d.status.message
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", Reason.WAITING_FOR_READY)


def test_stable_that_moved_is_followed_without_an_event() -> None:
    w = World(spec(candidate=None))
    w.tick(0, ready=("v1",))
    moved = Observation(endpoints={"v1": "http://10.0.0.9:3000"})
    d = decide(w.spec, w.status, moved, at(5), generation=1)
    assert d.status.routing.stable == Target(version="v1", url="http://10.0.0.9:3000")
    assert d.events == ()
    assert len(d.status.history) == 1


@pytest.mark.parametrize(
    ("new", "history", "why"),
    [
        ("v0", ["v0"], "rolled back from v1"),  # `turnout rollback --to v0`
        ("v9", [], "replaced v1 (spec.stable edited)"),
    ],
)
def test_edited_stable_takes_traffic_only_once_ready(
    new: str, history: list[str], why: str
) -> None:
    past = [HistoryEntry(version=v, promoted_at=T0, reason="earlier") for v in history]
    w = World(spec(candidate=None), ModelDeploymentStatus(history=past))
    w.tick(0, ready=("v1",))
    assert [h.version for h in w.status.history] == ["v1", *history]
    w.edit(stable=new, candidate=None)

    waiting = w.tick(10, ready=("v1",))
    assert w.status.routing.stable == Target(version="v1", url=URL["v1"])
    assert waiting.events == ()
    assert waiting.requeue_after == pytest.approx(rollout.RETRY_S)
    assert f"waiting for {new}'s server" in w.status.message
    assert "v1 keeps serving" in w.status.message

    switched = w.tick(12, ready=("v1", new))
    assert w.status.routing.stable == Target(version=new, url=URL[new])
    assert (w.status.history[0].version, w.status.history[0].reason) == (new, why)
    assert w.status.history[0].promoted_at == at(12)
    assert [h.version for h in w.status.history[1:]] == ["v1", *history]
    changed = event(switched, Reason.STABLE_CHANGED)
    assert changed.message == f"stable v1 -> {new}: {why}"
    assert switched.spec is None


# --- canary ---------------------------------------------------------------------------------


def test_new_candidate_waits_for_its_server_with_no_weight() -> None:
    w = World(spec())
    d = w.tick(0, ready=("v1",))
    assert w.status.phase is Phase.PROGRESSING
    assert w.status.rollout_version == "v2"
    assert w.status.routing.candidate is None
    assert w.status.routing.stable == Target(version="v1", url=URL["v1"])
    assert "waiting for v2's server" in w.status.message
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)
    assert reasons(d) == [Reason.STARTED]
    assert analysis_due(w.spec, w.status, at(3600)) is None
    # Still not ready: no second Started event.
    assert reasons(w.tick(2, ready=("v1",))) == []


def test_first_step_sets_the_first_weight_once_ready() -> None:
    w = World(spec())
    w.tick(0, ready=("v1",))
    d = w.tick(4)
    assert w.status.phase is Phase.PROGRESSING
    assert w.status.routing.candidate is not None
    assert (w.status.routing.candidate.version, w.status.routing.candidate.url) == (
        "v2",
        URL["v2"],
    )
    assert weight(w.status) == 5
    assert w.status.message == "canary v2 at 5%"
    assert w.status.step_started_at == at(4)
    assert d.requeue_after == 60
    assert w.due_at() == 64


@pytest.mark.parametrize("elapsed", [0, 1, 20, 59.5])
def test_nothing_changes_before_the_interval(elapsed: float) -> None:
    w = canary_at(0)
    before = w.status
    assert analysis_due(w.spec, before, at(elapsed)) is None
    d = decide(w.spec, before, obs(*READY, m=HEALTHY), at(elapsed), generation=1)
    assert d.status == before
    assert d.events == ()
    assert d.requeue_after == pytest.approx(60 - elapsed)


@pytest.mark.parametrize(
    ("step", "before", "after", "message"),
    [
        (0, 5, 25, "canary v2 at 25% (step 2 of 3)"),
        (1, 25, 50, "canary v2 at 50% (step 3 of 3)"),
    ],
)
def test_passing_analysis_moves_to_the_next_weight(
    step: int, before: float, after: float, message: str
) -> None:
    w = canary_at(step)
    d = w.analyse(metrics(error_rate=0.002, p99=42, stable_p99=40, psi=0.03))
    assert w.status.phase is Phase.PROGRESSING
    assert (w.status.step, weight(w.status), w.status.message) == (step + 1, after, message)
    passed = event(d, Reason.STEP_PASSED)
    assert passed.type == "Normal"
    assert passed.message == (
        f"v2 {before:g}% -> {after:g}%: errorRate 0.002 <= 0.01, latencyP99Ms 42 <= 100, "
        "latencyRatio 1.05 <= 1.5, predictionPsi 0.03 <= 0.25"
    )
    assert [(c.name, c.value, c.passed) for c in w.status.checks] == [
        ("errorRate", 0.002, True),
        ("latencyP99Ms", 42, True),
        ("latencyRatio", pytest.approx(1.05), True),
        ("predictionPsi", 0.03, True),
    ]
    assert d.requeue_after == 60
    assert d.spec is None


def test_passing_the_last_step_promotes() -> None:
    w = canary_at(2)
    old_spec = w.spec
    d = w.analyse()
    assert d.status.phase is Phase.PROMOTED
    assert d.spec == old_spec.model_copy(update={"stable": old_spec.candidate, "candidate": None})
    assert d.status.routing.stable == Target(version="v2", url=URL["v2"])
    assert d.status.routing.candidate is None
    assert [h.version for h in d.status.history] == ["v2", "v1"]
    assert d.status.history[0].image == "registry/fraud:v2"
    assert d.status.history[0].promoted_at == w.now
    promoted = event(d, Reason.PROMOTED)
    assert promoted.type == "Normal"
    assert "v2 promoted over v1: passed 3 canary steps (errorRate 0.001 <= 0.01" in (
        promoted.message
    )
    # The written-back spec settles: v2 alone, nothing more to do, v1's server can go.
    settled = w.tick()
    assert settled.events == ()
    assert w.status.phase is Phase.PROMOTED
    assert served_versions(w.spec, w.status) == {"v2"}


@pytest.mark.parametrize(
    ("m", "failing"),
    [
        (metrics(error_rate=0.05), "errorRate 0.05 > 0.01"),
        (metrics(error_rate=None), "errorRate no data > 0.01"),
        (metrics(p99=250), "latencyP99Ms 250 > 100"),
        (metrics(p99=90, stable_p99=30), "latencyRatio 3 > 1.5"),
        (metrics(psi=0.4), "predictionPsi 0.4 > 0.25"),
    ],
)
def test_failing_check_counts_and_keeps_the_weight(m: Metrics, failing: str) -> None:
    w = canary_at(1)
    d = w.analyse(m)
    assert w.status.phase is Phase.PROGRESSING
    assert (w.status.step, weight(w.status), w.status.failed_checks) == (1, 25, 1)
    failed = event(d, Reason.CHECKS_FAILED)
    assert failed.type == "Warning"
    assert failed.message == f"analysis failed (1 of 2): {failing}"
    assert w.status.message == failed.message
    assert d.spec is None
    # Judged again a whole interval later, at the same weight.
    assert d.requeue_after == 60
    assert w.due_at() == (w.now - T0).total_seconds() + 60


@pytest.mark.parametrize(
    ("p99", "stable_p99", "passed"),
    [
        (6.0, 3.0, True),  # twice as slow, but only 3 ms: within latencyToleranceMs (5)
        (9.0, 3.0, False),  # 6 ms slower and 3x: a real slowdown
        (40.0, 30.0, True),  # 10 ms slower but only 1.33x
    ],
)
def test_latency_ratio_needs_both_ratio_and_milliseconds(
    p99: float, stable_p99: float, passed: bool
) -> None:
    w = canary_at(1)
    w.analyse(metrics(p99=p99, stable_p99=stable_p99))
    check = next(c for c in w.status.checks if c.name == "latencyRatio")
    assert check.value == pytest.approx(p99 / stable_p99)
    assert check.passed is passed
    assert (w.status.failed_checks == 0) is passed


def test_reaching_max_failed_checks_rolls_back() -> None:
    w = canary_at(1, failed=1)
    d = w.analyse(metrics(error_rate=0.2))
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.status.routing.candidate is None
    assert d.status.routing.stable == Target(version="v1", url=URL["v1"])
    assert d.status.failed_checks == 2
    assert d.spec is not None and d.spec.candidate is None and d.spec.stable.version == "v1"
    back = event(d, Reason.ROLLED_BACK)
    assert back.type == "Warning"
    assert back.message == (
        "v2 rolled back; v1 serves all traffic: 2 failed analyses (maxFailedChecks 2): "
        "errorRate 0.2 > 0.01"
    )
    assert [h.version for h in d.status.history] == ["v1"]
    assert analysis_due(w.spec, w.status, at(10_000)) is None


def test_failures_need_not_be_in_a_row() -> None:
    w = canary_at(0)
    w.analyse(metrics(error_rate=0.5))
    w.analyse()  # passes: 5 -> 25, the failure still counts
    assert (weight(w.status), w.status.failed_checks) == (25, 1)
    d = w.analyse(metrics(p99=500))
    assert d.status.phase is Phase.ROLLED_BACK


@pytest.mark.parametrize(
    ("m", "error", "reason", "words"),
    [
        (metrics(requests=7), None, Reason.INSUFFICIENT_DATA, "7 v2 requests in the window"),
        (metrics(requests=0), None, Reason.INSUFFICIENT_DATA, "needs 20 (analysis.minRequests)"),
        (None, "prometheus: connection refused", Reason.METRICS_UNAVAILABLE, "connection refused"),
        (None, None, Reason.METRICS_UNAVAILABLE, "no metrics were read"),
    ],
)
def test_an_analysis_that_cannot_judge_holds_and_retries_soon(
    m: Metrics | None, error: str | None, reason: Reason, words: str
) -> None:
    w = canary_at(1)
    before = w.status
    due = w.due_at()
    d = w.tick(due, m=m, error=error)
    assert w.status.phase is Phase.PROGRESSING
    assert (weight(w.status), w.status.step, w.status.failed_checks) == (25, 1, 0)
    assert w.status.routing == before.routing
    assert d.events == ()
    assert words in w.status.message
    analysis = next(c for c in w.status.conditions if c.type == "Analysis")
    assert (analysis.status, analysis.reason) == ("Unknown", reason)
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)
    assert w.due_at() == due + rollout.RETRY_S
    assert analysis_due(w.spec, w.status, at(due + 1)) is None
    # Retried two seconds later; with enough data it judges.
    assert analysis_due(w.spec, w.status, at(due + 2)) is not None
    d = w.tick(due + 2, m=HEALTHY)
    assert (reasons(d)[0], weight(w.status)) == (Reason.STEP_PASSED, 50)


@pytest.mark.parametrize(
    ("m", "names"),
    [
        (metrics(), ["errorRate", "latencyP99Ms"]),
        (metrics(stable_p99=0), ["errorRate", "latencyP99Ms"]),
        (metrics(stable_p99=35), ["errorRate", "latencyP99Ms", "latencyRatio"]),
        (metrics(p99=None, stable_p99=35), ["errorRate", "latencyP99Ms"]),
        (metrics(psi=0.1), ["errorRate", "latencyP99Ms", "predictionPsi"]),
        (
            metrics(stable_p99=35, psi=0.1),
            ["errorRate", "latencyP99Ms", "latencyRatio", "predictionPsi"],
        ),
    ],
)
def test_ratio_and_drift_checks_run_only_with_data(m: Metrics, names: list[str]) -> None:
    w = canary_at(0)
    w.analyse(m)
    assert [c.name for c in w.status.checks] == names


@pytest.mark.parametrize(
    ("analysis", "m", "passes"),
    [
        ({"maxErrorRate": 0.05}, metrics(error_rate=0.04), True),
        ({"maxErrorRate": 0.05}, metrics(error_rate=0.05), True),  # at the threshold passes
        ({"maxLatencyP99Ms": 30}, metrics(p99=40), False),
        ({"maxLatencyRatio": 2}, metrics(p99=70, stable_p99=40), True),
        ({"maxPredictionPsi": 0.05}, metrics(psi=0.1), False),
        ({"minRequests": 1000}, metrics(requests=999), None),  # holds: not enough data
    ],
)
def test_thresholds_come_from_spec_analysis(
    analysis: dict[str, Any], m: Metrics, passes: bool | None
) -> None:
    w = canary_at(0, analysis=analysis)
    d = w.analyse(m)
    expected = {True: [Reason.STEP_PASSED], False: [Reason.CHECKS_FAILED], None: []}[passes]
    assert reasons(d) == expected


# --- shadow ---------------------------------------------------------------------------------


def shadowing(**overrides: Any) -> World:
    w = World(spec(strategy="Shadow", **overrides))
    w.tick(0)
    assert w.status.phase is Phase.SHADOWING
    return w


GOOD_SHADOW = metrics(agreement=0.99, p99=45, stable_p99=40, psi=0.05)


def test_shadow_mirrors_without_candidate_weight() -> None:
    w = World(spec(strategy="Shadow"))
    d = w.tick(0)
    assert w.status.phase is Phase.SHADOWING
    assert w.status.routing.candidate is None
    shadow = w.status.routing.shadow
    assert shadow is not None
    assert (shadow.version, shadow.url, shadow.percent) == ("v2", URL["v2"], 50)
    assert w.status.message == "mirroring 50% of traffic to v2 for 10m"
    assert d.requeue_after == 600
    assert served_versions(w.spec, w.status) == {"v1", "v2"}
    query = analysis_due(w.spec, w.status, at(600))
    assert query == MetricsQuery("fraud", "v1", "v2", "shadow", 600.0)
    assert analysis_due(w.spec, w.status, at(599)) is None


@pytest.mark.parametrize(
    ("m", "failing"),
    [
        (metrics(agreement=0.99, error_rate=0.03), "shadowErrorRate 0.03 > 0.01"),
        (metrics(agreement=0.90), "shadowAgreement (same side of 0.5) 0.9 < 0.95"),
        (metrics(agreement=None), "shadowAgreement (same side of 0.5) no data < 0.95"),
        (metrics(agreement=0.99, p99=80, stable_p99=40), "latencyRatio 2 > 1.5"),
        (metrics(agreement=0.99, psi=0.3), "predictionPsi 0.3 > 0.25"),
    ],
)
def test_failing_shadow_gate_blocks_the_candidate(m: Metrics, failing: str) -> None:
    w = shadowing()
    d = w.analyse(m)
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.status.routing.candidate is None and d.status.routing.shadow is None
    assert d.spec is not None and d.spec.candidate is None
    blocked = event(d, Reason.SHADOW_BLOCKED)
    assert blocked.type == "Warning"
    assert f"shadow gate failed: {failing}" in blocked.message
    assert "v2 rolled back; v1 serves all traffic" in blocked.message
    assert [h.version for h in d.status.history] == ["v1"]


@pytest.mark.parametrize(
    ("comparison", "name"),
    [
        ({"type": "Binary", "threshold": 0.7}, "shadowAgreement (same side of 0.7)"),
        ({"type": "MultiClass"}, "shadowAgreement (top class)"),
        ({"type": "Regression", "tolerance": 0.05}, "shadowAgreement (within 0.05)"),
        ({"type": "Exact"}, "shadowAgreement (exact)"),
    ],
)
def test_the_agreement_check_says_what_agreement_means(
    comparison: dict[str, Any], name: str
) -> None:
    d = shadowing(comparison=comparison).analyse(metrics(agreement=0.9))
    assert [c.name for c in d.status.checks if c.name.startswith("shadowAgreement")] == [name]
    assert f"shadow gate failed: {name} 0.9 < 0.95" in event(d, Reason.SHADOW_BLOCKED).message


def test_shadow_gate_waits_for_enough_compared_rows() -> None:
    w = shadowing()
    d = w.analyse(metrics(agreement=1.0, compared=3))
    assert (w.status.phase, reasons(d)) == (Phase.SHADOWING, [])
    assert "analysis.minRequests" in w.status.message
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)


def test_passing_shadow_then_canary_starts_the_first_step_at_once() -> None:
    w = shadowing()
    d = w.analyse(GOOD_SHADOW)
    assert w.status.phase is Phase.PROGRESSING
    assert w.status.rollout_strategy is StrategyType.CANARY
    assert weight(w.status) == 5
    assert w.status.routing.shadow is None
    assert w.status.failed_checks == 0
    passed = event(d, Reason.SHADOW_PASSED)
    assert passed.message == (
        "shadow gate passed (shadowErrorRate 0.001 <= 0.01, "
        "shadowAgreement (same side of 0.5) 0.99 >= 0.95, "
        "latencyRatio 1.125 <= 1.5, predictionPsi 0.05 <= 0.25); canary begins"
    )
    assert d.spec is None
    assert d.requeue_after == 60
    # The canary analyses weighted traffic now, on its own interval.
    assert analysis_due(w.spec, w.status, w.now + timedelta(seconds=60)) == MetricsQuery(
        "fraud", "v1", "v2", "candidate", 60.0
    )
    w.analyse()
    w.analyse()
    assert w.analyse().status.phase is Phase.PROMOTED


def test_passing_shadow_then_promote_promotes() -> None:
    w = shadowing(shadow={"then": "Promote"})
    d = w.analyse(GOOD_SHADOW)
    assert d.status.phase is Phase.PROMOTED
    assert d.spec is not None
    assert (d.spec.stable.version, d.spec.candidate) == ("v2", None)
    assert d.status.routing == Routing(
        stable=Target(version="v2", url=URL["v2"]),
        sticky_header="x-user-id",
        salt=w.status.routing.salt,
    )
    assert reasons(d) == [Reason.SHADOW_PASSED]
    assert [h.version for h in d.status.history] == ["v2", "v1"]


def test_passing_shadow_then_stop_removes_the_candidate() -> None:
    w = shadowing(shadow={"then": "Stop"})
    d = w.analyse(GOOD_SHADOW)
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.spec is not None and d.spec.candidate is None
    assert d.status.routing.shadow is None and d.status.routing.candidate is None
    stop = event(d, Reason.SHADOW_PASSED)
    assert stop.type == "Normal"
    assert stop.message.endswith("; then: Stop")


def test_shadow_candidate_never_gets_weight_until_the_gate() -> None:
    w = shadowing()
    for s in (1, 60, 300, 599):
        w.tick(s)
        assert w.status.routing.candidate is None
        assert w.status.phase is Phase.SHADOWING


# --- A/B test -------------------------------------------------------------------------------


def experimenting(**ab: Any) -> World:
    w = World(spec(strategy="ABTest", ab=ab))
    w.tick(0)
    assert w.status.phase is Phase.EXPERIMENTING
    return w


def ab_metrics(stable: Moments, candidate: Moments) -> Metrics:
    return metrics(ab={"stable": stable, "candidate": candidate})


def test_ab_test_splits_sticky_keys() -> None:
    w = World(spec(strategy="ABTest", ab={"split": 30, "stickyHeader": "X-Session"}))
    d = w.tick(0)
    assert w.status.phase is Phase.EXPERIMENTING
    assert weight(w.status) == 30
    assert w.status.routing.sticky_header == "x-session"
    assert w.status.message == "A/B test: 30% of x-session keys on v2"
    assert w.status.experiment is not None and w.status.experiment.metric == "conversion"
    assert d.requeue_after == 60
    # The analysis reads the outcomes of this experiment: this candidate under this salt.
    experiment = experiment_id(model="fraud", candidate="v2", salt=w.status.routing.salt)
    assert analysis_due(w.spec, w.status, at(60)) == MetricsQuery(
        "fraud", "v1", "v2", "candidate", 60.0, experiment=experiment
    )
    assert w.status.routing.salt.startswith("fraud/v2/")


def test_ab_test_below_min_samples_is_pending() -> None:
    w = experimenting()
    d = w.analyse(ab_metrics(arm(500, 0.10), arm(480, 0.30)))
    assert w.status.phase is Phase.EXPERIMENTING
    assert d.events == ()
    exp = w.status.experiment
    assert exp is not None
    assert (exp.decision, exp.p_value, exp.lift) == ("Pending", 1.0, None)
    assert exp.arms["stable"].n == 500 and exp.arms["candidate"].mean == pytest.approx(0.3)
    assert "480 per arm so far (decides from 1000)" in w.status.message
    assert d.requeue_after == 60
    assert w.due_at() == 120


def test_ab_guardrail_failures_count_only_in_a_row() -> None:
    """A long experiment must not die of noise spread over many looks."""
    w = experimenting()
    noisy = metrics(error_rate=0.05, ab={"stable": arm(10, 0.1), "candidate": arm(10, 0.1)})
    quiet = ab_metrics(arm(20, 0.1), arm(20, 0.1))
    for _ in range(3):
        w.analyse(noisy)
        assert w.status.failed_checks == 1
        w.analyse(quiet)
        assert w.status.failed_checks == 0
    assert w.status.phase is Phase.EXPERIMENTING
    w.analyse(noisy)
    w.analyse(noisy)
    assert w.status.phase is Phase.ROLLED_BACK


def test_ab_candidate_wins_and_is_promoted() -> None:
    w = experimenting()
    d = w.analyse(ab_metrics(arm(5000, 0.10), arm(5000, 0.15)))
    assert d.status.phase is Phase.PROMOTED
    assert d.spec is not None and d.spec.stable.version == "v2"
    won = event(d, Reason.EXPERIMENT_WON)
    assert "A/B test concluded for candidate: conversion stable 0.1 vs candidate 0.15" in (
        won.message
    )
    assert "lift +0.05" in won.message and "n=5000/5000" in won.message
    exp = d.status.experiment
    assert exp is not None
    assert exp.decision == "Candidate"
    assert exp.lift == pytest.approx(0.05)
    assert exp.relative_lift == pytest.approx(0.5)
    assert exp.p_value < 0.05
    assert exp.ci is not None and 0 < exp.ci[0] < 0.05 < exp.ci[1]
    assert d.status.history[0].version == "v2"


def test_ab_candidate_win_waits_for_the_operator_without_auto_promote() -> None:
    w = experimenting(autoPromote=False)
    win = ab_metrics(arm(5000, 0.10), arm(5000, 0.15))
    d = w.analyse(win)
    assert w.status.phase is Phase.EXPERIMENTING
    assert d.spec is None
    assert weight(w.status) == 50
    assert w.status.experiment is not None and w.status.experiment.decision == "Candidate"
    assert event(d, Reason.EXPERIMENT_WON).message.endswith("awaiting `turnout promote`")
    assert "autoPromote is off" in w.status.message
    # The next look does not repeat the event; the operator then promotes.
    assert w.analyse(win).events == ()
    promoted = w.tick(action=Action.PROMOTE)
    assert promoted.status.phase is Phase.PROMOTED and promoted.clear_action


def test_ab_stable_wins_and_the_candidate_is_rolled_back() -> None:
    w = experimenting()
    d = w.analyse(ab_metrics(arm(5000, 0.15), arm(5000, 0.10)))
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.status.routing.candidate is None
    assert d.spec is not None and d.spec.candidate is None
    lost = event(d, Reason.EXPERIMENT_LOST)
    assert lost.type == "Normal"
    assert "concluded for stable" in lost.message and "lift -0.05" in lost.message
    assert d.status.experiment is not None and d.status.experiment.decision == "Stable"


def test_ab_lower_is_better_flips_the_winner() -> None:
    w = experimenting(higherIsBetter=False, metric="chargebacks")
    d = w.analyse(ab_metrics(arm(5000, 0.15), arm(5000, 0.10)))
    assert d.status.phase is Phase.PROMOTED
    assert "chargebacks stable 0.15 vs candidate 0.1" in event(d, Reason.EXPERIMENT_WON).message


def test_ab_sample_ratio_mismatch_rolls_back() -> None:
    w = experimenting()
    d = w.analyse(ab_metrics(arm(5500, 0.10), arm(4500, 0.10)))
    assert d.status.phase is Phase.ROLLED_BACK
    srm = event(d, Reason.SRM)
    assert srm.type == "Warning"
    assert "5500 stable vs 4500 candidate outcomes for a 50/50 split" in srm.message
    exp = d.status.experiment
    assert exp is not None
    assert exp.decision == "Inconclusive"
    assert exp.srm_p_value is not None and exp.srm_p_value < 1e-10


def test_ab_matching_split_is_no_mismatch() -> None:
    w = experimenting(split=20)
    w.analyse(ab_metrics(arm(8000, 0.10), arm(2000, 0.10)))
    exp = w.status.experiment
    assert w.status.phase is Phase.EXPERIMENTING
    assert exp is not None and exp.srm_p_value == pytest.approx(1.0)


def test_ab_reaching_max_samples_without_decision_is_inconclusive() -> None:
    w = experimenting(minSamplesPerArm=1000, maxSamplesPerArm=2000)
    w.analyse(ab_metrics(arm(1500, 0.10), arm(1500, 0.10)))
    assert w.status.phase is Phase.EXPERIMENTING
    d = w.analyse(ab_metrics(arm(2000, 0.10), arm(2000, 0.101)))
    assert d.status.phase is Phase.ROLLED_BACK
    done = event(d, Reason.INCONCLUSIVE)
    assert "inconclusive after 2000 outcomes per arm" in done.message
    assert d.status.experiment is not None and d.status.experiment.decision == "Inconclusive"


def test_ab_guardrail_failure_counts_like_a_canary_check() -> None:
    w = experimenting()
    d = w.analyse(metrics(error_rate=0.2, ab={"stable": arm(50, 0.1), "candidate": arm(50, 0.1)}))
    assert w.status.phase is Phase.EXPERIMENTING
    assert w.status.failed_checks == 1
    assert (
        event(d, Reason.CHECKS_FAILED).message == "analysis failed (1 of 2): errorRate 0.2 > 0.01"
    )


def test_ab_p_value_never_increases_across_looks() -> None:
    w = experimenting(maxSamplesPerArm=100_000)
    # The evidence first builds, then the arms converge again: the p-value must not rebound.
    looks = [
        (arm(1000, 0.10), arm(1000, 0.13)),
        (arm(2000, 0.10), arm(2000, 0.12)),
        (arm(3000, 0.10), arm(3000, 0.11)),
        (arm(4000, 0.10), arm(4000, 0.102)),
        (arm(5000, 0.10), arm(5000, 0.10)),
    ]
    seen = []
    for s, c in looks:
        w.analyse(ab_metrics(s, c))
        assert w.status.phase is Phase.EXPERIMENTING
        assert w.status.experiment is not None
        seen.append(w.status.experiment.p_value)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == pytest.approx(0.5, abs=0.01)
    # Judged afresh, the last look alone carries no evidence: the status is what keeps p low.
    fresh = experimenting(maxSamplesPerArm=100_000)
    last = fresh.analyse(ab_metrics(*looks[-1])).status.experiment
    assert last is not None and last.p_value == 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1000, 1100), st.floats(0.05, 0.2), st.floats(0.05, 0.2)),
        min_size=2,
        max_size=6,
    )
)
def test_ab_p_value_is_monotone_for_any_looks(looks: list[tuple[int, float, float]]) -> None:
    w = experimenting(maxSamplesPerArm=1_000_000, alpha=0.001)
    n, p = 0, 1.0
    for extra, rs, rc in looks:
        n += extra
        d = w.analyse(ab_metrics(arm(n, rs), arm(n, rc)))
        exp = d.status.experiment
        assert exp is not None
        assert exp.p_value <= p
        p = exp.p_value
        if d.status.phase is not Phase.EXPERIMENTING:
            break


# --- manual control -------------------------------------------------------------------------


def test_removing_the_candidate_mid_rollout_rolls_back_at_once() -> None:
    w = canary_at(1)
    w.edit(candidate=None)
    d = w.tick(10)
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.status.routing.candidate is None
    assert d.spec is None  # already gone from the spec
    aborted = event(d, Reason.ABORTED)
    assert aborted.type == "Warning"
    assert aborted.message == "v2 rolled back; v1 serves all traffic: spec.candidate was removed"
    assert served_versions(w.spec, w.status) == {"v1"}


@pytest.mark.parametrize("strategy", ["Canary", "Shadow", "ABTest"])
def test_abort_action_rolls_back_and_is_cleared(strategy: str) -> None:
    w = World(spec(strategy=strategy))
    w.tick(0)
    d = w.tick(5, action=Action.ABORT)
    assert d.status.phase is Phase.ROLLED_BACK
    assert d.clear_action
    assert d.spec is not None and d.spec.candidate is None
    assert d.status.routing.candidate is None and d.status.routing.shadow is None
    assert event(d, Reason.ABORTED).message.endswith("aborted by an operator")


@pytest.mark.parametrize("strategy", ["Canary", "Shadow", "ABTest"])
def test_promote_action_promotes_now_and_is_cleared(strategy: str) -> None:
    w = World(spec(strategy=strategy))
    w.tick(0)
    d = w.tick(5, action=Action.PROMOTE)
    assert d.status.phase is Phase.PROMOTED
    assert d.clear_action
    assert d.spec is not None and (d.spec.stable.version, d.spec.candidate) == ("v2", None)
    assert d.status.routing.stable == Target(version="v2", url=URL["v2"])
    assert event(d, Reason.MANUAL_PROMOTE).message == (
        "v2 promoted over v1: promoted by an operator"
    )
    assert d.status.history[0].reason == "promoted by an operator"


def test_promote_action_waits_for_the_candidate_server() -> None:
    w = World(spec())
    d = w.tick(0, ready=("v1",), action=Action.PROMOTE)
    assert d.status.phase is Phase.PROGRESSING
    assert not d.clear_action
    assert d.spec is None
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)
    d = w.tick(2, action=Action.PROMOTE)
    assert d.status.phase is Phase.PROMOTED and d.clear_action


@pytest.mark.parametrize("action", [Action.PROMOTE, Action.ABORT])
def test_action_without_a_rollout_is_cleared_not_kept(action: Action) -> None:
    w = World(spec(candidate=None))
    d = w.tick(0, ready=("v1",), action=action)
    assert d.status.phase is Phase.IDLE
    assert d.spec is None
    assert d.clear_action  # otherwise it would fire on the next rollout


def test_pause_freezes_weights_and_stops_analysis() -> None:
    w = canary_at(1)
    routing = w.status.routing
    w.edit(paused=True)
    d = w.tick(30)
    assert w.status.phase is Phase.PAUSED
    assert w.status.routing == routing
    assert w.status.message == "paused at candidate weight 25%; `turnout resume` continues"
    assert event(d, Reason.PAUSED).type == "Normal"
    for s in (61, 600, 86_400):
        assert analysis_due(w.spec, w.status, at(s)) is None
        assert next_analysis_at(w.spec, w.status) is None
        d = w.tick(s, m=metrics(error_rate=0.9))
        assert (w.status.phase, w.status.routing, w.status.failed_checks) == (
            Phase.PAUSED,
            routing,
            0,
        )
        assert d.events == ()


def test_resume_restarts_the_interval() -> None:
    w = canary_at(1)
    w.edit(paused=True)
    w.tick(30)
    w.edit(paused=False)
    assert analysis_due(w.spec, w.status, at(1000)) is None  # decide would not analyse now
    d = w.tick(1000, m=HEALTHY)
    assert w.status.phase is Phase.PROGRESSING
    assert reasons(d) == [Reason.RESUMED]
    assert (weight(w.status), w.status.step) == (25, 1)
    assert w.status.step_started_at == at(1000)
    assert d.requeue_after == 60
    assert w.due_at() == 1060
    assert reasons(w.analyse()) == [Reason.STEP_PASSED]


def test_pause_before_the_candidate_is_ready_then_resume() -> None:
    w = World(spec(paused=True))
    w.tick(0)
    assert w.status.phase is Phase.PAUSED and w.status.routing.candidate is None
    w.edit(paused=False)
    w.tick(5)
    assert (w.status.phase, weight(w.status)) == (Phase.PROGRESSING, 5)


def test_abort_while_paused_rolls_back() -> None:
    w = canary_at(1)
    w.edit(paused=True)
    w.tick(30)
    d = w.tick(31, action=Action.ABORT)
    assert d.status.phase is Phase.ROLLED_BACK and d.clear_action


# --- restart semantics ----------------------------------------------------------------------


def rolled_back() -> World:
    w = canary_at(0, failed=1)
    w.analyse(metrics(error_rate=0.5))
    assert w.status.phase is Phase.ROLLED_BACK
    w.tick()  # the written-back spec (no candidate) settles
    return w


@pytest.mark.parametrize(
    ("phase", "candidate", "generation", "restarts"),
    [
        (Phase.ROLLED_BACK, "v2", 5, False),  # same spec as the one that rolled back
        (Phase.ROLLED_BACK, "v2", 4, False),  # an older spec
        (Phase.ROLLED_BACK, "v2", 6, True),  # edited since: deploy v2 again
        (Phase.ROLLED_BACK, "v3", 5, True),  # another version
        (Phase.PROGRESSING, "v2", 6, False),  # an edit mid-rollout does not restart it
        (Phase.PROGRESSING, "v3", 6, True),
    ],
)
def test_when_a_rollout_restarts(
    phase: Phase, candidate: str, generation: int, restarts: bool
) -> None:
    status = ModelDeploymentStatus(
        phase=phase,
        routing=Routing(stable=Target(version="v1", url=URL["v1"]), salt="fraud/v2/1"),
        rollout_version="v2",
        rollout_strategy=StrategyType.CANARY,
        step=1,
        step_started_at=at(0),
        failed_checks=1,
        history=[HistoryEntry(version="v1", promoted_at=T0, reason="serving as stable")],
        observed_generation=5,
    )
    d = decide(
        spec(candidate=candidate), status, obs("v1", "v2", "v3"), at(30), generation=generation
    )
    assert (Reason.STARTED in reasons(d)) == restarts
    if restarts:
        assert (d.status.rollout_version, d.status.failed_checks) == (candidate, 0)
        assert (d.status.phase, weight(d.status)) == (Phase.PROGRESSING, 5)
        assert d.status.routing.salt != "fraud/v2/1"
    else:
        assert (d.status.rollout_version, d.status.failed_checks) == ("v2", 1)
        assert d.status.phase is phase


def test_rolled_back_candidate_left_in_the_spec_does_not_restart() -> None:
    w = canary_at(0, failed=1)
    stale = w.spec  # the write-back that clears spec.candidate has not landed yet
    d = w.analyse(metrics(error_rate=0.5))
    for s in (120, 3600):
        again = decide(stale, d.status, obs(*READY), at(s), generation=w.generation - 1)
        assert again.status.phase is Phase.ROLLED_BACK
        assert again.status.routing.candidate is None
        assert again.events == ()
        # ... and the write-back is asked for again until it lands.
        assert again.spec == stale.model_copy(update={"candidate": None})


def test_same_candidate_after_rollback_restarts_only_on_a_new_generation() -> None:
    w = rolled_back()
    old_salt = w.status.routing.salt
    # The operator deploys v2 again (`turnout deploy`): a spec edit, a new generation.
    w.edit(candidate="v2")
    d = w.tick(7200)
    assert reasons(d) == [Reason.STARTED]
    assert (w.status.phase, weight(w.status), w.status.failed_checks) == (Phase.PROGRESSING, 5, 0)
    assert w.status.routing.salt != old_salt
    assert w.status.rollout_started_at == at(7200)


def test_different_candidate_version_starts_a_new_rollout_mid_rollout() -> None:
    w = canary_at(1, failed=1)
    old = w.status
    w.spec = spec(candidate="v3")
    w.generation += 1
    d = w.tick(500, ready=("v1", "v3"))
    assert reasons(d) == [Reason.STARTED]
    assert w.status.rollout_version == "v3"
    assert w.status.routing.candidate is not None
    assert (w.status.routing.candidate.version, weight(w.status)) == ("v3", 5)
    assert (w.status.step, w.status.failed_checks, w.status.checks) == (0, 0, [])
    assert w.status.routing.salt != old.routing.salt
    assert "v3" in w.status.routing.salt


def test_new_candidate_after_promotion_starts_over_the_new_stable() -> None:
    w = canary_at(2)
    w.analyse()
    w.tick()
    w.edit(stable="v2", candidate="v3")
    d = w.tick(1000, ready=("v2", "v3"))
    assert reasons(d) == [Reason.STARTED]
    assert event(d, Reason.STARTED).message == "Canary of v3 over stable v2 started"
    assert w.status.routing.stable == Target(version="v2", url=URL["v2"])
    assert weight(w.status) == 5


def test_promotion_holds_while_the_write_back_has_not_landed() -> None:
    w = canary_at(2)
    stale = w.spec
    d = w.analyse()
    # A reconcile with the old spec (stable v1, candidate v2) must not undo the promotion.
    again = decide(stale, d.status, obs(*READY), w.now + timedelta(seconds=1), generation=1)
    assert again.status.phase is Phase.PROMOTED
    assert again.status.routing.stable == Target(version="v2", url=URL["v2"])
    assert again.events == ()
    assert [h.version for h in again.status.history] == ["v2", "v1"]
    assert again.spec == d.spec, "the write-back is asked for again until it lands"


def test_promotion_waits_if_the_candidate_server_went_away() -> None:
    w = canary_at(2)
    d = w.tick(w.due_at(), ready=("v1",), m=HEALTHY)
    assert d.status.phase is Phase.PROGRESSING
    assert d.spec is None
    assert weight(d.status) == 50
    assert d.requeue_after == pytest.approx(rollout.RETRY_S)
    assert w.tick(w.due_at(), m=HEALTHY).status.phase is Phase.PROMOTED


# --- analysis_due ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "elapsed", "expected"),
    [
        ({}, 59, None),
        ({}, 60, MetricsQuery("fraud", "v1", "v2", "candidate", 60.0)),
        ({"analysis": {"window": "5m"}}, 60, MetricsQuery("fraud", "v1", "v2", "candidate", 300)),
        ({"canary": {"interval": "2m"}}, 60, None),
        ({"canary": {"interval": "2m"}}, 120, MetricsQuery("fraud", "v1", "v2", "candidate", 120)),
        ({"strategy": "Shadow"}, 60, None),
        ({"strategy": "Shadow"}, 600, MetricsQuery("fraud", "v1", "v2", "shadow", 600)),
        (
            {"strategy": "Shadow", "analysis": {"window": "1m"}},
            600,
            MetricsQuery("fraud", "v1", "v2", "shadow", 60),
        ),
        ({"strategy": "ABTest", "ab": {"interval": "30s"}}, 29, None),
        (
            {"strategy": "ABTest", "ab": {"interval": "30s"}},
            30,
            MetricsQuery(
                "fraud",
                "v1",
                "v2",
                "candidate",
                30,
                # The rollout started at T0: its salt, hence its experiment, says so.
                experiment=experiment_id(
                    model="fraud", candidate="v2", salt=f"fraud/v2/{int(T0.timestamp())}"
                ),
            ),
        ),
        ({"paused": True}, 3600, None),
    ],
)
def test_analysis_due_when_decide_would_analyse(
    overrides: dict[str, Any], elapsed: float, expected: MetricsQuery | None
) -> None:
    w = World(spec(**{k: v for k, v in overrides.items() if k != "paused"}))
    w.tick(0)
    if overrides.get("paused"):
        w.edit(**overrides)
        w.tick(1)
    query = analysis_due(w.spec, w.status, at(elapsed))
    assert query == expected
    # decide() agrees: it analyses (records last_analysis_at) exactly when a query was due.
    d = decide(w.spec, w.status, obs(*READY, m=HEALTHY), at(elapsed), generation=w.generation)
    analysed = d.status.last_analysis_at == at(elapsed)
    assert analysed == (expected is not None)


@pytest.mark.parametrize(
    "world",
    [
        lambda: World(spec(candidate=None)),
        lambda: World(spec()),  # candidate not ready yet
        lambda: rolled_back(),
    ],
    ids=["stable-only", "waiting-for-ready", "rolled-back"],
)
def test_no_analysis_without_a_running_rollout(world: Any) -> None:
    w: World = world()
    w.tick(ready=("v1",))
    assert analysis_due(w.spec, w.status, at(1_000_000)) is None


# --- what the controllers log and clear ------------------------------------------------------


def told(w: World, s: float | None = None, **kw: Any) -> list[tuple[str, str, str]]:
    """The log lines of one decision of ``w``."""
    before = w.status
    return list(rollout.narrate(before, w.tick(s, **kw)))


def test_each_decision_is_told_once_with_its_reason_and_numbers() -> None:
    w = World(spec(canary={"steps": [5, 25]}))
    assert told(w, 0, ready=()) == [
        ("Normal", "WaitingForReady", "waiting for v1's server to be ready")
    ]
    assert told(w, 1, ready=("v1",)) == [
        ("Normal", "Started", "Canary of v2 over stable v1 started")
    ]
    assert told(w, 2, ready=("v1",)) == [], "still waiting: nothing new to say"
    assert told(w, 3) == [("Normal", "Progressing", "canary v2 at 5%")]
    assert told(w, 30) == []
    thin = "3 v2 requests in the window; the analysis needs 20 (analysis.minRequests)"
    assert told(w, w.due_at(), m=metrics(requests=3)) == [("Normal", "InsufficientData", thin)]
    assert told(w, w.due_at(), m=metrics(requests=3)) == [], "the same hold is told once"
    (step,) = told(w, w.due_at(), m=HEALTHY)
    assert step[:2] == ("Normal", "StepPassed") and step[2].startswith("v2 5% -> 25%: errorRate")
    (failed,) = told(w, w.due_at(), m=metrics(error_rate=0.5))
    assert failed == ("Warning", "ChecksFailed", "analysis failed (1 of 2): errorRate 0.5 > 0.01")
    (promoted,) = told(w, w.due_at(), m=HEALTHY)
    assert promoted[:2] == ("Normal", "Promoted") and "v2 promoted over v1" in promoted[2]


def test_a_rollout_that_starts_and_sends_traffic_in_one_pass_tells_both() -> None:
    w = World(spec())
    assert told(w, 0) == [
        ("Normal", "Started", "Canary of v2 over stable v1 started"),
        ("Normal", "Progressing", "canary v2 at 5%"),
    ]


def test_a_rollback_is_one_warning_with_the_failing_numbers() -> None:
    w = canary_at(0, failed=1)
    (line,) = told(w, w.due_at(), m=metrics(error_rate=0.5))
    assert line[:2] == ("Warning", "RolledBack")
    assert "2 failed analyses (maxFailedChecks 2): errorRate 0.5 > 0.01" in line[2]


@pytest.mark.parametrize(
    ("annotation", "ready", "cleared"),
    [
        (None, READY, False),
        ("promote", READY, True),  # acted on
        ("promote", ("v1",), False),  # kept until the candidate can be promoted
        ("abort", ("v1",), True),
        ("bogus", READY, True),  # names no action: refused once, not on every pass
    ],
)
def test_the_action_annotation_is_cleared_once_acted_on_or_refused(
    annotation: str | None, ready: tuple[str, ...], cleared: bool
) -> None:
    w = World(spec())
    w.tick(0, ready=("v1",))
    d = w.tick(1, ready=ready, action=action_of(annotation))
    assert rollout.clears_action(annotation, d) is cleared


# --- properties -----------------------------------------------------------------------------

increasing_steps = st.lists(st.integers(1, 100), min_size=1, max_size=8, unique=True).map(sorted)


@settings(max_examples=60, deadline=None)
@given(steps=increasing_steps, delays=st.lists(st.floats(0, 300), min_size=8, max_size=8))
def test_passing_analyses_only_raise_the_weight_and_promote_after_the_last_step(
    steps: list[int], delays: list[float]
) -> None:
    w = World(spec(canary={"steps": steps}))
    w.tick(0)
    weights = [weight(w.status)]
    for i in range(len(steps)):
        assert w.status.phase is Phase.PROGRESSING
        w.tick(w.due_at() + delays[i], m=HEALTHY)
        weights.append(weight(w.status))
    assert w.status.phase is Phase.PROMOTED
    assert weights[:-1] == [float(s) for s in steps]
    assert weights[-1] is None
    assert w.spec.stable.version == "v2"


outcome = st.sampled_from(["pass", "fail", "thin", "down", "early", "pause", "resume"])


@settings(max_examples=150, deadline=None)
@given(steps=increasing_steps, max_failed=st.integers(1, 4), plan=st.lists(outcome, max_size=25))
def test_candidate_weight_is_always_a_step_or_absent(
    steps: list[int], max_failed: int, plan: list[str]
) -> None:
    w = World(spec(canary={"steps": steps, "maxFailedChecks": max_failed}))
    w.tick(0)
    highest = 0.0
    for what in plan:
        if w.status.phase in rollout.SETTLED:
            break
        if what == "pause" and not w.spec.paused:
            w.edit(canary={"steps": steps, "maxFailedChecks": max_failed}, paused=True)
            w.tick((w.now - T0).total_seconds() + 1)
        elif what == "resume" and w.spec.paused:
            w.edit(canary={"steps": steps, "maxFailedChecks": max_failed})
            w.tick((w.now - T0).total_seconds() + 1)
        elif what == "early":
            w.tick((w.now - T0).total_seconds() + 1, m=metrics(error_rate=1.0))
        elif what in ("pause", "resume") or w.spec.paused:
            w.tick((w.now - T0).total_seconds() + 30)
        else:
            m = {
                "pass": HEALTHY,
                "fail": metrics(error_rate=0.5),
                "thin": metrics(requests=1),
                "down": None,
            }[what]
            w.tick(w.due_at(), m=m, error="down" if m is None else None)
        current = weight(w.status)
        assert current is None or current in steps
        if current is not None:
            assert current >= highest
            highest = current
        assert w.status.failed_checks <= max_failed
        if w.status.phase is Phase.ROLLED_BACK:
            assert w.status.failed_checks == max_failed
    if w.status.phase is Phase.PROMOTED:
        assert w.status.routing.stable == Target(version="v2", url=URL["v2"])
    if w.status.phase in rollout.SETTLED:
        assert w.status.routing.candidate is None
