"""A model's retraining plugin: the model-specific half of the retrain pipeline.

The retrain pipeline (workflows/pipeline.py) is the same for every model: fix the data, check
it for drift against the stable version, train a candidate, gate it, register it, propose it.
Where the data comes from, how to train and score, and what "good enough" means differ per
model, so they come from a plugin named by the ``plugin`` parameter: an import path
``module:attribute`` (``examples.digits.pipeline:PIPELINE``; the default,
``workflows.fraud:PIPELINE``, is the built-in fraud model's). workflows/PLUGINS.md says the
same for a model's author, with an example.

A plugin is any object (an instance, a class, a module) with these attributes:

    name                      a short name for messages ("digits")
    inputs, outputs           the model server's tensors (turnout_sdk.Tensor), as its
                              @model_server declares them
    task                      what the output means (turnout_sdk.MultiClass(), ...)
    service                   what `bentoml serve` runs for a version (a directory holding a
                              bentofile.yaml, module:Class, or None for the fraud server)
    gate                      its GateConfig: metric floors, no regression, latency, ...
    data(params) -> Dataset                 the run's rows, split train/validation/newest
    train(dataset, *, seed) -> Trained      a new model and its held-out metrics
    save(trained, directory) -> metadata    write the model's files; return its metadata
    load(directory) -> model                read them back (a staged or a stored version)
    predict(model, inputs) -> outputs       arrays by declared name, rows on axis 0
    evaluate(model, split) -> metrics       {"accuracy": 0.97, ...}: what the floors read

and optionally ``inputs_of(split)`` (the model's inputs from a split; required when splits are
DataFrames), ``features(split)`` (named columns for per-feature drift), ``examples(rows)``
(inputs for the serving smoke test; zeros otherwise) and ``checks(model, dataset, *, stable,
config, seed)`` (checks of its own for the gate report).

:class:`Plugin` wraps the object the path names. Every entry point goes through it, and each
checks what the plugin returned, so a plugin's mistake is refused where it happens with a
message naming the plugin, the entry point and what it should have returned, before anything
is registered.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import pandas as pd

from training.gate import GateCheck, GateConfig, Regression
from turnout_sdk.tasks import Task
from turnout_sdk.tensors import DeclarationError, Tensor

if TYPE_CHECKING:
    from workflows.params import RetrainParams

__all__ = [
    "Dataset",
    "GateCheck",
    "GateConfig",
    "ModelPlugin",
    "Plugin",
    "PluginError",
    "Regression",
    "Split",
    "Trained",
]

#: A split of the data: a table, or arrays by name (inputs, labels, ...) with rows on axis 0.
Split: TypeAlias = pd.DataFrame | Mapping[str, np.ndarray]
#: The splits a Dataset may hold, in the order drift reads them.
SPLITS = ("train", "validation", "newest")
#: Written by the pipeline beside the model's files when it stages a candidate.
METADATA = "metadata.json"


class PluginError(ValueError):
    """A plugin that cannot be loaded, or returned something it should not have; the message
    names the plugin, the entry point and what it should be."""


@dataclass(frozen=True)
class Dataset:
    """What ``data(params)`` returns. ``train``: what training learns from (it may split off
    its own validation rows); ``validation``: held out for training's own metrics, if the
    plugin keeps such rows apart; ``newest``: held out for the gate, which judges candidate
    and stable model on it. ``source`` and ``note`` (one line each) go into the run's
    summary, e.g. "synthetic day 0" and "fraud 1.23%"."""

    train: Split
    newest: Split
    validation: Split | None = None
    source: str = ""
    note: str = ""

    def splits(self) -> dict[str, Split]:
        """The splits it holds, by name, in :data:`SPLITS` order."""
        return {n: s for n in SPLITS if (s := getattr(self, n)) is not None}


@dataclass(frozen=True)
class Trained:
    """What ``train`` returns. ``model``: whatever ``save`` needs to write the model's files.
    ``metrics``: held-out metrics of training (required: a candidate without them is refused).
    ``weights_sha256``: the hash the gate's reproducibility check compares (default: the
    sha256 of the files ``save`` writes)."""

    model: Any
    metrics: Mapping[str, float]
    weights_sha256: str | None = None


class ModelPlugin(Protocol):
    """What a plugin provides (the optional entry points are in the module docstring)."""

    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    task: Task
    service: str | None
    gate: GateConfig

    def data(self, params: RetrainParams) -> Dataset: ...
    def train(self, dataset: Dataset, *, seed: int) -> Trained: ...
    def save(self, trained: Trained, directory: Path) -> Mapping[str, Any]: ...
    def load(self, directory: Path) -> Any: ...
    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...
    def evaluate(self, model: Any, split: Split) -> Mapping[str, float]: ...


_REQUIRED = ("name", "inputs", "outputs", "task", "service", "gate")
_ENTRY_POINTS = ("data", "train", "save", "load", "predict", "evaluate")


class Plugin:
    """A loaded plugin: its declarations checked, its entry points checked as they return."""

    def __init__(self, path: str, obj: Any) -> None:
        self.path = path
        self.obj = obj
        missing = [a for a in (*_REQUIRED, *_ENTRY_POINTS) if not hasattr(obj, a)]
        if missing:
            raise PluginError(f"plugin {path} lacks {', '.join(missing)} (workflows/PLUGINS.md)")
        not_callable = [a for a in _ENTRY_POINTS if not callable(getattr(obj, a))]
        if not_callable:
            raise PluginError(f"plugin {path}: {', '.join(not_callable)} must be callable")
        self.name = str(obj.name)
        self.inputs: tuple[Tensor, ...] = self._tensors("inputs")
        self.outputs: tuple[Tensor, ...] = self._tensors("outputs")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise PluginError(f"plugin {path}: a tensor name is declared twice in {names}")
        self.task: Task = obj.task
        self.service: str | None = obj.service
        if not isinstance(obj.gate, GateConfig):
            raise PluginError(
                f"plugin {path}: gate must be a GateConfig (workflows.plugins.GateConfig), "
                f"got {type(obj.gate).__name__}"
            )
        self.gate: GateConfig = obj.gate

    def _tensors(self, attribute: str) -> tuple[Tensor, ...]:
        declared = tuple(getattr(self.obj, attribute))
        if not declared or not all(isinstance(t, Tensor) for t in declared):
            raise PluginError(
                f"plugin {self.path}: {attribute} must be turnout_sdk.Tensor declarations, "
                "as the model server's @model_server has them"
            )
        try:
            for tensor in declared:
                tensor.validate()
        except DeclarationError as exc:
            raise PluginError(f"plugin {self.path}: {attribute}: {exc}") from None
        return declared

    def _refuse(self, entry: str, problem: str) -> PluginError:
        return PluginError(f"plugin {self.path}: {entry}() {problem}")

    # --- the entry points, checked ------------------------------------------------------------

    def data(self, params: RetrainParams) -> Dataset:
        dataset = self.obj.data(params)
        if not isinstance(dataset, Dataset):
            raise self._refuse("data", f"returned {_kind(dataset)}, not a Dataset")
        for name, split in dataset.splits().items():
            problem = split_problem(split)
            if problem:
                raise self._refuse("data", f"returned a {name} split that {problem}")
        for name in ("train", "newest"):
            if rows(getattr(dataset, name)) == 0:
                raise self._refuse("data", f"returned an empty {name} split")
        return dataset

    def train(self, dataset: Dataset, *, seed: int) -> Trained:
        """Refuses a result without metrics: the gate and the model's metadata need them."""
        trained = self.obj.train(dataset, seed=seed)
        example = "Trained(model=..., metrics={'accuracy': 0.97})"
        if not isinstance(trained, Trained):
            raise self._refuse(
                "train", f"returned {_kind(trained)} and no metrics; return {example}"
            )
        metrics = trained.metrics
        if not isinstance(metrics, Mapping) or not metrics:
            raise self._refuse(
                "train", f"returned no metrics (Trained.metrics is empty); return {example}"
            )
        bad = _not_numbers(metrics)
        if bad:
            raise self._refuse("train", f"returned metrics that are not finite numbers: {bad}")
        return trained

    def save(self, trained: Trained, directory: Path) -> dict[str, Any]:
        directory.mkdir(parents=True, exist_ok=True)
        metadata = self.obj.save(trained, directory)
        if not isinstance(metadata, Mapping):
            raise self._refuse(
                "save", f"returned {_kind(metadata)}, not the model's metadata (a dict)"
            )
        if not any(p.name != METADATA for p in directory.iterdir()):
            raise self._refuse("save", f"wrote no files into {directory}")
        try:
            # JSON has no NaN: a number that is not finite is left out, as BentoML leaves None.
            return dict(json.loads(json.dumps(_finite(dict(metadata)), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise self._refuse("save", f"returned metadata that is not JSON: {exc}") from None

    def load(self, directory: Path) -> Any:
        return self.obj.load(directory)

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs by declared name (a bare array when one output is declared)."""
        got = self.obj.predict(model, inputs)
        if not isinstance(got, Mapping) and len(self.outputs) == 1:
            got = {self.outputs[0].name: got}
        if not isinstance(got, Mapping):
            raise self._refuse("predict", f"returned {_kind(got)}, not arrays by output name")
        declared = [t.name for t in self.outputs]
        if sorted(got) != sorted(declared):
            raise self._refuse("predict", f"returned outputs {sorted(got)}, not {declared}")
        n = rows(inputs)
        out = {name: np.asarray(got[name]) for name in declared}
        short = [name for name, v in out.items() if v.ndim == 0 or len(v) != n]
        if short:
            raise self._refuse(
                "predict", f"returned {', '.join(short)} without one row per input row ({n})"
            )
        return out

    def evaluate(self, model: Any, split: Split) -> dict[str, float]:
        metrics = self.obj.evaluate(model, split)
        if not isinstance(metrics, Mapping) or not metrics:
            raise self._refuse("evaluate", f"returned {_kind(metrics)}, not metrics by name")
        if any(not isinstance(v, int | float | np.number) for v in metrics.values()):
            raise self._refuse(
                "evaluate", f"returned metrics that are not numbers: {dict(metrics)}"
            )
        return {str(k): float(v) for k, v in metrics.items()}

    def inputs_of(self, split: Split) -> dict[str, np.ndarray]:
        """The model's inputs from a split: the plugin's ``inputs_of``, else the arrays of a
        mapping split named as the declared inputs."""
        custom = getattr(self.obj, "inputs_of", None)
        if custom is not None:
            got = custom(split)
        elif isinstance(split, pd.DataFrame):
            raise self._refuse(
                "inputs_of",
                "is missing: a plugin whose splits are DataFrames must say how a "
                "split becomes the model's inputs",
            )
        else:
            got = {t.name: split[t.name] for t in self.inputs if t.name in split}
        declared = [t.name for t in self.inputs]
        if not isinstance(got, Mapping) or sorted(got) != sorted(declared):
            names = sorted(got) if isinstance(got, Mapping) else _kind(got)
            raise self._refuse("inputs_of", f"gave {names}, not the declared inputs {declared}")
        return {t.name: np.ascontiguousarray(got[t.name], dtype=t.dtype) for t in self.inputs}

    def features(self, split: Split) -> dict[str, np.ndarray] | None:
        """Named 1-D columns for per-feature drift, or None (drift of the prediction only)."""
        custom = getattr(self.obj, "features", None)
        if custom is None:
            return None
        return {str(k): np.asarray(v) for k, v in custom(split).items()}

    def examples(self, rows: int) -> dict[str, np.ndarray]:
        """Valid inputs for the serving smoke test: the plugin's, else zeros."""
        custom = getattr(self.obj, "examples", None)
        got = custom(rows) if custom is not None else None
        if got is None:
            return {t.name: np.zeros((rows, *t.shape[1:]), dtype=t.dtype) for t in self.inputs}
        return self.inputs_of(got)

    def checks(
        self, model: Any, dataset: Dataset, *, stable: Any, config: GateConfig, seed: int
    ) -> list[GateCheck]:
        custom = getattr(self.obj, "checks", None)
        if custom is None:
            return []
        got = list(custom(model, dataset, stable=stable, config=config, seed=seed))
        if not all(isinstance(c, GateCheck) for c in got):
            raise self._refuse("checks", "returned something that is not a GateCheck")
        return got


@functools.cache
def load(path: str) -> Plugin:
    """The plugin ``module:attribute``; PluginError saying why it cannot be had.

    The module is looked for as `bentoml serve` looks for a service: from the current
    directory, then from turnout's project root (where ``examples/`` lives).
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(
            f"plugin {path!r} must be module:attribute, e.g. examples.digits.pipeline:PIPELINE"
        )
    from turnout.io.processes import project_root

    for where in (os.getcwd(), str(project_root())):
        if where not in sys.path:
            sys.path.append(where)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"plugin {path}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"plugin {path}: {module_name} has no {attribute}")
        obj = getattr(obj, part)
    return Plugin(path, obj)


# --- splits and files -------------------------------------------------------------------------


def rows(split: Split) -> int:
    if isinstance(split, pd.DataFrame):
        return len(split)
    return len(next(iter(split.values()))) if split else 0


def head(split: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in split.items()}


def split_problem(split: object) -> str | None:
    """Why ``split`` cannot be a split (None when it can)."""
    if isinstance(split, pd.DataFrame):
        return None
    if not isinstance(split, Mapping) or not split:
        return f"is {_kind(split)}, not a DataFrame or arrays by name"
    lengths = set()
    for name, values in split.items():
        if (
            not isinstance(values, np.ndarray)
            or values.dtype.kind not in "biufc"
            or values.ndim == 0
        ):
            return f"holds {name!r} as {_kind(values)}, not a numeric numpy array"
        lengths.add(len(values))
    if len(lengths) > 1:
        return f"holds arrays of different lengths {sorted(lengths)}"
    return None


@dataclass(frozen=True)
class Stored:
    """A dataset as files: split name -> file (relative to the directory), its rows, and
    a hash of the files' bytes that later steps check before they trust them."""

    files: dict[str, str]
    rows: dict[str, int]
    fingerprint: str


def write_dataset(dataset: Dataset, directory: Path) -> Stored:
    """Each split as Parquet (a table) or .npz (arrays; read back without pickle)."""
    directory.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for name, split in dataset.splits().items():
        if isinstance(split, pd.DataFrame):
            files[name] = f"{name}.parquet"
            split.to_parquet(directory / files[name], index=False)
        else:
            files[name] = f"{name}.npz"
            np.savez(directory / files[name], **split)
        counts[name] = rows(split)
    return Stored(
        files=files, rows=counts, fingerprint=files_sha256(directory, names=files.values())
    )


def read_dataset(directory: Path, stored: Stored, *, source: str = "", note: str = "") -> Dataset:
    """The dataset :func:`write_dataset` wrote; ValueError when a file changed since."""
    if files_sha256(directory, names=stored.files.values()) != stored.fingerprint:
        raise ValueError(f"the data in {directory} changed since the snapshot step wrote it")
    splits: dict[str, Split] = {}
    for name, file in stored.files.items():
        path = directory / file
        if path.suffix == ".parquet":
            splits[name] = pd.read_parquet(path)
        else:
            with np.load(path, allow_pickle=False) as arrays:
                splits[name] = {k: arrays[k] for k in arrays.files}
    return Dataset(**splits, source=source, note=note)


def files_sha256(directory: Path, *, names: Any = None, exclude: Sequence[str] = ()) -> str:
    """sha256 over the files (names and bytes) of ``directory``, or of ``names`` in it;
    FileNotFoundError when one is missing."""
    chosen = (
        sorted(names)
        if names is not None
        else sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    )
    h = hashlib.sha256()
    for name in chosen:
        if name in exclude:
            continue
        h.update(name.encode() + b"\0")
        h.update((directory / name).read_bytes())
    return h.hexdigest()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _kind(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def _not_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): v
        for k, v in metrics.items()
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not math.isfinite(v)
    }
