"""Serving a user's Bento: the version's ``service``, and bad ones refused before they serve.

A ModelDeployment version names what `bentoml serve` runs (a Bento tag, a directory holding a
bentofile.yaml, or module:Class). ``turnout deploy`` refuses, with the problem and the fix and
without touching the spec file, a model version that is not in the store and a service that
does not exist, does not import or is not a turnout model server. A server that cannot start
is given up on after a few tries and shown in status; the rollout core decides what that means
for a candidate and for stable. ``turnout up`` trains only its own fraud model.

Real model servers are in tests/integration/test_user_bento.py; here the serving target check
runs its real child process, and the supervisor runs tiny stand-in processes.
"""

from __future__ import annotations

import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from services.controller import supervisor as supervisor_module
from services.controller.supervisor import MAX_FAILED_STARTS, Supervisor, Want
from tests.k8s.validate import validator
from turnout.cli import main as cli
from turnout.core import rollout
from turnout.core.crd import crd
from turnout.core.observation import Observation
from turnout.core.spec import (
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Reason,
    Routing,
    SpecError,
    Target,
    parse_deployment,
)
from turnout.io.deployments import DeploymentStore

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
MODEL = "tiny"


# --- the spec and the CRD ------------------------------------------------------------------


def deployment(stable: dict, candidate: dict | None = None, *, model: str = MODEL) -> dict:
    spec: dict = {"model": model, "stable": stable}
    if candidate is not None:
        spec["candidate"] = candidate
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": model},
        "spec": spec,
    }


def test_a_version_names_its_service_and_defaults_to_the_fraud_server() -> None:
    md = parse_deployment(
        deployment({"version": "v1"}, {"version": "v2", "service": "examples/digits"})
    )
    assert md.spec.stable.service is None
    assert md.spec.candidate is not None and md.spec.candidate.service == "examples/digits"
    with pytest.raises(SpecError, match=r"spec\.stable\.service"):
        parse_deployment(deployment({"version": "v1", "service": "two words"}))


def test_the_crd_documents_and_accepts_service() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for ref in ("stable", "candidate"):
        field = schema["properties"]["spec"]["properties"][ref]["properties"]["service"]
        assert "bentofile.yaml" in field["description"]
        assert "module:Class" in field["description"]
    doc = deployment({"version": "v1", "service": "digits_service:abc123"})
    assert list(validator(schema).iter_errors(doc)) == []
    doc["spec"]["stable"]["service"] = ""
    assert list(validator(schema).iter_errors(doc)) != []


# --- deploy refuses what would not serve -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models() -> list[str]:
    """Two versions of a model that is not fraud, in the test's model store."""
    from turnout.io.settings import use_local_model_store

    use_local_model_store()
    import bentoml
    from bentoml.exceptions import NotFound

    for version in ("v0", "v1"):
        try:
            bentoml.models.get(f"{MODEL}:{version}")
        except NotFound:
            with bentoml.models.create(f"{MODEL}:{version}") as model:
                Path(model.path, "weights.txt").write_text("1.5")
    return ["v0", "v1"]


def service_dir(root: Path, name: str, source: str) -> Path:
    """A directory holding ``service.py`` and a bentofile.yaml naming its class ``Svc``."""
    path = root / name
    path.mkdir()
    (path / "service.py").write_text(textwrap.dedent(source))
    (path / "bentofile.yaml").write_text('service: "service:Svc"\n')
    return path


