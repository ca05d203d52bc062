"""BentoML service serving one fraud-model version.

One process serves one version, as KServe runs one InferenceService per version: the router
moves traffic between versions, so each is started, scaled and stopped on its own.

Endpoints:
- ``POST /predict`` — BentoML API: ``{"features": [[...], ...]}`` -> probabilities;
- Open Inference Protocol v2 — ``GET /v2``, ``/v2/health/live|ready``,
  ``GET /v2/models/{name}[/versions/{v}][/ready]``, ``POST /v2/models/{name}[/versions/{v}]/infer``
  (JSON and binary tensor data);
- ``/livez``, ``/readyz``, ``/metrics`` from BentoML.

Both inference paths share one micro-batcher (see batching.py for why it is not BentoML's
``batchable=True``). Which version is served comes from ``TURNOUT_MODEL=name:version``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from pathlib import Path
from typing import Any

from turnout.io.settings import settings, use_local_model_store

use_local_model_store()

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from services.http import BodyLimit  # noqa: E402
from services.model import bentoml_fixes  # noqa: E402
from services.model.batching import MicroBatcher  # noqa: E402
from services.model.monitor import ModelMonitor  # noqa: E402
from training import store  # noqa: E402
from training.model import predict_proba  # noqa: E402
from turnout import __version__  # noqa: E402
from turnout.core import inference_protocol as oip  # noqa: E402

log = logging.getLogger("turnout.model")
SETTINGS = settings()
bentoml_fixes.apply()
INPUT, OUTPUT = "features", "probability"
VERSION_HEADER = "x-turnout-model-version"


class InferenceFailed(Exception):
    """The model could not produce a usable answer (a server-side failure, answered 500)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class Runtime:
    """The loaded model plus everything a request needs: batcher, validation, monitor."""

    def __init__(self, loaded: store.LoadedModel) -> None:
        self.name = loaded.name
        self.version = loaded.version
        self.schema = loaded.schema
        self.n_features = len(loaded.schema.features)
        self.categorical = [
            (i, f.name, len(f.categories))
            for i, f in enumerate(loaded.schema.features)
            if f.kind == "categorical"
        ]
        net = loaded.net

        def forward(x: np.ndarray) -> np.ndarray:
            return predict_proba(net, x)

        self.monitor = ModelMonitor(
            model=loaded.name,
            version=loaded.version,
            feature_names=loaded.schema.names,
            reference=loaded.metadata["reference"],
            window=SETTINGS.drift_window,
            metrics=bentoml.metrics,
        )
        self.batcher = MicroBatcher(
            forward,
            max_rows=SETTINGS.max_batch_rows if SETTINGS.batching else 1,
            wait_s=SETTINGS.batch_wait_ms / 1000,
            inline_rows=SETTINGS.inline_rows,
            on_batch=self.monitor.batch,
        )
        forward(np.zeros((1, self.n_features), dtype=np.float32))  # warm up

    def check(self, features: np.ndarray) -> None:
        """Model-specific checks beyond the protocol: categorical codes must be known."""
        for col, name, cardinality in self.categorical:
            codes = features[:, col]
            bad = (codes != np.round(codes)) | (codes < 0) | (codes >= cardinality)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise oip.ProtocolError(
                    400,
                    f"feature {name!r} (column {col}) at row {row} is {codes[row]:g}; "
                    f"expected a category code 0..{cardinality - 1}",
                )

    async def predict(self, features: np.ndarray) -> np.ndarray:
        if SETTINGS.fault_delay_ms > 0:
            await asyncio.sleep(SETTINGS.fault_delay_ms / 1000)
        if SETTINGS.fault_error_rate > 0 and random.random() < SETTINGS.fault_error_rate:
            raise InferenceFailed("injected fault (TURNOUT_FAULT_ERROR_RATE)", "injected_fault")
        scores = await self.batcher(features)
        bad = ~np.isfinite(scores)
        if bad.any():  # never hand a caller NaN: fail loudly so the router can retry elsewhere
            raise InferenceFailed(
                f"model {self.name}:{self.version} produced non-finite scores for "
                f"{int(bad.sum())} of {len(scores)} rows",
                "non_finite_output",
            )
        self.monitor.observe(features, scores)
        return scores

    def matches(self, name: str, version: str | None) -> str | None:
        """None when (name, version) is served here, else the 404 message."""
        if name != self.name:
            return f"model {name!r} not found; this server serves {self.name!r}"
        if version is not None and version != self.version:
            return (
                f"version {version!r} of model {name!r} not found; "
                f"this server serves version {self.version!r}"
            )
        return None


# --- Open Inference Protocol v2 -------------------------------------------------------------


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _error(runtime: Runtime | None, status: int, message: str, reason: str) -> Response:
    headers = {}
    if runtime is not None:
        runtime.monitor.error(reason)
        headers[VERSION_HEADER] = runtime.version
    return Response(oip.error_body(message), status, headers, media_type="application/json")


def _json(runtime: Runtime, doc: dict[str, Any], status: int = 200) -> Response:
    return Response(
        orjson.dumps(doc), status, {VERSION_HEADER: runtime.version}, media_type="application/json"
    )


async def server_metadata(request: Request) -> Response:
    return _json(
        _runtime(request),
        {"name": "turnout", "version": __version__, "extensions": ["binary_tensor_data"]},
    )


async def server_live(request: Request) -> Response:
    return _json(_runtime(request), {"live": True})


