"""``kubectl turnout`` against FakeKube: what an operator types, sees, and leaves in the cluster.

The plugin's ``connect`` is replaced by one returning the fake (and recording the kubeconfig
and context it was asked for); ``no_http`` makes the real client's HTTP layer fail, so every
call must go through turnout/io/kube.py's interface.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.k8s.fake_kube import FakeKube, no_http  # noqa: F401
from turnout.cli import kubectl, views
from turnout.core.spec import ACTION_ANNOTATION
from turnout.io.kube import KubeError, Obj

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def ts(ago_s: float) -> str:
    return (NOW - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def md(
    name: str = "fraud",
    *,
    namespace: str = "default",
    stable: str = "v3",
    candidate: str | None = "v4",
    weight: float = 25,
    history: tuple[str, ...] = ("v3", "v2"),
    status: Obj | None = None,
) -> Obj:
    """A ModelDeployment as the API serves it, with the status the controller writes."""
    spec: Obj = {"model": "fraud", "stable": {"version": stable, "image": f"reg/fraud:{stable}"}}
    routing: Obj = {"stable": {"version": stable, "url": f"http://fraud-{stable}.{namespace}"}}
    if candidate is not None:
        spec["candidate"] = {"version": candidate, "image": f"reg/fraud:{candidate}"}
        url = f"http://fraud-{candidate}.{namespace}"
        routing["candidate"] = {"version": candidate, "url": url, "weight": weight}
    spec["strategy"] = {"type": "Canary", "canary": {"steps": [5, 25, 50]}}
    entries = [
        {
            "version": v,
            "image": f"reg/fraud:{v}",
            "promotedAt": ts(86400 * (i + 1)),
            "reason": "promoted",
        }
        for i, v in enumerate(history)
    ]
    base: Obj = {
        "phase": "Progressing" if candidate else "Idle",
        "message": "step 2 of 3: all checks passed" if candidate else "stable only",
        "routing": routing,
        "step": 1,
        "history": entries,
    }
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ts(3 * 3600)},
        "spec": spec,
        "status": {**base, **(status or {})},
    }


class Plugin:
    """Runs ``kubectl turnout ...`` against a FakeKube."""

    def __init__(self, kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kube = kube
        self.connected: list[dict[str, str | None]] = []

        def connect(*, kubeconfig: str | None, context: str | None) -> FakeKube:
            self.connected.append({"kubeconfig": kubeconfig, "context": context})
            return kube

        monkeypatch.setattr(kubectl, "connect", connect)
        monkeypatch.setattr(kubectl, "clock", lambda: NOW)
        monkeypatch.delenv("KUBECONFIG", raising=False)

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(kubectl.cli, list(args), prog_name="kubectl turnout")


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube(namespace="default")


@pytest.fixture
def run(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> Plugin:
    return Plugin(kube, monkeypatch)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def failed(result: Result) -> str:
    """The one-line error a failed command prints (no traceback)."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# --- status ---------------------------------------------------------------------------------


