"""The retraining pipeline's steps: plain functions with typed inputs and outputs.

The same functions run in-process under the local runner (``turnout pipeline run retrain``,
the tests, ``make up``) and one per container under Argo (``turnout pipeline step NAME``), so
nothing here knows which. A step takes the run's parameters (workflows/params.py) and earlier
steps' outputs and returns a record (workflows/records.py) that the runner writes to the run
directory, where the next step, perhaps in another pod, reads it back.

Nothing leaves the run directory before the gate passes: ``train`` stages the candidate in
``candidate/`` without registering it, ``package`` registers it only after a passing
``validate`` (all or nothing), and ``propose`` hands it to the rollout controller only after
``package``. ``check_drift`` runs first so that a scheduled run in a stable world stops after
reading the data; the drift measures themselves are turnout/core/drift.py's.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import store
from training.data import LABEL, DataError, fingerprint, generate, load_table
from training.gate import GateReport, run_gate
from training.model import predict_proba, state_hash
from training.train import train as fit
from turnout.core import drift
from turnout.core.spec import ModelDeploymentSpec, VersionRef
from turnout.io.settings import settings
from workflows import bento
from workflows.notify import Post, post_webhook
from workflows.params import MIN_ROWS, ParamError, RetrainParams
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

SNAPSHOT_FILE = "snapshot.parquet"


def snapshot(params: RetrainParams, *, run_dir: Path) -> Snapshot:
    """Fix the data the run works on: generated, or read and checked from the user's file."""
    if params.source == "synthetic":
        df = generate(params.rows, seed=params.seed, day=params.day, drift=params.drift_spec())
        source = f"synthetic day {params.day:g}" + (
            f" drift {params.drift}" if params.drift else ""
        )
    else:
        path = Path(params.source)
        df = load_table(path)
        if LABEL not in df.columns:
            raise DataError(f"{path}: no label column {LABEL!r}; retraining needs labelled rows")
        if len(df) < MIN_ROWS:
            raise DataError(f"{path}: {len(df)} rows; retraining needs at least {MIN_ROWS}")
        if len(df) > params.rows:
            df = df.iloc[-params.rows :].reset_index(drop=True)
        source = str(path)
    window_start = len(df) - max(1, round(len(df) * params.window))
    for part, rows in (
        ("training rows", df.iloc[:window_start]),
        ("newest window", df.iloc[window_start:]),
    ):
        if rows[LABEL].nunique() < 2:
            raise DataError(
                f"{source}: the {part} hold only one class; need both fraud and non-fraud "
                "(more rows or another window)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(run_dir / SNAPSHOT_FILE, index=False)
    return Snapshot(
        data=SNAPSHOT_FILE,
        source=source,
        rows=len(df),
        fraud_rate=float(df[LABEL].mean()),
        fingerprint=fingerprint(df),
        window_start=window_start,
    )


def _table(snap: Snapshot, run_dir: Path) -> pd.DataFrame:
    """The snapshot's rows, checked to be the ones the snapshot step wrote."""
    path = run_dir / snap.data
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise StepError(f"{path} is missing: run step {SNAPSHOT!r} first") from None
    if fingerprint(df) != snap.fingerprint:
        raise StepError(f"{path} changed since the snapshot step wrote it")
    return df


def _rows(snap: Snapshot, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, newest window) of the snapshot."""
    df = _table(snap, run_dir)
    return (
        df.iloc[: snap.window_start].reset_index(drop=True),
        df.iloc[snap.window_start :].reset_index(drop=True),
    )


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
    """PSI (and KS or chi-square) of every feature of the snapshot against the stable
    model's training reference; skip the rest of the run unless it drifted or ``force``."""
    spec = target.spec(params.deployment_name)
    tag = stable_tag(params, spec)
    stable = store.load(tag)
    reference = stable.metadata.get("reference")
    if not isinstance(reference, dict) or not isinstance(reference.get("features"), dict):
        raise StepError(f"model {tag} has no drift reference in its metadata; retrain it first")
    df = _table(snap, run_dir)
    feats = []
    for feat in stable.schema.features:
        raw = reference["features"].get(feat.name)
        if raw is None:
            raise StepError(f"model {tag}'s reference has no feature {feat.name!r}")
        if feat.name not in df.columns:
            raise StepError(f"the snapshot has no column {feat.name!r}, which {tag} needs")
        feats.append(
            drift.feature_drift(feat.name, drift.Reference.from_dict(raw), df[feat.name].to_numpy())
        )
    scores = predict_proba(stable.net, df[stable.schema.names].to_numpy(dtype=np.float32))
    pred_ref = reference.get("prediction")
    prediction_psi = (
        drift.psi_of_values(drift.Reference.from_dict(pred_ref), scores) if pred_ref else 0.0
    )
    worst = max(feats, key=lambda f: f.psi)
    return DriftCheck(
        stable=tag,
        threshold=params.psi_threshold,
        max_psi=worst.psi,
        worst=worst.name,
        prediction_psi=prediction_psi,
        features=tuple(feats),
        forced=params.force,
        in_flight=spec.candidate.version if spec.candidate else "",
        skip=spec.candidate is not None or (worst.psi < params.psi_threshold and not params.force),
    )


# --- train ------------------------------------------------------------------------------------

CANDIDATE_DIR = "candidate"


def train(params: RetrainParams, snap: Snapshot, *, run_dir: Path) -> Candidate:
    """Train on the snapshot's older rows (seeded) and stage the model in ``candidate/``."""
    version = params.version or store.next_version(params.model)
    tag = f"{params.model}:{version}"
    if store.exists(tag):
        raise StepError(f"model {tag} already exists; set the version parameter to another")
    train_rows, _ = _rows(snap, run_dir)
    start = time.perf_counter()
    result = fit(train_rows, seed=params.seed)
    seconds = time.perf_counter() - start
    directory = run_dir / CANDIDATE_DIR
    if directory.exists():
        shutil.rmtree(directory)
    store.write_directory(result, directory, extra={"data_source": snap.source})
    return Candidate(
        tag=tag,
        directory=CANDIDATE_DIR,
        weights_sha256=result.weights_sha256,
        seed=result.seed,
        rows=result.rows,
        epochs=result.epochs,
        seconds=round(seconds, 3),
        roc_auc=float(result.metrics["roc_auc"]),
        pr_auc=float(result.metrics["pr_auc"]),
    )


def _staged(cand: Candidate, run_dir: Path) -> store.LoadedModel:
    """The staged candidate, checked to be the one train wrote (the hash is what was judged)."""
    path = run_dir / cand.directory
    try:
        loaded = store.from_directory(path, tag=cand.tag, metadata=store.read_metadata(path))
    except FileNotFoundError as exc:
        raise StepError(f"the staged candidate in {path} is incomplete: {exc}") from None
    if state_hash(loaded.net) != cand.weights_sha256:
        raise StepError(f"the staged candidate in {path} changed since the train step wrote it")
    return loaded


# --- validate ---------------------------------------------------------------------------------

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

#: The serving smoke test of a staged candidate (directory, tag): (passed, one line).
SmokeTest = Callable[[Path, str], tuple[bool, str]]


def default_smoke_test(directory: Path, tag: str) -> tuple[bool, str]:
    """A real `bentoml serve` of the staged candidate, asked over v2 (workflows/smoke.py)."""
    from workflows.smoke import smoke_test_v2

    return smoke_test_v2(tag=tag, model_dir=directory)


def validate(
    params: RetrainParams,
    snap: Snapshot,
    drift_check: DriftCheck,
    cand: Candidate,
    *,
    run_dir: Path,
    smoke: SmokeTest | None = None,
) -> Validation:
    """Run the gate (training/gate.py) on the newest window against the stable model, with a
    real serving smoke test and a same-seed retrain; write report.json and report.md."""
    staged = _staged(cand, run_dir)
    train_rows, window = _rows(snap, run_dir)
    stable = store.load(drift_check.stable)
    path = run_dir / cand.directory
    report: GateReport = run_gate(
        staged.net,
        candidate_name=cand.tag,
        data=window,
        stable=stable.net,
        train_data=train_rows,
        thresholds=params.thresholds(),
        serve_smoke=lambda: (smoke or default_smoke_test)(path, cand.tag),
        reproduce=lambda: fit(train_rows, seed=cand.seed).weights_sha256,
        weights_sha256=cand.weights_sha256,
        seed=cand.seed,
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
    tag = _register(cand, run_dir=run_dir, extra=extra)
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


def _register(cand: Candidate, *, run_dir: Path, extra: dict[str, Any]) -> str:
    if store.exists(cand.tag):
        # A retried step after the registration went through: the same weights are fine.
        if store.load(cand.tag).metadata.get("weights_sha256") == cand.weights_sha256:
            log.info("%s is registered already (a retried step)", cand.tag)
            return cand.tag
        raise StepError(f"model {cand.tag} already exists with other weights")
    name, version = cand.tag.split(":")
    return store.register_directory(
        run_dir / cand.directory, name=name, version=version, extra=extra
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
