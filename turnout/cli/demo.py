"""`turnout demo`: scripted rollout stories against the real local platform.

Fifteen stories run in order on the processes `turnout up` runs (Prometheus, the controller
loop with its model servers, the router) under synthetic traffic, and each must end as it
should. Nine roll out the built-in fraud model:

1. a healthy candidate is canaried and promoted;
2. a candidate failing half its requests, 3. one answering NaN scores and 4. one three times
   slower than stable are rolled back, with the failing check's value in status and events;
5. a shadow whose scores disagree with stable's is blocked, never having served a user;
6. an A/B test with a real lift concludes for the candidate, which is promoted;
7. an A/B test without one ends Inconclusive (or for stable);
8. drifted data makes the retraining pipeline train a new version, its validation gate passes,
   and the candidate it proposes is canaried and promoted;
9. a retrained model failing the gate is neither registered nor proposed.

Six roll out a second model of another kind beside it, a user's digits classifier served
through the serving SDK (turnout/cli/demo_digits.py says which).

Every rollout goes through `turnout deploy`. The broken candidates are real: model versions
(a NaN weight, an inverted output layer) or the model server's fault settings in the version's
``env`` (TURNOUT_FAULT_ERROR_RATE, TURNOUT_FAULT_DELAY_MS). Short timings come only from spec
parameters (step interval, shadow duration, A/B sample sizes), never from special code paths.

The demo keeps its state in a TURNOUT_HOME of its own (a new ``$TURNOUT_HOME/demo/<time>-*``
by default), so `make up`'s deployments are never touched. Process settings and BentoML's
model store are read from the environment once per process, so ``run()`` plays the stories in
a child process (``python -m turnout.cli.demo``) that points both at the demo's home first.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from turnout.cli import demo_digits as digits
from turnout.cli.traffic import digits_samples
from turnout.core.spec import Phase, seconds

if TYPE_CHECKING:
    from training.train import TrainResult
    from turnout.cli.platform import LocalPlatform
    from turnout.cli.traffic import Traffic
    from turnout.io.deployments import DeploymentStore, State

MODEL = "fraud"
#: Healthy versions (seeds 0 and 1); each story's candidate is whichever is not stable.
HEALTHY = ("v1", "v2")
NAN_VERSION = "v3"  # v2's weights with one NaN: every score is NaN
INVERTED_VERSION = "v4"  # v1 with its output layer negated: scores p become 1 - p
TRAIN_ROWS = 20_000
CANARY_STEPS = "20,50"
#: Conversion rates of the A/B stories: a real lift of 0.15, and none.
BASE_RATE, LIFTED_RATE = 0.15, 0.30
AB_MIN_SAMPLES = 100
AB_MDE = 0.1
#: The no-lift test runs at a stricter alpha so a false "candidate won" stays under ~0.5 %.
NO_LIFT_ALPHA = 0.01
#: The deployment's policy, set once when the demo creates it. On a busy 2-core laptop two
#: healthy servers' p99s (4-6 ms) differ by up to 2x, beyond the default latencyRatio limit
#: of 1.5, and other processes' bursts fail an analysis now and then. So each analysis reads
#: 10 s of metrics, the ratio allowed is 2 and a rollout tolerates two failed analyses; the
#: slow candidate (3x stable's p99) and the failing ones fail every analysis regardless.
POLICY = (
    "--set",
    "analysis.window=10s",
    "--set",
    "analysis.maxLatencyRatio=2",
    "--max-failed-checks",
    "3",
)
STORY_DEADLINE_S = 90.0
AB_NO_LIFT_DEADLINE_S = 120.0
#: The retraining stories: data drifted by day 30, a version trained on it, and one that the
#: gate must refuse (no model reaches this ROC-AUC floor on this data).
RETRAINED, REFUSED = "v5", "v6"
DRIFT, DRIFT_DAY = "covariate=0.9,concept=0.3,mode=sudden", 30
IMPOSSIBLE_AUC = 0.999
RETRAIN_DEADLINE_S = 240.0


# --- the parent: a child process with the demo's home ----------------------------------


def run(*, home: Path | None, interval: str, rate: float) -> bool:
    """Play every story in a fresh child process; True when all of them behaved."""
    seconds(interval)  # a bad duration fails here, not minutes later
    if home is None:
        from turnout.io.settings import settings

        base = settings().home / "demo"
        base.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix=datetime.now().strftime("%Y%m%d-%H%M%S-"), dir=base))
    cmd = [sys.executable, "-m", "turnout.cli.demo", "--home", str(home.resolve())]
    cmd += ["--interval", interval, "--rate", str(rate)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # A SIGTERM for `turnout demo` goes to the child, which stops its processes in order.
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    while True:
        try:
            return proc.wait() == 0
        except KeyboardInterrupt:
            continue  # Ctrl-C reached the child too: wait while it stops the platform


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m turnout.cli.demo", description=__doc__)
    parser.add_argument("--home", type=Path, required=True, help="the demo's TURNOUT_HOME")
    parser.add_argument("--interval", default="3s", help="canary step / A/B look")
    parser.add_argument("--rate", type=float, default=60.0, help="synthetic requests per second")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    # Before anything reads the settings or imports bentoml: both read the environment once.
    os.environ["TURNOUT_HOME"] = str(home)
    os.environ["BENTOML_HOME"] = str(home / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from turnout.io.settings import settings

    settings.cache_clear()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        ok = play(home=home, interval=args.interval, rate=args.rate)
    except KeyboardInterrupt:
        click.echo("interrupted; the platform was stopped")
        sys.exit(130)
    sys.exit(0 if ok else 1)


def _terminate(*_: object) -> None:
    """SIGTERM: unwind once through play()'s cleanup. A second SIGTERM (a process group's
    signal and the parent's forwarded copy both arrive) must not cut that cleanup short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


