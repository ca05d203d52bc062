"""The Argo workflows (workflows/definitions.py): retrain on a schedule or on demand, batch-predict.

Checked the way a cluster and a platform engineer would: every rendered object against the Argo
Workflows v4 CRD schemas with unknown fields rejected (tests/k8s/validate.py), through Hera's
models and back, the checked-in copies current, the chart's copy rendered by the real helm, and
what one notices reading them: the schedule cannot pile up runs, a run with no drift or a
failed gate stops before packaging, notify always runs, retries back off, every container has
resources and (kaniko aside) runs non-root on a read-only filesystem, and each command line is
one the turnout CLI accepts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from hera.workflows import CronWorkflow, WorkflowTemplate

from tests.k8s.conftest import CHART, NAMESPACE, ROOT, Render
from tests.k8s.validate import errors
from workflows import definitions
from workflows.batch_cli import batch_merge_command, batch_predict_command
from workflows.cli import step_command
from workflows.params import RetrainParams
from workflows.pipeline import RETRAIN

Obj = dict[str, Any]
FILES = ("retrain-cronworkflow.yaml", "retrain-workflowtemplate.yaml")
ALL_FILES = (*FILES, "batch-predict-workflowtemplate.yaml")
REGISTRY = "registry.example.com/ml"
ARGO_PARAM = re.compile(r"\{\{workflow\.parameters\.([\w-]+)\}\}")


def manifest(name: str) -> Obj:
    doc = yaml.safe_load((definitions.MANIFESTS_DIR / name).read_text())
    assert isinstance(doc, dict)
    return doc


def workflow_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["workflowSpec"] if obj["kind"] == "CronWorkflow" else obj["spec"]
    return spec


def templates(obj: Obj) -> dict[str, Obj]:
    return {t["name"]: t for t in workflow_spec(obj)["templates"]}


def dag(obj: Obj) -> dict[str, Obj]:
    spec = workflow_spec(obj)
    [entry] = [t for t in spec["templates"] if t["name"] == spec["entrypoint"]]
    return {t["name"]: t for t in entry["dag"]["tasks"]}


def containers(obj: Obj) -> Iterator[tuple[Obj, Obj]]:
    """(template, its container) for every pod the workflow runs."""
    for t in workflow_spec(obj)["templates"]:
        if "container" in t or "script" in t:
            yield t, t.get("container") or t["script"]


def defaults(obj: Obj) -> dict[str, str]:
    return {p["name"]: p.get("value", "") for p in workflow_spec(obj)["arguments"]["parameters"]}


def with_defaults(args: list[str], obj: Obj) -> list[str]:
    """The command line as a pod runs it with the workflow's default parameters."""
    values = defaults(obj)
    return [ARGO_PARAM.sub(lambda m: values[m.group(1)], a) for a in args]


# --- generated, valid, round-trips ----------------------------------------------------------


def test_checked_in_files_are_current() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in definitions.rendered().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], "stale vs workflows/definitions.py: run `turnout render workflows`"
    # Nothing else lies around in either directory.
    for directory in (definitions.MANIFESTS_DIR, definitions.CHART_DIR):
        assert sorted(p.name for p in directory.iterdir()) == sorted(ALL_FILES)


@pytest.mark.parametrize("name", ALL_FILES)
def test_rendered_workflows_are_valid_argo_v4_objects(name: str) -> None:
    obj = manifest(name)
    assert obj["apiVersion"] == "argoproj.io/v1alpha1"
    assert errors(obj) == []


def test_the_validation_rejects_unknown_fields() -> None:
    obj = manifest("retrain-cronworkflow.yaml")
    obj["spec"]["concurrencyPolicyy"] = "Forbid"
    workflow_spec(obj)["templates"][0]["container"]["imagePullPolicyy"] = "Always"
    found = errors(obj)
    assert any("concurrencyPolicyy" in e for e in found)
    assert any("imagePullPolicyy" in e for e in found)


