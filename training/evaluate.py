"""Model quality: ranking, calibration, recall at a fixed precision, per-slice metrics, and a
logistic-regression baseline trained on the same split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from training.data import Schema

#: Precision at which recall is reported: "at least half of the alerts we raise are real fraud".
TARGET_PRECISION = 0.5
#: A slice with fewer positives than this reports its size but no ranking metrics.
MIN_SLICE_POSITIVES = 5


@dataclass(frozen=True)
class Metrics:
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    recall_at_precision: float
    n: int
    positives: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "log_loss": self.log_loss,
            "brier": self.brier,
            "recall_at_precision": self.recall_at_precision,
            "n": self.n,
            "positives": self.positives,
        }


def recall_at_precision(y: np.ndarray, p: np.ndarray, precision: float) -> float:
    prec, rec, _ = precision_recall_curve(y, p)
    ok = prec >= precision
    return float(rec[ok].max()) if ok.any() else 0.0


def metrics(y: np.ndarray, p: np.ndarray) -> Metrics:
    y = np.asarray(y).astype(np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return Metrics(
        roc_auc=float(roc_auc_score(y, p)) if both else float("nan"),
        pr_auc=float(average_precision_score(y, p)) if both else float("nan"),
        log_loss=float(log_loss(y, p, labels=[0, 1])),
        brier=float(brier_score_loss(y, p)),
        recall_at_precision=recall_at_precision(y, p, TARGET_PRECISION) if both else float("nan"),
        n=len(y),
        positives=int(y.sum()),
    )


def slice_metrics(
    df: pd.DataFrame, p: np.ndarray, *, schema: Schema, by: str = "merchant_category"
) -> dict[str, dict[str, float | int]]:
    """Metrics per value of a categorical feature, keyed by category name."""
    feat = next(f for f in schema.features if f.name == by)
    y = df[schema.label].to_numpy()
    out: dict[str, dict[str, float | int]] = {}
    for code, name in enumerate(feat.categories):
        mask = df[by].to_numpy() == code
        if not mask.any():
            continue
        ys, ps = y[mask], p[mask]
        if ys.sum() >= MIN_SLICE_POSITIVES and ys.sum() < len(ys):
            out[name] = metrics(ys, ps).to_dict()
        else:
            out[name] = {"n": int(mask.sum()), "positives": int(ys.sum())}
    return out


def baseline(train: pd.DataFrame, *, schema: Schema, seed: int) -> Pipeline:
    """Logistic regression on scaled log-numeric and one-hot categorical features."""
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    pre = ColumnTransformer(
        [
            (
                "num",
                Pipeline(
                    [
                        ("log", FunctionTransformer(lambda x: np.sign(x) * np.log1p(np.abs(x)))),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    model = Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=2000, random_state=seed))])
    model.fit(train[schema.names], train[schema.label])
    return model


def baseline_proba(model: Pipeline, df: pd.DataFrame, schema: Schema) -> np.ndarray:
    proba: np.ndarray = model.predict_proba(df[schema.names])[:, 1]
    return proba


def summary(m: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={m[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss", "brier", "recall_at_precision")
    )
