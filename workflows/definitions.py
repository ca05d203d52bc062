"""The Argo Workflows objects for retraining and batch scoring, defined with Hera 7.

Why it is built this way:

- One DAG, two runners. The retrain DAG is workflows/pipeline.py's ``RETRAIN`` (steps,
  ``depends``, ``when``, output parameters), which ``turnout pipeline run retrain`` walks
  in-process; here each step becomes a pod running
  ``turnout pipeline step <name> --run-dir /work/run --cluster --param ...``, the run
  directory being a volume made for each run (``volumeClaimTemplates: work``) that the run's
  pods share, and the pipeline's parameters become the workflow's. In the cluster ``package``
  is two tasks, ``build-bento`` (turnout image) then ``build-image`` (kaniko), and the exit
  handler (``notify``) is Argo's ``onExit``, so it runs whatever happened.
- Decisions reach the DAG as one-word output parameters: check-drift writes
  ``/tmp/outputs/skip``, validate ``/tmp/outputs/passed``. Training runs only when the drift
  check did not skip; package and propose only when the gate passed. Every later task also
  depends on its predecessor having *succeeded* (a skipped task's dependents are omitted).
- Models persist between runs in the model store, a PersistentVolumeClaim mounted at the
  image's TURNOUT_HOME (/var/lib/turnout, BENTOML_HOME below it): check-drift reads the stable
  model's reference histograms there, package registers the candidate there, batch-predict
  loads models and reads and writes datasets there.
- Least privilege: turnout's containers run as the image's non-root user with a read-only root
  filesystem, no capabilities and an emptyDir at /tmp, like the chart's pods. kaniko cannot:
  it unpacks the base image over its own root filesystem as root. It gets only the
  capabilities a build needs, never privileged mode.
- The YAML is generated, never edited: ``turnout render workflows`` writes
  manifests/workflows/ (``kubectl apply``, ``argo submit --from workflowtemplate/retrain``)
  and helm/turnout/files/workflows/, where the chart's values fill in the image, schedule,
  registry, ... through Helm's ``tpl`` and Argo's own ``{{...}}`` are escaped so that Helm
  leaves them alone. tests/k8s/test_workflows.py fails when either copy is stale.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hera.workflows import (
    DAG,
    Container,
    CronWorkflow,
    Parameter,
    Resources,
    RetryPolicy,
    RetryStrategy,
    Script,
    Task,
    Workflow,
    WorkflowTemplate,
)
from hera.workflows import models as m

from workflows.params import param_info
from workflows.pipeline import RETRAIN, StepSpec
from workflows.steps import CHECK_DRIFT, PACKAGE, PROPOSE, TRAIN, VALIDATE

# Importing Hera re-registers PyYAML's str representer for every yaml.dump and yaml.safe_dump
# in the process (multi-line strings as blocks, y/n quoted), so the other files turnout
# generates (the CRD) would change with whether Hera happened to be imported. PyYAML's own go
# back; Hera's style applies to our files only, through _ArgoDumper.
yaml.representer.SafeRepresenter.add_representer(
    str, yaml.representer.SafeRepresenter.represent_str
)
yaml.Dumper.add_representer(str, yaml.representer.Representer.represent_str)


class _ArgoDumper(yaml.SafeDumper):
    """Multi-line strings (scripts) as blocks; y/Y/n/N quoted, or YAML 1.1 reads a boolean."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    if data in ("y", "Y", "n", "N"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_ArgoDumper.add_representer(str, _represent_str)

#: turnout's image; the tag is the Helm chart's appVersion.
IMAGE = "ghcr.io/turnout/turnout:0.1.0"
#: The in-cluster image builder: builds from a Dockerfile without a Docker daemon.
KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
#: Where build-image pushes model images, as ``<registry>/<model>:<version>``.
REGISTRY = "ghcr.io/turnout"
SCHEDULE = "0 3 * * *"
TIMEZONE = "UTC"
#: The defaults match what the Helm chart creates for a release named ``turnout``.
SERVICE_ACCOUNT = "turnout-retrain"
BATCH_SERVICE_ACCOUNT = "turnout-batch-predict"
STORE_CLAIM = "turnout-store"
#: A kubernetes.io/dockerconfigjson Secret with push credentials (optional: may not exist).
REGISTRY_SECRET = "turnout-registry"

