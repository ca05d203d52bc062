"""Where A/B ledgers live: each router replica's records of accepted outcomes
(turnout.core.ab_ledger says why a ledger, and how the controller merges them).

Two stores behind one protocol:

- ``DirectoryLedger``, on a laptop: ``<root>/<model>/<experiment>/<replica>.jsonl``, appended
  and fsynced once per group of records (the router's group commit), so an acknowledged outcome
  survives a crash of the router or the machine. The local platform's router and controller
  share ``$TURNOUT_HOME/ab``.
- ``ConfigMapLedger``, in a cluster: ConfigMaps in the router's namespace, one per replica per
  model and experiment (more when one fills up), labelled ``turnout.dev/ab-ledger=<model>``;
  written with the resourceVersion read, so a lost update is refused by the API server.

A replica writes only its own ledger; any number of readers (the controller, a replica
starting) read all of them. Replica ids must be unique among the replicas running at once (the
default holds the pod name or host and pid); a restarted replica may reuse its id or take a
new one.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from turnout.core import ab_ledger
from turnout.core.ab_ledger import LedgerUnavailable, Outcome

_PLAIN = re.compile(r"[A-Za-z0-9_-]")
SUFFIX = ".jsonl"


class LedgerStore(Protocol):
    """A replica's appends and everyone's reads."""

    def append(
        self, *, model: str, experiment: str, replica: str, records: Sequence[Outcome]
    ) -> None:
        """Add ``records`` to ``replica``'s ledger; durable when this returns."""
        ...

    def read(self, *, model: str, experiment: str) -> Mapping[str, Sequence[Outcome]]:
        """Every replica's records of the experiment: ``{replica id: records in order}``."""
        ...


def default_replica_id() -> str:
    """$POD_NAME in a cluster (the Downward API), else host and pid: unique among the replicas
    running at once, which is all the merge needs."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class MemoryLedger:
    """Ledgers in this process's memory: for tests and a router told to keep none."""

    def __init__(self) -> None:
        self._ledgers: dict[tuple[str, str], dict[str, list[Outcome]]] = {}
        self._lock = threading.Lock()

    def append(
        self, *, model: str, experiment: str, replica: str, records: Sequence[Outcome]
    ) -> None:
        with self._lock:
            ledgers = self._ledgers.setdefault((model, experiment), {})
            ledgers.setdefault(replica, []).extend(records)

    def read(self, *, model: str, experiment: str) -> dict[str, list[Outcome]]:
        with self._lock:
            ledgers = self._ledgers.get((model, experiment), {})
            return {replica: list(records) for replica, records in ledgers.items()}

    def forget(self, *, model: str, keep: str) -> list[str]:
        with self._lock:
            gone = [k for k in self._ledgers if k[0] == model and k[1] != keep]
            for key in gone:
                del self._ledgers[key]
        return [experiment for _, experiment in gone]


def path_part(name: str) -> str:
    """A name as one path component: letters, digits, ``_`` and ``-`` kept, every other byte
    %XX (so ``..``, ``/`` and case-folding file systems cannot mix two names up)."""
    parts = [c if _PLAIN.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name]
    return "".join(parts) or "%"


def name_of(part: str) -> str:
    """The name a path component stands for (``path_part``'s inverse)."""
    from urllib.parse import unquote

    return unquote(part) if part != "%" else ""


@dataclass
class _Seen:
    """What a reader has read of one file: its identity and the complete lines so far."""

    inode: tuple[int, int]
    offset: int = 0
    records: list[Outcome] = field(default_factory=list)


class DirectoryLedger:
    """Ledgers as JSON-lines files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[Path, int] = {}  # open for append by this process
        self._seen: dict[Path, _Seen] = {}
        self._lock = threading.Lock()

    def directory(self, model: str, experiment: str) -> Path:
        return self.root / path_part(model) / path_part(experiment)

    def append(
        self, *, model: str, experiment: str, replica: str, records: Sequence[Outcome]
    ) -> None:
        if not records:
            return
        path = self.directory(model, experiment) / (path_part(replica) + SUFFIX)
        data = ab_ledger.dumps(records)
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                fd = self._files[path] = _open_for_append(path)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)

    def read(self, *, model: str, experiment: str) -> dict[str, list[Outcome]]:
        directory = self.directory(model, experiment)
        try:
            names = sorted(p for p in os.listdir(directory) if p.endswith(SUFFIX))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LedgerUnavailable(f"cannot read {directory}: {exc.strerror}") from None
        out = {}
        for name in names:
            path = directory / name
            try:
                out[name_of(name.removesuffix(SUFFIX))] = self._read_file(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise LedgerUnavailable(f"cannot read {path}: {exc.strerror}") from None
        return out

    def forget(self, *, model: str, keep: str) -> list[str]:
        import shutil

        gone = []
        try:
            parts = os.listdir(self.root / path_part(model))
        except FileNotFoundError:
            return []
        for part in sorted(parts):
            if part != path_part(keep):
                shutil.rmtree(self.root / path_part(model) / part, ignore_errors=True)
                gone.append(name_of(part))
        return gone

    def _read_file(self, path: Path) -> list[Outcome]:
        """The file's records, reading only what was appended since the last call."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            inode = (st.st_dev, st.st_ino)
            seen = self._seen.get(path)
            if seen is None or seen.inode != inode or st.st_size < seen.offset:
                seen = self._seen[path] = _Seen(inode)
            f.seek(seen.offset)
            data = f.read()
        complete = data.rfind(b"\n") + 1  # an unfinished last line is read next time
        seen.records.extend(ab_ledger.loads(data[:complete]))
        seen.offset += complete
        return list(seen.records)

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


