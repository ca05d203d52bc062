"""``@model_server``: a user's BentoML service class becomes a turnout model server.

The user writes a class with a ``predict`` over numpy arrays (one argument per declared
input) and a ``model`` attribute naming the BentoML model it serves; the decorator turns it
into a ``@bentoml.service`` with everything turnout's router and controller rely on (the
contract in sdk/CONTRACT.md):

- the Open Inference Protocol v2 endpoints, generated from the declared tensors (JSON and
  binary tensors, the ``/versions/{v}`` forms, strict 4xx errors naming the problem);
- one micro-batcher in front of ``predict`` (concurrent requests share a forward pass);
- the served version in every reply (``x-turnout-model-version``);
- the metrics the controller reads: the prediction score histogram and its PSI, per-feature
  PSI for a tabular input, errors by reason, batch sizes;
- fault injection for drills (TURNOUT_FAULT_ERROR_RATE, TURNOUT_FAULT_DELAY_MS);
- a request body limit, and the ``/livez`` and ``/readyz`` probes.

A model that is not in the model store is refused when the service is imported, so
``bentoml serve`` exits non-zero with the reason instead of restarting a worker that cannot
start.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import bentoml
import numpy as np
import numpy.typing as npt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from turnout_sdk import bentoml_fixes
from turnout_sdk import protocol as oip
from turnout_sdk.batching import MicroBatcher
from turnout_sdk.http import BodyLimit
from turnout_sdk.monitor import ModelMonitor
from turnout_sdk.settings import ServerSettings, server_settings
from turnout_sdk.tasks import BinaryScore, Task
from turnout_sdk.tensors import DeclarationError, Tensor, validate_all

log = logging.getLogger("turnout.model")
VERSION_HEADER = "x-turnout-model-version"
SDK_VERSION = "0.1.0"
C = TypeVar("C")


class ModelNotFound(RuntimeError):
    """The model the service names is not in the BentoML model store."""


class BadInput(Exception):
    """Raise from ``validate`` (or ``predict``) to refuse a request with 400 and a message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InferenceFailed(Exception):
    """The model could not produce a usable answer (a server-side failure, answered 500)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def model_ref(name: str) -> Any:
    """The BentoML model this server serves: $TURNOUT_MODEL (``name:version``, set by turnout
    for each version it runs), else ``name:latest``."""
    return bentoml.models.BentoModel(server_settings().model or f"{name}:latest")


class Runtime:
    """The loaded model plus what a request needs: batcher, checks, monitor."""

    def __init__(
        self,
        *,
        service: Any,
        name: str,
        version: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[Tensor],
        task: Task,
        metadata: Mapping[str, Any],
        settings: ServerSettings,
    ) -> None:
        self.name, self.version = name, version
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.settings = settings
        self._predict = service.predict
        self._validate: Callable[..., None] | None = getattr(service, "validate", None)
        table = inputs[0] if len(inputs) == 1 and len(inputs[0].shape) == 2 else None
        self._table = table
        self.monitor = ModelMonitor(
            model=name,
            version=version,
            reference=metadata.get("reference"),
            task=task,
            window=settings.drift_window,
            metrics=bentoml.metrics,
        )
        self.batcher = MicroBatcher(
            self._forward,
            max_rows=settings.max_batch_rows if settings.batching else 1,
            wait_s=settings.batch_wait_ms / 1000,
            inline_rows=settings.inline_rows,
            on_batch=self.monitor.batch,
        )
        self.metadata_doc = {
            "name": name,
            "versions": [version],
            "platform": "turnout-sdk",
            "inputs": [t.metadata() for t in inputs],
            "outputs": [t.metadata() for t in outputs],
            # The service may describe itself further (e.g. feature names) with ``parameters``.
            "parameters": {"task": task.comparison(), **dict(getattr(service, "parameters", {}))},
        }

    def _forward(self, arrays: tuple[npt.NDArray[Any], ...]) -> tuple[npt.NDArray[Any], ...]:
        """The user's predict on one batch, its result checked against the declarations."""
        result = self._predict(**{t.name: a for t, a in zip(self.inputs, arrays, strict=True)})
        rows = len(arrays[0])
        if not isinstance(result, Mapping):
            if len(self.outputs) != 1:
                raise InferenceFailed(
                    f"predict returned one array; it must return a dict of the declared "
                    f"outputs {[t.name for t in self.outputs]}",
                    "bad_output",
                )
            result = {self.outputs[0].name: result}
        out = []
        for t in self.outputs:
            if t.name not in result:
                raise InferenceFailed(f"predict returned no output {t.name!r}", "bad_output")
            value = np.asarray(result[t.name])
            want = (rows, *t.shape[1:])
            if value.shape != want:
                raise InferenceFailed(
                    f"predict returned {t.name!r} of shape {list(value.shape)}; declared "
                    f"{list(t.shape)}, so {list(want)} for {rows} rows",
                    "bad_output",
                )
            out.append(np.ascontiguousarray(value, dtype=t.dtype))
        return tuple(out)

    def check(self, inputs: Mapping[str, npt.NDArray[Any]]) -> None:
        """The user's own input checks (``validate``), as a ProtocolError for a 400."""
        if self._validate is None:
            return
        try:
            self._validate(**inputs)
        except BadInput as exc:
            raise oip.ProtocolError(400, exc.message) from None

    async def infer(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run validated inputs through the batcher: outputs by name, all finite."""
        s = self.settings
        if s.fault_delay_ms > 0:
            await asyncio.sleep(s.fault_delay_ms / 1000)
        if s.fault_error_rate > 0 and random.random() < s.fault_error_rate:
            raise InferenceFailed("injected fault (TURNOUT_FAULT_ERROR_RATE)", "injected_fault")
        try:
            arrays = await self.batcher(tuple(inputs[t.name] for t in self.inputs))
        except InferenceFailed:
            raise
        except BadInput as exc:
            raise oip.ProtocolError(400, exc.message) from None
        except Exception as exc:
            # The user's predict raised: still a JSON 500 with the version header, counted,
            # not Starlette's bare "Internal Server Error".
            log.error("predict failed on %s:%s", self.name, self.version, exc_info=exc)
            raise InferenceFailed(
                f"model {self.name}:{self.version} failed: {type(exc).__name__}: {exc}",
                "model_error",
            ) from exc
        outputs = {t.name: a for t, a in zip(self.outputs, arrays, strict=True)}
        for name, a in outputs.items():
            if a.dtype.kind == "f":
                bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
                if bad.any():  # never hand a caller NaN: fail loudly so the router retries
                    raise InferenceFailed(
                        f"model {self.name}:{self.version} produced non-finite {name!r} for "
                        f"{int(bad.sum())} of {len(a)} rows",
                        "non_finite_output",
                    )
        table = inputs[self._table.name] if self._table is not None else None
        self.monitor.observe(table, outputs)
        return outputs

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


def _v2_app() -> Starlette:
    def runtime(request: Request) -> Runtime:
        rt: Runtime = request.app.state.runtime
        return rt

    def error(rt: Runtime, status: int, message: str, reason: str) -> Response:
        rt.monitor.error(reason)
        headers = {VERSION_HEADER: rt.version}
        return Response(oip.error_body(message), status, headers, media_type="application/json")

    def json(rt: Runtime, doc: Mapping[str, Any]) -> Response:
        return Response(
            orjson.dumps(doc), 200, {VERSION_HEADER: rt.version}, media_type="application/json"
        )

    async def server_metadata(request: Request) -> Response:
        doc = {"name": "turnout", "version": SDK_VERSION, "extensions": ["binary_tensor_data"]}
        return json(runtime(request), doc)

    async def server_live(request: Request) -> Response:
        return json(runtime(request), {"live": True})

    async def server_ready(request: Request) -> Response:
        return json(runtime(request), {"ready": True})

    async def model_metadata(request: Request) -> Response:
        rt = runtime(request)
        if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
            return error(rt, 404, msg, "unknown_model")
        return json(rt, rt.metadata_doc)

    async def model_ready(request: Request) -> Response:
        rt = runtime(request)
        if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
            return error(rt, 404, msg, "unknown_model")
        return json(rt, {"name": rt.name, "ready": True})

    async def infer(request: Request) -> Response:
        rt = runtime(request)
        if msg := rt.matches(request.path_params["name"], request.path_params.get("version")):
            return error(rt, 404, msg, "unknown_model")
        body = await request.body()
        try:
            req = oip.decode_infer(
                body,
                header_length=request.headers.get(oip.HEADER_LENGTH),
                inputs=rt.inputs,
                max_rows=rt.settings.max_rows,
            )
            rt.check(req.inputs)
            outputs = await rt.infer(req.inputs)
        except oip.ProtocolError as exc:
            reason = "too_large" if exc.status == 413 else "bad_input"
            return error(rt, exc.status, exc.message, reason)
        except InferenceFailed as exc:
            return error(rt, 500, exc.message, exc.reason)
        payload, headers = oip.encode_infer(
            model_name=rt.name,
            model_version=rt.version,
            request_id=req.id,
            outputs=[(t, outputs[t.name]) for t in rt.outputs],
            binary=req.binary_output,
        )
        headers[VERSION_HEADER] = rt.version
        return Response(payload, 200, headers)

    model, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    return Starlette(
        routes=[
            Route("/v2", server_metadata, methods=["GET"]),
            Route("/v2/health/live", server_live, methods=["GET"]),
            Route("/v2/health/ready", server_ready, methods=["GET"]),
            Route(model, model_metadata, methods=["GET"]),
            Route(versioned, model_metadata, methods=["GET"]),
            Route(model + "/ready", model_ready, methods=["GET"]),
            Route(versioned + "/ready", model_ready, methods=["GET"]),
            Route(model + "/infer", infer, methods=["POST"]),
            Route(versioned + "/infer", infer, methods=["POST"]),
        ]
    )


# --- the decorator ---------------------------------------------------------------------------


def model_server(
    *,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    task: Task | None = None,
    name: str | None = None,
    **service_config: Any,
) -> Callable[[type[C]], Any]:
    """Make the decorated class a turnout model server (a ``bentoml.Service``).

    ``inputs``/``outputs``: the tensors, batch axis first (-1). ``task``: what the output
    means (default BinaryScore()). ``name``: the BentoML service name (default: the class's).
    Any other keyword goes to ``@bentoml.service`` (e.g. ``resources``).
    """
    validate_all(inputs, outputs)
    chosen: Task = task if task is not None else BinaryScore()
    settings = server_settings()
    bentoml_fixes.apply()

    def wrap(cls: type[C]) -> Any:
        attribute = _model_attribute(cls)
        predict = getattr(cls, "predict", None)
        if predict is None:
            raise DeclarationError(
                f"{cls.__name__} has no predict(); add "
                f"def predict(self, {', '.join(t.name for t in inputs)}) -> np.ndarray"
            )
        params = [p for p in inspect.signature(predict).parameters if p != "self"]
        declared = [t.name for t in inputs]
        if sorted(params) != sorted(declared):
            raise DeclarationError(
                f"{cls.__name__}.predict takes {params}, but the declared inputs are {declared}; "
                "name predict's parameters after the inputs"
            )
        ref = getattr(cls, attribute)
        stored = ref.stored
        if stored is None:
            raise ModelNotFound(
                f"model {ref.tag} is not in the BentoML model store "
                f"({bentoml.models.BentoModel.__module__} looked in $BENTOML_HOME/models); "
                "save it with bentoml.models.create, or set TURNOUT_MODEL to a tag that exists "
                "(`bentoml models list`)"
            )
        app = _v2_app()
        original_init = cls.__init__

        def __init__(self: Any) -> None:
            if "torch" in sys.modules:  # torch's default is every core, per worker
                sys.modules["torch"].set_num_threads(settings.torch_threads)
            try:
                original_init(self)
            except Exception as exc:
                _give_up(cls.__name__, exc)
            resolved: Any = getattr(self, attribute)  # on an instance: the stored model
            self.turnout = Runtime(
                service=self,
                name=resolved.tag.name,
                version=resolved.tag.version,
                inputs=inputs,
                outputs=outputs,
                task=chosen,
                metadata=dict(resolved.info.metadata),
                settings=settings,
            )
            app.state.runtime = self.turnout
            log.info("serving %s with turnout-sdk %s", resolved.tag, SDK_VERSION)

        @bentoml.on_startup
        async def _turnout_start(self: Any) -> None:
            self.turnout.monitor.start()
            # What is allocated so far lives as long as the process: keep it out of the
            # collector's sight so full collections stay short.
            gc.freeze()

        @bentoml.on_shutdown
        async def _turnout_stop(self: Any) -> None:
            await self.turnout.monitor.stop()
            self.turnout.batcher.close()

        setattr(cls, "__init__", __init__)  # noqa: B010  (mypy refuses assigning a method)
        cls._turnout_start = _turnout_start  # type: ignore[attr-defined]
        cls._turnout_stop = _turnout_stop  # type: ignore[attr-defined]
        config: dict[str, Any] = {
            "workers": settings.workers,
            "traffic": {"timeout": 30},
            "logging": {"access": {"enabled": settings.access_log}},
            # BentoML records an OpenTelemetry span per request even at sample rate 0: ~40 %
            # of the CPU of a single-row inference. Inference routes are left out unless asked.
            "tracing": {
                "excluded_urls": [] if settings.trace_inference else ["/infer$", "/predict$"]
            },
            "endpoints": {"livez": "/livez", "readyz": "/readyz"},
            **service_config,
        }
        svc = bentoml.service(name=name or cls.__name__.lower(), **config)(
            bentoml.asgi_app(app, path="/")(cls)
        )
        # bentoml finds the service by the module that called bentoml.service: the user's.
        svc._caller_module = cls.__module__
        svc.add_asgi_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
        return svc

    return wrap


def _give_up(service: str, exc: Exception) -> NoReturn:
    """A model that cannot load will not load on the next try either: BentoML would restart
    the worker forever, so the whole server stops, non-zero, with the reason in its log."""
    reason = f"{type(exc).__name__}: {exc}"
    log.error("%s cannot start: %s; stopping the server", service, reason)
    print(f"turnout: {service} cannot start: {reason}", file=sys.stderr, flush=True)
    parent = os.getppid()
    if parent > 1:
        os.kill(parent, signal.SIGKILL)  # BentoML's arbiter: no restart, a non-zero exit
    os._exit(3)


def _model_attribute(cls: type) -> str:
    found = [
        name
        for name in dir(cls)
        if not name.startswith("__")
        and isinstance(getattr(cls, name, None), bentoml.models.BentoModel)
    ]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise DeclarationError(
            f"{cls.__name__} declares {what} BentoML models; declare the one it serves as a "
            "class attribute: model = turnout_sdk.model_ref('name')"
        )
    return found[0]