RUN_DIR = "/work/run"
OUTPUTS = "/tmp/outputs"
#: The image's TURNOUT_HOME; BENTOML_HOME (the model store) is its bentoml/ directory.
STORE_PATH = "/var/lib/turnout"
BENTO_DIR = f"{RUN_DIR}/bento"
UID = 10001

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS_DIR = ROOT / "manifests" / "workflows"
CHART_DIR = ROOT / "helm" / "turnout" / "files" / "workflows"
HEADER = "# Generated from workflows/definitions.py by `turnout render workflows`; do not edit.\n"


# --- what every turnout container gets ---------------------------------------------------------


def _pod_security(*, root: bool = False) -> m.PodSecurityContext:
    if root:
        return m.PodSecurityContext(
            run_as_non_root=False,
            run_as_user=0,
            run_as_group=0,
            seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
        )
    return m.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,  # the volumes are writable by the image's user
        seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
    )


def _container_security() -> m.SecurityContext:
    return m.SecurityContext(
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        run_as_non_root=True,
        capabilities=m.Capabilities(drop=["ALL"]),
    )


def _kaniko_security() -> m.SecurityContext:
    # kaniko cannot run as non-root or on a read-only root filesystem: it unpacks the base
    # image over its own / and runs the Dockerfile's RUN lines there, as root. Confined as far
    # as a build allows: never privileged, no privilege escalation, and of root's capabilities
    # only those a build uses (chown/chmod of unpacked files, USER switches, setcap'd
    # binaries, stopping RUN lines' leftover processes), as Shipwright's kaniko strategy does:
    # the baseline Pod Security Standard, where every other pod here meets restricted.
    return m.SecurityContext(
        privileged=False,
        allow_privilege_escalation=False,
        run_as_non_root=False,
        run_as_user=0,
        capabilities=m.Capabilities(
            drop=["ALL"],
            add=["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "SETFCAP", "KILL"],
        ),
    )


def _mount(name: str, path: str, *, read_only: bool = False) -> m.VolumeMount:
    return m.VolumeMount(name=name, mount_path=path, read_only=read_only or None)


def _tmp_volume() -> m.Volume:
    return m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource(size_limit=m.Quantity("1Gi")))


def _store_volume(claim: str) -> m.Volume:
    return m.Volume(
        name="store",
        persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=claim),
    )


def _retry(policy: RetryPolicy, *, limit: int = 2) -> RetryStrategy:
    # Waits 30 s, then 60 s, ...; a step that keeps failing for 15 minutes is not retried again.
    return RetryStrategy(
        limit=limit,
        retry_policy=policy,
        backoff=m.Backoff(duration="30s", factor=m.IntOrString(2), max_duration="15m"),
    )