async def server_ready(request: Request) -> Response:
    return _json(_runtime(request), {"ready": True})


async def model_metadata(request: Request) -> Response:
    rt = _runtime(request)
    if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
        return _error(rt, 404, msg, "unknown_model")
    return _json(
        rt,
        {
            "name": rt.name,
            "versions": [rt.version],
            "platform": "pytorch",
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, rt.n_features]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
            "parameters": {
                "feature_names": rt.schema.names,
                "categories": {
                    f.name: list(f.categories) for f in rt.schema.features if f.categories
                },
            },
        },
    )


async def model_ready(request: Request) -> Response:
    rt = _runtime(request)
    if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
        return _error(rt, 404, msg, "unknown_model")
    return _json(rt, {"name": rt.name, "ready": True})


async def infer(request: Request) -> Response:
    rt = _runtime(request)
    if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
        return _error(rt, 404, msg, "unknown_model")
    body = await request.body()
    try:
        req = oip.decode_infer(
            body,
            header_length=request.headers.get(oip.HEADER_LENGTH),
            input_name=INPUT,
            n_features=rt.n_features,
            max_rows=SETTINGS.max_rows,
        )
        rt.check(req.features)
    except oip.ProtocolError as exc:
        return _error(
            rt, exc.status, exc.message, "too_large" if exc.status == 413 else "bad_input"
        )
    try:
        scores = await rt.predict(req.features)
    except InferenceFailed as exc:
        return _error(rt, 500, exc.message, exc.reason)
    payload, headers = oip.encode_infer(
        model_name=rt.name,
        model_version=rt.version,
        request_id=req.id,
        output_name=OUTPUT,
        values=scores,
        binary=req.binary_output,
    )
    headers[VERSION_HEADER] = rt.version
    return Response(payload, 200, headers)


_MODEL = "/v2/models/{name}"
_VERSIONED = "/v2/models/{name}/versions/{version}"
v2_app = Starlette(
    routes=[
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", server_live, methods=["GET"]),
        Route("/v2/health/ready", server_ready, methods=["GET"]),
        Route(_MODEL, model_metadata, methods=["GET"]),
        Route(_VERSIONED, model_metadata, methods=["GET"]),
        Route(_MODEL + "/ready", model_ready, methods=["GET"]),
        Route(_VERSIONED + "/ready", model_ready, methods=["GET"]),
        Route(_MODEL + "/infer", infer, methods=["POST"]),
        Route(_VERSIONED + "/infer", infer, methods=["POST"]),
    ]
)


# --- the BentoML service --------------------------------------------------------------------


@bentoml.service(
    name="turnout-model",
    workers=SETTINGS.workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": SETTINGS.access_log}},
    # BentoML records an OpenTelemetry span per request even at sample rate 0: ~40 % of the
    # CPU of a single-row inference here. Inference routes are left out unless asked for.
    tracing={"excluded_urls": [] if SETTINGS.trace_inference else ["/infer$", "/predict$"]},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
@bentoml.asgi_app(v2_app, path="/")
class FraudModel:
    # Declared here so `bentoml build` packs this model version into the bento.
    model_ref = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        tag = SETTINGS.model
        if not store.exists(tag):
            raise RuntimeError(
                f"model {tag} is not in the model store at {SETTINGS.bentoml_home}; "
                "train it with `turnout train` or set TURNOUT_MODEL"
            )
        stored: Any = self.model_ref  # on an instance this is the resolved stored model
        self.runtime = Runtime(
            store.from_directory(
                Path(stored.path), tag=str(stored.tag), metadata=dict(stored.info.metadata)
            )
        )
        v2_app.state.runtime = self.runtime
        log.info("serving %s (torch threads %d)", stored.tag, torch.get_num_threads())

    @bentoml.on_startup
    async def start_monitor(self) -> None:
        self.runtime.monitor.start()
        # Everything allocated so far (torch, the model, the app) lives as long as the process:
        # move it out of the collector's sight so full collections stay short.
        gc.freeze()

    @bentoml.on_shutdown
    async def stop_monitor(self) -> None:
        await self.runtime.monitor.stop()
        self.runtime.batcher.close()

    @bentoml.api(route="/predict")
    async def predict(self, features: list[list[float]], ctx: bentoml.Context) -> Any:
        """Fraud probability for each row of ``features`` (rows of numbers in schema order)."""
        rt = self.runtime
        ctx.response.headers[VERSION_HEADER] = rt.version
        try:
            try:
                array = (
                    np.asarray(features, dtype=np.float32).reshape(len(features), -1)
                    if features
                    else np.zeros((0, rt.n_features), dtype=np.float32)
                )
            except ValueError:
                raise oip.ProtocolError(
                    400, f"{INPUT!r} must be a list of rows of equal length (numbers)"
                ) from None
            checked = oip.check_features(array, INPUT, rt.n_features, SETTINGS.max_rows)
            rt.check(checked)
        except oip.ProtocolError as exc:
            rt.monitor.error("too_large" if exc.status == 413 else "bad_input")
            ctx.response.status_code = exc.status
            return {"error": exc.message}
        try:
            scores = await rt.predict(checked)
        except InferenceFailed as exc:
            rt.monitor.error(exc.reason)
            ctx.response.status_code = 500
            return {"error": exc.message}
        return {"model_version": rt.version, OUTPUT: scores.tolist()}


FraudModel.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.max_body_bytes)  # type: ignore[attr-defined]
