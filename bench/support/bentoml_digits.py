"""The digits example's predict in a bare BentoML service (bench/sdk_overhead.py's baseline).

``bentoml serve bench.support.bentoml_digits:DigitsBare --working-dir /work/main`` with
TURNOUT_MODEL (the digits version) and BENTOML_HOME set. ``POST /predict`` ``{"image":
[[[[...8x8...]]]]}`` -> the class probabilities as a JSON list: what a BentoML user writes
without turnout's SDK — ``@bentoml.api`` over a numpy array, the same network, weights and
softmax as examples/digits/service.py.

BENCH_BARE_API picks how BentoML runs it:
  sync   (default) ``def predict``: BentoML runs it in its thread pool, as for any sync API
  async  ``async def predict``: on the event loop, as the SDK runs small batches
BENCH_BARE_TRACING=on keeps BentoML's OpenTelemetry span on /predict (its default); off (the
default here) excludes the route as the SDK does. Otherwise the SDK's BentoML settings: one
worker, access log off, traffic timeout 30 s, one torch thread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import torch
from bentoml.validators import DType, Shape
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "digits"))
from model import DigitsCNN  # the example's network, as its service imports it

API = os.environ.get("BENCH_BARE_API", "sync")
TRACING = os.environ.get("BENCH_BARE_TRACING", "off") == "on"
Image = Annotated[np.ndarray, DType("float32"), Shape((-1, 1, 8, 8))]


@bentoml.service(
    name="digits-bare",
    workers=1,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [] if TRACING else ["/predict$"]},
)
class DigitsBare:
    model = bentoml.models.BentoModel(os.environ.get("TURNOUT_MODEL") or "digits:latest")

    def __init__(self) -> None:
        torch.set_num_threads(int(os.environ.get("TURNOUT_TORCH_THREADS", "1")))
        self.net = DigitsCNN()
        self.net.load_state_dict(load_file(self.model.path_of("weights.safetensors")))
        self.net.eval()
        self.probabilities(np.zeros((1, 1, 8, 8), dtype=np.float32))  # warm up

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(image)), dim=1).numpy()  # type: ignore[no-any-return]

    if API == "async":

        @bentoml.api(route="/predict")
        async def predict(self, image: Image) -> np.ndarray:
            return self.probabilities(image)

    else:

        @bentoml.api(route="/predict")
        def predict(self, image: Image) -> np.ndarray:
            return self.probabilities(image)