def _arg(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


# --- the retraining DAG ----------------------------------------------------------------------

#: Task names that differ from the step's: in the cluster, package builds the bento and the
#: image builder (kaniko) makes the image of it in the next task.
TASK_NAMES = {PACKAGE: "build-bento"}
BUILD_IMAGE = "build-image"
_RUN_WIDE = {"workflow_status"}  # set by the exit handler itself, not a run parameter

_COMPUTE = Resources(cpu_request="2", memory_request="2Gi", memory_limit="4Gi")
_SMALL = Resources(cpu_request="250m", memory_request="1Gi", memory_limit="2Gi")
#: Training, and the gate (it retrains once for reproducibility and serves the candidate).
_RESOURCES = {TRAIN: _COMPUTE, VALIDATE: _COMPUTE}
#: Steps that talk to the API server (check-drift reads the stable version, propose patches
#: the ModelDeployment) are retried when they fail; the others only compute, and fail the
#: same way again, so they are retried only on Argo errors (a node lost under them).
_RETRY_ON_FAILURE = {CHECK_DRIFT, PROPOSE}


def task_name(step: str) -> str:
    return TASK_NAMES.get(step, step)


def output(step: str, name: str) -> str:
    """An earlier task's output parameter, as a DAG task reads it."""
    return f"{{{{tasks.{task_name(step)}.outputs.parameters.{name}}}}}"


def when(spec: StepSpec) -> str | None:
    """The step's condition in Argo's syntax: ``{{tasks.check-drift...skip}} == false``."""
    if spec.when is None:
        return None
    return f"{output(spec.when.step, spec.when.output)} == {spec.when.equals}"


def depends(spec: StepSpec) -> str | None:
    """Argo's ``depends``: every dependency *succeeded* (a skipped one omits this task). What
    needs the package needs its image too."""
    names = [BUILD_IMAGE if d == PACKAGE else task_name(d) for d in spec.depends]
    return " && ".join(f"{n}.Succeeded" for n in names) or None


@dataclass(frozen=True)
class WorkflowParameter:
    name: str
    value: str
    description: str
    enum: tuple[str, ...] = ()


def retrain_parameters(
    *, model: str, deployment: str, source: str, registry: str
) -> tuple[WorkflowParameter, ...]:
    """The pipeline's parameters (workflows/params.py) as the workflow's: each step gets them all
    as ``--param name=value``; ``argo submit -p name=value`` changes one for a run."""
    defaults = {
        "model": model,
        "deployment": deployment,
        "source": source,
        "image_registry": registry,
    }
    return tuple(
        WorkflowParameter(
            name=info.name,
            value=defaults.get(info.name, info.default),
            description=f"{info.help} ({info.type})",
            enum=("true", "false") if info.type == "bool" else (),
        )
        for info in param_info()
        if info.name not in _RUN_WIDE
    )


def _step_args(step: str, parameters: tuple[WorkflowParameter, ...], *extra: str) -> list[str]:
    args = ["pipeline", "step", step, "--run-dir", RUN_DIR, "--cluster", *extra]
    for p in parameters:
        args += ["--param", f"{p.name}={_arg(p.name)}"]
    return args


def _output_file(name: str, path: str) -> Parameter:
    # A step that fails writes no outputs; the empty default keeps Argo's message the step's
    # own, and an empty skip/passed is neither true nor false: the DAG stops (fails closed).
    return Parameter(name=name, value_from=m.ValueFrom(path=path, default=""))


#: The task that fails a run whose gate refused the candidate.
GATE_REFUSED = "gate-refused"


def _turnout_container(
    spec: StepSpec, *, image: str, parameters: tuple[WorkflowParameter, ...], extra: tuple[str, ...]
) -> Container:
    return Container(
        name=task_name(spec.name),
        image=image,
        command=["turnout"],
        args=_step_args(spec.name, parameters, *extra),
        env=[m.EnvVar(name="HOME", value="/tmp")],
        resources=_RESOURCES.get(spec.name, _SMALL),
        security_context=_container_security(),
        pod_security_context=_pod_security(),
        volume_mounts=[_mount("work", "/work"), _mount("tmp", "/tmp"), _mount("store", STORE_PATH)],
        outputs=[
            _output_file("result", f"{OUTPUTS}/{spec.name}.json"),
            *(_output_file(o, f"{OUTPUTS}/{o}") for o in spec.outputs),
        ],
        retry_strategy=_retry(
            RetryPolicy.always if spec.name in _RETRY_ON_FAILURE else RetryPolicy.on_error
        ),
    )


def _kaniko_container() -> Container:
    return Container(
        name=BUILD_IMAGE,
        image=KANIKO_IMAGE,
        inputs=[Parameter(name="image", description="<registry>/<model>:<version>")],
        args=[
            f"--context=dir://{BENTO_DIR}",
            f"--dockerfile={BENTO_DIR}/env/docker/Dockerfile",
            "--destination={{inputs.parameters.image}}",
            f"--digest-file={OUTPUTS}/digest",
        ],
        resources=Resources(
            cpu_request="1",
            memory_request="2Gi",
            memory_limit="6Gi",
            ephemeral_request="10Gi",  # the base image and torch, unpacked
            ephemeral_limit="30Gi",
        ),
        security_context=_kaniko_security(),
        pod_security_context=_pod_security(root=True),
        volume_mounts=[
            _mount("work", "/work", read_only=True),
            _mount("tmp", "/tmp"),
            _mount("registry-auth", "/kaniko/.docker", read_only=True),
        ],
        outputs=[_output_file("digest", f"{OUTPUTS}/digest")],
        # Pushing is network: retried when it fails.
        retry_strategy=_retry(RetryPolicy.always),
    )


def _retrain(
    w: Workflow,
    *,
    image: str,
    registry: str,
    service_account: str,
    store_claim: str,
    registry_secret: str,
    work_size: str,
    model: str,
    deployment: str,
    source: str,
) -> None:
    """Fill in a retraining Workflow (CronWorkflow or WorkflowTemplate): the body they share."""
    parameters = retrain_parameters(
        model=model, deployment=deployment, source=source, registry=registry
    )
    main = [s for s in RETRAIN if not s.exit_handler]
    [handler] = [s for s in RETRAIN if s.exit_handler]
    w.entrypoint = "retrain"
    w.on_exit = task_name(handler.name)
    w.service_account_name = service_account
    # Argo's executor records each step's outputs through the API and the steps read and
    # patch the ModelDeployment: the pods mount a token (the ServiceAccount does not).
    w.automount_service_account_token = True
    w.active_deadline_seconds = 3 * 3600
    # One retraining at a time, whoever started it (the schedule, or `argo submit`): runs
    # share the model store and propose to the same ModelDeployment.
    w.synchronization = m.Synchronization(mutexes=[m.Mutex(name="turnout-retrain")])
    w.arguments = [
        Parameter(name=p.name, value=p.value, description=p.description, enum=list(p.enum) or None)
        for p in parameters
    ]
    w.volume_claim_templates = [
        m.PersistentVolumeClaim(
            metadata=m.ObjectMeta(name="work"),
            spec=m.PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],  # the run's pods run one after another
                resources=m.VolumeResourceRequirements(requests={"storage": m.Quantity(work_size)}),
            ),
        )
    ]
    w.volumes = [
        _tmp_volume(),
        _store_volume(store_claim),
        m.Volume(
            name="registry-auth",
            secret=m.SecretVolumeSource(
                secret_name=registry_secret,
                optional=True,  # without it kaniko pushes anonymously
                items=[m.KeyToPath(key=".dockerconfigjson", path="config.json")],
            ),
        ),
    ]
    templates: dict[str, Container] = {}
    for spec in main:
        templates[spec.name] = _turnout_container(
            spec, image=image, parameters=parameters, extra=()
        )
        if spec.name == PACKAGE:
            templates[BUILD_IMAGE] = _kaniko_container()
    # The exit handler: reads the run directory to say how far the run got and why it stopped
    # (no drift, a failed gate, an error), with Argo's verdict on the run.
    _turnout_container(
        handler,
        image=image,
        parameters=parameters,
        extra=("--param", "workflow_status={{workflow.status}}"),
    )
    # A refused candidate ends the run Failed, as it ends `turnout pipeline run` with exit 1:
    # validate itself succeeds (its verdict is an output the DAG reads), so without this task a
    # run whose gate refused would count as Succeeded and no alert on failed runs would see it.
    refused = Container(
        name=GATE_REFUSED,
        image=image,
        command=["python", "-c"],
        args=[
            "import sys; sys.exit('the validation gate refused the candidate; "
            "its report is report.md in the run directory')"
        ],
        resources=_SMALL,
        security_context=_container_security(),
        pod_security_context=_pod_security(),
        volume_mounts=[_mount("tmp", "/tmp")],
    )
    with DAG(name="retrain"):
        for spec in main:
            Task(
                name=task_name(spec.name),
                template=templates[spec.name],
                depends=depends(spec),
                when=when(spec),
            )
            if spec.name == VALIDATE:
                Task(
                    name=GATE_REFUSED,
                    template=refused,
                    depends=f"{task_name(VALIDATE)}.Succeeded",
                    when=f"{output(VALIDATE, 'passed')} == false",
                )
            if spec.name == PACKAGE:
                Task(
                    name=BUILD_IMAGE,
                    template=templates[BUILD_IMAGE],
                    depends=f"{task_name(PACKAGE)}.Succeeded",
                    arguments=[Parameter(name="image", value=output(PACKAGE, "image"))],
                )