@pytest.mark.parametrize("name", ALL_FILES)
def test_rendered_workflows_round_trip_through_heras_models(name: str) -> None:
    text = (definitions.MANIFESTS_DIR / name).read_text()
    obj = yaml.safe_load(text)
    cls = CronWorkflow if obj["kind"] == "CronWorkflow" else WorkflowTemplate
    loaded = cls.from_yaml(text)
    assert isinstance(loaded, cls)
    assert loaded.to_dict() == obj  # nothing dropped or renamed


# --- the schedule ---------------------------------------------------------------------------


def test_scheduled_runs_never_overlap_and_history_is_bounded() -> None:
    spec = manifest("retrain-cronworkflow.yaml")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert (spec["schedules"], spec["timezone"]) == (["0 3 * * *"], "UTC")
    assert 0 < spec["successfulJobsHistoryLimit"] <= spec["failedJobsHistoryLimit"] <= 10
    # An on-demand run and a scheduled one share the model store: one at a time.
    for name in FILES:
        mutexes = workflow_spec(manifest(name))["synchronization"]["mutexes"]
        assert mutexes == [{"name": "turnout-retrain"}]


def test_schedule_image_and_registry_are_parameters() -> None:
    cron = definitions.retrain_cron_workflow(
        schedule="*/15 * * * *",
        timezone="Europe/Paris",
        image="example.com/turnout:dev",
        registry=REGISTRY,
    ).to_dict()
    assert (cron["spec"]["schedules"], cron["spec"]["timezone"]) == (
        ["*/15 * * * *"],
        "Europe/Paris",
    )
    images = {c["image"] for t, c in containers(cron) if t["name"] != "build-image"}
    assert images == {"example.com/turnout:dev"}
    assert defaults(cron)["image_registry"] == REGISTRY


def test_the_on_demand_template_runs_the_same_workflow() -> None:
    cron = manifest("retrain-cronworkflow.yaml")
    template = manifest("retrain-workflowtemplate.yaml")
    assert (template["kind"], template["metadata"]["name"]) == ("WorkflowTemplate", "retrain")
    assert workflow_spec(cron) == workflow_spec(template)


# --- the DAG --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrain() -> Obj:
    return manifest("retrain-workflowtemplate.yaml")


def guards(tasks: dict[str, Obj], name: str) -> set[str]:
    """Every `when` that must hold for task ``name`` to run: its own and, through
    ``depends: X.Succeeded`` (a skipped X omits its dependents), its dependencies'."""
    task = tasks[name]
    found = {task["when"]} if "when" in task else set()
    for term in filter(None, re.split(r"\s*&&\s*", task.get("depends", ""))):
        dep, _, result = term.partition(".")
        assert result == "Succeeded", f"{name} depends on {term}: a skipped {dep} would not stop it"
        found |= guards(tasks, dep)
    return found


def test_the_dag_runs_the_pipeline_in_order(retrain: Obj) -> None:
    tasks = dag(retrain)
    assert list(tasks) == [
        "snapshot",
        "check-drift",
        "train",
        "validate",
        "gate-refused",
        "build-bento",
        "build-image",
        "propose",
    ]
    chain = [n for n in tasks if n != "gate-refused"]
    assert [tasks[n].get("depends") for n in chain[1:]] == [
        f"{before}.Succeeded" for before in chain[:-1]
    ]


def test_a_refused_candidate_fails_the_run(retrain: Obj) -> None:
    """validate succeeds either way (its verdict is an output); a refusal must still end the
    run Failed, as `turnout pipeline run` exits 1, so alerts on failed runs see it."""
    refused = dag(retrain)["gate-refused"]
    assert refused["depends"] == "validate.Succeeded"
    assert refused["when"] == "{{tasks.validate.outputs.parameters.passed}} == false"
    container = templates(retrain)["gate-refused"]["container"]
    assert container["command"] == ["python", "-c"]
    assert "sys.exit('the validation gate refused" in container["args"][0]


