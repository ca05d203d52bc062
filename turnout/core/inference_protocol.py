"""Open Inference Protocol (KServe v2) request decoding and response encoding.

Pure: bytes in, arrays out (and back). Supports plain JSON tensors and the binary tensor data
extension (``Inference-Header-Content-Length``: a JSON header followed by raw little-endian
tensor bytes) that tritonclient and KServe clients send by default.

Every rejection is a :class:`ProtocolError` with an HTTP status and a message naming the
offending input, so callers can answer ``{"error": message}`` without guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

#: Datatypes a numeric feature tensor may arrive in; all are converted to float32.
_NUMERIC: Mapping[str, npt.DTypeLike] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
}
#: Byte sizes of every v2 datatype, to slice binary payloads and to name wrong types exactly.
_ITEM_SIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
    "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8,
}  # fmt: skip


class ProtocolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    features: npt.NDArray[np.float32]
    #: Reply with the binary extension (asked per output or for the whole response).
    binary_output: bool


def decode_infer(
    body: bytes,
    *,
    header_length: str | None,
    input_name: str,
    n_features: int,
    max_rows: int,
) -> InferRequest:
    """Decode a v2 infer request whose one input is ``input_name``: FP32 [N, n_features]."""
    json_part, binary_part = _split_body(body, header_length)
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request body must be a JSON object with an 'inputs' list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "request needs a non-empty 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "'id' must be a string")

    features = None
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise ProtocolError(400, f"inputs[{i}] must be an object")
        name = tensor.get("name")
        array, used = _decode_tensor(tensor, binary_part, offset, label=f"input {name!r}")
        offset += used
        if name == input_name:
            features = array
        else:
            raise ProtocolError(400, f"unknown input {name!r}; this model takes {input_name!r}")
    if offset != len(binary_part):
        raise ProtocolError(
            400, f"binary payload has {len(binary_part) - offset} bytes not claimed by any input"
        )
    if features is None:
        raise ProtocolError(400, f"missing input {input_name!r}")
    features = check_features(features, input_name, n_features, max_rows)
    return InferRequest(id=request_id, features=features, binary_output=_wants_binary(doc))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(
            400, f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if n < 0 or n > len(body):
        raise ProtocolError(
            400,
            f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes",
        )
    return body[:n], body[n:]


def _decode_tensor(
    tensor: dict[str, Any], binary: bytes, offset: int, *, label: str
) -> tuple[npt.NDArray[Any], int]:
    """One input tensor as an array of its declared shape; returns (array, binary bytes used)."""
    shape = tensor.get("shape")
    datatype = tensor.get("datatype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(400, f"{label}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str):
        raise ProtocolError(400, f"{label}: 'datatype' is missing")
    if datatype not in _NUMERIC:
        known = "a v2 datatype" if datatype in _ITEM_SIZE or datatype == "BYTES" else "unknown"
        raise ProtocolError(
            400, f"{label}: datatype {datatype} ({known}) is not accepted; send FP32"
        )
    count = int(np.prod(shape)) if shape else 1
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"{label}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    dtype = np.dtype(_NUMERIC[datatype]).newbyteorder("<")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(400, f"{label}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise ProtocolError(400, f"{label}: has both 'data' and binary_data_size")
        if size != count * dtype.itemsize:
            raise ProtocolError(
                400,
                f"{label}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)",
            )
        if offset + size > len(binary):
            raise ProtocolError(
                400, f"{label}: binary payload too short ({len(binary) - offset} of {size} bytes)"
            )
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return array.reshape(shape), size
    if "data" not in tensor:
        raise ProtocolError(400, f"{label}: has no 'data' and no binary_data_size")
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (ValueError, TypeError):
        raise ProtocolError(
            400, f"{label}: 'data' must be numbers matching datatype {datatype}"
        ) from None
    if np.isnan(array).any():  # JSON has no NaN literal: these were nulls
        index = int(np.flatnonzero(np.isnan(array.ravel()))[0])
        raise ProtocolError(400, f"{label}: 'data' has null at flat index {index}")
    if array.size != count:
        raise ProtocolError(
            400, f"{label}: shape {shape} needs {count} values but 'data' has {array.size}"
        )
    return array.reshape(shape), 0


def check_features(
    array: npt.NDArray[Any], name: str, n_features: int, max_rows: int
) -> npt.NDArray[np.float32]:
    if array.ndim != 2 or array.shape[1] != n_features:
        raise ProtocolError(
            400, f"input {name!r}: shape must be [N, {n_features}], got {list(array.shape)}"
        )
    if array.shape[0] == 0:
        raise ProtocolError(400, f"input {name!r}: has no rows")
    if array.shape[0] > max_rows:
        raise ProtocolError(
            413, f"input {name!r}: {array.shape[0]} rows is more than the limit of {max_rows}"
        )
    features = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(features)
    if not finite.all():
        row, col = (int(v) for v in np.argwhere(~finite)[0])
        raise ProtocolError(400, f"input {name!r}: NaN or infinity at row {row}, column {col}")
    return features


def _wants_binary(doc: dict[str, Any]) -> bool:
    params = doc.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        return True
    outputs = doc.get("outputs")
    if isinstance(outputs, list):
        return any(
            isinstance(o, dict)
            and isinstance(o.get("parameters"), dict)
            and o["parameters"].get("binary_data") is True
            for o in outputs
        )
    return False


def encode_infer(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    output_name: str,
    values: npt.NDArray[np.float32],
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers that describe it (content type, binary header length)."""
    out: dict[str, Any] = {"name": output_name, "datatype": "FP32", "shape": [int(values.shape[0])]}
    payload = np.ascontiguousarray(values, dtype="<f4")
    if binary:
        out["parameters"] = {"binary_data_size": payload.nbytes}
    else:
        out["data"] = payload
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [out]
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return head, {"content-type": JSON_CONTENT_TYPE}
    return head + payload.tobytes(), {
        "content-type": BINARY_CONTENT_TYPE,
        "inference-header-content-length": str(len(head)),
    }


def decode_output(body: bytes, *, header_length: str | None) -> npt.NDArray[np.float32]:
    """The first output tensor of an infer response (JSON or binary) as float32, flattened."""
    json_part, binary_part = _split_body(body, header_length)
    try:
        doc = orjson.loads(json_part)
        tensor = doc["outputs"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise ProtocolError(502, "response has no outputs") from None
    array, _ = _decode_tensor(tensor, binary_part, 0, label="output")
    return np.asarray(array, dtype=np.float32).ravel()


def rows_of(body: bytes, *, header_length: str | None) -> int | None:
    """Rows in the first input of an infer request (for answers made without a model)."""
    try:
        json_part, _ = _split_body(body, header_length)
        shape = orjson.loads(json_part)["inputs"][0]["shape"]
        return int(shape[0])
    except (ProtocolError, orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