def retrain_cron_workflow(
    *,
    image: str = IMAGE,
    registry: str = REGISTRY,
    schedule: str = SCHEDULE,
    timezone: str = TIMEZONE,
    namespace: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
    store_claim: str = STORE_CLAIM,
    registry_secret: str = REGISTRY_SECRET,
    work_size: str = "5Gi",
    model: str = "fraud",
    deployment: str | None = None,
    source: str = "synthetic",
    labels: Mapping[str, str] | None = None,
) -> CronWorkflow:
    """The scheduled retraining run. A run that is still going when the next is due makes the
    next one wait for the next schedule (``concurrencyPolicy: Forbid``)."""
    with CronWorkflow(
        name="retrain",
        namespace=namespace,
        labels=dict(labels or {}) or None,
        schedules=[schedule],
        timezone=timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=600,  # a run missed by more (controller down) is skipped
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
    ) as w:
        _retrain(
            w,
            image=image,
            registry=registry,
            service_account=service_account,
            store_claim=store_claim,
            registry_secret=registry_secret,
            work_size=work_size,
            model=model,
            deployment=deployment or "",  # empty: the model's name, also after -p model=...
            source=source,
        )
    return w


def retrain_workflow_template(
    *,
    image: str = IMAGE,
    registry: str = REGISTRY,
    namespace: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
    store_claim: str = STORE_CLAIM,
    registry_secret: str = REGISTRY_SECRET,
    work_size: str = "5Gi",
    model: str = "fraud",
    deployment: str | None = None,
    source: str = "synthetic",
    labels: Mapping[str, str] | None = None,
) -> WorkflowTemplate:
    """The same run on demand: ``argo submit --from workflowtemplate/retrain -p force=true``."""
    with WorkflowTemplate(
        name="retrain", namespace=namespace, labels=dict(labels or {}) or None
    ) as w:
        _retrain(
            w,
            image=image,
            registry=registry,
            service_account=service_account,
            store_claim=store_claim,
            registry_secret=registry_secret,
            work_size=work_size,
            model=model,
            deployment=deployment or "",  # empty: the model's name, also after -p model=...
            source=source,
        )
    return w


