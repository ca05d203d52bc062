"""The retrain pipeline's parts that need no model: the runner's order and stop rules, the
parameters, the records steps exchange, proposing a candidate, notifying, the CLI's contract.

The runner is exercised with fake steps over the same StepSpec type the real DAG uses; the
cluster propose goes through FakeKube with the Kubernetes HTTP layer made to fail (``no_http``),
so every call must use turnout/io/kube.py's interface. End-to-end runs with a real model are in
tests/integration/test_retrain.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.k8s.fake_kube import FakeKube, no_http  # noqa: F401
from turnout.core.drift import DriftLevel, FeatureDrift
from turnout.core.spec import ModelDeploymentSpec, VersionRef, parse_deployment
from turnout.io.deployments import DeploymentStore
from turnout.io.kube import Obj
from workflows import steps
from workflows.cli import pipeline
from workflows.notify import WEBHOOK_TIMEOUT_S
from workflows.params import ParamError, RetrainParams, param_info
from workflows.pipeline import RETRAIN, StepContext, StepSpec, When, check_order
from workflows.records import (
    Candidate,
    DriftCheck,
    Package,
    Record,
    RunDir,
    StepError,
    Validation,
)
from workflows.runner import Outcome, StepStatus, run, run_step
from workflows.targets import ClusterTarget, LocalTarget, TargetError, propose_change

# --- the runner, with fake steps ------------------------------------------------------------


@dataclass(frozen=True)
class Out(Record):
    text: str
    decision: str = ""
    failed: bool = False

    def summary(self) -> str:
        return self.text

    def outputs(self) -> dict[str, str]:
        return {"decision": self.decision} if self.decision else {}

    def failure(self) -> str | None:
        return f"refused: {self.text}" if self.failed else None


def fake_dag(calls: list[str], **behaviour: Any) -> tuple[StepSpec, ...]:
    """a -> b (when a.decision == go) -> c -> d, with exit handler z; ``behaviour[name]`` is an
    Out to return or an exception to raise."""

    def fn(name: str) -> Any:
        def step(ctx: StepContext) -> Record:
            calls.append(name)
            what = behaviour.get(name, Out(f"{name} done"))
            if isinstance(what, BaseException):
                raise what
            return what

        return step

    return (
        StepSpec("a", (), fn("a"), help="", outputs=("decision",)),
        StepSpec("b", ("a",), fn("b"), help="", when=When("a", "decision", "go")),
        StepSpec("c", ("b",), fn("c"), help=""),
        StepSpec("d", ("c",), fn("d"), help=""),
        StepSpec("z", (), fn("z"), help="", exit_handler=True),
    )


def ctx(tmp_path: Path, **params: Any) -> StepContext:
    return StepContext(
        params=RetrainParams(**params), run_dir=tmp_path / "run", target=LocalTarget(tmp_path)
    )


def statuses(result: Any) -> dict[str, str]:
    return {r.name: r.status.value for r in result.records}


def test_steps_run_in_order_and_the_exit_handler_last(tmp_path: Path) -> None:
    calls: list[str] = []
    dag = fake_dag(calls, a=Out("a done", decision="go"))
    result = run(dag, ctx(tmp_path))
    assert calls == ["a", "b", "c", "d", "z"]
    assert result.outcome == Outcome.COMPLETED and result.exit_code == 0
    assert set(statuses(result).values()) == {"ok"}
    saved = json.loads((tmp_path / "run" / "c.json").read_text())
    assert saved == {"text": "c done", "decision": "", "failed": False}


def test_a_false_condition_skips_the_rest_but_not_the_exit_handler(tmp_path: Path) -> None:
    calls: list[str] = []
    result = run(fake_dag(calls, a=Out("no drift", decision="stop")), ctx(tmp_path))
    assert calls == ["a", "z"]
    assert statuses(result) == {
        "a": "ok",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "z": "ok",
    }
    assert result.record("b").summary == "not run: a decision=stop"
    assert result.record("c").summary == "not run: b skipped"
    assert result.outcome == Outcome.SKIPPED and result.exit_code == 0
    assert result.reason() == "stopped after a: no drift"


def test_a_raising_step_stops_later_steps_and_leaves_its_error(tmp_path: Path) -> None:
    calls: list[str] = []
    dag = fake_dag(calls, a=Out("", decision="go"), b=ValueError("data.csv: file not found"))
    result = run(dag, ctx(tmp_path))
    assert calls == ["a", "b", "z"]
    assert statuses(result)["b"] == "failed" and statuses(result)["c"] == "skipped"
    assert result.outcome == Outcome.FAILED and result.exit_code == 1
    assert result.reason() == "b failed: data.csv: file not found"
    assert RunDir(tmp_path / "run").error("b") == "data.csv: file not found"
    assert not (tmp_path / "run" / "b.json").exists()


def test_an_output_that_refuses_fails_the_run_like_an_error(tmp_path: Path) -> None:
    calls: list[str] = []
    dag = fake_dag(calls, a=Out("", decision="go"), c=Out("rocAuc 0.61", failed=True))
    result = run(dag, ctx(tmp_path))
    assert calls == ["a", "b", "c", "z"]
    assert result.record("c").status == StepStatus.FAILED
    assert result.record("c").summary == "refused: rocAuc 0.61"
    assert result.record("d").status == StepStatus.SKIPPED
    assert result.exit_code == 1
    # The refusing output is still written: the exit handler reads why.
    assert (tmp_path / "run" / "c.json").exists()


def test_a_failing_exit_handler_does_not_change_the_outcome(tmp_path: Path) -> None:
    calls: list[str] = []
    dag = fake_dag(calls, a=Out("", decision="go"), z=RuntimeError("webhook down"))
    result = run(dag, ctx(tmp_path))
    assert result.record("z").status == StepStatus.FAILED
    assert result.outcome == Outcome.COMPLETED and result.exit_code == 0


def test_a_rerun_step_forgets_its_earlier_attempt(tmp_path: Path) -> None:
    calls: list[str] = []
    c = ctx(tmp_path)
    dag = fake_dag(calls, a=ValueError("first try"))
    run_step(dag[0], c)
    assert RunDir(c.run_dir).error("a") == "first try"
    record, _ = run_step(fake_dag(calls, a=Out("second try"))[0], c)
    assert record.status == StepStatus.OK
    assert RunDir(c.run_dir).error("a") is None


def test_run_step_writes_argo_output_parameters(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    record, _ = run_step(fake_dag([], a=Out("x", decision="go"))[0], ctx(tmp_path), outputs_dir=out)
    assert (out / "decision").read_text() == "go"
    assert json.loads((out / "a.json").read_text())["text"] == "x"
    assert record.outputs == (("decision", "go"),)


def test_a_dag_whose_dependency_comes_later_is_refused() -> None:
    a, b, *_ = fake_dag([])
    with pytest.raises(ValueError, match=r"step b depends on \['a'\]"):
        check_order((b, a))


def test_the_retrain_dag() -> None:
    check_order(RETRAIN)
    names = [s.name for s in RETRAIN]
    assert names == [
        "snapshot",
        "check-drift",
        "train",
        "validate",
        "package",
        "propose",
        "notify",
    ]
    by = {s.name: s for s in RETRAIN}
    assert by["train"].when == When("check-drift", "skip", "false")
    assert by["package"].when == When("validate", "passed", "true")
    assert by["check-drift"].outputs == ("skip",)
    assert by["validate"].outputs == ("passed",)
    assert "version" in by["package"].outputs
    assert [s.name for s in RETRAIN if s.exit_handler] == ["notify"]
    assert all(s.depends == (prev,) for prev, s in zip(names, RETRAIN[1:6], strict=False))


# --- parameters -----------------------------------------------------------------------------


def test_parameters_are_typed_from_strings() -> None:
    p = RetrainParams.from_pairs(
        ["rows=5000", "psi_threshold=0.3", "force=true", "seed=7", "drift=covariate=0.5"]
    )
    assert (p.rows, p.psi_threshold, p.force, p.seed) == (5000, 0.3, True, 7)
    assert p.drift_spec().covariate == 0.5
    assert p.deployment_name == "fraud"
    assert RetrainParams.from_pairs(p.to_pairs()) == p
    assert RetrainParams.parse({"rows": "5000", "force": "no"}).force is False


def test_gate_thresholds_come_from_the_gate_parameter() -> None:
    t = RetrainParams.from_pairs(["gate=min_roc_auc=0.9,latency_rows=50"]).gate_config()
    assert (t.floors["roc_auc"], t.latency_rows, t.floors["pr_auc"]) == (0.9, 50, 0.30)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["rows=many"], "parameter 'rows' must be an integer, got 'many'"),
        (["rows=5.5"], "parameter 'rows' must be an integer, got '5.5'"),
        (["psi_threshold=high"], "parameter 'psi_threshold' must be a number, got 'high'"),
        (["psi_threshold=nan"], "parameter 'psi_threshold' must be a number, got 'nan'"),
        (["force=maybe"], "parameter 'force' must be true or false, got 'maybe'"),
        (["day=tomorrow"], "parameter 'day' must be a number, got 'tomorrow'"),
        (["colour=red"], "unknown parameter 'colour'"),
        (["rows"], "parameter 'rows' is not name=value"),
        (["rows=10"], "parameter 'rows' must be at least 1000, got 10"),
        (["window=0.9"], "parameter 'window' must be 0.05-0.5, got 0.9"),
        (["psi_threshold=0"], "parameter 'psi_threshold' must be above 0"),
        (["drift=wobble=1"], "parameter 'drift': unknown drift option 'wobble'"),
        (["drift=covariate=lots"], "parameter 'drift': could not convert"),
        (["source=data.txt"], "parameter 'source' must be 'synthetic' or a .csv/.parquet path"),
        (["source=d.csv", "drift=covariate=1"], "'drift' applies only to source=synthetic"),
        (["version=V2"], "parameter 'version' must be lowercase letters"),
        (["model=Fraud_Model"], "parameter 'model' must be lowercase letters"),
        (["gate=min_roc_auc=high"], "parameter 'gate.min_roc_auc' must be a number"),
        (["gate=speed=1"], "parameter 'gate': unknown threshold 'speed'"),
        (["webhook=ftp://x"], "parameter 'webhook' must be an http(s) URL"),
        (["image_registry=https://r.io/ml"], "parameter 'image_registry' must be a registry"),
    ],
)
def test_a_bad_parameter_is_named_with_what_it_should_be(pairs: list[str], message: str) -> None:
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RetrainParams.from_pairs(pairs)


def test_every_parameter_is_described_for_the_cli_and_the_workflow() -> None:
    infos = {i.name: i for i in param_info()}
    assert infos["rows"].type == "int" and infos["rows"].default == "60000"
    assert infos["force"].default == "false"
    assert all(i.help for i in infos.values())


# --- records ----------------------------------------------------------------------------------


def drift_check(**changes: Any) -> DriftCheck:
    feats = (
        FeatureDrift("amount", "numeric", 0.6, DriftLevel.ALERT, "ks", 0.3, None),
        FeatureDrift("channel", "categorical", 0.01, DriftLevel.OK, "chi2", 4.0, 0.2),
    )
    base = DriftCheck(
        stable="fraud:v1",
        threshold=0.25,
        max_psi=0.6,
        worst="amount",
        prediction_psi=0.2,
        features=feats,
        forced=False,
        in_flight="",
        skip=False,
    )
    return base if not changes else DriftCheck(**{**base.__dict__, **changes})


@pytest.mark.parametrize(
    "record",
    [
        drift_check(),
        Candidate(
            "fraud:v2",
            "workflows.fraud:PIPELINE",
            "candidate",
            "cd" * 32,
            "ab" * 32,
            1,
            14000,
            3.2,
            {"roc_auc": 0.95, "pr_auc": 0.6},
        ),
        Validation("fraud:v2", False, 19, ("rocAuc: 0.61 < 0.80",), "report.json", "report.md"),
    ],
)
def test_records_round_trip_through_json(record: Record) -> None:
    text = json.dumps(record.to_dict())
    assert type(record).from_dict(json.loads(text)) == record


def test_a_record_missing_a_field_is_refused() -> None:
    with pytest.raises(StepError, match="Validation record lacks passed"):
        Validation.from_dict({"candidate": "fraud:v2"} | {"checks": 1})


def test_drift_outputs_tell_argo_whether_to_skip() -> None:
    assert drift_check().outputs() == {"skip": "false"}
    quiet = drift_check(max_psi=0.01, worst="hour", skip=True)
    assert quiet.outputs() == {"skip": "true"}
    assert "no drift" in quiet.summary()
    busy = drift_check(in_flight="v2", skip=True)
    assert "candidate v2 is still rolling out" in busy.summary()


def test_a_failed_validation_is_a_failure_with_its_checks() -> None:
    v = Validation("fraud:v2", False, 19, ("rocAuc: 0.61 < 0.80",), "report.json", "report.md")
    assert v.outputs() == {"passed": "false"}
    assert v.failure() == "gate failed for fraud:v2: rocAuc: 0.61 < 0.80"


# --- propose ----------------------------------------------------------------------------------


def spec(candidate: str | None = None) -> ModelDeploymentSpec:
    doc: dict[str, Any] = {"model": "fraud", "stable": {"version": "v1"}}
    if candidate:
        doc["candidate"] = {"version": candidate}
    return ModelDeploymentSpec.model_validate(doc)


def test_propose_change_sets_the_candidate() -> None:
    ref = VersionRef(version="v2", image="reg/fraud:v2")
    change = propose_change(spec(), name="fraud", ref=ref)
    assert change.spec.candidate == ref
    assert change.said == ("proposed v2 (image reg/fraud:v2) as candidate over stable v1",)


def test_propose_change_is_idempotent_and_never_replaces_a_rollout() -> None:
    same = propose_change(spec("v2"), name="fraud", ref=VersionRef(version="v2"))
    assert same.spec == spec("v2")
    with pytest.raises(ValueError, match="candidate v2 is still rolling out; not replacing it"):
        propose_change(spec("v2"), name="fraud", ref=VersionRef(version="v3"))
    with pytest.raises(ValueError, match="v1 is the stable version already"):
        propose_change(spec(), name="fraud", ref=VersionRef(version="v1"))


def local_store(tmp_path: Path, name: str = "fraud") -> DeploymentStore:
    store = DeploymentStore(tmp_path)
    store.save(
        parse_deployment(
            {
                "apiVersion": "turnout.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name},
                "spec": {
                    "model": "fraud",
                    "stable": {"version": "v1"},
                    "strategy": {"canary": {"steps": [10, 50]}},
                },
            }
        )
    )
    return store


def test_propose_into_the_local_store_keeps_the_rest_of_the_spec(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    target = LocalTarget(tmp_path)
    done = target.propose("fraud", VersionRef(version="v2"))
    assert (done.stable, done.changed) == ("v1", True)
    md = store.load("fraud")
    assert md.spec.candidate == VersionRef(version="v2")
    assert md.spec.strategy.canary.steps == [10, 50]
    again = target.propose("fraud", VersionRef(version="v2"))
    assert again.changed is False and again.said == "candidate v2 already proposed"


def test_propose_into_a_missing_local_deployment_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"no ModelDeployment 'fraud' in .*turnout deploy"):
        LocalTarget(tmp_path).propose("fraud", VersionRef(version="v2"))


def cluster_object(candidate: str | None = None) -> Obj:
    obj: Obj = {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {"model": "fraud", "stable": {"version": "v1", "image": "reg/fraud:v1"}},
    }
    if candidate:
        obj["spec"]["candidate"] = {"version": candidate, "image": f"reg/fraud:{candidate}"}
    return obj


def test_propose_in_a_cluster_patches_the_candidate_at_the_read_version() -> None:
    kube = FakeKube(namespace="ml")
    before = kube.add_deployment(cluster_object())
    target = ClusterTarget(lambda: kube)
    done = target.propose("fraud", VersionRef(version="v2", image="reg/fraud:v2"))
    assert done.changed and done.stable == "v1"
    (verb, kind, name, body), *_ = kube.writes
    assert (verb, kind, name) == ("patch", "ModelDeployment", "fraud")
    assert body["spec"] == {"candidate": {"version": "v2", "image": "reg/fraud:v2", "env": {}}}
    assert body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert kube.spec("fraud")["candidate"]["image"] == "reg/fraud:v2"
    assert kube.spec("fraud")["stable"] == {"version": "v1", "image": "reg/fraud:v1"}
    assert target.where == "namespace ml"


class BusyKube(FakeKube):
    """The operator writes status between our read and our patch, ``busy`` times."""

    def __init__(self, busy: int) -> None:
        super().__init__(namespace="ml")
        self.busy = busy

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        if self.busy:
            self.busy -= 1
            self.patch_deployment_status(namespace, name, {"phase": "Idle"})
        return super().patch_deployment(namespace, name, patch)


def test_propose_in_a_cluster_reads_again_after_a_conflict() -> None:
    kube = BusyKube(busy=1)
    kube.add_deployment(cluster_object())
    ClusterTarget(lambda: kube).propose("fraud", VersionRef(version="v2", image="reg/fraud:v2"))
    assert len(kube.writes) == 3  # a conflicting patch, the operator's status, ours
    assert kube.spec("fraud")["candidate"]["version"] == "v2"


def test_propose_in_a_cluster_gives_up_when_the_object_keeps_changing() -> None:
    kube = BusyKube(busy=10)
    kube.add_deployment(cluster_object())
    with pytest.raises(TargetError, match="changed under every one of 3 attempts"):
        ClusterTarget(lambda: kube).propose("fraud", VersionRef(version="v2"))
    assert "candidate" not in kube.spec("fraud")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (None, "no ModelDeployment 'fraud' in namespace ml"),
        (cluster_object("v2"), "candidate v2 is still rolling out"),
    ],
)
def test_propose_in_a_cluster_refuses_clearly(obj: Obj | None, message: str) -> None:
    kube = FakeKube(namespace="ml")
    if obj is not None:
        kube.add_deployment(obj)
    with pytest.raises(TargetError, match=message):
        ClusterTarget(lambda: kube).propose("fraud", VersionRef(version="v3"))
    assert [w for w in kube.writes if w[0] == "patch"] == []


def test_the_cluster_target_connects_only_when_used() -> None:
    def connect() -> FakeKube:
        raise AssertionError("must not connect")

    ClusterTarget(connect, namespace="ml")


# --- notify ---------------------------------------------------------------------------------


def write(run_dir: Path, step: str, record: Record) -> None:
    RunDir(run_dir).write(step, record)


def test_notify_says_why_a_run_stopped(tmp_path: Path) -> None:
    params = RetrainParams()
    write(tmp_path, "check-drift", drift_check(max_psi=0.01, worst="hour", skip=True))
    notice = steps.notify(params, run_dir=tmp_path)
    assert notice.outcome == "skipped"
    assert notice.text.startswith("retrain fraud: skipped: max PSI 0.010 (hour) < 0.25")

    write(tmp_path, "check-drift", drift_check())
    write(tmp_path, "validate", Validation("fraud:v2", False, 19, ("prAuc: low",), "r", "m"))
    notice = steps.notify(params, run_dir=tmp_path)
    assert notice.outcome == "failed"
    assert "gate failed for fraud:v2: prAuc: low; not registered, not proposed" in notice.text

    RunDir(tmp_path).write_error("package", "disk full")
    assert steps.notify(params, run_dir=tmp_path).text == (
        "retrain fraud: failed at package: disk full"
    )


def test_notify_reports_an_interrupted_run_with_the_workflow_status(tmp_path: Path) -> None:
    write(tmp_path, "check-drift", drift_check())
    notice = steps.notify(RetrainParams(workflow_status="Failed"), run_dir=tmp_path)
    assert (notice.outcome, notice.text) == (
        "incomplete",
        "retrain fraud: stopped after check-drift (workflow Failed)",
    )


def test_notify_posts_to_the_webhook(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    def post(url: str, *, json: dict[str, Any], timeout: float) -> httpx.Response:
        sent.append({"url": url, "json": json, "timeout": timeout})
        return httpx.Response(204, request=httpx.Request("POST", url))

    params = RetrainParams(webhook="https://hooks.example/x")
    notice = steps.notify(params, run_dir=tmp_path, post=post)
    assert notice.webhook == "sent"
    assert sent[0]["json"] == {
        "text": "retrain fraud: stopped after nothing",
        "outcome": "incomplete",
        "model": "fraud",
    }
    assert sent[0]["timeout"] == WEBHOOK_TIMEOUT_S


def test_a_webhook_that_fails_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real request to a port nobody listens on.
    from turnout.io.processes import free_port

    params = RetrainParams(webhook=f"http://127.0.0.1:{free_port()}/hook")
    notice = steps.notify(params, run_dir=tmp_path)
    assert notice.webhook.startswith("failed: ConnectError")
    assert "webhook" in caplog.text


# --- the CLI contract -----------------------------------------------------------------------


def test_cli_a_bad_parameter_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    for args in (
        ["run", "retrain", "-p", "rows=lots", "--run-dir", str(tmp_path / "r")],
        ["step", "snapshot", "--run-dir", str(tmp_path / "r"), "--param", "force=perhaps"],
    ):
        result = CliRunner().invoke(pipeline, args)
        assert result.exit_code == 2, result.output
        assert "parameter '" in result.output and "must be" in result.output
    assert not (tmp_path / "r").exists()


def test_cli_step_reads_earlier_outputs_and_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_OUTPUTS_DIR", str(tmp_path / "outputs"))
    result = CliRunner().invoke(pipeline, ["step", "check-drift", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"check-drift failed: {tmp_path}/snapshot.json is missing: run step 'snapshot' first"
    ]
    assert RunDir(tmp_path).error("check-drift") is not None


def test_cli_step_notify_writes_its_result_for_argo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_OUTPUTS_DIR", str(tmp_path / "outputs"))
    write(tmp_path / "run", "check-drift", drift_check(max_psi=0.01, worst="hour", skip=True))
    result = CliRunner().invoke(
        pipeline, ["step", "notify", "--run-dir", str(tmp_path / "run"), "-p", "model=fraud"]
    )
    assert result.exit_code == 0, result.output
    assert "skipped: max PSI 0.010 (hour)" in result.output
    out = json.loads((tmp_path / "outputs" / "notify.json").read_text())
    assert out["outcome"] == "skipped"


def test_cli_run_refuses_a_run_dir_holding_an_earlier_run(tmp_path: Path) -> None:
    write(tmp_path, "snapshot", drift_check())
    result = CliRunner().invoke(pipeline, ["run", "retrain", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds an earlier run" in result.output


def test_cli_lists_the_parameters() -> None:
    result = CliRunner().invoke(pipeline, ["params"])
    assert result.exit_code == 0
    assert "psi_threshold" in result.output and "0.25" in result.output


def test_cli_step_propose_in_a_cluster_patches_the_model_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Argo task runs: `turnout pipeline step propose --cluster`, after package."""
    from turnout.io.kube import Kube

    kube = FakeKube(namespace="ml")
    kube.add_deployment(cluster_object())
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, **kw: kube))
    monkeypatch.setenv("TURNOUT_OUTPUTS_DIR", str(tmp_path / "outputs"))
    write(tmp_path, "package", Package("fraud:v2", "reg.example/ml/fraud:v2", "bento"))

    result = CliRunner().invoke(
        pipeline, ["step", "propose", "--run-dir", str(tmp_path), "--cluster", "-p", "namespace=ml"]
    )

    assert result.exit_code == 0, result.output
    assert kube.spec("fraud")["candidate"] == {
        "version": "v2",
        "image": "reg.example/ml/fraud:v2",
        "env": {},
    }
    proposal = json.loads((tmp_path / "outputs" / "propose.json").read_text())
    assert proposal["where"] == "namespace ml" and proposal["changed"] is True
