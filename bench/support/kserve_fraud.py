"""KServe's own Python ModelServer serving turnout's fraud model (benchmark contender).

Run by bench/model_server.py as a subprocess; configured through the environment:
  BENCH_HTTP_PORT   port for the REST server (required)
  BENCH_GRPC_PORT   port for the gRPC server (only used if BENCH_KSERVE_GRPC=on)
  TURNOUT_MODEL     model tag in the turnout store (default fraud:v1)
  TURNOUT_HOME / BENTOML_HOME   where the store is
  TURNOUT_TORCH_THREADS         torch intra-op threads (default 1, same as turnout's server)

Defaults changed from kserve.ModelServer's, so the comparison is about the request path and
not about logging I/O (turnout's server runs with its access log off):
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
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

if "--help" in sys.argv:  # kserve parses sys.argv at import time
    print(__doc__)
    raise SystemExit(0)

import kserve
import kserve.protocol.rest.server as kserve_rest
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.utils.utils import generate_uuid

from training import store
from training.model import predict_proba

INPUT, OUTPUT = "features", "probability"


class FraudModel(kserve.Model):
    def __init__(self, name: str, tag: str) -> None:
        super().__init__(name)
        self.tag = tag
        self.net: Any = None
        self.n_features = 0
        self.load()

    def load(self) -> bool:
        loaded = store.load(self.tag)
        self.net = loaded.net
        self.n_features = len(loaded.schema.features)
        predict_proba(self.net, np.zeros((1, self.n_features), dtype=np.float32))  # warm up
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        # A sync predict: kserve calls it directly on the event loop (as turnout's server runs
        # small batches inline). The model takes ~0.1 ms, so a thread hop would only add cost.
        tensors = [i for i in payload.inputs if i.name == INPUT]
        if len(tensors) != 1:
            raise InvalidInput(f"expected one input named {INPUT!r}")
        x = tensors[0].as_numpy()
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InvalidInput(f"input {INPUT!r}: shape must be [N, {self.n_features}]")
        scores = predict_proba(self.net, np.ascontiguousarray(x, dtype=np.float32))
        out = InferOutput(name=OUTPUT, shape=[int(scores.shape[0])], datatype="FP32")
        out.set_data_from_numpy(scores, binary_data=False)
        return InferResponse(
            response_id=payload.id or generate_uuid(),  # the v2 response needs an id
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=payload.use_binary_outputs,
        )


class _LoopbackConfig(kserve_rest.uvicorn.Config):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = os.environ.get("BENCH_HOST", "127.0.0.1")
        super().__init__(*args, **kwargs)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TURNOUT_TORCH_THREADS", "1")))
    tag = os.environ.get("TURNOUT_MODEL", "fraud:v1")
    name = tag.partition(":")[0]
    kserve_rest.uvicorn.Config = _LoopbackConfig  # uvicorn.Config, for this process only
    model = FraudModel(name, tag)
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
    logging.getLogger("kserve").info("torch threads %d", torch.get_num_threads())
    server.start([model])


if __name__ == "__main__":
    main()
