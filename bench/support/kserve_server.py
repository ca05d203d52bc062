"""Start KServe's own Python ModelServer the way turnout's benchmarks and tests compare it.

Used by bench/support/kserve_fraud.py and bench/support/kserve_digits.py; configured through
the environment:
  BENCH_HTTP_PORT   port for the REST server (required)
  BENCH_GRPC_PORT   port for the gRPC server (only used if BENCH_KSERVE_GRPC=on)
  BENCH_HOST        address the REST server binds (default 127.0.0.1)

Defaults changed from kserve.ModelServer's, so a comparison is about the request path and not
about logging I/O (turnout's server runs with its access log off):
  - enable_grpc=False           (default True: a gRPC server on a second port)
  - enable_latency_logging=False (default True: one "requestId: ... predict_ms" line per request)
  - uvicorn access log removed  (default: one access line per request on stdout; kserve has no
                                 switch, so the "uvicorn.access" logger loses its handlers, which
                                 makes uvicorn skip access logging entirely)
  - "kserve.trace" logger at WARNING (default INFO: kserve's TimingMiddleware prints one timing
                                 line per request; the middleware itself still runs)
  - the REST server binds 127.0.0.1 (kserve hard-codes 0.0.0.0)
Unchanged: workers=1, uvloop/httptools via uvicorn "auto", FastAPI app with its TimingMiddleware,
prometheus histograms for pre/predict/postprocess, keep-alive 65 s.

kserve parses sys.argv when it is imported: a script using this module answers ``--help``
before importing it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kserve
import kserve.protocol.rest.server as kserve_rest
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.utils.utils import generate_uuid


class _LoopbackConfig(kserve_rest.uvicorn.Config):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = os.environ.get("BENCH_HOST", "127.0.0.1")
        super().__init__(*args, **kwargs)


def one_input(payload: InferRequest, name: str) -> np.ndarray:
    """The request's input ``name`` as numpy; InvalidInput (a 400) when it is not there once."""
    tensors = [i for i in payload.inputs if i.name == name]
    if len(tensors) != 1:
        raise InvalidInput(f"expected one input named {name!r}")
    return tensors[0].as_numpy()  # type: ignore[no-any-return]


def reply(
    model: kserve.Model,
    payload: InferRequest,
    name: str,
    values: np.ndarray,
    version: str | None = None,
) -> InferResponse:
    """One FP32 output in the v2 response; binary when the request asked for binary."""
    out = InferOutput(name=name, shape=list(values.shape), datatype="FP32")
    out.set_data_from_numpy(values, binary_data=False)
    return InferResponse(
        response_id=payload.id or generate_uuid(),  # the v2 response needs an id
        model_name=model.name,
        model_version=version,
        infer_outputs=[out],
        use_binary_outputs=payload.use_binary_outputs,
    )


def serve(model: kserve.Model) -> None:
    """Serve one loaded model on $BENCH_HTTP_PORT until the process is stopped."""
    kserve_rest.uvicorn.Config = _LoopbackConfig  # uvicorn.Config, for this process only
    grpc = os.environ.get("BENCH_KSERVE_GRPC", "off") == "on"
    server = kserve.ModelServer(
        http_port=int(os.environ["BENCH_HTTP_PORT"]),
        grpc_port=int(os.environ.get("BENCH_GRPC_PORT", "0")),
        workers=1,
        enable_grpc=grpc,
        enable_latency_logging=False,
    )
    # ModelServer() configured logging; now drop the per-request lines.
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])
