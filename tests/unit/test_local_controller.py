"""The local controller loop over real files, with the supervisor and metrics faked.

Processes and Prometheus are exercised in tests/integration and tests/e2e; here the loop's
own promises are checked quickly: bad edits are rejected and the rollout keeps running, a
restart resumes at the same step, decisions reach the route table and the spec file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from services.controller import decisions
from services.controller.local import LocalController
from services.controller.prometheus import PrometheusProvider
from turnout.cli import main as cli
from turnout.core.observation import Metrics, MetricsQuery, MetricsUnavailable, VersionMetrics
from turnout.core.spec import ACTION_ANNOTATION, Phase, parse_deployment
from turnout.io.deployments import DeploymentStore

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class FakeSupervisor:
    """Every wanted version is 'ready' on a port derived from its key."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.servers: dict = {}
        self.failures: dict = {}

    def ensure(self, wanted, *, retry=()):
        for key in wanted:
            self.ports.setdefault(key, 9000 + len(self.ports))
        return {k: f"http://127.0.0.1:{self.ports[k]}" for k in wanted}


class FakeMetrics:
    def __init__(self) -> None:
        self.candidate = VersionMetrics(requests=500, error_rate=0.0, p99_ms=10.0)
        self.down = False
        self.queries: list[MetricsQuery] = []

    def observe(self, query: MetricsQuery) -> Metrics:
        self.queries.append(query)
        if self.down:
            raise MetricsUnavailable("prometheus at http://127.0.0.1:9 refused the connection")
        stable = VersionMetrics(requests=5000, error_rate=0.0, p99_ms=10.0)
        return Metrics(stable=stable, candidate=self.candidate)


class Loop:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.store = DeploymentStore(home)
        self.now = T0
        self.supervisor = FakeSupervisor()
        self.metrics = FakeMetrics()
        self.controller = self.new_controller()

    def new_controller(self) -> LocalController:
        return LocalController(
            store=self.store,
            supervisor=self.supervisor,  # type: ignore[arg-type]
            metrics=self.metrics,
            routes_file=self.home / "routes.yaml",
            clock=lambda: self.now,
        )

    def run(self, *, after: float = 0.0) -> None:
        self.now += timedelta(seconds=after)
        self.controller.run_once()

    def write(self, doc: dict) -> None:
        (self.home / "deployments").mkdir(parents=True, exist_ok=True)
        self.store.path("fraud").write_text(yaml.safe_dump(doc))

    def routes(self) -> dict:
        return yaml.safe_load((self.home / "routes.yaml").read_text())["models"]["fraud"]

    @property
    def status(self):
        return self.store.state("fraud").status

    def events(self) -> list[dict]:
        return [e for r in self.store.records("fraud") for e in r["events"]]


def doc(*, candidate: str | None = None, steps=(10, 50), **strategy) -> dict:
    spec: dict = {
        "model": "fraud",
        "stable": {"version": "v1"},
        "strategy": {"canary": {"steps": list(steps), "interval": "30s"}, **strategy},
    }
    if candidate:
        spec["candidate"] = {"version": candidate}
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud"},
        "spec": spec,
    }


@pytest.fixture
def loop(tmp_path: Path) -> Loop:
    return Loop(tmp_path)


def test_stable_only_is_routed(loop: Loop) -> None:
    loop.write(doc())
    loop.run()
    route = loop.routes()
    assert route["stable"]["version"] == "v1"
    assert route["candidate"] is None
    assert loop.status.phase is Phase.IDLE


def test_canary_steps_then_promotes_and_rewrites_the_spec(loop: Loop) -> None:
    loop.write(doc(candidate="v2"))
    loop.run()
    assert loop.routes()["candidate"] == {
        "version": "v2",
        "url": loop.routes()["candidate"]["url"],
        "weight": 10.0,
    }
    loop.run(after=31)
    assert loop.routes()["candidate"]["weight"] == 50.0
    loop.run(after=31)
    assert loop.status.phase is Phase.PROMOTED
    assert loop.routes()["stable"]["version"] == "v2"
    assert loop.routes()["candidate"] is None
    spec = loop.store.load("fraud").spec
    assert (spec.stable.version, spec.candidate) == ("v2", None)
    reasons = [e["reason"] for e in loop.events()]
    assert reasons == ["Started", "StepPassed", "Promoted"]


def test_failing_checks_roll_back_and_clear_the_candidate(loop: Loop) -> None:
    loop.write(doc(candidate="v2"))
    loop.run()
    loop.metrics.candidate = VersionMetrics(requests=500, error_rate=0.2, p99_ms=10.0)
    loop.run(after=31)
    loop.run(after=31)
    assert loop.status.phase is Phase.ROLLED_BACK
    assert loop.routes()["candidate"] is None
    assert loop.store.load("fraud").spec.candidate is None
    warning = loop.events()[-1]
    assert warning["type"] == "Warning" and "errorRate 0.2 > 0.01" in warning["message"]