# --- batch prediction ------------------------------------------------------------------------

_SPLIT_SOURCE = """\
import json, os, sys
from pathlib import Path

chunks = os.environ["CHUNKS"]
if not chunks.isdigit() or int(chunks) < 1:
    sys.exit(f"batch-predict: chunks must be a whole number >= 1, got {chunks!r}")
source = Path(os.environ["INPUT"])
if not source.is_file():
    sys.exit(f"batch-predict: input {source}: file not found")
out = Path(os.environ["OUTPUTS"])
out.mkdir(parents=True, exist_ok=True)
(out / "chunks").write_text(json.dumps(list(range(int(chunks)))))
print(f"scoring {source} in {chunks} chunks")
"""


def batch_predict_workflow_template(
    *,
    image: str = IMAGE,
    namespace: str | None = None,
    service_account: str = BATCH_SERVICE_ACCOUNT,
    store_claim: str = STORE_CLAIM,
    chunks: int = 4,
    max_parallel: int = 8,
    labels: Mapping[str, str] | None = None,
) -> WorkflowTemplate:
    """Score a dataset in parallel chunks: split (check the input, list the chunk indices),
    one ``turnout batch-predict --chunk-index I --chunk-count N`` pod per chunk (``withParam``),
    then ``turnout batch-merge`` joins the parts in order into the output.

    ``input`` and ``output`` are paths in the model store volume (/var/lib/turnout), where the
    chunks also write their parts, next to the output. With ReadWriteOnce storage, chunks
    scheduled on another node wait for the volume; ReadWriteMany lets them run side by side.
    """
    with WorkflowTemplate(
        name="batch-predict",
        namespace=namespace,
        labels=dict(labels or {}) or None,
        entrypoint="batch-predict",
        service_account_name=service_account,
        automount_service_account_token=True,  # Argo's executor records outputs via the API
        active_deadline_seconds=6 * 3600,
        arguments=[
            Parameter(
                name="model", value="fraud:latest", description="Model version to score with"
            ),
            Parameter(name="input", description="CSV or Parquet file under /var/lib/turnout"),
            Parameter(name="output", description="Where the scores go (.csv or .parquet)"),
            Parameter(name="chunks", value=str(chunks), description="Pods scoring in parallel"),
        ],
        volumes=[_tmp_volume(), _store_volume(store_claim)],
    ) as w:
        common: dict[str, Any] = {
            "image": image,
            "security_context": _container_security(),
            "pod_security_context": _pod_security(),
            "retry_strategy": _retry(RetryPolicy.on_error),
        }
        split = Script(
            name="split",
            command=["python"],
            source=_SPLIT_SOURCE,
            env=[
                m.EnvVar(name="CHUNKS", value=_arg("chunks")),
                m.EnvVar(name="INPUT", value=_arg("input")),
                m.EnvVar(name="OUTPUTS", value=OUTPUTS),
            ],
            resources=Resources(cpu_request="100m", memory_request="128Mi", memory_limit="256Mi"),
            volume_mounts=[_mount("tmp", "/tmp"), _mount("store", STORE_PATH, read_only=True)],
            outputs=[Parameter(name="chunks", value_from=m.ValueFrom(path=f"{OUTPUTS}/chunks"))],
            **common,
        )
        score = Container(
            name="score",
            command=["turnout"],
            inputs=[Parameter(name="index")],
            args=[
                "batch-predict",
                _arg("model"),
                _arg("input"),
                _arg("output"),
                "--chunk-index",
                "{{inputs.parameters.index}}",
                "--chunk-count",
                _arg("chunks"),
            ],
            env=[m.EnvVar(name="HOME", value="/tmp")],
            resources=Resources(cpu_request="1", memory_request="1Gi", memory_limit="2Gi"),
            volume_mounts=[_mount("tmp", "/tmp"), _mount("store", STORE_PATH)],
            **common,
        )
        merge = Container(
            name="merge",
            command=["turnout"],
            args=[
                "batch-merge",
                _arg("output"),
                "--chunk-count",
                _arg("chunks"),
                "--remove-parts",
            ],
            env=[m.EnvVar(name="HOME", value="/tmp")],
            resources=Resources(cpu_request="250m", memory_request="512Mi", memory_limit="1Gi"),
            volume_mounts=[_mount("tmp", "/tmp"), _mount("store", STORE_PATH)],
            **common,
        )
        with DAG(name="batch-predict", parallelism=max_parallel):
            Task(name="split", template=split)
            Task(
                name="score",
                template=score,
                depends="split.Succeeded",
                with_param="{{tasks.split.outputs.parameters.chunks}}",
                arguments=[Parameter(name="index", value="{{item}}")],
            )
            Task(name="merge", template=merge, depends="score.Succeeded")
    return w


