"""KServe's own Python ModelServer serving the digits example's torch model (examples/digits).

A turnout version built without turnout's SDK: tests/integration/test_kserve_contract.py checks
it keeps sdk/CONTRACT.md and routes it next to an SDK server, and bench/model_server.py races
it against the SDK's server on the same weights. Run as a subprocess, configured through the
environment:
  BENCH_HTTP_PORT        REST port (required; see bench/support/kserve_server.py for the rest)
  TURNOUT_MODEL          the digits version in the BentoML model store (default digits:latest)
  BENTOML_HOME           where that store is
  TURNOUT_TORCH_THREADS  torch intra-op threads (default 1, as the SDK's server)

What it does the way a KServe user would: ``kserve.Model`` with a sync ``predict`` over the v2
``InferRequest`` (the same softmax over the same DigitsCNN as examples/digits/service.py),
``get_input_types``/``get_output_types`` for the metadata, and the served version in every
inference reply through KServe's ``response_headers``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

if "--help" in sys.argv:  # kserve parses sys.argv at import time
    print(__doc__)
    raise SystemExit(0)

import bentoml
import kserve
import numpy as np
import torch
from kserve import InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve_server import one_input, reply, serve
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "digits"))
from model import DigitsCNN  # the example's network, as its service imports it

INPUT, OUTPUT = "image", "probabilities"
IMAGE = (1, 8, 8)
VERSION_HEADER = "x-turnout-model-version"


class DigitsModel(kserve.Model):
    def __init__(self, tag: str) -> None:
        stored = bentoml.models.get(tag)
        super().__init__(stored.tag.name, return_response_headers=True)
        self.version = str(stored.tag.version)
        self.weights = stored.path_of("weights.safetensors")
        self.net: Any = None
        self.load()

    def load(self) -> bool:
        self.net = DigitsCNN()
        self.net.load_state_dict(load_file(self.weights))
        self.net.eval()
        self.probabilities(np.zeros((1, *IMAGE), dtype=np.float32))  # warm up
        self.ready = True
        return self.ready

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(image)), dim=1).numpy()  # type: ignore[no-any-return]

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT, "datatype": "FP32", "shape": [-1, *IMAGE]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 10]}]

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        # Sync: kserve runs it on the event loop, as the SDK runs small batches inline.
        image = one_input(payload, INPUT)
        if image.ndim != 4 or image.shape[1:] != IMAGE or len(image) == 0:
            raise InvalidInput(f"input {INPUT!r}: shape must be [N, 1, 8, 8]")
        p = self.probabilities(np.ascontiguousarray(image, dtype=np.float32))
        if response_headers is not None:
            response_headers[VERSION_HEADER] = self.version
        return reply(self, payload, OUTPUT, p, self.version)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TURNOUT_TORCH_THREADS", "1")))
    model = DigitsModel(os.environ.get("TURNOUT_MODEL") or "digits:latest")
    logging.getLogger("kserve").info("serving digits:%s", model.version)
    serve(model)


if __name__ == "__main__":
    main()