# --- stories ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    passed: bool
    #: What happened, with the numbers that show it.
    outcome: str


@dataclass(frozen=True)
class Story:
    title: str
    expected: str
    play: Callable[[Demo], Verdict]
    deadline_s: float = STORY_DEADLINE_S
    #: The ModelDeployment the story rolls out.
    model: str = MODEL


@dataclass(frozen=True)
class Result:
    story: Story
    verdict: Verdict
    seconds: float


class StoryTimeout(Exception):
    pass


class Demo:
    """The running platform and what the stories do with it."""

    def __init__(
        self,
        *,
        store: DeploymentStore,
        platform: LocalPlatform,
        traffic: Traffic,
        interval: str,
        deadline_s: float,
        model: str = MODEL,
        healthy: tuple[str, str] = HEALTHY,
        others: dict[str, Traffic] | None = None,
    ) -> None:
        self.store = store
        self.platform = platform
        self.traffic = traffic
        self.interval = interval
        self.deadline = time.monotonic() + deadline_s
        self.model = model
        self.healthy = healthy
        #: Traffic for the other models behind the same router, by model.
        self.others = others or {}

    def of(self, model: str, healthy: tuple[str, str]) -> Demo:
        """The same platform, playing a story of another model (with that model's traffic)."""
        demo = Demo(
            store=self.store,
            platform=self.platform,
            traffic=self.others[model],
            interval=self.interval,
            deadline_s=0,
            model=model,
            healthy=healthy,
        )
        demo.deadline = self.deadline
        return demo

    def stable(self) -> str:
        state = self.store.state(self.model)
        assert state.spec is not None
        return state.spec.stable.version

    def healthy_candidate(self) -> str:
        return next(v for v in self.healthy if v != self.stable())

    def deploy(self, version: str, *options: str) -> datetime:
        """`turnout deploy VERSION`; returns when the rollout was asked for."""
        since = datetime.now(UTC)
        run_turnout("deploy", self.model, "--version", version, *options)
        return since

    def finish(self, version: str, since: datetime) -> State:
        """Wait until the rollout of ``version`` asked for at ``since`` has ended (settled
        phase, no candidate left in the spec), printing each change of phase and message."""
        from turnout.core.rollout import SETTLED

        start, seen = time.monotonic(), None
        while True:
            state = self.store.state(self.model)
            st = state.status
            now = (st.phase.value, st.message)
            started = st.rollout_started_at
            mine = st.rollout_version == version and started is not None and started >= since
            if mine and now != seen:
                click.echo(f"  {time.monotonic() - start:5.1f}s  {st.phase.value:<13} {st.message}")
                seen = now
            ended = st.phase in SETTLED and state.spec is not None and state.spec.candidate is None
            if mine and ended:
                return state
            if time.monotonic() > self.deadline:
                raise StoryTimeout(f"still {st.phase.value} at the deadline: {st.message}")
            time.sleep(0.25)

    def events(self, since: datetime) -> list[dict[str, str]]:
        return [
            e
            for r in self.store.records(self.model)
            if datetime.fromisoformat(r["at"]) >= since
            for e in r["events"]
        ]

    def canary(self, version: str, *options: str) -> tuple[State, datetime]:
        steps = ["--strategy", "canary", "--steps", CANARY_STEPS, "--interval", self.interval]
        since = self.deploy(version, *steps, *options)
        return self.finish(version, since), since

    def broken(self, version: str, checks: set[str], *options: str) -> Verdict:
        """Canary a broken candidate: it must be rolled back with one of ``checks`` failing
        (value in status.checks) and a Warning event naming that check."""
        state, since = self.canary(version, *options)
        st = state.status
        failing = [c for c in st.checks if not c.passed and c.name in checks]
        warned = [
            e
            for e in self.events(since)
            if e["type"] == "Warning" and any(c.name in e["message"] for c in failing)
        ]
        numbers = ", ".join(f"{c.name} {_num(c.value)} > {c.threshold:g}" for c in failing)
        passed = st.phase is Phase.ROLLED_BACK and bool(failing) and bool(warned)
        outcome = f"{st.phase.value}: {numbers or 'no failing ' + '/'.join(sorted(checks))}"
        if failing and not warned:
            outcome += " (but no Warning event names it)"
        return Verdict(passed, outcome)


