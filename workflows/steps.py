"""The retraining pipeline's steps: plain functions with typed inputs and outputs.

The same functions run in-process under the local runner (``turnout pipeline run retrain``,
the tests, ``make up``) and one per container under Argo (``turnout pipeline step NAME``), so
nothing here knows which. A step takes the run's parameters (workflows/params.py) and earlier
steps' outputs and returns a record (workflows/records.py) that the runner writes to the run
directory, where the next step, perhaps in another pod, reads it back. Everything particular
to a model (its data, training, metrics, gate) comes from its plugin (workflows/plugins.py),
named by the ``plugin`` parameter.

Nothing leaves the run directory before the gate passes: ``train`` stages the candidate in
``candidate/`` without registering it, ``package`` registers it only after a passing
``validate`` (all or nothing), and ``propose`` hands it to the rollout controller only after
``package``. ``check_drift`` runs first so that a scheduled run in a stable world stops after
reading the data; the drift measures themselves are turnout/core/drift.py's: PSI per feature
when the plugin names features and the stable version's reference has them, else PSI of the
stable version's predictions.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training import store
from training.gate import GateReport, Metrics, judge, time_calls
from turnout.core import drift
from turnout.core.spec import ModelDeploymentSpec, VersionRef
from turnout.io.settings import settings
from workflows import bento, plugins, staging
from workflows.notify import Post, post_webhook
from workflows.params import ParamError, RetrainParams
from workflows.plugins import METADATA, Dataset, Plugin, Split, Trained
from workflows.records import (
    Candidate,
    DriftCheck,
    Notice,
    Package,
    Proposal,
    RunDir,
    Snapshot,
    StepError,
    Validation,
    write_json,
)
from workflows.targets import DeploymentTarget

log = logging.getLogger("turnout.workflows")

# Step names: the DAG (workflows/pipeline.py), the CLI and the Argo tasks all use these.
SNAPSHOT = "snapshot"
CHECK_DRIFT = "check-drift"
TRAIN = "train"
VALIDATE = "validate"
PACKAGE = "package"
PROPOSE = "propose"
NOTIFY = "notify"
#: The steps before the exit handler, in order.
ORDER = (SNAPSHOT, CHECK_DRIFT, TRAIN, VALIDATE, PACKAGE, PROPOSE)


# --- snapshot -------------------------------------------------------------------------------

SNAPSHOT_DIR = "snapshot"


def snapshot(params: RetrainParams, *, run_dir: Path) -> Snapshot:
    """Fix the data the run works on: the plugin's ``data``, written to ``snapshot/``."""
    dataset = params.load_plugin().data(params)
    written = plugins.write_dataset(dataset, run_dir / SNAPSHOT_DIR)
    return Snapshot(
        directory=SNAPSHOT_DIR,
        files=written.files,
        rows=written.rows,
        source=dataset.source,
        note=dataset.note,
        fingerprint=written.fingerprint,
    )


def _dataset(snap: Snapshot, run_dir: Path) -> Dataset:
    """The snapshot's data, checked to be what the snapshot step wrote."""
    stored = plugins.Stored(files=snap.files, rows=snap.rows, fingerprint=snap.fingerprint)
    try:
        return plugins.read_dataset(
            run_dir / snap.directory, stored, source=snap.source, note=snap.note
        )
    except FileNotFoundError as exc:
        raise StepError(f"{exc.filename} is missing: run step {SNAPSHOT!r} first") from None
    except ValueError as exc:
        raise StepError(str(exc)) from None


# --- check drift ------------------------------------------------------------------------------


def stable_tag(params: RetrainParams, spec: ModelDeploymentSpec) -> str:
    """``model:version`` of the ModelDeployment's stable version, checked to be in the store."""
    name = params.deployment_name
    if spec.model != params.model:
        raise StepError(
            f"ModelDeployment {name} serves model {spec.model!r}, not {params.model!r} "
            "(set the model or deployment parameter)"
        )
    tag = f"{spec.model}:{spec.stable.version}"
    if not store.exists(tag):
        raise StepError(
            f"model {tag}, the stable version of ModelDeployment {name}, is not in the model "
            f"store at {settings().home} (`turnout models` lists what is). In a cluster, seed "
            f"the store volume once with the stable model: `turnout train --name {spec.model} "
            f"--version {spec.stable.version}` in a pod mounting it (see the README)"
        )
    return tag