def test_status_without_name_is_a_table_of_the_namespace(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud"))
    kube.add_deployment(md("churn", candidate=None))
    kube.add_deployment(md("spam", namespace="other"))
    lines = ok(run("status")).splitlines()
    assert lines[0].split() == ["NAME", "STABLE", "CANDIDATE", "STRATEGY", "WEIGHT", "PHASE", "AGE"]
    assert [line.split() for line in lines[1:]] == [
        ["churn", "v3", "-", "Canary", "0", "Idle", "3h"],
        ["fraud", "v3", "v4", "Canary", "25", "Progressing", "3h"],
    ]


def test_status_all_namespaces_adds_the_namespace_column(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud"))
    kube.add_deployment(md("spam", namespace="other", candidate=None))
    lines = ok(run("status", "-A")).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["default", "fraud", "v3"],
        ["other", "spam", "v3"],
    ]


def test_status_of_an_empty_namespace_says_so(run: Plugin) -> None:
    assert ok(run("status", "-n", "prod")).strip() == "No resources found in prod namespace."


def test_status_name_shows_routing_checks_experiment_conditions_and_history(
    run: Plugin, kube: FakeKube
) -> None:
    checks = [
        {"name": "errorRate", "value": 0.002, "threshold": 0.01, "passed": True, "at": ts(5)},
        {"name": "latencyP99Ms", "value": 140.0, "threshold": 100, "passed": False, "at": ts(5)},
        {"name": "shadowAgreement", "value": None, "threshold": 0.95, "kind": "min",
         "passed": True, "at": ts(5)},
    ]  # fmt: skip
    experiment = {
        "metric": "conversion",
        "arms": {"stable": {"n": 1200, "mean": 0.1}, "candidate": {"n": 1180, "mean": 0.12}},
        "lift": 0.02,
        "ci": [0.001, 0.039],
        "pValue": 0.012,
        "decision": "Pending",
    }
    conditions = [
        {
            "type": "SpecValid",
            "status": "False",
            "reason": "InvalidSpec",
            "message": "spec.strategy.canary.steps: steps must increase",
            "lastTransitionTime": ts(1800),
        }
    ]
    status = {
        "checks": checks,
        "failedChecks": 1,
        "lastAnalysisAt": ts(5),
        "experiment": experiment,
        "conditions": conditions,
        "rolloutStartedAt": ts(600),
    }
    kube.add_deployment(md("fraud", status=status))
    out = ok(run("status", "fraud"))
    assert "Phase:      Progressing (rollout started 10m ago)" in out
    assert "Message:    step 2 of 3: all checks passed" in out
    assert "Step:       2 of 3 (25%), failed analyses 1/2" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["stable", "v3", "75%", "http://fraud-v3.default"] in rows
    assert ["candidate", "v4", "25%", "http://fraud-v4.default"] in rows
    assert ["errorRate", "0.002", "<=", "0.01", "pass"] in rows
    assert ["latencyP99Ms", "140", "<=", "100", "FAIL"] in rows
    assert ["shadowAgreement", "no", "data", ">=", "0.95", "pass"] in rows
    assert "Experiment: conversion: stable n=1200 mean=0.1  candidate n=1180 mean=0.12" in out
    assert "lift +0.0200 CI [+0.0010, +0.0390] p=0.012 -> Pending" in out
    assert (
        "Warning:    spec rejected, the last good spec keeps running: "
        "spec.strategy.canary.steps: steps must increase"
    ) in out
    assert ["SpecValid", "False", "InvalidSpec", "30m", "spec.strategy.canary.steps:"] in [
        r[:5] for r in rows
    ]
    assert ["v3", "reg/fraud:v3"] in [r[:2] for r in rows]
    assert ["v2", "reg/fraud:v2"] in [r[:2] for r in rows]


def test_status_name_before_the_controller_ran(run: Plugin, kube: FakeKube) -> None:
    obj = md("fraud")
    del obj["status"]
    kube.add_deployment(obj)
    out = ok(run("status", "fraud"))
    assert "Phase:      Idle" in out
    assert "Routing:    none yet (no version is ready)" in out


def test_status_of_a_missing_name_fails_naming_it(run: Plugin) -> None:
    line = failed(run("status", "nope"))
    assert line == 'error: modeldeployment.turnout.dev "nope" not found in namespace "default"'


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (119, "119s"), (120, "2m"), (200, "3m20s"), (599, "9m59s"), (600, "10m"),
     (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (5 * 3600 + 600, "5h10m"), (30 * 3600, "30h"),
     (3 * 86400 + 4 * 3600, "3d4h"), (12 * 86400, "12d"), (-5, "0s")],
)  # fmt: skip
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    assert views.age(NOW - timedelta(seconds=seconds), NOW) == shown


# --- actions --------------------------------------------------------------------------------

RV_LOCKED = "the patch carries the resourceVersion it read"


def last_patch(kube: FakeKube) -> Obj:
    verb, kind, _, body = kube.writes[-1]
    assert (verb, kind) == ("patch", "ModelDeployment")
    assert "resourceVersion" in body["metadata"], RV_LOCKED
    return body