def healthy_canary(demo: Demo) -> Verdict:
    old, version = demo.stable(), demo.healthy_candidate()
    state, _ = demo.canary(version)
    st = state.status
    stable = st.routing.stable.version if st.routing.stable else "-"
    if st.phase is Phase.PROMOTED and stable == version:
        checks = ", ".join(f"{c.name} {_num(c.value)}" for c in st.checks)
        return Verdict(True, f"{st.phase.value}: {version} over {old} ({checks})")
    return Verdict(False, f"{st.phase.value}: {st.message}")


def errors(demo: Demo) -> Verdict:
    env = "TURNOUT_FAULT_ERROR_RATE=0.5"
    return demo.broken(demo.healthy_candidate(), {"errorRate"}, "--env", env)


def nan_scores(demo: Demo) -> Verdict:
    return demo.broken(NAN_VERSION, {"errorRate"})


def slow(demo: Demo) -> Verdict:
    """At least three times stable's latency: a delay of three times stable's p99 (at least
    5 ms), so that a busy machine, which raises stable's p99 between the measurement here and
    the analysis, still leaves the ratio above the limit of 2."""
    stable = demo.store.state(MODEL).status.routing.stable
    assert stable is not None
    p99, how = _stable_p99_ms(demo.platform, stable.version, stable.url)
    delay = max(5, math.ceil(3 * p99))
    click.echo(f"  stable {stable.version} p99 {p99:.1f} ms ({how}): candidate delay {delay} ms")
    env = f"TURNOUT_FAULT_DELAY_MS={delay}"
    return demo.broken(demo.healthy_candidate(), {"latencyRatio", "latencyP99Ms"}, "--env", env)


def divergent_shadow(demo: Demo) -> Verdict:
    duration = f"{2 * seconds(demo.interval):g}s"
    options = ["--strategy", "shadow", "--duration", duration, "--then", "Canary"]
    options += ["--interval", demo.interval]
    since = demo.deploy(INVERTED_VERSION, *options)
    st = demo.finish(INVERTED_VERSION, since).status
    blocked = [e for e in demo.events(since) if e["reason"] == "ShadowBlocked"]
    agreement = next((c for c in st.checks if c.name.startswith("shadowAgreement")), None)
    served = demo.traffic.counts.served_by(INVERTED_VERSION)
    passed = (
        st.phase is Phase.ROLLED_BACK
        and bool(blocked)
        and agreement is not None
        and not agreement.passed
        and served == 0
    )
    why = "ShadowBlocked" if blocked else "no ShadowBlocked event"
    value = (
        f"shadowAgreement {_num(agreement.value)} < {agreement.threshold:g}"
        if agreement is not None
        else "no shadowAgreement check"
    )
    return Verdict(passed, f"{st.phase.value} ({why}): {value}; users served by it: {served}")