GOOD = """
    import numpy as np
    import turnout_sdk as turnout

    @turnout.model_server(
        inputs=[turnout.Tensor("x", "FP32", (-1, 2))],
        outputs=[turnout.Tensor("y", "FP32", (-1,))],
    )
    class Svc:
        model = turnout.model_ref("tiny")

        def predict(self, x: np.ndarray) -> np.ndarray:
            return x.sum(axis=1)
"""
PLAIN = """
    import bentoml

    @bentoml.service
    class Svc:
        @bentoml.api
        def predict(self, x: float) -> float:
            return x
"""
NO_TENSORS = """
    import turnout_sdk as turnout

    @turnout.model_server(inputs=[], outputs=[turnout.Tensor("y", "FP32", (-1,))])
    class Svc:
        model = turnout.model_ref("tiny")

        def predict(self) -> None: ...
"""
BROKEN_IMPORT = """
    import tiny_model_helpers  # not installed
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models) -> DeploymentStore:
    """A deployment store whose ``tiny`` deployment serves v0 from a good service."""
    store = DeploymentStore(tmp_path / "home")
    monkeypatch.setattr(cli, "_store", lambda: store)
    good = service_dir(tmp_path, "good", GOOD)
    store.save(parse_deployment(deployment({"version": "v0", "service": str(good)})))
    return store


def deploy(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(cli.main, ["deploy", MODEL, *args])
    return out.exit_code, out.output


@pytest.mark.parametrize(
    ("service", "version", "expected"),
    [
        pytest.param(None, "v9", "(tiny has v0, v1); train tiny and save it", id="no-such-model"),
        pytest.param("{tmp}/missing", "v1", "no such directory", id="no-such-directory"),
        pytest.param(
            "{tmp}/empty", "v1", "holds no bentofile.yaml; give the directory", id="no-bentofile"
        ),
        pytest.param(
            "nosuchmodule:Svc",
            "v1",
            "No module named 'nosuchmodule'; the target is a Bento tag in the local store",
            id="does-not-exist",
        ),
        pytest.param(
            "{tmp}/broken", "v1", "No module named 'tiny_model_helpers'", id="does-not-import"
        ),
        pytest.param(
            "{tmp}/plain",
            "v1",
            "is not a turnout model server: decorate its class with @turnout_sdk.model_server",
            id="not-the-sdk",
        ),
        pytest.param("{tmp}/notensors", "v1", "declare at least one input", id="no-tensors"),
    ],
)
def test_deploy_refuses_and_leaves_the_running_spec_alone(
    home: DeploymentStore, tmp_path: Path, service: str | None, version: str, expected: str
) -> None:
    for name, source in (("plain", PLAIN), ("notensors", NO_TENSORS), ("broken", BROKEN_IMPORT)):
        service_dir(tmp_path, name, source)
    (tmp_path / "empty").mkdir()
    before = home.path(MODEL).read_text()
    target = [] if service is None else ["--service", service.format(tmp=tmp_path)]
    code, output = deploy("--version", version, *target)
    assert code != 0
    assert expected in " ".join(output.split()), output
    assert home.path(MODEL).read_text() == before


def test_deploy_serves_a_user_service_and_a_candidate_keeps_it(
    home: DeploymentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative directory is taken from where the command runs, and written absolute.
    monkeypatch.chdir(tmp_path)
    home.path(MODEL).unlink()
    code, output = deploy("--version", "v0", "--service", "good")
    assert code == 0, output
    assert home.load(MODEL).spec.stable.service == str(tmp_path / "good")
    code, output = deploy("--version", "v1")
    assert code == 0, output
    candidate = home.load(MODEL).spec.candidate
    assert candidate is not None and candidate.service == str(tmp_path / "good")


# --- the supervisor gives up on a server that cannot start ---------------------------------


EXITS = "print('RuntimeError: weights.safetensors is missing', flush=True); raise SystemExit(3)"
#: What bentoml serve does when a worker cannot create the service: log, and keep running.
HANGS = (
    "import time; print('ValueError: not a fraud model', flush=True); "
    "print('[ERROR] [entry_service:x:1] Application startup failed. Exiting.', flush=True); "
    "time.sleep(120)"
)


def fake_server(monkeypatch: pytest.MonkeyPatch, code: str) -> list[str]:
    """Make the supervisor run ``python -c code`` instead of bentoml serve; the tags started."""
    started: list[str] = []

    def command(tag: str, **_: object) -> tuple[list[str], dict[str, str]]:
        started.append(tag)
        return [sys.executable, "-c", code], {}

    monkeypatch.setattr(supervisor_module, "serve_command", command)
    return started


def until_given_up(sup: Supervisor, want: Want, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while want.key not in sup.failures:
        assert time.monotonic() < deadline, "the supervisor never gave up"
        sup.ensure({want.key: want})
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        pytest.param(EXITS, "RuntimeError: weights.safetensors is missing", id="exits"),
        pytest.param(HANGS, "ValueError: not a fraud model", id="startup-failed"),
    ],
)
def test_the_supervisor_gives_up_after_failed_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, reason: str
) -> None:
    started = fake_server(monkeypatch, code)
    sup = Supervisor(tmp_path)
    want = Want("tiny:v1", service="examples/tiny")
    until_given_up(sup, want)
    failure = sup.failures[want.key]
    assert (failure.starts, failure.reason) == (MAX_FAILED_STARTS, reason)
    assert failure.log.is_file() and failure.log.parent == tmp_path / "logs"
    assert f"(log {failure.log})" in failure.describe()
    assert len(started) == MAX_FAILED_STARTS
    for _ in range(5):  # wanted still, but not started again
        assert sup.ensure({want.key: want}) == {}
    assert len(started) == MAX_FAILED_STARTS and sup.servers == {}

    sup.ensure({want.key: want}, retry=[want.key])  # e.g. the spec was edited
    assert len(started) == MAX_FAILED_STARTS + 1 and want.key not in sup.failures
    sup.stop_all()


def test_a_version_given_up_on_is_tried_again_once_wanted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = fake_server(monkeypatch, EXITS)
    sup = Supervisor(tmp_path)
    want = Want("tiny:v1")
    until_given_up(sup, want)
    sup.ensure({})
    assert sup.failures == {}
    sup.ensure({want.key: want})
    assert len(started) == MAX_FAILED_STARTS + 1
    sup.stop_all()


# --- what a failed server means for the rollout ---------------------------------------------


def spec(candidate: str | None = "v2") -> ModelDeploymentSpec:
    return parse_deployment(
        deployment({"version": "v1"}, {"version": candidate} if candidate else None)
    ).spec


def serving(version: str = "v1") -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        routing=Routing(stable=Target(version=version, url="http://127.0.0.1:9001"))
    )


WHY = "tiny:v2's server failed 3 starts in a row, not restarted: ValueError: bad (log /x.log)"


def failed(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, failures: dict[str, str]
) -> rollout.Decision | None:
    routed = status.routing.stable  # still serving; the failed versions have no endpoint
    obs = Observation(endpoints={routed.version: routed.url} if routed else {})
    return rollout.server_failed(spec, status, obs, T0, failures=failures, generation=1)


def test_a_candidate_that_cannot_start_is_rolled_back_with_the_reason() -> None:
    decision = failed(spec(), serving(), {"v2": WHY})
    assert decision is not None
    assert decision.status.phase is Phase.ROLLED_BACK
    assert decision.status.routing.stable == serving().routing.stable
    assert decision.status.routing.candidate is None
    assert WHY in decision.status.message and "v1 serves all traffic" in decision.status.message
    assert decision.spec is not None and decision.spec.candidate is None
    assert [(e.type, e.reason) for e in decision.events][-1] == ("Warning", Reason.SERVER_FAILED)


def test_a_stable_that_cannot_start_is_reported_not_waited_for() -> None:
    decision = failed(spec(None), ModelDeploymentStatus(), {"v1": WHY})
    assert decision is not None
    status = decision.status
    assert status.phase is Phase.FAILED
    assert status.message == WHY
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.message) == ("False", "ServerFailed", WHY)
    assert "waiting for" not in status.message
    again = failed(spec(None), status, {"v1": WHY})
    assert again is not None and again.events == (), "said once"

    # Once it serves (the failure cleared by a spec edit), the deployment is Idle again.
    ok = rollout.decide(spec(None), status, Observation(endpoints={"v1": "http://h:1"}), T0)
    assert ok.status.phase is Phase.IDLE
    assert ok.status.routing.stable == Target(version="v1", url="http://h:1")


def test_a_new_stable_that_cannot_start_leaves_the_old_one_serving() -> None:
    decision = failed(spec(None), serving("v0"), {"v1": WHY})
    assert decision is not None
    ready = next(c for c in decision.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason == "ServerFailed"
    assert decision.status.message == f"{WHY}; stable v0 keeps serving"
    assert decision.status.routing.stable == serving("v0").routing.stable


def test_failures_of_other_versions_leave_the_decision_to_decide() -> None:
    assert failed(spec(), serving(), {}) is None
    assert failed(spec(), serving(), {"v7": WHY}) is None


# --- turnout up trains fraud only -------------------------------------------------------------


def test_up_with_another_name_refuses_instead_of_training_fraud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeploymentStore(tmp_path / "home")
    monkeypatch.setattr(cli, "_store", lambda: store)

    def must_not_run(*_: object, **__: object) -> None:
        raise AssertionError("must not be called")

    import training.store
    import turnout.cli.platform

    monkeypatch.setattr(training.store, "save", must_not_run)
    monkeypatch.setattr(turnout.cli.platform.LocalPlatform, "start", must_not_run)
    out = CliRunner().invoke(cli.main, ["up", "--name", "diabetes", "--no-prometheus"])
    assert out.exit_code != 0
    text = " ".join(out.output.split())
    assert "turnout trains only its built-in fraud model: train diabetes" in text
    assert "turnout deploy diabetes --version V --service DIR" in text
    assert store.names() == []

    out = CliRunner().invoke(cli.main, ["up", "--name", "diabetes", "--retrain-every", "3m"])
    assert out.exit_code != 0
    assert "--retrain-every retrains the built-in fraud model only" in out.output


def test_yaml_of_a_deployment_with_a_service_round_trips(home: DeploymentStore) -> None:
    text = home.path(MODEL).read_text()
    assert "service:" in text
    assert parse_deployment(yaml.safe_load(text)) == home.load(MODEL)