def test_no_drift_stops_before_training_and_a_failed_gate_before_packaging(
    retrain: Obj,
) -> None:
    tasks = dag(retrain)
    skip = "{{tasks.check-drift.outputs.parameters.skip}} == false"
    passed = "{{tasks.validate.outputs.parameters.passed}} == true"
    assert tasks["train"]["when"] == skip
    assert tasks["build-bento"]["when"] == passed
    for name in ("train", "validate"):
        assert guards(tasks, name) == {skip}
    for name in ("build-bento", "build-image", "propose"):
        assert guards(tasks, name) == {skip, passed}
    # The decisions are read from the files the steps write.
    outputs = {
        t: {
            p["name"]: p["valueFrom"]["path"]
            for p in templates(retrain)[t]["outputs"]["parameters"]
        }
        for t in ("check-drift", "validate")
    }
    assert outputs["check-drift"]["skip"] == "/tmp/outputs/skip"
    assert outputs["validate"]["passed"] == "/tmp/outputs/passed"


def test_the_exit_handler_runs_notify_with_the_runs_status(retrain: Obj) -> None:
    spec = workflow_spec(retrain)
    assert spec["onExit"] == "notify"
    assert "notify" not in dag(retrain)  # not a task: it runs however the DAG ended
    args = templates(retrain)["notify"]["container"]["args"]
    assert args[:3] == ["pipeline", "step", "notify"]
    assert "workflow_status={{workflow.status}}" in args


def test_each_task_runs_its_pipeline_step_with_arguments_the_cli_accepts(retrain: Obj) -> None:
    steps = [s.name for s in RETRAIN]
    ran = []
    for t, c in containers(retrain):
        if c["image"] == definitions.KANIKO_IMAGE or t["name"] == definitions.GATE_REFUSED:
            continue
        assert c["command"] == ["turnout"]
        args = with_defaults(c["args"], retrain)
        assert args[:2] == ["pipeline", "step"]
        ran.append(args[2])
        ctx = step_command.make_context("step", args[2:])  # parses: flags and choices exist
        assert (ctx.params["run_dir"], ctx.params["cluster"]) == (Path("/work/run"), True)
        params = RetrainParams.from_pairs(ctx.params["pairs"])  # names, types and values
        assert params.model == "fraud" and params.image_registry == definitions.REGISTRY
        # Every output parameter the local pipeline declares is one Argo collects.
        [step] = [s for s in RETRAIN if s.name == args[2]]
        declared = {p["name"] for p in t["outputs"]["parameters"]}
        assert declared == {"result", *step.outputs}
    assert sorted(ran) == sorted(steps)


def test_every_pipeline_parameter_is_a_workflow_parameter(retrain: Obj) -> None:
    run_wide = {"workflow_status"}  # the exit handler's own
    assert set(defaults(retrain)) == set(RetrainParams.__dataclass_fields__) - run_wide
    force = next(
        p for p in workflow_spec(retrain)["arguments"]["parameters"] if p["name"] == "force"
    )
    assert force["enum"] == ["true", "false"]


