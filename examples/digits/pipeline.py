"""The digits model's retraining plugin: how `turnout pipeline run retrain` retrains it.

    turnout pipeline run retrain -p model=digits -p plugin=examples.digits.pipeline:PIPELINE \\
        -p force=true

The data are scikit-learn's bundled digits, split by the run's seed into training,
validation and the newest share (the ``window`` parameter) that the gate judges on. Training
is train.py's (same seed, same weights); a version is weights.safetensors plus the metadata
train.py writes (metrics and the drift reference of the held-out predictions), so a retrained
version is served by service.py like one trained by hand. The gate: accuracy and macro F1
floors on the newest data, accuracy no more than 0.02 below the stable version's on the same
images, 20 ms per single image in-process, a v2 smoke test of service.py, same seed same
weights. workflows/PLUGINS.md is the contract this follows.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import turnout_sdk as turnout
from workflows.params import RetrainParams
from workflows.plugins import Dataset, GateConfig, Regression, Split, Trained

# train.py and model.py import each other as top-level modules (`python train.py`, and
# `bentoml serve` in this directory): their directory goes on the path.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

import train as digits  # noqa: E402
from model import CLASSES, DigitsCNN  # noqa: E402

IMAGE, LABEL, PROBABILITIES = "image", "label", "probabilities"


@dataclass(frozen=True)
class Fitted:
    """A trained network with what its metadata needs."""

    net: DigitsCNN
    #: Its outputs on the validation images: the drift reference.
    probabilities: np.ndarray
    seed: int


class DigitsPipeline:
    name = "digits"
    inputs = (turnout.Tensor(IMAGE, "FP32", (-1, 1, 8, 8)),)
    outputs = (turnout.Tensor(PROBABILITIES, "FP32", (-1, CLASSES)),)
    task = turnout.MultiClass()
    #: service.py, found through this directory's bentofile.yaml (from the project root).
    service = "examples/digits"
    gate = GateConfig(
        floors={"accuracy": 0.90, "macro_f1": 0.90},
        regression=Regression("accuracy", max_drop=0.02),
        max_latency_ms=20.0,
    )

    def __init__(self, *, epochs: int = 20) -> None:
        self.epochs = epochs

    def data(self, params: RetrainParams) -> Dataset:
        """The bundled digits: ``window`` of them newest, a quarter of the rest validation."""
        digits_data = load_digits()
        images = digits_data.images.astype(np.float32)[:, None]
        labels = digits_data.target.astype(np.int64)
        rest_x, new_x, rest_y, new_y = train_test_split(
            images, labels, test_size=params.window, stratify=labels, random_state=params.seed
        )
        train_x, val_x, train_y, val_y = train_test_split(
            rest_x, rest_y, test_size=digits.HELD_OUT, stratify=rest_y, random_state=params.seed
        )
        return Dataset(
            train={IMAGE: train_x, LABEL: train_y},
            validation={IMAGE: val_x, LABEL: val_y},
            newest={IMAGE: new_x, LABEL: new_y},
            source="scikit-learn load_digits",
            note=f"{CLASSES} classes",
        )

    def train(self, dataset: Dataset, *, seed: int) -> Trained:
        net = fit(_arrays(dataset.train), seed=seed, epochs=self.epochs)
        assert dataset.validation is not None
        validation = _arrays(dataset.validation)
        probabilities = digits.predict(net, validation[IMAGE])
        return Trained(
            model=Fitted(net, probabilities, seed),
            metrics=digits.evaluate(probabilities, validation[LABEL]),
        )

    def save(self, trained: Trained, directory: Path) -> Mapping[str, Any]:
        """What train.py's save stores: the weights, and the reference the server's drift
        gauges compare live predictions with (held-out predictions)."""
        fitted: Fitted = trained.model
        save_file(fitted.net.state_dict(), str(directory / digits.WEIGHTS))
        return {
            "metrics": dict(trained.metrics),
            "reference": turnout.reference(
                outputs={PROBABILITIES: fitted.probabilities}, task=turnout.MultiClass()
            ),
            "training": {"labels": "true", "seed": fitted.seed, "epochs": self.epochs},
        }

    def load(self, directory: Path) -> DigitsCNN:
        net = DigitsCNN()
        net.load_state_dict(load_file(str(directory / digits.WEIGHTS)))
        net.eval()
        return net

    def predict(self, model: DigitsCNN, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return digits.predict(model, inputs[IMAGE])

    def evaluate(self, model: DigitsCNN, split: Split) -> dict[str, float]:
        arrays = _arrays(split)
        return digits.evaluate(digits.predict(model, arrays[IMAGE]), arrays[LABEL])

    def examples(self, rows: int) -> dict[str, np.ndarray]:
        return {IMAGE: load_digits().images[:rows].astype(np.float32)[:, None]}


def fit(arrays: Mapping[str, np.ndarray], *, seed: int, epochs: int) -> DigitsCNN:
    """train.py's training loop on given images and labels (its train() draws its own)."""
    images, labels = torch.from_numpy(arrays[IMAGE]), torch.from_numpy(arrays[LABEL])
    with digits.deterministic(seed) as gen:
        net = DigitsCNN()
        optimizer = torch.optim.Adam(net.parameters(), lr=digits.LEARNING_RATE)
        loss_fn = nn.CrossEntropyLoss()
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=gen).split(digits.BATCH):
                optimizer.zero_grad()
                loss_fn(net(images[batch]), labels[batch]).backward()
                optimizer.step()
        net.eval()
    return net


def _arrays(split: Split) -> Mapping[str, np.ndarray]:
    if not isinstance(split, Mapping):
        raise TypeError("the digits plugin's splits are arrays by name")
    return split


PIPELINE = DigitsPipeline()
