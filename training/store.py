"""Model versions in the BentoML model store: save, load (no pickle), list.

A version is a BentoML model ``<name>:<version>`` whose directory holds
``weights.safetensors`` (tensors only: loading cannot execute code) and ``architecture.json``;
its metadata carries metrics, baseline metrics, data fingerprint, parameters, seed, code
version, feature schema and the drift reference histograms.

A trained model can also be staged in a plain directory first (:func:`write_directory`: the
same two files plus ``metadata.json``) and registered later (:func:`register_directory`), so a
retraining pipeline can validate a candidate before anything enters the store.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.io.settings import use_local_model_store

use_local_model_store()

import bentoml  # noqa: E402  (BENTOML_HOME must be set first)
from bentoml.exceptions import NotFound  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from training.data import Schema  # noqa: E402
from training.model import Architecture, FraudNet  # noqa: E402
from training.train import TrainResult, params_dict  # noqa: E402

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"
#: Only in a staged directory; a registered version keeps it in the store's metadata.
METADATA = "metadata.json"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ModelNotFound(LookupError):
    """No model version by that tag in the store."""


@dataclass(frozen=True)
class LoadedModel:
    tag: str
    name: str
    version: str
    net: FraudNet
    schema: Schema
    metadata: dict[str, Any]


def code_version() -> str:
    """The git commit of the code that trained the model, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def next_version(name: str) -> str:
    """v1, v2, ...: one more than the highest ``v<N>`` stored under ``name``."""
    numbers = [
        int(m.group(1))
        for m in (re.fullmatch(r"v(\d+)", str(x.tag.version)) for x in _list(name))
        if m
    ]
    return f"v{max(numbers, default=0) + 1}"


def metadata(result: TrainResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a registered version's metadata says about its training run."""
    return {
        "metrics": result.metrics,
        "baseline_metrics": result.baseline_metrics,
        "slices": result.slices,
        "data_fingerprint": result.data_fingerprint,
        "rows": result.rows,
        "params": params_dict(result.params),
        "seed": result.seed,
        "epochs": result.epochs,
        "code_version": code_version(),
        "weights_sha256": result.weights_sha256,
        "feature_schema": result.arch.schema.to_dict(),
        "reference": result.reference,
        **(extra or {}),
    }


def _storable(value: Any) -> Any:
    """``value`` as BentoML metadata, which cannot hold None: such map entries are left out
    (readers use ``.get``, so an absent key reads as None again)."""
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value if v is not None]
    return value


def _write_model_files(result: TrainResult, path: Path) -> None:
    save_file(result.net.state_dict(), str(path / WEIGHTS))
    (path / ARCHITECTURE).write_text(json.dumps(result.arch.to_dict(), indent=2))


def _checked_tag(name: str, version: str | None) -> str:
    version = version or next_version(name)
    if not _VERSION.match(version):
        raise ValueError(
            f"version {version!r} must be 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    tag = f"{name}:{version}"
    if exists(tag):
        raise ValueError(f"model {tag} already exists; choose another --version")
    return tag


def save(
    result: TrainResult,
    *,
    name: str,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Register a trained model; returns its tag. Refuses to overwrite an existing version."""
    tag = _checked_tag(name, version)
    with bentoml.models.create(
        tag,
        labels={"framework": "torch", "task": "fraud"},
        metadata=_storable(metadata(result, extra)),
    ) as model:
        _write_model_files(result, Path(model.path))
    return str(model.tag)


def write_directory(
    result: TrainResult, path: Path, *, extra: dict[str, Any] | None = None
) -> None:
    """Stage a trained model in ``path`` (not registered): what :func:`save` would store, plus
    its metadata in ``metadata.json``. :func:`from_directory` loads it back."""
    path.mkdir(parents=True, exist_ok=True)
    _write_model_files(result, path)
    meta = _storable(metadata(result, extra))
    (path / METADATA).write_text(json.dumps(meta, indent=1))


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata a staged directory was written with."""
    data = json.loads((path / METADATA).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path / METADATA}: not a JSON object")
    return data


def register_directory(
    path: Path,
    *,
    name: str,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Register a model staged by :func:`write_directory`; returns its tag.

    All or nothing: BentoML writes the version to a temporary directory and moves it into the
    store only when the block ends without an error, so a failure registers nothing.
    """
    meta = _storable({**read_metadata(path), **(extra or {})})
    tag = _checked_tag(name, version)
    with bentoml.models.create(
        tag, labels={"framework": "torch", "task": "fraud"}, metadata=meta
    ) as model:
        for filename in (WEIGHTS, ARCHITECTURE):
            shutil.copyfile(path / filename, model.path_of(filename))
    return str(model.tag)


def exists(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True


def delete(tag: str) -> None:
    """Remove a version from the store (a pipeline undoing a registration that failed later)."""
    with contextlib.suppress(NotFound):
        bentoml.models.delete(tag)


def load(tag: str) -> LoadedModel:
    """Rebuild the network from its architecture and tensors; never unpickles anything."""
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise ModelNotFound(f"model {tag} not found in the model store") from None
    return from_directory(Path(model.path), tag=str(model.tag), metadata=dict(model.info.metadata))


def from_directory(path: Path, *, tag: str, metadata: dict[str, Any]) -> LoadedModel:
    arch = Architecture.from_dict(json.loads((path / ARCHITECTURE).read_text()))
    net = FraudNet(arch)
    net.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    net.eval()
    name, _, version = tag.partition(":")
    return LoadedModel(
        tag=tag, name=name, version=version, net=net, schema=arch.schema, metadata=metadata
    )


def _list(name: str | None = None) -> list[Any]:
    try:
        return list(bentoml.models.list(name) if name else bentoml.models.list())
    except NotFound:
        return []


def list_versions(name: str | None = None) -> list[dict[str, Any]]:
    """Stored versions, newest first, with their key metrics."""
    rows = []
    for m in _list(name):
        meta = m.info.metadata
        rows.append(
            {
                "tag": str(m.tag),
                "created": m.info.creation_time.isoformat(timespec="seconds"),
                "metrics": meta.get("metrics", {}),
                "baseline_metrics": meta.get("baseline_metrics", {}),
                "seed": meta.get("seed"),
                "rows": meta.get("rows"),
            }
        )
    rows.sort(key=lambda r: r["created"], reverse=True)
    return rows