BAD_EDITS = {
    "unknown strategy": (
        lambda d: d["spec"]["strategy"].update(type="BlueGreen"),
        "spec.strategy.type",
    ),
    "weight above 100": (
        lambda d: d["spec"]["strategy"]["canary"].update(steps=[10, 150]),
        "spec.strategy.canary.steps: step 1 is 150",
    ),
    "steps not increasing": (
        lambda d: d["spec"]["strategy"]["canary"].update(steps=[50, 10]),
        "spec.strategy.canary.steps: steps must increase",
    ),
    "missing stable": (lambda d: d["spec"].pop("stable"), "spec.stable: Field required"),
}


@pytest.mark.parametrize("edit", BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_invalid_edit_is_rejected_and_the_rollout_continues(loop: Loop, edit) -> None:
    change, expected = edit
    loop.write(doc(candidate="v2", steps=(10, 50, 80)))
    loop.run()
    routes_before = loop.routes()
    bad = doc(candidate="v2", steps=(10, 50, 80))
    change(bad)
    loop.write(bad)
    loop.run(after=1)

    state = loop.store.state("fraud")
    assert expected in (state.spec_error or "")
    assert loop.routes() == routes_before
    condition = next(c for c in state.status.conditions if c.type == "SpecValid")
    assert condition.status == "False" and expected in condition.message
    assert loop.events()[-1]["reason"] == "InvalidSpec"
    # The last good spec keeps the rollout going: the next step happens on time.
    loop.run(after=31)
    assert loop.routes()["candidate"]["weight"] == 50.0


def test_unreadable_yaml_is_rejected_too(loop: Loop) -> None:
    loop.write(doc(candidate="v2"))
    loop.run()
    loop.store.path("fraud").write_text("spec: [unclosed\n")
    loop.run(after=1)
    assert "not valid YAML" in (loop.store.state("fraud").spec_error or "")
    assert loop.routes()["candidate"]["weight"] == 10.0


def test_a_restarted_loop_resumes_at_the_same_step(loop: Loop) -> None:
    loop.write(doc(candidate="v2", steps=(10, 50, 80)))
    loop.run()
    loop.run(after=31)
    before = loop.status
    assert before.step == 1

    loop.controller = loop.new_controller()  # a crash: nothing in memory survives
    loop.run(after=5)
    after = loop.status
    assert (after.step, after.step_started_at, after.routing) == (
        before.step,
        before.step_started_at,
        before.routing,
    )
    assert [e["reason"] for e in loop.events()].count("Started") == 1
    loop.run(after=26)  # the step's interval ends on the original schedule
    assert loop.routes()["candidate"]["weight"] == 80.0


def test_metrics_outage_holds_the_step_without_failing_it(loop: Loop) -> None:
    loop.write(doc(candidate="v2"))
    loop.run()
    loop.metrics.down = True
    loop.run(after=31)
    status = loop.status
    assert status.failed_checks == 0
    assert "metrics unavailable" in status.message
    assert loop.routes()["candidate"]["weight"] == 10.0
    loop.metrics.down = False
    loop.run(after=3)
    assert loop.routes()["candidate"]["weight"] == 50.0


def test_promote_annotation_is_acted_on_and_cleared(loop: Loop) -> None:
    loop.write(doc(candidate="v2"))
    loop.run()
    md = loop.store.load("fraud")
    notes = {ACTION_ANNOTATION: "promote"}
    loop.store.save(
        md.model_copy(update={"metadata": md.metadata.model_copy(update={"annotations": notes})})
    )
    loop.run(after=1)
    assert loop.status.phase is Phase.PROMOTED
    assert ACTION_ANNOTATION not in loop.store.load("fraud").metadata.annotations


@pytest.fixture
def process_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The log as the controller process sets it up (``python -m services.controller``)."""
    loggers = [logging.getLogger(name) for name in decisions.REQUEST_LOGGERS]
    levels = [logger.level for logger in loggers]
    caplog.set_level(logging.INFO)
    decisions.configure_logging(fmt="%(message)s")
    yield caplog
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def prometheus_answering(*, error_rate: float, asked: list[str]) -> PrometheusProvider:
    """A PrometheusProvider over HTTP to a fake Prometheus: 500 requests, ``error_rate``,
    p99 10 ms, and no data for the rest (drift, shadow, A/B)."""

    def answer(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        asked.append(query)
        value = None
        if query.startswith("histogram_quantile"):
            value = 10.0
        elif query.startswith("(sum(rate("):
            value = error_rate
        elif query.startswith("sum(increase(turnout_router_upstream_calls_total"):
            value = 500.0
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    return PrometheusProvider("http://prometheus", transport=httpx.MockTransport(answer))


def test_the_log_of_a_pass_tells_the_decision_not_the_queries(
    loop: Loop, process_log: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []
    loop.metrics = prometheus_answering(error_rate=0.2, asked=asked)  # type: ignore[assignment]
    loop.controller = loop.new_controller()
    loop.write(doc(candidate="v2"))
    loop.run()
    process_log.clear()
    loop.run(after=31)
    lines = [r.getMessage() for r in process_log.records]
    assert asked, "the pass read its metrics from Prometheus over HTTP"
    assert lines == ["fraud: ChecksFailed analysis failed (1 of 2): errorRate 0.2 > 0.01"]
    loop.run(after=1)
    assert [r.getMessage() for r in process_log.records] == lines, "told once"


def test_cli_rollback_reaches_the_route_table_in_one_pass(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_store", lambda: loop.store)
    loop.write(doc(candidate="v2"))
    loop.run()
    assert loop.routes()["candidate"] is not None
    result = CliRunner().invoke(cli.main, ["rollback", "fraud"])
    assert result.exit_code == 0, result.output
    assert "removed candidate v2; v1 serves all traffic" in result.output
    loop.run(after=0.1)
    assert loop.routes()["candidate"] is None
    assert loop.status.phase is Phase.ROLLED_BACK


def test_cli_rollback_to_an_unknown_version_names_it(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_store", lambda: loop.store)
    loop.write(doc())
    loop.run()
    result = CliRunner().invoke(cli.main, ["rollback", "fraud", "--to", "v9"])
    assert result.exit_code != 0
    assert "'v9' is not a past stable version of fraud (history: v1)" in result.output
    assert loop.store.load("fraud").spec.stable.version == "v1"


def test_cli_rollback_returns_stable_to_the_previous_version(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_store", lambda: loop.store)
    loop.write(doc(candidate="v2", steps=(50,)))
    loop.run()
    loop.run(after=31)
    assert loop.routes()["stable"]["version"] == "v2"
    result = CliRunner().invoke(cli.main, ["rollback", "fraud"])
    assert result.exit_code == 0, result.output
    assert "stable v2 -> v1" in result.output
    loop.run(after=0.1)
    assert loop.routes()["stable"]["version"] == "v1"
    assert loop.status.history[0].reason == "rolled back from v2"


def test_deploy_rejects_a_bad_option_naming_the_field(
    loop: Loop, monkeypatch: pytest.MonkeyPatch, trained
) -> None:
    monkeypatch.setattr(cli, "_store", lambda: loop.store)
    assert CliRunner().invoke(cli.main, ["deploy", "fraud", "--version", "v1"]).exit_code == 0
    before = loop.store.path("fraud").read_text()
    from training import store

    result, _ = trained
    if not store.exists("fraud:v2"):
        store.save(result, name="fraud", version="v2")
    out = CliRunner().invoke(cli.main, ["deploy", "fraud", "--version", "v2", "--steps", "50,10"])
    assert out.exit_code != 0
    assert "spec.strategy.canary.steps: steps must increase" in out.output
    assert loop.store.path("fraud").read_text() == before
    parse_deployment(yaml.safe_load(before))  # what is on disk is still valid


def test_deploy_sets_the_shadow_comparison(
    loop: Loop, monkeypatch: pytest.MonkeyPatch, trained
) -> None:
    monkeypatch.setattr(cli, "_store", lambda: loop.store)
    from training import store

    result, _ = trained
    if not store.exists("fraud:v2"):
        store.save(result, name="fraud", version="v2")
    deploy = ["deploy", "fraud", "--version"]
    assert CliRunner().invoke(cli.main, [*deploy, "v1"]).exit_code == 0
    shadow = [*deploy, "v2", "--strategy", "shadow"]

    out = CliRunner().invoke(cli.main, [*shadow, "--comparison", "regression"])
    assert out.exit_code != 0
    assert "spec.comparison: type Regression needs tolerance or relativeTolerance" in out.output

    out = CliRunner().invoke(
        cli.main, [*shadow, "--comparison", "Regression", "--set", "comparison.tolerance=0.05"]
    )
    assert out.exit_code == 0, out.output
    assert "agreement: within 0.05" in out.output
    comparison = loop.store.load("fraud").spec.comparison
    assert (comparison.type, comparison.tolerance) == ("Regression", 0.05)

    # Back to Binary: the Regression tolerance does not carry over; a threshold is set by path.
    out = CliRunner().invoke(
        cli.main, [*shadow, "--comparison", "binary", "--set", "comparison.threshold=0.7"]
    )
    assert out.exit_code == 0, out.output
    assert "agreement: same side of 0.7" in out.output
    comparison = loop.store.load("fraud").spec.comparison
    assert (comparison.type, comparison.threshold, comparison.tolerance) == ("Binary", 0.7, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retrain-every", "0s"], "'0s' is not a positive duration"),
        (["--retrain-every", "soon"], "is not a duration"),
        (["--retrain-every", "1m", "--drift", "bogus=1"], "unknown drift option 'bogus'"),
    ],
)
def test_up_refuses_a_bad_retraining_schedule_before_starting_anything(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_HOME", str(tmp_path))
    result = CliRunner().invoke(cli.main, ["up", *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "deployments").exists(), "nothing was deployed"