def test_the_image_is_built_in_cluster_from_the_bento(retrain: Obj) -> None:
    kaniko = templates(retrain)["build-image"]
    c = kaniko["container"]
    assert c["image"] == "gcr.io/kaniko-project/executor:v1.23.2"
    assert "--context=dir:///work/run/bento" in c["args"]
    assert "--dockerfile=/work/run/bento/env/docker/Dockerfile" in c["args"]
    assert "--destination={{inputs.parameters.image}}" in c["args"]
    # The destination is the one package computed: <image_registry>/<model>:<version>.
    [arg] = dag(retrain)["build-image"]["arguments"]["parameters"]
    assert arg == {"name": "image", "value": "{{tasks.build-bento.outputs.parameters.image}}"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/work"].get("readOnly") is True
    assert mounts["/kaniko/.docker"]["name"] == "registry-auth"
    volumes = {v["name"]: v for v in workflow_spec(retrain)["volumes"]}
    assert volumes["registry-auth"]["secret"]["optional"] is True


def test_propose_patches_the_modeldeployment_in_the_cluster(retrain: Obj) -> None:
    args = templates(retrain)["propose"]["container"]["args"]
    assert args[:3] == ["pipeline", "step", "propose"] and "--cluster" in args
    assert workflow_spec(retrain)["serviceAccountName"] == "turnout-retrain"
    assert workflow_spec(retrain)["automountServiceAccountToken"] is True


def test_the_run_directory_is_a_volume_made_per_run(retrain: Obj) -> None:
    [claim] = workflow_spec(retrain)["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "work"
    assert claim["spec"]["resources"]["requests"]["storage"]
    for t, c in containers(retrain):
        if t["name"] == definitions.GATE_REFUSED:  # reads nothing: it only fails the run
            continue
        assert "/work" in {m["mountPath"] for m in c["volumeMounts"]}, t["name"]
        if c["image"] != definitions.KANIKO_IMAGE:
            assert "/var/lib/turnout" in {m["mountPath"] for m in c["volumeMounts"]}, t["name"]


# --- what every pod gets --------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_step_retries_with_backoff(name: str) -> None:
    for t, _ in containers(manifest(name)):
        if t["name"] == definitions.GATE_REFUSED:  # a verdict, not a fault: retrying can't help
            continue
        retry = t["retryStrategy"]
        assert int(retry["limit"]) >= 1, t["name"]
        assert retry["retryPolicy"] in ("Always", "OnError", "OnFailure", "OnTransientError")
        assert set(retry["backoff"]) == {"duration", "factor", "maxDuration"}, t["name"]
        assert int(retry["backoff"]["factor"]) >= 2


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_container_has_resources(name: str) -> None:
    for t, c in containers(manifest(name)):
        resources = c["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), t["name"]
        assert "memory" in resources["limits"], t["name"]


@pytest.mark.parametrize("name", ALL_FILES)
def test_turnout_containers_run_non_root_on_a_read_only_filesystem(name: str) -> None:
    obj = manifest(name)
    volumes = {v["name"]: v for v in workflow_spec(obj)["volumes"]}
    checked = 0
    for t, c in containers(obj):
        if c["image"] == definitions.KANIKO_IMAGE:
            continue
        checked += 1
        assert c["securityContext"] == {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }, t["name"]
        pod = t["securityContext"]
        assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"]) == (True, 10001, 10001)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        [tmp] = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]], t["name"]
    assert checked >= 3


def test_kaniko_is_root_but_confined(retrain: Obj) -> None:
    # Within the baseline Pod Security Standard: not privileged, and only capabilities from
    # its allowed list (the namespace must admit baseline; every other pod meets restricted).
    kaniko = templates(retrain)["build-image"]
    sc = kaniko["container"]["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "KILL",
    }
    assert kaniko["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


# --- batch prediction -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> Obj:
    return manifest("batch-predict-workflowtemplate.yaml")


def test_batch_predict_fans_out_one_pod_per_chunk(batch: Obj) -> None:
    tasks = dag(batch)
    assert list(tasks) == ["split", "score", "merge"]
    score = tasks["score"]
    assert score["withParam"] == "{{tasks.split.outputs.parameters.chunks}}"
    assert score["depends"] == "split.Succeeded"
    assert score["arguments"]["parameters"] == [{"name": "index", "value": "{{item}}"}]
    assert tasks["merge"]["depends"] == "score.Succeeded"
    [out] = templates(batch)["split"]["outputs"]["parameters"]
    assert (out["name"], out["valueFrom"]["path"]) == ("chunks", "/tmp/outputs/chunks")
    assert set(defaults(batch)) == {"model", "input", "output", "chunks"}


def test_batch_commands_are_ones_the_cli_accepts(batch: Obj) -> None:
    values = {**defaults(batch), "input": "/var/lib/turnout/in.csv", "output": "/tmp/o.parquet"}

    def line(template: str) -> list[str]:
        args = templates(batch)[template]["container"]["args"]
        args = [a.replace("{{inputs.parameters.index}}", "2") for a in args]
        return [ARGO_PARAM.sub(lambda m: values[m.group(1)], a) for a in args]

    score = line("score")
    assert score[0] == "batch-predict"
    ctx = batch_predict_command.make_context("batch-predict", score[1:])
    assert (ctx.params["chunk_index"], ctx.params["chunk_count"]) == (2, 4)
    merge = line("merge")
    assert merge[0] == "batch-merge"
    ctx = batch_merge_command.make_context("batch-merge", merge[1:])
    assert (ctx.params["chunk_count"], ctx.params["remove_parts"]) == (4, True)
    with pytest.raises(click.UsageError):  # sanity: a wrong flag would be caught
        batch_predict_command.make_context("batch-predict", [*score[1:], "--chunks", "4"])


def _split(
    tmp_path: Path, batch: Obj, *, chunks: str, input: Path
) -> subprocess.CompletedProcess[str]:
    script = templates(batch)["split"]["script"]
    env = {e["name"]: e["value"] for e in script["env"]}
    assert env == {
        "CHUNKS": "{{workflow.parameters.chunks}}",
        "INPUT": "{{workflow.parameters.input}}",
        "OUTPUTS": "/tmp/outputs",
    }
    run_env = {**os.environ, "CHUNKS": chunks, "INPUT": str(input), "OUTPUTS": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", script["source"]], env=run_env, capture_output=True, text=True
    )


def test_split_lists_the_chunks_and_refuses_a_missing_input(tmp_path: Path, batch: Obj) -> None:
    data = tmp_path / "in.csv"
    data.write_text("amount\n1\n")
    out = _split(tmp_path, batch, chunks="3", input=data)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "chunks").read_text()) == [0, 1, 2]
    out = _split(tmp_path, batch, chunks="3", input=tmp_path / "missing.csv")
    assert out.returncode != 0 and "missing.csv: file not found" in out.stderr
    out = _split(tmp_path, batch, chunks="zero", input=data)
    assert out.returncode != 0 and "chunks must be a whole number" in out.stderr


# --- the chart's copy -----------------------------------------------------------------------


def chart_objects(render: Render, *args: str) -> list[Obj]:
    return render("--set", "retrain.enabled=true", "--set", f"retrain.registry={REGISTRY}", *args)


def of_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_the_chart_ships_the_same_workflows(render: Render) -> None:
    objs = chart_objects(render, "--set", f"retrain.registry={definitions.REGISTRY}")
    found = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for name in ALL_FILES:
        expected = manifest(name)
        obj = found[expected["kind"], expected["metadata"]["name"]]
        # With the defaults of both, the chart's copy is the manifest, in the release's namespace.
        assert obj["spec"] == expected["spec"], name
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "turnout"
        assert errors(obj) == []


def test_chart_values_reach_the_workflows(render: Render) -> None:
    objs = chart_objects(
        render,
        "--set",
        "retrain.schedule=*/30 * * * *",
        "--set",
        "retrain.timezone=Europe/Berlin",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "retrain.model=churn",
        "--set",
        "retrain.source=/var/lib/turnout/data/churn.parquet",
    )
    cron = of_kind(objs, "CronWorkflow")["retrain"]
    assert (cron["spec"]["schedules"], cron["spec"]["timezone"]) == (
        ["*/30 * * * *"],
        "Europe/Berlin",
    )
    for name in ("retrain", "batch-predict"):
        obj = of_kind(objs, "WorkflowTemplate")[name]
        images = {c["image"] for _, c in containers(obj) if c["image"] != definitions.KANIKO_IMAGE}
        assert images == {"ghcr.io/turnout/turnout:9.9.9"}
    params = defaults(cron)
    assert (params["model"], params["deployment"], params["image_registry"]) == (
        "churn",
        "",  # empty: the step proposes to the model's name, even after `-p model=...`
        REGISTRY,
    )
    assert params["source"] == "/var/lib/turnout/data/churn.parquet"
    assert errors(cron) == []


def test_the_chart_creates_the_model_store_and_keeps_it(render: Render) -> None:
    objs = chart_objects(render)
    claim = of_kind(objs, "PersistentVolumeClaim")["turnout-store"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert errors(claim) == []
    for o in [*of_kind(objs, "CronWorkflow").values(), *of_kind(objs, "WorkflowTemplate").values()]:
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in workflow_spec(o)["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"turnout-store"}
    objs = chart_objects(render, "--set", "retrain.store.existingClaim=models")
    assert "turnout-store" not in of_kind(objs, "PersistentVolumeClaim")
    cron = of_kind(objs, "CronWorkflow")["retrain"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "models"}} in workflow_spec(
        cron
    )["volumes"]


def _grants(objs: list[Obj], account: str) -> list[Obj]:
    roles = of_kind(objs, "Role")
    rules: list[Obj] = []
    for binding in of_kind(objs, "RoleBinding").values():
        if any(s["name"] == account for s in binding["subjects"]):
            assert binding["roleRef"]["kind"] == "Role"  # namespaced: the release's only
            rules += roles[binding["roleRef"]["name"]]["rules"]
    return rules


def _allowed(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_workflow_accounts_hold_only_what_their_steps_need(render: Render) -> None:
    objs = chart_objects(render)
    accounts = of_kind(objs, "ServiceAccount")
    for name in ("turnout-retrain", "turnout-batch-predict"):
        assert accounts[name]["automountServiceAccountToken"] is False
    retrain = _grants(objs, "turnout-retrain")
    for verb in ("create", "patch"):
        assert _allowed(retrain, "argoproj.io", "workflowtaskresults", verb)
    for verb in ("get", "patch"):
        assert _allowed(retrain, "turnout.dev", "modeldeployments", verb)
    for verb in ("create", "delete", "update"):
        assert not _allowed(retrain, "turnout.dev", "modeldeployments", verb)
    assert not _allowed(retrain, "turnout.dev", "modeldeployments/status", "patch")
    batch = _grants(objs, "turnout-batch-predict")
    assert [r["resources"] for r in batch] == [["workflowtaskresults"]]
    for rule in retrain + batch:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    for binding in of_kind(objs, "ClusterRoleBinding").values():  # nothing cluster-wide
        assert not {s["name"] for s in binding["subjects"]} & set(accounts) - {
            "turnout-operator",
            "turnout-router",
        }
    rbac = [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ServiceAccount")]
    assert [f"{o['kind']} {o['metadata']['name']}: {e}" for o in rbac for e in errors(o)] == []
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in rbac)


def test_the_chart_without_retraining_renders_none_of_it(render: Render) -> None:
    objs = render()
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"CronWorkflow", "WorkflowTemplate", "PersistentVolumeClaim"}
    # The only Roles left are the A/B ledger's (router and operator), none for a workflow.
    roles = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Role")
    assert all(name.endswith("-ab-ledger") for name in roles), roles


def test_chart_copy_escapes_argos_expressions_from_helm() -> None:
    text = (CHART / "files" / "workflows" / "retrain-cronworkflow.yaml").read_text()
    assert "{{`{{workflow.parameters.model}}`}}" in text
    bare = re.findall(r"(?<![`{]){{(?!`| \.| include|- include)", text)
    assert bare == []


def test_importing_the_definitions_leaves_other_yaml_alone() -> None:
    # Hera restyles every yaml.dump in the process when imported; the CRD and manifests/base
    # are dumped with PyYAML's defaults and must not change with import order.
    assert yaml.safe_dump({"short": "n", "lines": "a\nb"}) == "lines: 'a\n\n  b'\nshort: n\n"
    assert yaml.dump({"short": "n"}) == "short: n\n"