def check_drift(
    params: RetrainParams, snap: Snapshot, *, run_dir: Path, target: DeploymentTarget
) -> DriftCheck:
    """PSI (and KS or chi-square) of the snapshot against the stable version's training
    reference, per feature when there are features, else of its predictions; skip the rest
    of the run unless it drifted or ``force``."""
    spec = target.spec(params.deployment_name)
    tag = stable_tag(params, spec)
    plugin = params.load_plugin()
    stored = staging.stored(tag)
    reference = stored.metadata.get("reference")
    if not isinstance(reference, dict) or not (
        reference.get("features") or reference.get("prediction")
    ):
        raise StepError(f"model {tag} has no drift reference in its metadata; retrain it first")
    stable = _load(plugin, stored.path, what=f"the stable version {tag}")
    splits = list(_dataset(snap, run_dir).splits().values())
    feats = _feature_drift(plugin, reference.get("features") or {}, splits, tag=tag)
    prediction = None
    if reference.get("prediction"):
        scores = np.concatenate(
            [plugin.task.score(plugin.predict(stable, plugin.inputs_of(split))) for split in splits]
        )
        prediction = drift.feature_drift(
            "prediction", drift.Reference.from_dict(reference["prediction"]), scores
        )
    worst = max(feats, key=lambda f: f.psi) if feats else prediction
    assert worst is not None  # the reference has features or a prediction
    return DriftCheck(
        stable=tag,
        threshold=params.psi_threshold,
        max_psi=worst.psi,
        worst=worst.name,
        prediction_psi=prediction.psi if prediction else 0.0,
        features=tuple(feats),
        forced=params.force,
        in_flight=spec.candidate.version if spec.candidate else "",
        skip=spec.candidate is not None or (worst.psi < params.psi_threshold and not params.force),
    )


def _feature_drift(
    plugin: Plugin, reference: Mapping[str, Any], splits: list[Split], *, tag: str
) -> list[drift.FeatureDrift]:
    """Drift of each feature the reference has, when the plugin names features."""
    columns = [plugin.features(split) for split in splits]
    if not reference or any(c is None for c in columns):
        return []
    feats = []
    for name, raw in reference.items():
        if any(name not in c for c in columns if c is not None):
            raise StepError(f"the snapshot has no column {name!r}, which {tag} needs")
        values = np.concatenate([c[name] for c in columns if c is not None])
        feats.append(drift.feature_drift(name, drift.Reference.from_dict(raw), values))
    return feats


def _load(plugin: Plugin, path: Path, *, what: str) -> Any:
    try:
        return plugin.load(path)
    except Exception as exc:
        raise StepError(
            f"plugin {plugin.path} cannot load {what} from {path}: {type(exc).__name__}: {exc}"
        ) from None


# --- train ------------------------------------------------------------------------------------

CANDIDATE_DIR = "candidate"


def train(params: RetrainParams, snap: Snapshot, *, run_dir: Path) -> Candidate:
    """Train on the snapshot's training rows (seeded) and stage the model in ``candidate/``;
    a plugin whose train returns no metrics is refused here, before anything is staged."""
    version = params.version or store.next_version(params.model)
    tag = f"{params.model}:{version}"
    if store.exists(tag):
        raise StepError(f"model {tag} already exists; set the version parameter to another")
    plugin = params.load_plugin()
    dataset = _dataset(snap, run_dir)
    start = time.perf_counter()
    trained = plugin.train(dataset, seed=params.seed)
    seconds = time.perf_counter() - start
    directory = run_dir / CANDIDATE_DIR
    if directory.exists():
        shutil.rmtree(directory)
    weights = _stage(plugin, trained, directory, extra={"data_source": snap.source})
    return Candidate(
        tag=tag,
        plugin=plugin.path,
        directory=CANDIDATE_DIR,
        digest=plugins.files_sha256(directory),
        weights_sha256=weights,
        seed=params.seed,
        rows=snap.rows.get("train", 0),
        seconds=round(seconds, 3),
        metrics={k: float(v) for k, v in trained.metrics.items()},
    )


def _stage(plugin: Plugin, trained: Trained, directory: Path, *, extra: dict[str, Any]) -> str:
    """Write the trained model and its metadata to ``directory``; its weights hash."""
    metadata = plugin.save(trained, directory)
    weights = trained.weights_sha256 or plugins.files_sha256(directory, exclude=(METADATA,))
    metadata = {
        "metrics": dict(trained.metrics),
        **metadata,
        "weights_sha256": weights,
        "plugin": plugin.path,
        **extra,
    }
    write_json(directory / METADATA, metadata)
    return weights


def _reproduce(plugin: Plugin, dataset: Dataset, *, seed: int) -> str:
    """The weights hash of training again with the same data and seed."""
    trained = plugin.train(dataset, seed=seed)
    if trained.weights_sha256:
        return trained.weights_sha256
    with tempfile.TemporaryDirectory(prefix="turnout-reproduce-") as tmp:
        return _stage(plugin, trained, Path(tmp), extra={})