def test_rollback_with_a_candidate_removes_it(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud", candidate="v4"))
    out = ok(run("rollback", "fraud"))
    assert out == "modeldeployment.turnout.dev/fraud: removed candidate v4; v3 serves all traffic\n"
    assert "candidate" not in kube.spec("fraud")
    assert kube.spec("fraud")["stable"]["version"] == "v3"
    assert last_patch(kube)["spec"] == {"candidate": None}


def test_rollback_without_a_candidate_returns_to_the_previous_stable(
    run: Plugin, kube: FakeKube
) -> None:
    kube.add_deployment(md("fraud", stable="v3", candidate=None, history=("v3", "v2")))
    out = ok(run("rollback", "fraud"))
    assert out.startswith("modeldeployment.turnout.dev/fraud: stable v3 -> v2 (served as stable")
    assert kube.spec("fraud")["stable"] == {"version": "v2", "image": "reg/fraud:v2", "env": {}}


def test_rollback_to_a_named_version(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud", stable="v3", candidate="v4", history=("v3", "v2", "v1")))
    lines = ok(run("rollback", "fraud", "--to", "v1")).splitlines()
    assert (
        lines[0] == "modeldeployment.turnout.dev/fraud: removed candidate v4; v3 serves all traffic"
    )
    assert lines[1].startswith("modeldeployment.turnout.dev/fraud: stable v3 -> v1")
    spec = kube.spec("fraud")
    assert (spec["stable"]["version"], "candidate" in spec) == ("v1", False)


def test_rollback_to_an_unknown_version_lists_the_known_ones(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud", history=("v3", "v2")))
    line = failed(run("rollback", "fraud", "--to", "v9"))
    assert line == "error: 'v9' is not a past stable version of fraud (history: v2, v3)"
    assert kube.writes == []
    assert kube.spec("fraud")["candidate"]["version"] == "v4"


def test_rollback_with_nothing_to_roll_back_to(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud", stable="v1", candidate=None, history=("v1",)))
    line = failed(run("rollback", "fraud"))
    assert line == "error: fraud has no earlier stable version to roll back to"
    assert kube.writes == []


@pytest.mark.parametrize("word", ["promote", "abort"])
def test_promote_and_abort_set_the_action_annotation(
    run: Plugin, kube: FakeKube, word: str
) -> None:
    kube.add_deployment(md("fraud"))
    out = ok(run(word, "fraud"))
    assert out == (
        f"modeldeployment.turnout.dev/fraud: {word} of v4 requested "
        f"(annotation turnout.dev/action={word})\n"
    )
    stored = kube.get_deployment("default", "fraud")
    assert stored["metadata"]["annotations"] == {ACTION_ANNOTATION: word}
    assert stored["metadata"]["generation"] == 1  # the spec did not change
    assert "spec" not in last_patch(kube)


@pytest.mark.parametrize("word", ["promote", "abort"])
def test_promote_and_abort_refuse_without_a_candidate(
    run: Plugin, kube: FakeKube, word: str
) -> None:
    kube.add_deployment(md("fraud", candidate=None))
    assert failed(run(word, "fraud")) == f"error: fraud has no candidate to {word}"
    assert kube.writes == []


def test_pause_and_resume_set_spec_paused(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud"))
    out = ok(run("pause", "fraud"))
    assert out == "modeldeployment.turnout.dev/fraud: paused; weights frozen (spec.paused=true)\n"
    assert kube.spec("fraud")["paused"] is True
    assert last_patch(kube)["spec"] == {"paused": True}
    out = ok(run("resume", "fraud"))
    assert out == "modeldeployment.turnout.dev/fraud: resumed (spec.paused=false)\n"
    assert kube.spec("fraud")["paused"] is False


def test_pause_when_paused_sends_nothing(run: Plugin, kube: FakeKube) -> None:
    obj = md("fraud")
    obj["spec"]["paused"] = True
    kube.add_deployment(obj)
    out = ok(run("pause", "fraud"))
    assert out.endswith("(spec.paused=true) (no change)\n")
    assert kube.writes == []


class RacingKube(FakeKube):
    """The operator writes status between the plugin's read and its patch, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__(namespace="default")
        self.races = races
        self.raced = 0

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        if self.raced < self.races:
            self.raced += 1
            self.patch_deployment_status(namespace, name, {"message": f"reconciled {self.raced}"})
        return super().patch_deployment(namespace, name, patch)


def test_a_conflict_is_retried_on_a_fresh_read(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = RacingKube(races=1)
    kube.add_deployment(md("fraud"))
    run = Plugin(kube, monkeypatch)
    out = ok(run("rollback", "fraud"))
    assert out == "modeldeployment.turnout.dev/fraud: removed candidate v4; v3 serves all traffic\n"
    patches = [w for w in kube.writes if w[0] == "patch"]
    assert len(patches) == 2  # the first was refused as stale
    assert (
        patches[0][3]["metadata"]["resourceVersion"] != patches[1][3]["metadata"]["resourceVersion"]
    )
    assert "candidate" not in kube.spec("fraud")
    assert kube.status("fraud")["message"] == "reconciled 1"  # their write was not overwritten


def test_an_object_that_keeps_changing_gives_up_with_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = RacingKube(races=99)
    kube.add_deployment(md("fraud"))
    line = failed(Plugin(kube, monkeypatch)("pause", "fraud"))
    assert line == (
        "error: modeldeployment.turnout.dev/fraud changed under every one of 3 attempts; try again"
    )
    assert kube.spec("fraud").get("paused") is None


def test_an_invalid_spec_is_shown_but_not_acted_on(run: Plugin, kube: FakeKube) -> None:
    obj = md("fraud")
    obj["spec"]["strategy"]["canary"]["steps"] = [50, 10]  # got past an older CRD
    kube.add_deployment(obj)
    assert "Candidate:  v4 (reg/fraud:v4)" in ok(run("status", "fraud"))
    line = failed(run("pause", "fraud"))
    assert line.startswith("error: modeldeployment.turnout.dev/fraud has an invalid spec (")
    assert "steps must increase" in line
    assert line.endswith("fix it with kubectl edit mdep fraud")
    assert kube.writes == []


# --- namespaces, kubeconfig and errors -------------------------------------------------------


def test_namespace_flag_is_honoured_anywhere_on_the_line(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud", namespace="default"))
    kube.add_deployment(md("fraud", namespace="prod"))
    ok(run("-n", "prod", "pause", "fraud"))
    ok(run("rollback", "fraud", "--namespace", "prod"))
    prod, default = kube.spec("fraud", "prod"), kube.spec("fraud", "default")
    assert (prod.get("paused"), "candidate" in prod) == (True, False)
    assert (default.get("paused"), "candidate" in default) == (None, True)


def test_namespace_defaults_to_the_kubeconfig_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube(namespace="team-a")
    kube.add_deployment(md("fraud", namespace="team-a"))
    kube.add_deployment(md("fraud", namespace="default"))
    ok(Plugin(kube, monkeypatch)("pause", "fraud"))
    assert kube.spec("fraud", "team-a")["paused"] is True
    assert "paused" not in kube.spec("fraud", "default")


def test_context_and_kubeconfig_reach_the_connection(run: Plugin, kube: FakeKube) -> None:
    ok(run("--context", "staging", "status", "--kubeconfig", "/tmp/kc"))
    assert run.connected == [{"kubeconfig": "/tmp/kc", "context": "staging"}]


def test_kubeconfig_env_is_used_without_the_flag(
    run: Plugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/a/config:/b/config")
    ok(run("status"))
    assert run.connected == [{"kubeconfig": "/a/config:/b/config", "context": None}]


def test_all_namespaces_is_refused_by_actions(run: Plugin, kube: FakeKube) -> None:
    kube.add_deployment(md("fraud"))
    result = run("-A", "pause", "fraud")
    assert result.exit_code == 2
    assert "-A/--all-namespaces works with status only" in result.output
    assert kube.writes == []


@pytest.mark.parametrize("command", ["promote", "abort", "pause", "resume", "rollback"])
def test_actions_on_a_missing_object_fail_naming_it(run: Plugin, command: str) -> None:
    line = failed(run("-n", "prod", command, "nope"))
    assert line == 'error: modeldeployment.turnout.dev "nope" not found in namespace "prod"'


def test_an_unreachable_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(**_: Any) -> Any:
        raise KubeError(0, "API server unreachable: HTTPSConnectionPool(host='10.0.0.1')\n"
                           "Max retries exceeded")  # fmt: skip

    monkeypatch.setattr(kubectl, "connect", connect)
    result = CliRunner().invoke(kubectl.cli, ["status"])
    line = failed(result)
    assert line == (
        "error: API server unreachable: HTTPSConnectionPool(host='10.0.0.1') Max retries exceeded"
    )


def test_an_unreadable_kubeconfig_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real connect: a kubeconfig that is not one fails before any HTTP."""
    bad = tmp_path / "config"
    bad.write_text("not: a kubeconfig\n")
    result = CliRunner().invoke(kubectl.cli, ["status", "--kubeconfig", str(bad)])
    assert failed(result).startswith("error: kubeconfig: ")


# --- kubectl finds the plugin ---------------------------------------------------------------


def test_kubectl_runs_the_plugin() -> None:
    """``kubectl turnout --help`` through the real kubectl, finding kubectl-turnout on PATH."""
    candidates = [ROOT / ".tools/bin/kubectl", Path("/usr/bin/kubectl")]
    binary = next((p for p in candidates if p.exists()), None)
    assert binary is not None, f"no kubectl binary at {' or '.join(map(str, candidates))}"
    scripts = Path(sys.executable).parent
    assert (scripts / "kubectl-turnout").exists(), "run `pip install -e .` to get the script"
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert shutil.which("kubectl-turnout", path=env["PATH"]) is not None
    out = subprocess.run(
        [str(binary), "turnout", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Usage: kubectl turnout [OPTIONS] COMMAND [ARGS]..." in out.stdout
    assert "rollback" in out.stdout
