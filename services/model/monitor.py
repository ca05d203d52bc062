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

from services.histograms import observe_many
from services.periodic import Periodic
from turnout.core import drift

SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
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
    def __init__(
        self,
        *,
        model: str,
        version: str,
        feature_names: list[str],
        reference: Mapping[str, Any],
        window: int,
        metrics: Any,
    ) -> None:
        """``metrics`` is ``bentoml.metrics`` (multiprocess-aware prometheus_client)."""
        self.feature_names = feature_names
        refs = [drift.Reference.from_dict(reference["features"][n]) for n in feature_names]
        refs.append(drift.Reference.from_dict(reference["prediction"]))
        self.window = SlidingWindow(refs, window)
        self._pending: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
        self._flusher = Periodic(self.flush, FLUSH_INTERVAL_S)
        labels = {"model": model, "version": version}
        self._score = metrics.Histogram(
            name="turnout_model_prediction_score",
            documentation="Predicted fraud probability",
            labelnames=["model", "version"],
            buckets=SCORE_BUCKETS,
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
        self._feature_psi = [feature_psi.labels(**labels, feature=n) for n in feature_names]
        self._prediction_psi = metrics.Gauge(
            name="turnout_model_prediction_psi",
            documentation="PSI of predicted scores over the sliding window vs validation",
            labelnames=["model", "version"],
            multiprocess_mode="mostrecent",
        ).labels(**labels)
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

    def observe(self, features: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> None:
        self._pending.append((features, scores))

    def batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def error(self, reason: str) -> None:
        self._errors.labels(**self._labels, reason=reason).inc()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        features = np.concatenate([f for f, _ in pending]).astype(np.float64)
        scores = np.concatenate([s for _, s in pending]).astype(np.float64)
        observe_many(self._score, scores)
        self.window.add(np.column_stack([features, scores]))
        values = self.window.psi()
        for gauge, value in zip(self._feature_psi, values[:-1], strict=True):
            gauge.set(value)
        self._prediction_psi.set(values[-1])
        self._window_rows.set(self.window.rows)

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        self.flush()