def _staged(cand: Candidate, run_dir: Path) -> Path:
    """The staged candidate, checked to be the one train wrote (its files are what was judged)."""
    path = run_dir / cand.directory
    try:
        digest = plugins.files_sha256(path)
    except FileNotFoundError as exc:
        raise StepError(f"the staged candidate in {path} is incomplete: {exc}") from None
    if not (path / METADATA).is_file():
        raise StepError(f"the staged candidate in {path} is incomplete: no {METADATA}")
    if digest != cand.digest:
        raise StepError(f"the staged candidate in {path} changed since the train step wrote it")
    return path


# --- validate ---------------------------------------------------------------------------------

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
#: Rows in the serving smoke test's request.
SMOKE_ROWS = 8

#: The serving smoke test of a staged candidate (directory, tag): (passed, one line).
SmokeTest = Callable[[Path, str], tuple[bool, str]]


def default_smoke_test(directory: Path, tag: str) -> tuple[bool, str]:
    """A real `bentoml serve` of the staged candidate by the plugin that trained it (its
    metadata names it), asked over v2 for the plugin's example inputs (workflows/smoke.py)."""
    from workflows.smoke import smoke_test

    plugin = plugins.load(str(store.read_metadata(directory)["plugin"]))
    return smoke_test(
        plugin=plugin, tag=tag, model_dir=directory, inputs=plugin.examples(SMOKE_ROWS)
    )


def validate(
    params: RetrainParams,
    snap: Snapshot,
    drift_check: DriftCheck,
    cand: Candidate,
    *,
    run_dir: Path,
    smoke: SmokeTest | None = None,
) -> Validation:
    """Run the plugin's gate (training/gate.py's judge) on the newest data against the stable
    model, with a real serving smoke test and a same-seed retrain; write report.json and
    report.md."""
    plugin = params.load_plugin()
    if cand.plugin != plugin.path:
        raise StepError(f"{cand.tag} was trained by plugin {cand.plugin}, not {plugin.path}")
    config = params.gate_config()
    path = _staged(cand, run_dir)
    dataset = _dataset(snap, run_dir)
    candidate = _load(plugin, path, what=f"the candidate {cand.tag}")
    stable = _load(plugin, staging.stored(drift_check.stable).path, what=drift_check.stable)
    inputs = plugin.inputs_of(dataset.newest)
    outputs = _guard(lambda: plugin.predict(candidate, inputs), what="predict")
    metrics = _metrics(plugin, candidate, dataset.newest, outputs)

    def one_row(i: int) -> object:
        i %= plugins.rows(inputs)
        return plugin.obj.predict(candidate, {k: v[i : i + 1] for k, v in inputs.items()})

    report: GateReport = judge(
        model=cand.tag,
        config=config,
        outputs=outputs,
        metrics=metrics,
        stable_metrics=lambda: _guard(
            lambda: plugin.evaluate(stable, dataset.newest), what="evaluate (stable)"
        ),
        latency_ms=lambda calls: time_calls(one_row, calls=calls),
        serve_smoke=lambda: (smoke or default_smoke_test)(path, cand.tag),
        reproduce=lambda: _reproduce(plugin, dataset, seed=cand.seed),
        weights_sha256=cand.weights_sha256,
        then=lambda: plugin.checks(
            candidate, dataset, stable=stable, config=config, seed=cand.seed
        ),
    )
    write_json(run_dir / REPORT_JSON, report.to_dict())
    (run_dir / REPORT_MD).write_text(report.to_markdown())
    return Validation(
        candidate=cand.tag,
        passed=report.passed,
        checks=len(report.checks),
        failed=tuple(f"{c.name}: {c.detail}" for c in report.failed()),
        report=REPORT_JSON,
        markdown=REPORT_MD,
    )


def _guard(call: Callable[[], Any], *, what: str) -> Any:
    """``call()``, or one line saying how it failed (the gate reports it, never raises)."""
    try:
        return call()
    except Exception as exc:
        return f"{what} failed: {type(exc).__name__}: {exc}"


def _metrics(
    plugin: Plugin, model: Any, split: Split, outputs: Mapping[str, np.ndarray] | str
) -> Metrics:
    """The candidate's metrics on the newest data; not trusted when its outputs are not."""
    if isinstance(outputs, str):
        return f"the candidate could not score the newest data: {outputs}"
    bad = sum(int((~np.isfinite(np.asarray(v, dtype=float))).sum()) for v in outputs.values())
    if bad:
        total = sum(v.size for v in outputs.values())
        return f"cannot judge metrics: {bad} of {total} outputs are NaN or infinite"
    got: Metrics = _guard(lambda: plugin.evaluate(model, split), what="evaluate")
    return got