def _open_for_append(path: Path) -> int:
    """Open a replica's ledger to append to it. A last line without its newline is a write cut
    short by a crash: it was never acknowledged, so it is cut off before anything is added
    (else the next record would be glued to it)."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    size = os.fstat(fd).st_size
    if size:
        tail = os.pread(fd, min(size, 64 * 1024), max(0, size - 64 * 1024))
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = max(0, size - len(tail)) + cut + 1 if cut >= 0 else 0
            os.ftruncate(fd, keep)
            os.fsync(fd)
    if created:  # the new file's directory entry must survive a crash too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return fd


# --- ConfigMaps, in a cluster ---------------------------------------------------------------------

#: Label on every ledger ConfigMap: the model (or its hash when not a valid label value).
LEDGER_LABEL = "turnout.dev/ab-ledger"
#: Label naming the experiment (a hash: experiment ids are not all valid label values).
EXPERIMENT_LABEL = "turnout.dev/ab-experiment"
_MODEL = "turnout.dev/ab-model"
_EXPERIMENT = "turnout.dev/ab-experiment-id"
_REPLICA = "turnout.dev/ab-replica"
_SHARD = "turnout.dev/ab-shard"
DATA_KEY = "records.jsonl"
#: A ConfigMap holds at most 1 MiB; past this a replica starts its next one.
MAX_CONFIGMAP_BYTES = 900 * 1024
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")


def _hash(*parts: str, size: int = 10) -> str:
    import hashlib

    return hashlib.blake2b("\0".join(parts).encode(), digest_size=size).hexdigest()


def _model_label(model: str) -> str:
    return model if _LABEL_VALUE.fullmatch(model) else f"h{_hash(model)}"


@dataclass
class _Shard:
    """The ConfigMap this replica appends to now, as last written."""

    name: str
    index: int
    resource_version: str
    text: str


class ConfigMapLedger:
    """Ledgers as ConfigMaps in one namespace (the router's): one per replica per model and
    experiment, more when one fills up (MAX_CONFIGMAP_BYTES). A replica is the only writer of
    its ConfigMaps and writes each with the resourceVersion it last saw, so an update made
    behind its back (a second process with the same replica id) is refused (409), re-read and
    retried, never lost."""

    def __init__(self, api_client: object, *, namespace: str) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self._shards: dict[tuple[str, str, str], _Shard] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_kube(cls, kube: object, *, namespace: str) -> ConfigMapLedger:
        """On the connection a turnout.io.kube.Kube made (the same credentials)."""
        return cls(kube._client, namespace=namespace)  # type: ignore[attr-defined]

    # --- calls ------------------------------------------------------------------------------

    def _call(self, func: object, *args: object, **kwargs: object) -> dict[str, object]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", 10)
        try:
            out = func(*args, **kwargs)  # type: ignore[operator]
        except ApiException as exc:
            raise _KubeCallError(int(exc.status or 0), str(exc.reason)) from None
        except (OSError, HTTPError) as exc:
            raise _KubeCallError(0, f"API server unreachable: {exc}") from None
        return self._core.api_client.sanitize_for_serialization(out)  # type: ignore[no-any-return]

    def _list(self, model: str, experiment: str) -> list[dict[str, object]]:
        selector = f"{LEDGER_LABEL}={_model_label(model)},{EXPERIMENT_LABEL}={_hash(experiment)}"
        out = self._call(
            self._core.list_namespaced_config_map, self.namespace, label_selector=selector
        )
        items = out.get("items") or []
        assert isinstance(items, list)
        # Label values are hashes: keep only what really is this model's and experiment's.
        return [
            i
            for i in items
            if _notes(i).get(_MODEL) == model and _notes(i).get(_EXPERIMENT) == experiment
        ]

    # --- the protocol -----------------------------------------------------------------------

    def read(self, *, model: str, experiment: str) -> dict[str, list[Outcome]]:
        try:
            items = self._list(model, experiment)
        except _KubeCallError as exc:
            raise LedgerUnavailable(f"cannot list the A/B ledger ConfigMaps: {exc}") from None
        shards: dict[str, list[tuple[int, str]]] = {}
        for item in items:
            notes = _notes(item)
            data = item.get("data") or {}
            assert isinstance(data, dict)
            shards.setdefault(notes.get(_REPLICA, ""), []).append(
                (int(notes.get(_SHARD, "0")), str(data.get(DATA_KEY, "")))
            )
        return {
            replica: [r for _, text in sorted(parts) for r in ab_ledger.loads(text.encode())]
            for replica, parts in sorted(shards.items())
        }

    def forget(self, *, model: str, keep: str) -> list[str]:
        """Delete the model's ledger ConfigMaps of every experiment but ``keep``; a failure is
        raised as LedgerUnavailable (the next experiment's start tries again)."""
        try:
            out = self._call(
                self._core.list_namespaced_config_map,
                self.namespace,
                label_selector=f"{LEDGER_LABEL}={_model_label(model)}",
            )
            items = out.get("items") or []
            assert isinstance(items, list)
            gone = []
            for item in items:
                notes = _notes(item)
                if notes.get(_MODEL) != model or notes.get(_EXPERIMENT) == keep:
                    continue
                meta = item.get("metadata") or {}
                assert isinstance(meta, dict)
                try:
                    self._call(
                        self._core.delete_namespaced_config_map, meta["name"], self.namespace
                    )
                except _KubeCallError as exc:
                    if exc.status != 404:  # gone already is fine
                        raise
                gone.append(str(meta["name"]))
        except _KubeCallError as exc:
            raise LedgerUnavailable(f"cannot remove old A/B ledger ConfigMaps: {exc}") from None
        return gone

    def append(
        self, *, model: str, experiment: str, replica: str, records: Sequence[Outcome]
    ) -> None:
        if not records:
            return
        lines = ab_ledger.dumps(records).decode()
        key = (model, experiment, replica)
        with self._lock:
            for attempt in range(3):
                try:
                    shard = self._shards.get(key) or self._resume(model, experiment, replica)
                    if len(shard.text) + len(lines) <= MAX_CONFIGMAP_BYTES or not shard.text:
                        self._shards[key] = self._write(model, experiment, replica, shard, lines)
                    else:  # full: the next ConfigMap
                        fresh = _Shard(
                            name=_shard_name(model, experiment, replica, shard.index + 1),
                            index=shard.index + 1,
                            resource_version="",
                            text="",
                        )
                        self._shards[key] = self._write(model, experiment, replica, fresh, lines)
                    return
                except _KubeCallError as exc:
                    self._shards.pop(key, None)  # re-read before trying again
                    if exc.status != 409 or attempt == 2:
                        raise LedgerUnavailable(f"cannot write the A/B ledger: {exc}") from None

    def _resume(self, model: str, experiment: str, replica: str) -> _Shard:
        """This replica's last ConfigMap of the experiment (a restart reusing the id), or the
        first, not yet created."""
        mine = [i for i in self._list(model, experiment) if _notes(i).get(_REPLICA) == replica]
        if not mine:
            return _Shard(_shard_name(model, experiment, replica, 0), 0, "", "")
        last = max(mine, key=lambda i: int(_notes(i).get(_SHARD, "0")))
        meta = last.get("metadata") or {}
        data = last.get("data") or {}
        assert isinstance(meta, dict) and isinstance(data, dict)
        return _Shard(
            name=str(meta["name"]),
            index=int(_notes(last).get(_SHARD, "0")),
            resource_version=str(meta.get("resourceVersion", "")),
            text=str(data.get(DATA_KEY, "")),
        )

    def _write(
        self, model: str, experiment: str, replica: str, shard: _Shard, lines: str
    ) -> _Shard:
        text = shard.text + lines
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": shard.name,
                "namespace": self.namespace,
                "labels": {
                    LEDGER_LABEL: _model_label(model),
                    EXPERIMENT_LABEL: _hash(experiment),
                    "app.kubernetes.io/managed-by": "turnout",
                },
                "annotations": {
                    _MODEL: model,
                    _EXPERIMENT: experiment,
                    _REPLICA: replica,
                    _SHARD: str(shard.index),
                },
            },
            "data": {DATA_KEY: text},
        }
        if shard.resource_version:
            body["metadata"]["resourceVersion"] = shard.resource_version  # type: ignore[index]
            out = self._call(
                self._core.replace_namespaced_config_map, shard.name, self.namespace, body
            )
        else:
            out = self._call(self._core.create_namespaced_config_map, self.namespace, body)
        meta = out.get("metadata") or {}
        assert isinstance(meta, dict)
        return _Shard(shard.name, shard.index, str(meta.get("resourceVersion", "")), text)


class _KubeCallError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status


def _notes(item: Mapping[str, object]) -> dict[str, str]:
    meta = item.get("metadata") or {}
    assert isinstance(meta, dict)
    notes = meta.get("annotations") or {}
    assert isinstance(notes, dict)
    return {str(k): str(v) for k, v in notes.items()}


def _shard_name(model: str, experiment: str, replica: str, index: int) -> str:
    return f"turnout-ab-{_hash(model, experiment, replica)}-{index}"