def ab_lift(demo: Demo) -> Verdict:
    from turnout.cli.traffic import conversion

    version = demo.healthy_candidate()
    demo.traffic.set_outcome(conversion({version: LIFTED_RATE}, BASE_RATE))
    click.echo(f"  conversion: {version} {LIFTED_RATE}, others {BASE_RATE}")
    return _ab(demo, version, expected={"CandidateWon"}, phase=Phase.PROMOTED)


def ab_no_lift(demo: Demo) -> Verdict:
    from turnout.cli.traffic import conversion
    from turnout.core import stats

    version = demo.healthy_candidate()
    demo.traffic.set_outcome(conversion({}, BASE_RATE))
    planned = stats.sample_size_per_arm(
        sd=stats.proportion_sd(BASE_RATE), mde=AB_MDE, alpha=NO_LIFT_ALPHA
    )
    most = math.ceil(stats.MSPRT_MAX_SAMPLE_FACTOR * planned)
    click.echo(f"  conversion: {BASE_RATE} for every version; at most {most} outcomes per arm")
    options = ["--max-samples", str(most), "--set", f"strategy.abTest.alpha={NO_LIFT_ALPHA}"]
    return _ab(
        demo,
        version,
        *options,
        expected={"Inconclusive", "StableWon"},
        phase=Phase.ROLLED_BACK,
    )


def _ab(demo: Demo, version: str, *options: str, expected: set[str], phase: Phase) -> Verdict:
    try:
        since = demo.deploy(
            version,
            "--strategy",
            "abtest",
            "--split",
            "50",
            "--min-samples",
            str(AB_MIN_SAMPLES),
            "--mde",
            str(AB_MDE),
            "--interval",
            demo.interval,
            *options,
        )
        st = demo.finish(version, since).status
    finally:
        demo.traffic.set_outcome(None)
    endings = [e["reason"] for e in demo.events(since) if e["reason"] in _AB_ENDINGS]
    ending = endings[-1] if endings else "no ending event"
    passed = st.phase is phase and ending in expected
    if ending == "RolledBack":  # a guardrail, not the test, ended it
        ending += " by " + ", ".join(c.name for c in st.checks if not c.passed)
    ex = st.experiment
    numbers = ""
    if ex is not None and len(ex.arms) == 2:
        s, c = ex.arms["stable"], ex.arms["candidate"]
        numbers = (
            f": conversion stable {_num(s.mean)} vs candidate {_num(c.mean)}, "
            f"n={s.n:.0f}/{c.n:.0f}, p={ex.p_value:.3g}"
        )
    return Verdict(passed, f"{st.phase.value} ({ending}){numbers}")


def retrain_on_drift(demo: Demo) -> Verdict:
    """Drift in the data → the retraining pipeline → its gate passes → the candidate it
    proposes is canaried by the controller like any other, and promoted."""
    import json

    canary_policy(demo)
    run_dir = demo.store.dir.parent / "runs" / f"drift-{RETRAINED}"
    since = datetime.now(UTC)
    code = run_pipeline(run_dir, f"version={RETRAINED}", f"drift={DRIFT}", f"day={DRIFT_DAY}")
    if code != 0:
        return Verdict(False, f"the pipeline failed (exit {code}); see {run_dir}")
    drift = json.loads((run_dir / "check-drift.json").read_text())
    gate = json.loads((run_dir / "validate.json").read_text())
    state = demo.finish(RETRAINED, since)
    st = state.status
    stable = st.routing.stable.version if st.routing.stable else "-"
    said = (
        f"max PSI {drift['max_psi']:.3g} ({drift['worst']}) >= {drift['threshold']:g}, "
        f"gate {gate['checks']} checks passed; {st.phase.value}: {stable} serves"
    )
    return Verdict(st.phase is Phase.PROMOTED and stable == RETRAINED, said)


