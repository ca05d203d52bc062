"""The built-in fraud model's retraining plugin: the retrain pipeline's default configuration.

Data are synthetic transactions (training/data.py) or a user's labelled file, the newest
``window`` share of rows held out for the gate; training is training/train.py; a version is
store.py's directory (weights.safetensors and architecture.json), served by the built-in
server (services/model/service.py). Its gate is the fraud gate of training/gate.py: floors on
ROC-AUC and PR-AUC, no regression in ROC-AUC, plus its own checks (finite weights, scores in
[0, 1] and not constant, the logistic-regression baseline, ROC-AUC per merchant category).
Drift is measured per feature (PSI with KS or chi-square), as the stable version's reference
has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import evaluate, store
from training.data import FRAUD_SCHEMA, LABEL, DataError, features_matrix, generate, load_table
from training.gate import GateCheck, GateConfig, GateThresholds, fraud_checks
from training.model import predict_proba
from training.train import train as fit
from turnout_sdk.tasks import BinaryScore
from turnout_sdk.tensors import Tensor
from workflows.params import MIN_ROWS, RetrainParams
from workflows.plugins import Dataset, Split, Trained

INPUT, OUTPUT = "features", "probability"


def _table(split: Split) -> pd.DataFrame:
    if not isinstance(split, pd.DataFrame):
        raise TypeError("the fraud plugin's splits are DataFrames")
    return split


class FraudPipeline:
    name = "fraud"
    inputs = (Tensor(INPUT, "FP32", (-1, len(FRAUD_SCHEMA.features))),)
    outputs = (Tensor(OUTPUT, "FP32", (-1,)),)
    task = BinaryScore(threshold=0.5)
    service = None  # the built-in server, services.model.service:FraudModel
    gate = GateThresholds().config()

    def data(self, params: RetrainParams) -> Dataset:
        """Generated, or read and checked from the user's file; the last ``window`` share of
        rows is the newest."""
        if params.source == "synthetic":
            df = generate(params.rows, seed=params.seed, day=params.day, drift=params.drift_spec())
            source = f"synthetic day {params.day:g}" + (
                f" drift {params.drift}" if params.drift else ""
            )
        else:
            path = Path(params.source)
            df = load_table(path)
            if LABEL not in df.columns:
                raise DataError(
                    f"{path}: no label column {LABEL!r}; retraining needs labelled rows"
                )
            if len(df) < MIN_ROWS:
                raise DataError(f"{path}: {len(df)} rows; retraining needs at least {MIN_ROWS}")
            if len(df) > params.rows:
                df = df.iloc[-params.rows :].reset_index(drop=True)
            source = str(path)
        window_start = len(df) - max(1, round(len(df) * params.window))
        train = df.iloc[:window_start].reset_index(drop=True)
        newest = df.iloc[window_start:].reset_index(drop=True)
        for part, rows in (("training rows", train), ("newest window", newest)):
            if rows[LABEL].nunique() < 2:
                raise DataError(
                    f"{source}: the {part} hold only one class; need both fraud and non-fraud "
                    "(more rows or another window)"
                )
        return Dataset(
            train=train, newest=newest, source=source, note=f"fraud {df[LABEL].mean():.2%}"
        )

    def train(self, dataset: Dataset, *, seed: int) -> Trained:
        result = fit(_table(dataset.train), seed=seed)
        return Trained(model=result, metrics=result.metrics, weights_sha256=result.weights_sha256)

    def save(self, trained: Trained, directory: Path) -> Mapping[str, Any]:
        store.write_directory(trained.model, directory)
        return store.read_metadata(directory)

    def load(self, directory: Path) -> store.LoadedModel:
        return store.from_directory(directory, tag="fraud:loaded", metadata={})

    def inputs_of(self, split: Split) -> dict[str, np.ndarray]:
        return {INPUT: features_matrix(_table(split))}

    def predict(
        self, model: store.LoadedModel, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {OUTPUT: predict_proba(model.net, inputs[INPUT])}

    def evaluate(self, model: store.LoadedModel, split: Split) -> dict[str, float]:
        df = _table(split)
        y = df[LABEL].to_numpy()
        if len(np.unique(y)) < 2:
            raise ValueError("cannot rank: the window holds only one class")
        p = predict_proba(model.net, features_matrix(df, model.schema))
        return {k: float(v) for k, v in evaluate.metrics(y, p).to_dict().items()}

    def features(self, split: Split) -> dict[str, np.ndarray]:
        df = _table(split)
        return {name: df[name].to_numpy() for name in FRAUD_SCHEMA.names if name in df.columns}

    def examples(self, rows: int) -> pd.DataFrame:
        return generate(rows, seed=7)

    def checks(
        self,
        model: store.LoadedModel,
        dataset: Dataset,
        *,
        stable: store.LoadedModel | None,
        config: GateConfig,
        seed: int,
    ) -> list[GateCheck]:
        return fraud_checks(
            model.net,
            data=_table(dataset.newest),
            thresholds=GateThresholds.from_config(config),
            train_data=_table(dataset.train),
            seed=seed,
            schema=model.schema,
        )


PIPELINE = FraudPipeline()
