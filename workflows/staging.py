"""Model versions of any plugin in the BentoML store: read a stored one, register a staged one.

A candidate is staged in a plain directory first (the plugin's files plus ``metadata.json``)
and judged there; only a candidate that passed the gate is registered. Registering is all or
nothing: BentoML writes the version to a temporary directory and moves it into the store only
when the block ends without an error. The serving smoke test registers the same directory in
a private store of its own (``model_store``), so the shared one is never written before the
gate passed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.io.settings import use_local_model_store

use_local_model_store()

import bentoml  # noqa: E402  (BENTOML_HOME must be set first)
from bentoml.exceptions import NotFound  # noqa: E402

# BentoML metadata cannot hold None; store.py's rule for leaving such entries out.
from training.store import ModelNotFound, read_metadata  # noqa: E402
from training.store import _storable as storable  # noqa: E402
from workflows.plugins import METADATA  # noqa: E402


@dataclass(frozen=True)
class Version:
    """A registered model version: its tag (``latest`` resolved), directory and metadata."""

    tag: str
    path: Path
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]


def stored(tag: str) -> Version:
    """The registered version ``tag`` (``digits:v2``, ``digits:latest``); ModelNotFound
    naming the tag."""
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise ModelNotFound(f"model {tag} not found in the model store") from None
    except Exception as exc:  # a malformed tag: bentoml raises several kinds
        raise ModelNotFound(f"model {tag!r}: {exc}") from None
    return Version(str(model.tag), Path(model.path), dict(model.info.metadata))


def register(
    directory: Path,
    *,
    tag: str,
    labels: dict[str, str],
    extra: dict[str, Any] | None = None,
    model_store: Any = None,
) -> str:
    """Register the staged ``directory`` as ``tag`` with its metadata (and ``extra``)."""
    metadata = storable({**read_metadata(directory), **(extra or {})})
    options = {"_model_store": model_store} if model_store is not None else {}
    with bentoml.models.create(tag, labels=labels, metadata=metadata, **options) as model:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if path.is_file() and str(relative) != METADATA:
                target = Path(model.path_of(str(relative)))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return str(model.tag)
