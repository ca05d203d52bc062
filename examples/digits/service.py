"""The digits model server: declare the tensors, load the weights, predict.

turnout_sdk turns this class into a BentoML service speaking the Open Inference Protocol v2
(``POST /v2/models/digits/infer``), with micro-batching, drift metrics against the reference
saved by train.py, and the model version in every reply.
"""

from __future__ import annotations

import numpy as np
import torch
from model import DigitsCNN
from safetensors.torch import load_file

import turnout_sdk as turnout


@turnout.model_server(
    inputs=[turnout.Tensor("image", "FP32", (-1, 1, 8, 8))],
    outputs=[turnout.Tensor("probabilities", "FP32", (-1, 10))],
    task=turnout.MultiClass(),
)
class Digits:
    # The version named by $TURNOUT_MODEL, else digits:latest; `bentoml build` packs it.
    model = turnout.model_ref("digits")

    def __init__(self) -> None:
        self.net = DigitsCNN()
        # safetensors holds tensors only, so loading the weights cannot run code.
        self.net.load_state_dict(load_file(self.model.path_of("weights.safetensors")))
        self.net.eval()
        self.predict(np.zeros((1, 1, 8, 8), dtype=np.float32))  # the first pass is the slow one

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Raw pixels 0..16 [N, 1, 8, 8] -> class probabilities [N, 10]."""
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(image)), dim=1).numpy()