def gate_refuses(demo: Demo) -> Verdict:
    """A retrained model that fails the validation gate is never registered nor proposed."""
    import json

    from training import store

    run_dir = demo.store.dir.parent / "runs" / f"gate-{REFUSED}"
    code = run_pipeline(
        run_dir, f"version={REFUSED}", "force=true", f"gate=min_roc_auc={IMPOSSIBLE_AUC}"
    )
    spec = demo.store.load(MODEL).spec
    proposed = spec.candidate is not None and spec.candidate.version == REFUSED
    registered = store.exists(f"{MODEL}:{REFUSED}")
    gate = json.loads((run_dir / "validate.json").read_text())
    why = "; ".join(gate["failed"]) or "no failed check"
    passed = code != 0 and not gate["passed"] and not proposed and not registered
    return Verdict(
        passed,
        f"exit {code}, {why}; proposed: {'yes' if proposed else 'no'}, "
        f"registered: {'yes' if registered else 'no'}",
    )


def canary_policy(demo: Demo) -> None:
    """Candidates the pipeline proposes are rolled out by the deployment's strategy."""
    from turnout.core.spec import ModelDeployment, StrategyType

    def canary(md: ModelDeployment) -> ModelDeployment:
        strategy = md.spec.strategy.model_copy(
            update={
                "type": StrategyType.CANARY,
                "canary": md.spec.strategy.canary.model_copy(
                    update={
                        "steps": [float(w) for w in CANARY_STEPS.split(",")],
                        "interval": demo.interval,
                    }
                ),
            }
        )
        return md.model_copy(update={"spec": md.spec.model_copy(update={"strategy": strategy})})

    demo.store.update(demo.model, canary)
    click.echo(f"  {demo.model}'s strategy for proposed candidates: canary {CANARY_STEPS}")


def run_pipeline(run_dir: Path, *params: str) -> int:
    """`turnout pipeline run retrain` as a user runs it; its exit code."""
    args = ["pipeline", "run", "retrain", "--run-dir", str(run_dir)]
    defaults: tuple[str, ...] = (f"model={MODEL}", f"rows={TRAIN_ROWS}")
    if any(p.startswith("model=") for p in params):  # another model's run: its own data
        defaults = ()
    args += [a for p in (*defaults, *params) for a in ("-p", p)]
    click.echo(f"$ turnout {' '.join(args)}")
    done = subprocess.run([sys.executable, "-m", "turnout", *args], check=False)
    return done.returncode


_AB_ENDINGS = {"CandidateWon", "StableWon", "Inconclusive", "SampleRatioMismatch", "RolledBack"}

STORIES = (
    Story("healthy canary", "Promoted", healthy_canary),
    Story("errors", "RolledBack, errorRate failing", errors),
    Story("NaN scores", "RolledBack, errorRate failing", nan_scores),
    Story("3x latency", "RolledBack, latency failing", slow),
    Story("divergent shadow", "RolledBack (ShadowBlocked), never served", divergent_shadow),
    Story("A/B with lift", "Promoted (CandidateWon)", ab_lift),
    Story(
        "A/B without lift",
        "RolledBack (Inconclusive or StableWon)",
        ab_no_lift,
        deadline_s=AB_NO_LIFT_DEADLINE_S,
    ),
    Story(
        "drift, retrain",
        "gate passed, proposed, Promoted",
        retrain_on_drift,
        deadline_s=RETRAIN_DEADLINE_S,
    ),
    Story(
        "gate refuses",
        "never registered nor proposed",
        gate_refuses,
        deadline_s=RETRAIN_DEADLINE_S,
    ),
    Story("digits over v2", "answers JSON and binary", digits.served_on_v2, model=digits.DIGITS),
    Story("digits canary", "Promoted", digits.canary, model=digits.DIGITS),
    Story(
        "digits confused",
        "RolledBack, top class disagrees, never served",
        digits.confused_shadow,
        model=digits.DIGITS,
    ),
    Story(
        "digits shuffled A/B",
        "RolledBack (StableWon) on feedback",
        digits.shuffled_ab,
        model=digits.DIGITS,
        deadline_s=AB_NO_LIFT_DEADLINE_S,
    ),
    Story(
        "digits retrain",
        "its own gate passed, proposed, Promoted",
        digits.retrain,
        model=digits.DIGITS,
        deadline_s=RETRAIN_DEADLINE_S,
    ),
    Story("digits batch", "a file of images scored", digits.batch, model=digits.DIGITS),
)


# --- the child: models, platform, stories, summary ------------------------------------------


