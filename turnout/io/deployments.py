"""ModelDeployments on a laptop: YAML files in the state directory, as kubectl would hold them.

Each deployment ``NAME`` is three files under ``$TURNOUT_HOME/deployments/``:

- ``NAME.yaml`` — the user's object (apiVersion, kind, metadata, spec). The CLI writes it; a
  person may edit it. The controller reads it and writes it back only to promote or to clear
  an ended rollout's candidate, as the operator does in a cluster.
- ``NAME.state.json`` — the controller's: status, the last spec it accepted and a generation
  that grows with each accepted spec change. A spec file that does not validate is rejected
  and the last accepted spec keeps running, across controller restarts too.
- ``NAME.events.jsonl`` — one line per decision: the status then and the events; ``turnout
  status``, ``history`` and ``report`` read it.

Writers take an ``flock`` on ``NAME.lock`` and replace files atomically, so the CLI and the
controller loop never see half a file, and a crash loses at most the decision in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from turnout.core.spec import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    SpecError,
    dump,
    parse_deployment,
)


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class State:
    """What the controller keeps about one deployment between runs."""

    status: ModelDeploymentStatus
    #: The last spec that validated; runs while the file holds a bad edit.
    spec: ModelDeploymentSpec | None
    generation: int = 0
    #: The rejection message for the spec file's current content, if it is bad.
    spec_error: str | None = None


class DeploymentStore:
    def __init__(self, home: Path) -> None:
        self.dir = home / "deployments"

    # --- paths --------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.yaml"

    def _state_path(self, name: str) -> Path:
        return self.dir / f"{name}.state.json"

    def events_path(self, name: str) -> Path:
        return self.dir / f"{name}.events.jsonl"

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.yaml"))

    # --- the user's object --------------------------------------------------------------

    def raw(self, name: str) -> str:
        try:
            return self.path(name).read_text()
        except FileNotFoundError:
            raise NotFound(f"no ModelDeployment {name!r} (see `turnout deploy`)") from None

    def load(self, name: str) -> ModelDeployment:
        """The object in the file, or SpecError naming each bad field."""
        text = self.raw(name)
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{self.path(name)}: not valid YAML: {exc}") from None
        try:
            md = parse_deployment(doc)
        except SpecError as exc:
            raise SpecError(f"{self.path(name)}: {exc}") from None
        if md.metadata.name != name:
            raise SpecError(f"{self.path(name)}: metadata.name must be {name!r}, the file's name")
        return md

    def save(self, md: ModelDeployment) -> None:
        """Write the user's object (without status, which lives in the state file)."""
        # Only what differs from the defaults, as a person would write it.
        doc = {
            "apiVersion": md.api_version,
            "kind": md.kind,
            **md.model_dump(
                mode="json",
                by_alias=True,
                exclude_defaults=True,
                exclude={"status", "api_version", "kind"},
            ),
        }
        text = yaml.safe_dump(doc, sort_keys=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path(md.metadata.name), text)

    def update(
        self, name: str, change: Callable[[ModelDeployment], ModelDeployment]
    ) -> ModelDeployment:
        """Read, change and write the object under the lock (how the CLI patches it)."""
        with self.locked(name):
            md = change(self.load(name))
            self.save(md)
            return md

    # --- the controller's state ---------------------------------------------------------

    def state(self, name: str) -> State:
        try:
            doc = json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            return State(status=ModelDeploymentStatus(), spec=None)
        spec = doc.get("spec")
        return State(
            status=ModelDeploymentStatus.model_validate(doc["status"]),
            spec=None if spec is None else ModelDeploymentSpec.model_validate(spec),
            generation=int(doc.get("generation", 0)),
            spec_error=doc.get("specError"),
        )

    def save_state(self, name: str, state: State) -> None:
        doc = {
            "status": dump(state.status),
            "spec": None if state.spec is None else dump(state.spec),
            "generation": state.generation,
            "specError": state.spec_error,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self._state_path(name), json.dumps(doc, indent=1))

    def append_record(
        self,
        name: str,
        *,
        at: datetime,
        status: ModelDeploymentStatus,
        events: Sequence[Mapping[str, str]],
    ) -> None:
        line = json.dumps({"at": at.isoformat(), "status": dump(status), "events": list(events)})
        with open(self.events_path(name), "a") as f:
            f.write(line + "\n")

    def records(self, name: str) -> list[dict[str, Any]]:
        try:
            lines = self.events_path(name).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                out.append(json.loads(line))
        return out

    def delete(self, name: str) -> None:
        with self.locked(name):
            for p in (self.path(name), self._state_path(name)):
                p.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{name}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
