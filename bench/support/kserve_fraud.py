"""KServe's own Python ModelServer serving turnout's fraud model (benchmark contender).

Run by bench/model_server.py as a subprocess; configured through the environment:
  BENCH_HTTP_PORT   port for the REST server (required)
  BENCH_GRPC_PORT   port for the gRPC server (only used if BENCH_KSERVE_GRPC=on)
  TURNOUT_MODEL     model tag in the turnout store (default fraud:v1)
  TURNOUT_HOME / BENTOML_HOME   where the store is
  TURNOUT_TORCH_THREADS         torch intra-op threads (default 1, same as turnout's server)

The server is started by bench/support/kserve_server.py, which lists every default it changes
from kserve.ModelServer's (gRPC and per-request logging off, REST on 127.0.0.1).
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
import numpy as np
import torch
from kserve import InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve_server import one_input, reply, serve

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
        x = one_input(payload, INPUT)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InvalidInput(f"input {INPUT!r}: shape must be [N, {self.n_features}]")
        scores = predict_proba(self.net, np.ascontiguousarray(x, dtype=np.float32))
        return reply(self, payload, OUTPUT, scores)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TURNOUT_TORCH_THREADS", "1")))
    tag = os.environ.get("TURNOUT_MODEL", "fraud:v1")
    model = FraudModel(tag.partition(":")[0], tag)
    logging.getLogger("kserve").info("torch threads %d", torch.get_num_threads())
    serve(model)


if __name__ == "__main__":
    main()