def play(*, home: Path, interval: str, rate: float) -> bool:
    from turnout.cli.platform import LocalPlatform
    from turnout.cli.traffic import Traffic
    from turnout.io.deployments import DeploymentStore
    from turnout.io.processes import free_port

    begun = time.monotonic()
    click.echo(f"turnout demo: state in {home}\n")
    _ensure_models()
    digits.ensure_models()
    store = DeploymentStore(home)
    if MODEL not in store.names():
        run_turnout("deploy", MODEL, "--version", HEALTHY[0], *POLICY)
    if digits.DIGITS not in store.names():
        run_turnout("deploy", digits.DIGITS, "--version", "v1", *digits.deploy_args(), *POLICY)
    platform = LocalPlatform(home, port=free_port())
    traffic = digit_traffic = None
    results: list[Result] = []
    try:
        click.echo("starting Prometheus, the controller (it starts the model servers), the router")
        platform.start()
        click.echo(f"the stable endpoint is {platform.url}; {rate:g} requests/s from now on\n")
        key = platform.api_key
        traffic = Traffic(platform.url, MODEL, rate=rate, api_key=key).start()
        digit_traffic = Traffic(
            platform.url,
            digits.DIGITS,
            rate=rate / 2,
            samples=digits_samples(),
            seed=1,
            api_key=key,
        ).start()
        others = {digits.DIGITS: digit_traffic}
        for number, story in enumerate(STORIES, 1):
            results.append(_tell(number, story, store, platform, traffic, interval, others))
    finally:
        # Stopping takes seconds: a second Ctrl-C must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for running in (traffic, digit_traffic):
            if running is not None:
                running.stop()
        click.echo("stopping the platform...")
        platform.stop()
    _summary(results, time.monotonic() - begun)
    click.echo(f"\nstate kept in {home}: TURNOUT_HOME={home} turnout report {MODEL}")
    return len(results) == len(STORIES) and all(r.verdict.passed for r in results)


def _tell(
    number: int,
    story: Story,
    store: DeploymentStore,
    platform: LocalPlatform,
    traffic: Traffic,
    interval: str,
    others: dict[str, Traffic],
) -> Result:
    click.echo(f"== {number}. {story.title}: expect {story.expected}")
    start = time.monotonic()
    demo = Demo(
        store=store,
        platform=platform,
        traffic=traffic,
        interval=interval,
        deadline_s=story.deadline_s,
        others=others,
    )
    try:
        verdict = story.play(demo)
    except Exception as exc:  # a story that broke is a failed story; the others still run
        verdict = Verdict(False, f"{type(exc).__name__}: {exc}")
    took = time.monotonic() - start
    run_turnout("status", story.model, quiet=True)
    word = "PASS" if verdict.passed else "FAIL"
    click.echo(f"{word} {number}. {story.title}: {verdict.outcome} ({took:.0f}s)\n")
    if not verdict.passed:
        _log_tail(platform.home / "logs" / "controller.log")
        _clear(store, story.model)
    return Result(story, verdict, took)


def _clear(store: DeploymentStore, model: str) -> None:
    """After a failed story: remove any candidate left, so the next story starts clean."""
    from turnout.core.rollout import SETTLED

    state = store.state(model)
    if state.spec is not None and state.spec.candidate is not None:
        run_turnout("rollback", model)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = store.state(model)
        if state.status.phase in SETTLED and state.spec and state.spec.candidate is None:
            return
        time.sleep(0.25)


def _summary(results: list[Result], total_s: float) -> None:
    from turnout.cli.views import columns

    rows = [["STORY", "EXPECTED", "RESULT", "SECONDS", "OUTCOME"]]
    for i, r in enumerate(results, 1):
        word = "PASS" if r.verdict.passed else "FAIL"
        rows.append(
            [f"{i}. {r.story.title}", r.story.expected, word, f"{r.seconds:.0f}", r.verdict.outcome]
        )
    for i, story in enumerate(STORIES[len(results) :], len(results) + 1):
        rows.append([f"{i}. {story.title}", story.expected, "SKIP", "", ""])
    click.echo("\n" + "\n".join(columns(rows, right=(3,))))
    passed = sum(r.verdict.passed for r in results)
    click.echo(f"\n{passed} of {len(STORIES)} stories behaved; the demo took {total_s:.0f}s")


