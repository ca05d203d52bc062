"""What the retrain steps hand each other, and the run directory that carries it.

A step returns a frozen dataclass (a :class:`Record`) that round-trips through JSON. The
runner writes it to ``<run dir>/<step>.json`` and the next step reads it back, in the same
process under the local runner or in another pod under Argo, so a step never knows which.
Bulky things (the data snapshot, the staged candidate, the gate report) live beside the JSON
in the run directory and the records name them relative to it. A failed step leaves
``<step>.error.json`` instead, which the exit handler reads to say how the run ended.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self, TypeVar

from turnout.core import drift
from workflows.params import as_text


class StepError(RuntimeError):
    """A step cannot go on; the message says why in one line."""


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
        names = _require_fields(cls, data)
        return cls(**{n: _tuples(data[n]) for n in names})

    def summary(self) -> str:
        return ""

    def outputs(self) -> dict[str, str]:
        return {}

    def failure(self) -> str | None:
        return None


def _require_fields(kind: type, data: Mapping[str, Any]) -> list[str]:
    """The dataclass's field names, or StepError naming those ``data`` lacks."""
    names = [f.name for f in fields(kind)]
    missing = [n for n in names if n not in data]
    if missing:
        raise StepError(f"{kind.__name__} record lacks {', '.join(missing)}")
    return names


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Snapshot(Record):
    #: The directory of the data, in the run directory.
    directory: str
    #: Split name (train, validation, newest) -> its file in ``directory``.
    files: dict[str, str]
    #: Split name -> rows.
    rows: dict[str, int]
    source: str
    #: One line the plugin says about the data (e.g. "fraud 1.23%").
    note: str
    #: sha256 of the files: a later step, perhaps in another pod, checks it before it reads.
    fingerprint: str

    def summary(self) -> str:
        note = f", {self.note}" if self.note else ""
        total = sum(self.rows.values())
        return (
            f"{total} rows from {self.source}{note}; "
            f"newest {self.rows.get('newest', 0)} held out for the gate"
        )


@dataclass(frozen=True)
class DriftCheck(Record):
    #: Tag of the stable model the snapshot was compared with.
    stable: str
    threshold: float
    max_psi: float
    worst: str
    #: PSI of the stable model's scores on the snapshot against its validation scores.
    prediction_psi: float
    features: tuple[drift.FeatureDrift, ...]
    forced: bool
    #: The candidate version the ModelDeployment is rolling out now ("" when none): a run
    #: during a rollout stops here, since its candidate could not be proposed.
    in_flight: str
    skip: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        base = super().from_dict(data)
        feats = []
        for raw in data["features"]:
            _require_fields(drift.FeatureDrift, raw)
            try:
                feats.append(drift.FeatureDrift.from_dict(raw))
            except ValueError as exc:
                raise StepError(f"{cls.__name__} record has a bad feature: {exc}") from None
        return dataclasses.replace(base, features=tuple(feats))

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
        return {"skip": as_text(self.skip)}


@dataclass(frozen=True)
class Candidate(Record):
    #: The tag it will be registered under once it passes the gate.
    tag: str
    #: The plugin that trained it (module:attribute).
    plugin: str
    #: The staged model (the plugin's files and metadata.json), relative to the run directory.
    directory: str
    #: sha256 of the staged files: what was judged is what gets registered.
    digest: str
    #: What the reproducibility check compares (the plugin's hash, else of its files).
    weights_sha256: str
    seed: int
    rows: int
    seconds: float
    #: Training's held-out metrics, as the plugin returned them.
    metrics: dict[str, float]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    def summary(self) -> str:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in list(self.metrics.items())[:3])
        return (
            f"{self.tag} on {self.rows} rows, seed {self.seed}: held-out {shown} "
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
        return {"passed": as_text(self.passed)}

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
        write_json(self.output_path(step), output.to_dict())

    def write_error(self, step: str, message: str) -> None:
        write_json(self.error_path(step), {"step": step, "error": message})


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON all at once: a reader in another pod never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)
