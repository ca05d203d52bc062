"""The fraud model: a small torch MLP that carries its own input preprocessing.

Everything needed to turn raw features into a score lives inside the module as buffers
(per-feature centre and scale, category cardinalities), so the saved weights are the whole
model: a server needs the state dict and the architecture config, nothing pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data import Schema


@dataclass(frozen=True)
class Architecture:
    schema: Schema
    hidden: tuple[int, ...] = (64, 32)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(schema=Schema.from_dict(data["schema"]), hidden=tuple(data["hidden"]))


class FraudNet(nn.Module):
    """MLP over [N, F] float32 features in schema order; returns fraud logits [N]."""

    numeric_index: torch.Tensor
    categorical_index: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        feats = arch.schema.features
        numeric = [i for i, f in enumerate(feats) if f.kind == "numeric"]
        categorical = [i for i, f in enumerate(feats) if f.kind == "categorical"]
        self.cardinalities = [len(feats[i].categories) for i in categorical]
        self.register_buffer("numeric_index", torch.tensor(numeric, dtype=torch.long))
        self.register_buffer("categorical_index", torch.tensor(categorical, dtype=torch.long))
        # Normalisation statistics: set from training data by fit_normalisation().
        self.register_buffer("center", torch.zeros(len(numeric)))
        self.register_buffer("scale", torch.ones(len(numeric)))
        width = len(numeric) + sum(self.cardinalities)
        layers: list[nn.Module] = []
        for h in arch.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def _squash(x: torch.Tensor) -> torch.Tensor:
        # Amounts and distances are heavy-tailed; a signed log keeps them in a usable range.
        return torch.sign(x) * torch.log1p(torch.abs(x))

    def fit_normalisation(self, x: np.ndarray) -> None:
        numeric = self._squash(torch.from_numpy(x).double()[:, self.numeric_index])
        self.center.copy_(numeric.mean(0).float())
        self.scale.copy_(numeric.std(0).clamp_min(1e-6).float())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        numeric = (self._squash(x[:, self.numeric_index]) - self.center) / self.scale
        parts = [numeric]
        for col, card in zip(self.categorical_index.tolist(), self.cardinalities, strict=True):
            codes = x[:, col].long().clamp(0, card - 1)
            parts.append(nn.functional.one_hot(codes, card).to(x.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.mlp(self.encode(x)).squeeze(1)
        return logits


def predict_proba(net: FraudNet, x: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Fraud probabilities, float32 [N], for float32 features [N, F]."""
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.inference_mode():
        return torch.sigmoid(net(tensor)).numpy()


def state_hash(net: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict, in key order: equal iff bit-identical."""
    import hashlib

    h = hashlib.sha256()
    for key, tensor in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