def _log_tail(path: Path, lines: int = 40) -> None:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return
    click.echo(f"--- last {len(tail)} lines of {path}")
    for line in tail:
        click.echo(f"  {line}")
    click.echo("---")


# --- models -------------------------------------------------------------------------------


def _ensure_models() -> None:
    """v1 and v2 trained (seeds 0, 1); v3 = v2 with a NaN weight; v4 = v1 inverted."""
    from training import store
    from training.data import generate
    from training.train import train

    fits: dict[int, TrainResult] = {}

    def fit(seed: int) -> TrainResult:
        if seed not in fits:
            fits[seed] = train(generate(TRAIN_ROWS, seed=seed), seed=seed)
        return fits[seed]

    makers: dict[str, tuple[str, Callable[[], TrainResult]]] = {
        "v1": ("trained, seed 0", lambda: fit(0)),
        "v2": ("trained, seed 1", lambda: fit(1)),
        NAN_VERSION: ("v2 with one NaN weight: every score is NaN", lambda: _with_nan(fit(1))),
        INVERTED_VERSION: ("v1 with its output negated: p -> 1 - p", lambda: _inverted(fit(0))),
    }
    for version, (what, make) in makers.items():
        tag = f"{MODEL}:{version}"
        if store.exists(tag):
            click.echo(f"{tag} exists")
            continue
        start = time.monotonic()
        store.save(make(), name=MODEL, version=version, extra={"demo": what})
        click.echo(f"{tag}: {what} ({time.monotonic() - start:.1f}s)")
    click.echo()


def _altered(result: TrainResult, change: Callable[[Any], None]) -> TrainResult:
    import torch

    from training.model import state_hash

    net = copy.deepcopy(result.net)
    with torch.no_grad():
        change(net)
    return replace(result, net=net, weights_sha256=state_hash(net))


def _with_nan(result: TrainResult) -> TrainResult:
    def poison(net: Any) -> None:
        net.mlp[0].weight[0, 0] = float("nan")

    return _altered(result, poison)


def _inverted(result: TrainResult) -> TrainResult:
    def negate(net: Any) -> None:
        last = net.mlp[-1]
        last.weight.neg_()
        last.bias.neg_()

    return _altered(result, negate)


# --- helpers ------------------------------------------------------------------------------


def _stable_p99_ms(platform: LocalPlatform, version: str, url: str) -> tuple[float, str]:
    """The p99 the latency checks divide by: the router's histogram over the last 30 s, from
    Prometheus; without Prometheus, measured by calling stable's server directly."""
    import httpx

    from services.controller import queries

    if platform.prometheus_url is not None:
        query = queries.p99_ms(MODEL, "stable", version, "30s")
        doc = httpx.get(
            f"{platform.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
        ).json()
        result = doc.get("data", {}).get("result", [])
        if result and math.isfinite(value := float(result[0]["value"][1])):
            return value, "the router's upstream histogram, last 30 s"
    return _measured_p99_ms(url), "200 calls straight to its server"


def _measured_p99_ms(url: str, n: int = 200) -> float:
    """p99 of ``n`` one-row inferences sent straight to a model server, in ms."""
    import httpx
    import orjson

    from training.data import FRAUD_SCHEMA, generate

    rows = generate(n, seed=5)[FRAUD_SCHEMA.names].to_numpy(dtype="float32")
    times = []
    with httpx.Client(timeout=5) as client:
        for row in rows:
            tensor = {"name": "features", "shape": [1, len(row)], "datatype": "FP32"}
            body = orjson.dumps({"inputs": [{**tensor, "data": row.tolist()}]})
            start = time.perf_counter()
            client.post(
                f"{url}/v2/models/{MODEL}/infer",
                content=body,
                headers={"content-type": "application/json"},
            ).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.quantiles(times, n=100)[98]


def run_turnout(*args: str, quiet: bool = False) -> None:
    """Run a `turnout` command in this process, as a user would type it."""
    from turnout.cli.main import main as turnout

    if not quiet:
        click.echo(f"$ turnout {' '.join(args)}")
    turnout.main(list(args), prog_name="turnout", standalone_mode=False)


def _num(value: float | None) -> str:
    return "no data" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
