"""Live model monitoring: prediction-score histogram, drift PSI over a sliding window of
recent rows against the training reference, and inference errors by reason.

The request path only appends to a pending list; a background task folds pending rows into
the window every ``FLUSH_INTERVAL_S`` seconds and refreshes the gauges, so monitoring never adds
latency to a prediction. PSI itself comes from turnout.core.drift, the same code the validation
gate and the retrain trigger use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout_sdk import drift
from turnout_sdk.histograms import observe_many
from turnout_sdk.periodic import Periodic
from turnout_sdk.tasks import Outputs, Task

#: How often pending rows are folded into the drift window and the gauges refreshed.
FLUSH_INTERVAL_S = 0.5
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class SlidingWindow:
    """Bin counts of the last ``size`` rows for several references, updated incrementally."""

    def __init__(self, references: list[drift.Reference], size: int) -> None:
        self.references = references
        self.size = size
        width = max(r.bins for r in references)
        self._bins = np.zeros((size, len(references)), dtype=np.int16)
        self._counts = np.zeros((len(references), width), dtype=np.int64)
        self._filled = np.zeros(size, dtype=bool)
        self._next = 0
        self.rows = 0

    def add(self, columns: npt.NDArray[np.float64]) -> None:
        """Add rows; ``columns`` is [N, len(references)] in reference order."""
        if len(columns) > self.size:
            columns = columns[-self.size :]
        bins = np.stack(
            [drift.bin_index(ref, columns[:, j]) for j, ref in enumerate(self.references)], axis=1
        ).astype(np.int16)
        slots = (self._next + np.arange(len(bins))) % self.size
        evicted = slots[self._filled[slots]]
        self._count(self._bins[evicted], -1)
        self._bins[slots] = bins
        self._filled[slots] = True
        self._count(bins, +1)
        self._next = int((self._next + len(bins)) % self.size)
        self.rows = min(self.size, self.rows + len(bins))

    def _count(self, bins: npt.NDArray[np.int16], sign: int) -> None:
        for j in range(bins.shape[1]):
            np.add.at(self._counts[j], bins[:, j].astype(np.int64), sign)

    def psi(self) -> list[float]:
        return [
            drift.psi(ref.proportions, self._counts[j, : ref.bins])
            for j, ref in enumerate(self.references)
        ]


class ModelMonitor:
    """The metrics of one served version: its prediction distribution and drift, per-feature
    drift for a tabular input, batch sizes and errors by reason.

    What the prediction means comes from the model's task (turnout_sdk.tasks); drift needs a
    reference in the model's metadata (``turnout_sdk.reference``). Without one, the PSI gauges
    are not exported at all, and the controller reads their checks as "no data".
    """

    def __init__(
        self,
        *,
        model: str,
        version: str,
        reference: Mapping[str, Any] | None,
        task: Task,
        window: int,
        metrics: Any,
    ) -> None:
        """``metrics`` is ``bentoml.metrics`` (multiprocess-aware prometheus_client)."""
        reference = reference or {}
        features = reference.get("features") or {}
        self.feature_names = list(features)
        refs = [drift.Reference.from_dict(features[n]) for n in self.feature_names]
        prediction = reference.get("prediction")
        self.has_prediction_reference = prediction is not None
        if prediction is not None:
            refs.append(drift.Reference.from_dict(prediction))
        self.window = SlidingWindow(refs, window) if refs else None
        self.task = task
        self._pending: list[tuple[npt.NDArray[Any] | None, npt.NDArray[np.float64]]] = []
        self._flusher = Periodic(self.flush, FLUSH_INTERVAL_S)
        labels = {"model": model, "version": version}
        buckets = tuple(task.buckets) or _buckets_of(prediction)
        self._score = metrics.Histogram(
            name="turnout_model_prediction_score",
            documentation="The task's score of each prediction (probability, class, value)",
            labelnames=["model", "version"],
            buckets=buckets,
        ).labels(**labels)
        self._batch = metrics.Histogram(
            name="turnout_model_batch_rows",
            documentation="Rows per forward pass (micro-batching at work when above 1)",
            labelnames=["model", "version"],
            buckets=BATCH_BUCKETS,
        ).labels(**labels)
        feature_psi = metrics.Gauge(
            name="turnout_model_feature_psi",
            documentation="PSI of each input feature over the sliding window vs training",
            labelnames=["model", "version", "feature"],
            multiprocess_mode="mostrecent",
        )
        self._feature_psi = [feature_psi.labels(**labels, feature=n) for n in self.feature_names]
        self._prediction_psi = (
            metrics.Gauge(
                name="turnout_model_prediction_psi",
                documentation="PSI of the prediction score over the sliding window vs training",
                labelnames=["model", "version"],
                multiprocess_mode="mostrecent",
            ).labels(**labels)
            if prediction is not None
            else None
        )
        self._window_rows = metrics.Gauge(
            name="turnout_model_drift_window_rows",
            documentation="Rows in the drift window (PSI is noisy below a few hundred)",
            labelnames=["model", "version"],
            multiprocess_mode="mostrecent",
        ).labels(**labels)
        self._errors = metrics.Counter(
            name="turnout_model_inference_errors",
            documentation="Rejected or failed inference requests by reason",
            labelnames=["model", "version", "reason"],
        )
        self._labels = labels

    def observe(self, table: npt.NDArray[Any] | None, outputs: Outputs) -> None:
        """Record one request: its tabular input (or None) and the model's outputs."""
        self._pending.append((table if self.feature_names else None, self.task.score(outputs)))

    def batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def error(self, reason: str) -> None:
        self._errors.labels(**self._labels, reason=reason).inc()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        scores = np.concatenate([s for _, s in pending])
        observe_many(self._score, scores)
        if self.window is None:
            return
        columns = []
        if self.feature_names:
            columns.append(np.concatenate([f for f, _ in pending if f is not None]))
        if self.has_prediction_reference:
            columns.append(scores[:, None])
        self.window.add(np.column_stack(columns).astype(np.float64))
        values = self.window.psi()
        for gauge, value in zip(self._feature_psi, values, strict=False):
            gauge.set(value)
        if self._prediction_psi is not None:
            self._prediction_psi.set(values[-1])
        self._window_rows.set(self.window.rows)

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        self.flush()


def _buckets_of(prediction: Mapping[str, Any] | None) -> tuple[float, ...]:
    """Histogram buckets for a score with no fixed scale: the reference's bin edges."""
    if prediction and prediction.get("kind") == "numeric" and prediction.get("edges"):
        return tuple(float(e) for e in prediction["edges"])
    return (0.0, 1.0)
