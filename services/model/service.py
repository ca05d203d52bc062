"""The built-in fraud model, served through turnout's serving SDK like any user's model.

One process serves one version (``TURNOUT_MODEL=fraud:v4``), as KServe runs one
InferenceService per version. Everything a turnout model server does (Open Inference Protocol
v2, micro-batching, metrics, the version in every reply) comes from ``@model_server``; this
file only loads the weights, checks category codes and keeps the original ``POST /predict``
API (``{"features": [[...], ...]}`` -> probabilities) for callers that use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from turnout.io.settings import use_local_model_store

use_local_model_store()

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

import turnout_sdk as turnout  # noqa: E402
from training import store  # noqa: E402
from training.data import FRAUD_SCHEMA  # noqa: E402
from training.model import predict_proba  # noqa: E402
from turnout_sdk import protocol as oip  # noqa: E402
from turnout_sdk.server import VERSION_HEADER, InferenceFailed  # noqa: E402

INPUT, OUTPUT = "features", "probability"


@turnout.model_server(
    inputs=[turnout.Tensor(INPUT, "FP32", (-1, len(FRAUD_SCHEMA.features)))],
    outputs=[turnout.Tensor(OUTPUT, "FP32", (-1,))],
    task=turnout.BinaryScore(threshold=0.5),
    name="turnout-model",
)
class FraudModel:
    # A class attribute, so `bentoml build` packs this model version into the bento.
    model = turnout.model_ref("fraud")

    def __init__(self) -> None:
        stored: Any = self.model  # on an instance this is the resolved stored model
        try:
            loaded = store.from_directory(
                Path(stored.path), tag=str(stored.tag), metadata=dict(stored.info.metadata)
            )
        except (FileNotFoundError, KeyError) as exc:
            raise RuntimeError(
                f"{stored.tag} is not a model of the built-in fraud server ({exc}); serve it "
                "with its own service: turnout deploy MODEL --version V --service DIR"
            ) from None
        self.net = loaded.net
        self.categorical = [
            (i, f.name, len(f.categories))
            for i, f in enumerate(loaded.schema.features)
            if f.kind == "categorical"
        ]
        self.parameters = {
            "feature_names": loaded.schema.names,
            "categories": {
                f.name: list(f.categories) for f in loaded.schema.features if f.categories
            },
        }
        self.predict(np.zeros((1, len(loaded.schema.features)), dtype=np.float32))  # warm up

    def validate(self, features: npt.NDArray[np.float32]) -> None:
        """Category codes must be ones the model was trained on."""
        for col, name, cardinality in self.categorical:
            codes = features[:, col]
            bad = (codes != np.round(codes)) | (codes < 0) | (codes >= cardinality)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise turnout.BadInput(
                    f"feature {name!r} (column {col}) at row {row} is {codes[row]:g}; "
                    f"expected a category code 0..{cardinality - 1}"
                )

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return predict_proba(self.net, features)

    @bentoml.api(route="/predict")
    async def predict_rows(self, features: list[list[float]], ctx: bentoml.Context) -> Any:
        """Fraud probability for each row of ``features`` (rows of numbers in schema order)."""
        rt = self.turnout  # type: ignore[attr-defined]  # set by @model_server
        ctx.response.headers[VERSION_HEADER] = rt.version
        n = rt.inputs[0].shape[1]
        try:
            try:
                array = (
                    np.asarray(features, dtype=np.float32).reshape(len(features), -1)
                    if features
                    else np.zeros((0, n), dtype=np.float32)
                )
            except ValueError:
                raise oip.ProtocolError(
                    400, f"{INPUT!r} must be a list of rows of equal length (numbers)"
                ) from None
            checked = oip.check_features(array, INPUT, n, rt.settings.max_rows)
            rt.check({INPUT: checked})
            outputs = await rt.infer({INPUT: checked})
        except oip.ProtocolError as exc:
            rt.monitor.error("too_large" if exc.status == 413 else "bad_input")
            ctx.response.status_code = exc.status
            return {"error": exc.message}
        except InferenceFailed as exc:
            rt.monitor.error(exc.reason)
            ctx.response.status_code = 500
            return {"error": exc.message}
        return {"model_version": rt.version, OUTPUT: outputs[OUTPUT].tolist()}
