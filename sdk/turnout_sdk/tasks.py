"""What a model's output means, declared once per model.

The task decides the one number per row that the model server's prediction histogram and
prediction drift (PSI) watch, and how a rollout compares two versions' replies (shadow and
A/B): a binary score against a threshold, the top class of a multi-class model, a regression
value within a tolerance, or exact equality for anything else. ``comparison()`` is what the
ModelDeployment's ``spec.comparison`` should say for this task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from turnout_sdk import drift

Outputs = Mapping[str, npt.NDArray[Any]]


def _first(outputs: Outputs, name: str | None) -> npt.NDArray[Any]:
    if name is not None:
        return outputs[name]
    return next(iter(outputs.values()))


@dataclass(frozen=True)
class BinaryScore:
    """One probability per row; two versions agree when both are on the same side."""

    threshold: float = 0.5
    #: Which output holds the score (default: the first declared).
    output: str | None = None
    kind: Literal["numeric", "categorical"] = "numeric"
    #: Histogram buckets of the score (a probability).
    buckets: Sequence[float] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

    def score(self, outputs: Outputs) -> npt.NDArray[np.float64]:
        return np.asarray(_first(outputs, self.output), dtype=np.float64).reshape(-1)

    def comparison(self) -> dict[str, Any]:
        return {"type": "Binary", "threshold": self.threshold}


@dataclass(frozen=True)
class MultiClass:
    """Class probabilities (or logits) per row, [N, K]; versions agree on the top class."""

    output: str | None = None
    kind: Literal["numeric", "categorical"] = "categorical"
    #: Histogram buckets of the predicted class index (class k falls in the bucket <= k).
    buckets: Sequence[float] = tuple(float(k) for k in range(10))

    def score(self, outputs: Outputs) -> npt.NDArray[np.float64]:
        values = np.asarray(_first(outputs, self.output))
        return np.asarray(np.argmax(values.reshape(len(values), -1), axis=1), dtype=np.float64)

    def comparison(self) -> dict[str, Any]:
        return {"type": "MultiClass"}


@dataclass(frozen=True)
class Regression:
    """One number per row; versions agree within ``tolerance`` (absolute)."""

    tolerance: float = 0.0
    output: str | None = None
    kind: Literal["numeric", "categorical"] = "numeric"
    buckets: Sequence[float] = ()

    def score(self, outputs: Outputs) -> npt.NDArray[np.float64]:
        values = np.asarray(_first(outputs, self.output), dtype=np.float64)
        return values.reshape(len(values), -1)[:, 0]

    def comparison(self) -> dict[str, Any]:
        return {"type": "Regression", "tolerance": self.tolerance}


@dataclass(frozen=True)
class Exact:
    """Anything else: versions agree when a row's outputs are identical."""

    output: str | None = None
    kind: Literal["numeric", "categorical"] = "numeric"
    buckets: Sequence[float] = ()

    def score(self, outputs: Outputs) -> npt.NDArray[np.float64]:
        values = np.asarray(_first(outputs, self.output), dtype=np.float64)
        return values.reshape(len(values), -1)[:, 0]

    def comparison(self) -> dict[str, Any]:
        return {"type": "Exact"}


Task = BinaryScore | MultiClass | Regression | Exact


def reference(
    *,
    outputs: Outputs,
    task: Task,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    feature_names: Sequence[str] | None = None,
    classes: int | None = None,
) -> dict[str, Any]:
    """The reference distributions a model server's drift gauges compare against, for the
    model's metadata (``metadata={"reference": reference(...)}``).

    ``outputs``: the model's outputs on held-out data (name -> array), summarised by the
    task's score. ``inputs``: one tabular input [N, F] gets a reference per column (named by
    ``feature_names``, else ``input[j]``); images and other shapes get none. ``classes``:
    for MultiClass, the number of classes (default: the output's width).
    """
    score = task.score(outputs)
    if task.kind == "categorical":
        width = np.asarray(_first(outputs, task.output)).reshape(len(score), -1).shape[1]
        k = classes or int(width)
        prediction = drift.categorical_reference(score, [float(c) for c in range(k)])
    else:
        prediction = drift.numeric_reference(score)
    doc: dict[str, Any] = {"prediction": prediction.to_dict(), "features": {}}
    if inputs:
        if len(inputs) != 1:
            return doc
        ((name, values),) = inputs.items()
        table = np.asarray(values, dtype=np.float64)
        if table.ndim != 2:
            return doc
        names = list(feature_names or [f"{name}[{j}]" for j in range(table.shape[1])])
        if len(names) != table.shape[1]:
            raise ValueError(f"{len(names)} feature names for {table.shape[1]} columns of {name!r}")
        doc["features"] = {
            n: drift.numeric_reference(table[:, j]).to_dict() for j, n in enumerate(names)
        }
    return doc