# --- package ----------------------------------------------------------------------------------

BENTO_DIR = "bento"


def package(
    params: RetrainParams,
    cand: Candidate,
    val: Validation,
    drift_check: DriftCheck,
    *,
    run_dir: Path,
    build_bento: bool = False,
) -> Package:
    """Register the candidate with its gate report, only after a passing gate; in a cluster
    also build its bento (``bento/``, with the Dockerfile the image builder uses)."""
    if not val.passed or val.candidate != cand.tag:
        raise StepError(f"not registering {cand.tag}: the gate did not pass it")
    if build_bento and not params.image_registry:
        raise ParamError("parameter 'image_registry' is required to build an image in a cluster")
    report = GateReport.from_dict(json.loads((run_dir / val.report).read_text()))
    if not report.passed:
        raise StepError(f"not registering {cand.tag}: {run_dir / val.report} says it failed")
    _staged(cand, run_dir)
    extra = {
        "validation": report.to_dict(),
        "retrain": {
            "stable": drift_check.stable,
            "max_psi": drift_check.max_psi,
            "worst_feature": drift_check.worst,
            "forced": drift_check.forced,
            # The webhook URL is often a credential; the metadata travels in the image.
            "params": {k: v for k, v in params.to_dict().items() if k != "webhook"},
        },
    }
    tag = _register(cand, params.load_plugin(), run_dir=run_dir, extra=extra)
    image = f"{params.image_registry}/{params.model}:{cand.version}" if build_bento else ""
    bento_dir = ""
    if build_bento:
        try:
            bento.build(tag, run_dir / BENTO_DIR)
        except Exception:
            store.delete(tag)  # all or nothing: no model without the image it ships in
            raise
        bento_dir = BENTO_DIR
    return Package(tag=tag, image=image, bento=bento_dir)


def _register(cand: Candidate, plugin: Plugin, *, run_dir: Path, extra: dict[str, Any]) -> str:
    if store.exists(cand.tag):
        # A retried step after the registration went through: the same weights are fine.
        if staging.stored(cand.tag).metadata.get("weights_sha256") == cand.weights_sha256:
            log.info("%s is registered already (a retried step)", cand.tag)
            return cand.tag
        raise StepError(f"model {cand.tag} already exists with other weights")
    return staging.register(
        run_dir / cand.directory, tag=cand.tag, labels={"task": plugin.name}, extra=extra
    )


# --- propose ----------------------------------------------------------------------------------


def propose(params: RetrainParams, pkg: Package, *, target: DeploymentTarget) -> Proposal:
    """Set ``spec.candidate`` of the ModelDeployment; the controller rolls it out from there."""
    name = params.deployment_name
    ref = VersionRef(version=pkg.version, image=pkg.image or None)
    done = target.propose(name, ref)
    return Proposal(
        deployment=name,
        where=target.where,
        stable=done.stable,
        candidate=pkg.version,
        image=pkg.image,
        changed=done.changed,
        said=done.said,
    )


# --- notify -----------------------------------------------------------------------------------


def notify(params: RetrainParams, *, run_dir: Path, post: Post | None = None) -> Notice:
    """Log one line saying how the run ended (and POST it to the webhook, if one is set).

    Reads the run directory, so it says the same thing as the exit handler of an Argo
    workflow as after a local run. Failing to notify is logged, never fatal.
    """
    outcome, line = story(params, RunDir(run_dir))
    text = f"retrain {params.model}: {line}"
    log.info("%s", text)
    sent = ""
    if params.webhook:
        sent = post_webhook(
            params.webhook, {"text": text, "outcome": outcome, "model": params.model}, post
        )
    return Notice(outcome=outcome, text=text, webhook=sent)


def story(params: RetrainParams, run: RunDir) -> tuple[str, str]:
    """(outcome, one line) of a run from its directory."""
    for step in ORDER:
        error = run.error(step)
        if error is not None:
            return "failed", f"failed at {step}: {error}"
    drift_check = run.read_optional(CHECK_DRIFT, DriftCheck)
    if drift_check is not None and drift_check.skip:
        return "skipped", f"skipped: {drift_check.summary()}"
    val = run.read_optional(VALIDATE, Validation)
    if val is not None and not val.passed:
        return "failed", f"{val.summary()}; not registered, not proposed"
    proposal = run.read_optional(PROPOSE, Proposal)
    if proposal is not None and drift_check is not None:
        return "completed", f"{drift_check.summary()}; {proposal.summary()}"
    done = [step for step in ORDER if run.output_path(step).exists()]
    status = f" (workflow {params.workflow_status})" if params.workflow_status else ""
    last = done[-1] if done else "nothing"
    return "incomplete", f"stopped after {last}{status}"