# --- rendering -------------------------------------------------------------------------------


def to_yaml(obj: Workflow) -> str:
    """One object as YAML, in Hera's reading order (name first, then scalars, lists, maps)."""
    return HEADER + obj.to_yaml(sort_keys=False, Dumper=_ArgoDumper)


@dataclass(frozen=True)
class Installation:
    """One installation's choices that the workflow objects are rendered with (image,
    registry, schedule, names of what the chart creates, ...); the defaults are the
    manifests/workflows ones. The chart's copy renders each as a Helm expression instead."""

    image: str = IMAGE
    registry: str = REGISTRY
    schedule: str = SCHEDULE
    timezone: str = TIMEZONE
    namespace: str | None = None
    service_account: str = SERVICE_ACCOUNT
    batch_service_account: str = BATCH_SERVICE_ACCOUNT
    store_claim: str = STORE_CLAIM
    registry_secret: str = REGISTRY_SECRET
    work_size: str = "5Gi"
    model: str = "fraud"
    deployment: str | None = None
    source: str = "synthetic"
    labels: Mapping[str, str] | None = None


def manifests(s: Installation = Installation()) -> dict[str, Workflow]:
    """The objects, by file name."""
    return {
        "retrain-cronworkflow.yaml": retrain_cron_workflow(
            image=s.image,
            registry=s.registry,
            schedule=s.schedule,
            timezone=s.timezone,
            namespace=s.namespace,
            service_account=s.service_account,
            store_claim=s.store_claim,
            registry_secret=s.registry_secret,
            work_size=s.work_size,
            model=s.model,
            deployment=s.deployment,
            source=s.source,
            labels=s.labels,
        ),
        "retrain-workflowtemplate.yaml": retrain_workflow_template(
            image=s.image,
            registry=s.registry,
            namespace=s.namespace,
            service_account=s.service_account,
            store_claim=s.store_claim,
            registry_secret=s.registry_secret,
            work_size=s.work_size,
            model=s.model,
            deployment=s.deployment,
            source=s.source,
            labels=s.labels,
        ),
        "batch-predict-workflowtemplate.yaml": batch_predict_workflow_template(
            image=s.image,
            namespace=s.namespace,
            service_account=s.batch_service_account,
            store_claim=s.store_claim,
            labels=s.labels,
        ),
    }


