"""The retraining pipeline's steps: plain functions with typed inputs and outputs.

The same functions run in-process under the local runner (``turnout pipeline run retrain``,
the tests, ``make up``) and one per container under Argo (``turnout pipeline step NAME``), so
nothing here knows which. A step takes the run's parameters and earlier steps' outputs and
returns a frozen dataclass that round-trips through JSON: the runner writes it to
``<run dir>/<step>.json``, where the next step, perhaps in another pod, reads it. Bulky things
live beside it in the run directory and the JSON names them relative to it: the data snapshot,
the staged candidate, the gate report.

Nothing leaves the run directory before the gate passes: ``train`` stages the candidate in
``candidate/`` without registering it, ``package`` registers it only after a passing
``validate`` (all or nothing), and ``propose`` hands it to the rollout controller only after
``package``. ``check_drift`` runs first so that a scheduled run in a stable world stops after
reading the data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd

from training import store
from training.data import LABEL, DataError, Drift, fingerprint, generate, load_table
from training.gate import GateReport, GateThresholds, run_gate
from training.model import predict_proba, state_hash
from training.train import train as fit
from turnout.core import drift
from turnout.core.spec import ModelDeploymentSpec, VersionRef
from turnout.io.settings import settings, use_local_model_store
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

#: Fewest rows a snapshot may have: the newest window alone must hold a few hundred.
MIN_ROWS = 1000
#: Seconds a webhook may take before notify gives up on it.
WEBHOOK_TIMEOUT_S = 5.0
#: ModelDeployment names, model names and versions become Kubernetes names: DNS labels.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class StepError(RuntimeError):
    """A step cannot go on; the message says why in one line."""


class ParamError(ValueError):
    """A bad pipeline parameter; the message names it and what it should be."""


# --- parameters ---------------------------------------------------------------------------


def _param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RetrainParams:
    """The run's parameters. On the command line each is ``--param name=value`` (a string);
    :meth:`parse` types and checks them, naming the first bad one."""

    model: str = _param("fraud", "model name in the model store")
    deployment: str = _param("", "ModelDeployment to propose to (default: the model's name)")
    source: str = _param("synthetic", "'synthetic' or a .csv/.parquet file of labelled rows")
    rows: int = _param(60_000, "synthetic rows to generate; of a file, the newest rows kept")
    day: float = _param(0.0, "synthetic: the day the rows are drawn from")
    drift: str = _param("", "synthetic drift, e.g. covariate=0.8,concept=0.5,mode=sudden")
    seed: int = _param(0, "seed of the synthetic data and of training")
    window: float = _param(0.3, "share of newest rows the gate judges on (a file's last rows)")
    psi_threshold: float = _param(0.25, "retrain when some feature's PSI reaches this")
    force: bool = _param(False, "retrain even without drift")
    version: str = _param("", "version of the new model (default: the next vN)")
    gate: str = _param("", "gate thresholds, e.g. min_roc_auc=0.85,max_latency_ms=50")
    image_registry: str = _param("", "cluster: registry the candidate's image is pushed to")
    namespace: str = _param("", "cluster: namespace of the ModelDeployment (default: own)")
    webhook: str = _param("", "notify: URL to POST the run's summary to as JSON")
    workflow_status: str = _param("", "notify: the workflow's status, set by the exit handler")

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> RetrainParams:
        """Typed, checked parameters from ``name -> value`` (strings or already typed)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ParamError(f"unknown parameter {key!r} (known: {', '.join(known)})")
            values[name] = _convert(name, str(known[name].type), value)
        params = cls(**values)
        params.check()
        return params

    @classmethod
    def from_pairs(cls, pairs: tuple[str, ...] | list[str]) -> RetrainParams:
        """From ``name=value`` strings, as ``--param`` gives them."""
        raw: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ParamError(f"parameter {pair!r} is not name=value")
            raw[name.strip()] = value.strip()
        return cls.parse(raw)

    def check(self) -> None:
        _require_label("model", self.model)
        if self.deployment:
            _require_label("deployment", self.deployment)
        if self.version:
            _require_label("version", self.version)
        if self.source != "synthetic" and not self.source.lower().endswith(
            (".csv", ".parquet", ".pq")
        ):
            raise ParamError(
                f"parameter 'source' must be 'synthetic' or a .csv/.parquet path, "
                f"got {self.source!r}"
            )
        if self.source != "synthetic":
            for name in ("drift", "day"):
                if getattr(self, name) != getattr(RetrainParams, name):
                    raise ParamError(f"parameter {name!r} applies only to source=synthetic")
        if self.rows < MIN_ROWS:
            raise ParamError(f"parameter 'rows' must be at least {MIN_ROWS}, got {self.rows}")
        if self.day < 0:
            raise ParamError(f"parameter 'day' must be zero or more, got {self.day:g}")
        if not 0.05 <= self.window <= 0.5:
            raise ParamError(f"parameter 'window' must be 0.05-0.5, got {self.window:g}")
        if self.psi_threshold <= 0:
            raise ParamError(
                f"parameter 'psi_threshold' must be above 0, got {self.psi_threshold:g}"
            )
        try:
            self.drift_spec()
        except ValueError as exc:
            raise ParamError(f"parameter 'drift': {exc}") from None
        self.thresholds()
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise ParamError(f"parameter 'webhook' must be an http(s) URL, got {self.webhook!r}")
        if "://" in self.image_registry or self.image_registry.endswith("/"):
            raise ParamError(
                "parameter 'image_registry' must be a registry path like registry.example/ml, "
                f"got {self.image_registry!r}"
            )

    @property
    def deployment_name(self) -> str:
        return self.deployment or self.model

    def drift_spec(self) -> Drift:
        return Drift.parse(self.drift)

    def thresholds(self) -> GateThresholds:
        """The gate's thresholds: the defaults with the ``gate`` parameter's changes."""
        known = {f.name: str(f.type) for f in fields(GateThresholds)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in self.gate.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep:
                raise ParamError(f"parameter 'gate': {part!r} is not name=value")
            if key not in known:
                raise ParamError(
                    f"parameter 'gate': unknown threshold {key!r} (known: {', '.join(known)})"
                )
            values[key] = _convert(f"gate.{key}", known[key], raw)
        return GateThresholds(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_pairs(self) -> list[str]:
        """``name=value`` for each parameter that differs from its default."""
        default = RetrainParams()
        return [
            f"{f.name}={_text(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: str
    help: str


def param_info() -> tuple[ParamInfo, ...]:
    """Every parameter with its type, default (as a string) and help: for --help and Hera."""
    default = RetrainParams()
    return tuple(
        ParamInfo(
            name=f.name,
            type=str(f.type),
            default=_text(getattr(default, f.name)),
            help=str(f.metadata.get("help", "")),
        )
        for f in fields(RetrainParams)
    )


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _convert(name: str, type_name: str, value: object) -> Any:
    text = str(value).strip()
    expected = _TYPE_NAMES.get(type_name, type_name)
    bad = ParamError(f"parameter {name!r} must be {expected}, got {text!r}")
    if type_name == "str":
        return text
    if type_name == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0", ""):
            return False
        raise bad
    if type_name == "int":
        if isinstance(value, bool):
            raise bad
        try:
            return int(text)
        except ValueError:
            raise bad from None
    if type_name == "float":
        try:
            number = float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    raise ParamError(f"parameter {name!r} has an unsupported type {type_name}")


def _require_label(name: str, value: str) -> None:
    if len(value) > 40 or not _DNS_LABEL.match(value):
        raise ParamError(
            f"parameter {name!r} must be lowercase letters, digits and '-', at most 40, "
            f"starting and ending with a letter or digit (a Kubernetes name), got {value!r}"
        )


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- step outputs ---------------------------------------------------------------------------

R = TypeVar("R", bound="Record")


class Record:
    """JSON round trip for the frozen dataclasses the steps exchange, and what the runner asks
    of an output: a one-line summary, the small values Argo reads (``outputs``), and whether
    the output is a designed stop that fails the run (``failure``, e.g. a failed gate)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        missing = [n for n in names if n not in data]
        if missing:
            raise StepError(f"{cls.__name__} record lacks {', '.join(missing)}")
        return cls(**{n: _tuples(data[n]) for n in names})

    def summary(self) -> str:
        return ""

    def outputs(self) -> dict[str, str]:
        return {}

    def failure(self) -> str | None:
        return None


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Snapshot(Record):
    #: The rows, a Parquet file in the run directory.
    data: str
    source: str
    rows: int
    fraud_rate: float
    fingerprint: str
    #: Rows from this index on are the newest window: the gate judges on them, training
    #: never sees them.
    window_start: int

    def summary(self) -> str:
        window = self.rows - self.window_start
        return (
            f"{self.rows} rows from {self.source}, fraud {self.fraud_rate:.2%}; "
            f"newest {window} held out for the gate"
        )


@dataclass(frozen=True)
class FeatureDrift(Record):
    name: str
    kind: str
    psi: float
    #: ok / warn / alert (turnout/core/drift.py's reading of the PSI).
    level: str
    #: "ks" (numeric) or "chi2" (categorical).
    test: str
    statistic: float
    #: Chi-square p-value; None for KS, whose reference is binned (no sample is kept).
    p_value: float | None


@dataclass(frozen=True)
class DriftCheck(Record):
    #: Tag of the stable model the snapshot was compared with.
    stable: str
    threshold: float
    max_psi: float
    worst: str
    #: PSI of the stable model's scores on the snapshot against its validation scores.
    prediction_psi: float
    features: tuple[FeatureDrift, ...]
    forced: bool
    #: The candidate version the ModelDeployment is rolling out now ("" when none): a run
    #: during a rollout stops here, since its candidate could not be proposed.
    in_flight: str
    skip: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        base = super().from_dict(data)
        feats = tuple(FeatureDrift.from_dict(f) for f in data["features"])
        return dataclasses.replace(base, features=feats)

    def summary(self) -> str:
        cmp = ">=" if self.max_psi >= self.threshold else "<"
        head = (
            f"max PSI {self.max_psi:.3f} ({self.worst}) {cmp} {self.threshold:g} vs {self.stable}"
        )
        if self.in_flight:
            return f"{head}; candidate {self.in_flight} is still rolling out: not retraining now"
        if self.skip:
            return f"{head}: no drift, nothing to retrain"
        return f"{head}: {'retrain forced' if self.forced and cmp == '<' else 'drift, retrain'}"

    def outputs(self) -> dict[str, str]:
        return {"skip": _text(self.skip)}


@dataclass(frozen=True)
class Candidate(Record):
    #: The tag it will be registered under once it passes the gate.
    tag: str
    #: The staged model (store.write_directory), relative to the run directory.
    directory: str
    weights_sha256: str
    seed: int
    rows: int
    epochs: int
    seconds: float
    roc_auc: float
    pr_auc: float

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    def summary(self) -> str:
        return (
            f"{self.tag} on {self.rows} rows, {self.epochs} epochs, seed {self.seed}: "
            f"test ROC-AUC {self.roc_auc:.4f}, PR-AUC {self.pr_auc:.4f} "
            f"(weights {self.weights_sha256[:12]})"
        )

    def outputs(self) -> dict[str, str]:
        return {"tag": self.tag, "version": self.version}


@dataclass(frozen=True)
class Validation(Record):
    candidate: str
    passed: bool
    checks: int
    #: ``name: detail`` of each failed check.
    failed: tuple[str, ...]
    report: str
    markdown: str

    def summary(self) -> str:
        if self.passed:
            return f"gate passed for {self.candidate}: {self.checks} checks (see {self.markdown})"
        return f"gate failed for {self.candidate}: {'; '.join(self.failed)}"

    def outputs(self) -> dict[str, str]:
        return {"passed": _text(self.passed)}

    def failure(self) -> str | None:
        return None if self.passed else self.summary()


@dataclass(frozen=True)
class Package(Record):
    tag: str
    #: The image the cluster's builder pushes (empty locally).
    image: str
    #: The bento directory the image is built from, relative to the run dir (empty locally).
    bento: str

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    def summary(self) -> str:
        built = f"; bento in {self.bento} for image {self.image}" if self.bento else ""
        return f"registered {self.tag} with its gate report{built}"

    def outputs(self) -> dict[str, str]:
        return {"tag": self.tag, "version": self.version, "image": self.image}


@dataclass(frozen=True)
class Proposal(Record):
    deployment: str
    where: str
    stable: str
    candidate: str
    image: str
    changed: bool
    said: str

    def summary(self) -> str:
        return f"ModelDeployment {self.deployment} ({self.where}): {self.said}"


@dataclass(frozen=True)
class Notice(Record):
    #: completed / skipped / failed / incomplete
    outcome: str
    text: str
    #: "" (no webhook), "sent" or "failed: <why>".
    webhook: str

    def summary(self) -> str:
        return self.text if not self.webhook else f"{self.text} [webhook {self.webhook}]"


# --- the run directory ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """The files of one run: ``<step>.json`` per finished step, ``<step>.error.json`` per
    failed one, and the artefacts the outputs name."""

    path: Path

    def output_path(self, step: str) -> Path:
        return self.path / f"{step}.json"

    def error_path(self, step: str) -> Path:
        return self.path / f"{step}.error.json"

    def read(self, step: str, kind: type[R]) -> R:
        """An earlier step's output, or StepError saying which step has not run."""
        found = self.read_optional(step, kind)
        if found is None:
            raise StepError(f"{self.output_path(step)} is missing: run step {step!r} first")
        return found

    def read_optional(self, step: str, kind: type[R]) -> R | None:
        path = self.output_path(step)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise StepError(f"{path} is not valid JSON: {exc}") from None
        return kind.from_dict(data)

    def error(self, step: str) -> str | None:
        try:
            return str(json.loads(self.error_path(step).read_text())["error"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            return None

    def begin(self, step: str) -> None:
        """Forget an earlier attempt of ``step`` (Argo retries a pod in the same run dir)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.output_path(step).unlink(missing_ok=True)
        self.error_path(step).unlink(missing_ok=True)

    def write(self, step: str, output: Record) -> None:
        _atomic_json(self.output_path(step), output.to_dict())

    def write_error(self, step: str, message: str) -> None:
        _atomic_json(self.error_path(step), {"step": step, "error": message})


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)


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
        feats.append(feature_drift(feat.name, drift.Reference.from_dict(raw), df[feat.name]))
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


def feature_drift(name: str, ref: drift.Reference, values: pd.Series) -> FeatureDrift:
    psi = drift.psi_of_values(ref, values.to_numpy())
    if ref.kind == "categorical":
        test = drift.chi_square_test(ref, values.to_numpy())
        return FeatureDrift(
            name=name,
            kind=ref.kind,
            psi=psi,
            level=drift.level(psi).value,
            test="chi2",
            statistic=test.statistic,
            p_value=test.p_value,
        )
    return FeatureDrift(
        name=name,
        kind=ref.kind,
        psi=psi,
        level=drift.level(psi).value,
        test="ks",
        statistic=binned_ks(ref, values.to_numpy()),
        p_value=None,
    )


def binned_ks(ref: drift.Reference, values: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic measured at the reference's bin edges.

    The stored reference keeps quantile bins, not the training sample, so the largest gap
    between the two CDFs is taken over the edges: a lower bound of the exact statistic that
    moves with it.
    """
    counts = drift.bin_counts(ref, values)
    total = counts.sum()
    if total == 0 or ref.bins < 2:
        return 0.0
    observed = np.cumsum(counts[:-1]) / total
    expected = np.cumsum(np.asarray(ref.proportions[:-1], dtype=np.float64))
    return float(np.max(np.abs(observed - expected)))


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
    _atomic_json(run_dir / REPORT_JSON, report.to_dict())
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
    bento = ""
    if build_bento:
        try:
            _build_bento(tag, run_dir / BENTO_DIR)
        except Exception:
            store.delete(tag)  # all or nothing: no model without the image it ships in
            raise
        bento = BENTO_DIR
    return Package(tag=tag, image=image, bento=bento)


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


def _build_bento(tag: str, out: Path) -> None:
    """``bentoml build`` of the model server with ``tag``, copied to ``out`` for the image
    builder (kaniko's context is that directory; its Dockerfile is env/docker/Dockerfile)."""
    root = _bento_context()
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", str(root)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "TURNOUT_MODEL": tag},
        timeout=900,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepError(f"bentoml build of {tag} failed: {tail}")
    bento_tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    built = use_local_model_store() / "bentos" / name / version
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out)
    # What `bentoml containerize` adds to the bento for its build context: the models it
    # serves, in a store of its own under models/ (the image's Dockerfile copies it all).
    import bentoml

    bentoml.models.BentoModel(tag).resolve(out / "models")


def _bento_context() -> Path:
    """The directory holding bentofile.yaml: the source checkout, or the image's WORKDIR (an
    installed package lives in site-packages, without it)."""
    from turnout.io.processes import project_root

    for root in (project_root(), Path.cwd()):
        if (root / "bentofile.yaml").is_file():
            return root
    raise StepError(
        f"no bentofile.yaml in {project_root()} or {Path.cwd()}: cannot build the bento "
        "(the turnout image ships it in its working directory)"
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

Post = Callable[..., Any]


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
        sent = _post(
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


def _post(url: str, body: dict[str, Any], post: Post | None) -> str:
    import httpx

    try:
        response = (post or httpx.post)(url, json=body, timeout=WEBHOOK_TIMEOUT_S)
        response.raise_for_status()
    except Exception as exc:
        log.warning("notify: webhook %s failed: %s", url, exc)
        return f"failed: {type(exc).__name__}: {exc}"
    return "sent"
