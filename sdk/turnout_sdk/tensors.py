"""Tensor declarations: what a model server takes and returns, in Open Inference Protocol terms.

A user declares each input and output once (name, v2 datatype, shape with -1 for the batch
axis); the server's metadata, request validation and replies are all derived from that, so
what a client reads in ``GET /v2/models/{name}`` is exactly what the server enforces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: v2 datatype -> numpy dtype (little-endian on the wire).
DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
FLOATS = frozenset({"FP16", "FP32", "FP64"})


class DeclarationError(ValueError):
    """A tensor declaration the server cannot serve; the message names the problem and the fix."""


@dataclass(frozen=True)
class Tensor:
    """One declared input or output: ``Tensor("image", "FP32", (-1, 1, 8, 8))``."""

    name: str
    datatype: str
    #: Dimensions; -1 (only first) is the batch axis, any number of rows per request.
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return DTYPES[self.datatype]

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1

    def validate(self) -> Tensor:
        """This declaration, or DeclarationError saying what to change."""
        where = f"tensor {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise DeclarationError("a tensor needs a non-empty name, e.g. Tensor('image', ...)")
        if self.datatype == "BYTES":
            raise DeclarationError(
                f"{where}: BYTES (strings) cannot be declared; the SDK serves numeric tensors. "
                "Encode text or categories as integer codes (INT64) before the model"
            )
        if self.datatype not in DTYPES:
            raise DeclarationError(
                f"{where}: datatype {self.datatype!r} is not a v2 numeric type; "
                f"use one of {', '.join(DTYPES)}"
            )
        if not self.shape:
            raise DeclarationError(f"{where}: shape is empty; declare e.g. (-1, 14) for rows of 14")
        if self.shape[0] != -1:
            raise DeclarationError(
                f"{where}: the first dimension must be -1 (the batch axis), got {list(self.shape)}"
            )
        for d in self.shape[1:]:
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                raise DeclarationError(
                    f"{where}: only the first dimension may be -1; every other must be a "
                    f"positive integer, got {list(self.shape)}"
                )
        return self

    def metadata(self) -> dict[str, object]:
        """As ``GET /v2/models/{name}`` lists it."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def validate_all(inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> None:
    """Every declaration valid, at least one of each, names unique within inputs and outputs."""
    if not inputs:
        raise DeclarationError(
            "declare at least one input, e.g. inputs=[Tensor('x', 'FP32', (-1, 4))]"
        )
    if not outputs:
        raise DeclarationError(
            "declare at least one output, e.g. outputs=[Tensor('y', 'FP32', (-1,))]"
        )
    for group, tensors in (("inputs", inputs), ("outputs", outputs)):
        names = [t.validate().name for t in tensors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DeclarationError(f"{group} declare {', '.join(map(repr, dupes))} more than once")