# The chart's copy: each choice is rendered as a placeholder, then replaced by the Helm
# expression reading it (the files go through `tpl` with the chart's root context). Each is a
# whole YAML scalar, so `quote` keeps a value such as "0" or "true" a string.
_HELM: dict[str, str] = {
    "image": 'include "turnout.image" .',
    "registry": ".Values.retrain.registry",
    "schedule": ".Values.retrain.schedule",
    "timezone": ".Values.retrain.timezone",
    "namespace": ".Release.Namespace",
    "service_account": 'include "turnout.serviceAccountName" (dict "ctx" . "component" "retrain")',
    "batch_service_account": (
        'include "turnout.componentName" (dict "ctx" . "component" "batch-predict")'
    ),
    "store_claim": 'include "turnout.retrainStoreClaim" .',
    "registry_secret": ".Values.retrain.registrySecret",
    "model": ".Values.retrain.model",
    "deployment": ".Values.retrain.deployment",
    "source": ".Values.retrain.source",
    "work_size": ".Values.retrain.workVolumeSize",
}
_LABELS_KEY = "turnout.dev/helm-labels"
_ARGO_EXPRESSION = re.compile(r"\{\{.*?\}\}")


def _placeholder(name: str) -> str:
    return f"HELM_{name.upper()}_END"


def _labels_include(component: str) -> Callable[[re.Match[str]], str]:
    """The chart's labels in place of the placeholder label, at its indentation."""

    def include(match: re.Match[str]) -> str:
        indent = match.group(1)
        return (
            f'{indent}{{{{- include "turnout.labels" (dict "ctx" . "component" "{component}")'
            f" | nindent {len(indent)} }}}}"
        )

    return include


def chart_manifests() -> dict[str, str]:
    """The chart's copy of every file, as Helm template text."""
    placeholders = Installation(
        **{name: _placeholder(name) for name in _HELM}, labels={_LABELS_KEY: "HELM_LABELS_END"}
    )
    files = {}
    for name, obj in manifests(placeholders).items():
        component = "batch-predict" if name.startswith("batch-predict") else "retrain"
        text = obj.to_yaml(sort_keys=False, Dumper=_ArgoDumper)
        # Argo's {{...}} become Helm string literals, which tpl prints back unchanged.
        text = _ARGO_EXPRESSION.sub(lambda x: "{{`" + x.group(0) + "`}}", text)
        for key, expression in _HELM.items():
            placeholder = _placeholder(key)
            assert not re.search(rf"['\"]{placeholder}|{placeholder}\S", text), placeholder
            text = text.replace(placeholder, f"{{{{ {expression} | quote }}}}")
        text = re.sub(
            rf"^( *){re.escape(_LABELS_KEY)}: HELM_LABELS_END$",
            _labels_include(component),
            text,
            flags=re.MULTILINE,
        )
        leftover = re.search(r"HELM_[A-Z_]+_END", text)
        assert leftover is None, f"{name}: {leftover.group(0)} was not replaced"
        files[name] = HEADER + text
    return files


def rendered() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {MANIFESTS_DIR / name: to_yaml(obj) for name, obj in manifests().items()}
    out.update({CHART_DIR / name: text for name, text in chart_manifests().items()})
    return out


def write(*, check: bool = False) -> list[Path]:
    """Write the files that changed (or, with ``check``, only list them); the stale paths."""
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return stale
