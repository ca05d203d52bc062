"""Open Inference Protocol (KServe v2) codec for declared tensors.

Pure: bytes in, arrays out (and back). A model server declares its inputs and outputs as
``Tensor`` objects; :func:`decode_infer` checks a request against those declarations (names,
datatypes, shapes, one batch size across inputs, finite values) and hands back arrays in the
declared dtypes, and :func:`encode_infer` writes the reply. Both the plain
JSON form and the binary tensor data extension (``Inference-Header-Content-Length``: a JSON
header followed by raw little-endian tensor bytes, which tritonclient and KServe clients send
by default) are read and written, for every numeric datatype; BOOL is one byte per value.

Every rejection is a :class:`ProtocolError` with an HTTP status and a message naming the
offending input and what to send instead, so callers can answer ``{"error": message}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from turnout_sdk.tensors import DTYPES, FLOATS, Tensor

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

_INTEGERS = frozenset(DTYPES) - FLOATS - {"BOOL"}


class ProtocolError(Exception):
    """A request (400, 413) or a reply (502) the codec cannot read; the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    #: Every declared input by name, in its declared dtype: C-contiguous, writable, rows first.
    inputs: dict[str, npt.NDArray[Any]]
    #: Reply with the binary extension (asked per output or for the whole response).
    binary_output: bool
    #: The batch size N, the same for every input.
    rows: int


def decode_infer(
    body: bytes, *, header_length: str | None, inputs: Sequence[Tensor], max_rows: int
) -> InferRequest:
    """Decode a v2 infer request for a model that takes ``inputs``; ProtocolError if it can't."""
    json_part, binary_part = _split_body(body, header_length)
    doc = _load_json(json_part, "request body")
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request body must be a JSON object with an 'inputs' list")
    sent = doc.get("inputs")
    if not isinstance(sent, list) or not sent:
        raise ProtocolError(400, f"request needs a non-empty 'inputs' list: {_signature(inputs)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "'id' must be a string")

    declared = {t.name: t for t in inputs}
    arrays: dict[str, npt.NDArray[Any]] = {}
    first: tuple[str, int] | None = None  # (name, rows) of the first input read
    offset = 0
    for i, tensor in enumerate(sent):
        if not isinstance(tensor, dict):
            raise ProtocolError(400, f"inputs[{i}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise ProtocolError(400, f"inputs[{i}] needs a 'name': {_signature(inputs)}")
        decl = declared.get(name)
        if decl is None:
            raise ProtocolError(400, f"unknown input {name!r}: {_signature(inputs)}")
        if name in arrays:
            raise ProtocolError(400, f"input {name!r} is sent twice; send each input once")
        label = f"input {name!r}"
        datatype, shape = _header(tensor, label)
        _check_datatype(datatype, decl, label=label)
        _check_shape(shape, decl, label=label)
        rows = shape[0]
        _check_rows(rows, max_rows, label=label)
        if first is not None and rows != first[1]:
            raise ProtocolError(
                400,
                f"{label} has {rows} rows but input {first[0]!r} has {first[1]}; "
                "every input needs the same number of rows",
            )
        first = first or (name, rows)
        array, used = _values(
            tensor, binary_part, offset, datatype=datatype, shape=shape, label=label
        )
        offset += used
        arrays[name] = _convert(array, decl, label=label)
    if offset != len(binary_part):
        raise ProtocolError(
            400, f"binary payload has {len(binary_part) - offset} bytes not claimed by any input"
        )
    missing = [t.name for t in inputs if t.name not in arrays]
    if missing or first is None:
        names = ", ".join(map(repr, missing))
        raise ProtocolError(400, f"missing input {names}: {_signature(inputs)}")
    return InferRequest(
        id=request_id,
        inputs={t.name: arrays[t.name] for t in inputs},
        binary_output=_wants_binary(doc),
        rows=first[1],
    )


def _signature(inputs: Sequence[Tensor]) -> str:
    """What a caller must send, e.g. ``this model takes 'image' FP32 [N, 1, 8, 8]``."""
    return "this model takes " + ", ".join(
        f"{t.name!r} {t.datatype} {_shape_text(t.shape)}" for t in inputs
    )


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


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


def _load_json(part: bytes, what: str) -> Any:
    try:
        return orjson.loads(part)
    except orjson.JSONDecodeError as exc:
        # Python's json module and numpy's tolist() happily write NaN and Infinity; say so.
        word = part[exc.pos : exc.pos + 8].lower()
        where = f"line {exc.lineno}, column {exc.colno}"
        if word.startswith(b"nan"):
            message = f"NaN is not valid JSON; send numbers (JSON has no NaN) ({where})"
        elif word.startswith(b"inf"):
            message = f"Infinity is not valid JSON; send finite numbers (JSON has none) ({where})"
        else:
            message = f"{what} is not valid JSON: {exc}"
        raise ProtocolError(400, message) from None


def _header(tensor: dict[str, Any], label: str) -> tuple[str, list[int]]:
    """A tensor's datatype and shape, both well-formed (any v2 numeric datatype)."""
    shape = tensor.get("shape")
    datatype = tensor.get("datatype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(400, f"{label}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str):
        raise ProtocolError(400, f"{label}: 'datatype' is missing")
    if datatype not in DTYPES:
        kind = "strings" if datatype == "BYTES" else "not a v2 numeric datatype"
        raise ProtocolError(400, f"{label}: datatype {datatype} ({kind}) is not accepted")
    return datatype, shape


def _check_datatype(datatype: str, decl: Tensor, *, label: str) -> None:
    if decl.datatype in FLOATS:
        ok, also = datatype in FLOATS, " (FP16, FP32 and FP64 are all converted)"
    elif decl.datatype in _INTEGERS:
        ok, also = datatype in _INTEGERS, " (any integer type is converted if its values fit)"
    else:
        ok, also = datatype == decl.datatype, ""
    if not ok:
        raise ProtocolError(
            400, f"{label}: datatype {datatype} is not accepted; send {decl.datatype}{also}"
        )


def _check_shape(shape: list[int], decl: Tensor, *, label: str) -> None:
    if len(shape) != len(decl.shape) or shape[1:] != list(decl.shape[1:]):
        raise ProtocolError(400, f"{label}: shape must be {_shape_text(decl.shape)}, got {shape}")


def _check_rows(rows: int, max_rows: int, *, label: str) -> None:
    if rows == 0:
        raise ProtocolError(400, f"{label}: has no rows")
    if rows > max_rows:
        raise ProtocolError(
            413, f"{label}: {rows} rows is more than the limit of {max_rows}; send fewer rows"
        )


def check_features(
    array: npt.NDArray[Any], name: str, n_features: int, max_rows: int
) -> npt.NDArray[np.float32]:
    """Rows that arrived outside the protocol (a plain JSON API), checked as decode_infer checks
    an FP32 [N, n_features] input named ``name``."""
    decl, label = Tensor(name, "FP32", (-1, n_features)), f"input {name!r}"
    _check_shape(list(array.shape), decl, label=label)
    _check_rows(array.shape[0], max_rows, label=label)
    return _convert(array, decl, label=label)


def _values(
    tensor: dict[str, Any],
    binary: bytes,
    offset: int,
    *,
    datatype: str,
    shape: list[int],
    label: str,
) -> tuple[npt.NDArray[Any], int]:
    """The values as sent, shaped; returns (array, binary bytes used).

    JSON floats come back as float64 and JSON integers as int64 or uint64 (checked against the
    sent datatype's range), so the conversion to the declared type sees the values as written.
    """
    count = prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"{label}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise ProtocolError(400, f"{label}: has both 'data' and binary_data_size")
        return _binary(binary, offset, size=size, datatype=datatype, shape=shape, label=label), size
    if "data" not in tensor:
        raise ProtocolError(400, f"{label}: has no 'data' and no binary_data_size")
    data = tensor["data"]
    if datatype in FLOATS:
        array = _json_floats(data, datatype=datatype, label=label)
    elif datatype in _INTEGERS:
        array = _json_integers(data, datatype=datatype, label=label)
    else:
        array = _json_bools(data, label=label)
    if array.size != count:
        raise ProtocolError(
            400, f"{label}: shape {shape} needs {count} values but 'data' has {array.size}"
        )
    array = array.reshape(shape)
    if datatype in _INTEGERS:
        _check_range(array, datatype, label=label)
    elif datatype in FLOATS and (nulls := np.isnan(array)).any():
        # orjson refuses NaN literals, so a NaN here was a null
        flat = int(np.argmax(nulls.ravel()))
        raise ProtocolError(
            400, f"{label}: 'data' has null at {_position(shape, flat)}; send numbers"
        )
    return array, 0


def _binary(
    binary: bytes, offset: int, *, size: object, datatype: str, shape: list[int], label: str
) -> npt.NDArray[Any]:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(400, f"{label}: binary_data_size must be a non-negative integer")
    dtype = DTYPES[datatype].newbyteorder("<")
    count = prod(shape)
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
    if datatype == "BOOL":  # one byte each; anything but 0 or 1 is not a bool
        raw = np.frombuffer(binary, dtype=np.uint8, count=count, offset=offset)
        if (raw > 1).any():
            bad = int(np.argmax(raw > 1))
            raise ProtocolError(
                400, f"{label}: BOOL bytes must be 0 or 1, got {raw[bad]} at flat index {bad}"
            )
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)


def _json_floats(data: object, *, datatype: str, label: str) -> npt.NDArray[Any]:
    try:
        return np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise ProtocolError(
            400, f"{label}: 'data' must be numbers matching datatype {datatype}"
        ) from None


def _json_integers(data: object, *, datatype: str, label: str) -> npt.NDArray[Any]:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(
            400, f"{label}: 'data' must be integers matching datatype {datatype}"
        ) from None
    if array.dtype.kind in "iu":
        return array
    # numpy read a mix as float or object: fractions, nulls, or integers beyond int64.
    items = np.asarray(data, dtype=object).ravel().tolist()
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int):
            got = "null" if v is None else repr(v)[:40]
            raise ProtocolError(
                400, f"{label}: 'data' must be integers for {datatype}; got {got} at flat index {i}"
            )
    for dtype in (np.int64, np.uint64):
        info = np.iinfo(dtype)
        if all(info.min <= v <= info.max for v in items):
            return np.array(items, dtype=dtype)
    # Negative values next to ones beyond int64: some do not fit the sent type.
    info = np.iinfo(DTYPES[datatype].name)
    bad = next(i for i, v in enumerate(items) if not info.min <= v <= info.max)
    raise ProtocolError(
        400,
        f"{label}: value {items[bad]} at flat index {bad} does not fit {datatype}; "
        f"send values in [{info.min}, {info.max}]",
    )


def _json_bools(data: object, *, label: str) -> npt.NDArray[Any]:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        array = np.asarray(None)
    if array.dtype.kind != "b":
        raise ProtocolError(400, f"{label}: 'data' must be true or false for datatype BOOL")
    return array


def _check_range(array: npt.NDArray[Any], datatype: str, *, label: str) -> None:
    """Every integer in ``array`` fits ``datatype``, or a ProtocolError naming the first."""
    if np.can_cast(array.dtype, DTYPES[datatype], "safe"):
        return
    info = np.iinfo(DTYPES[datatype].name)
    bad = (array < info.min) | (array > info.max)
    if bad.any():
        flat = int(np.argmax(bad.ravel()))
        raise ProtocolError(
            400,
            f"{label}: value {array.ravel()[flat]} at {_position(array.shape, flat)} does not "
            f"fit {datatype}; send values in [{info.min}, {info.max}]",
        )


def _position(shape: Sequence[int], flat: int) -> str:
    """Where a flat index falls: ``row 1``, ``row 1, column 2`` or a flat position in the row."""
    if len(shape) <= 1:
        return f"row {flat}"
    row, within = divmod(flat, prod(shape[1:]))
    if len(shape) == 2:
        return f"row {row}, column {within}"
    return f"row {row}, flat position {within} within the row"


def _convert(array: npt.NDArray[Any], decl: Tensor, *, label: str) -> npt.NDArray[Any]:
    """The sent values in the declared dtype: a fresh, C-contiguous, writable array."""
    if decl.datatype in FLOATS:
        finite = np.isfinite(array)
        if not finite.all():
            flat = int(np.argmin(finite.ravel()))
            raise ProtocolError(
                400,
                f"{label}: NaN or infinity at {_position(array.shape, flat)}; send finite numbers",
            )
        with np.errstate(over="ignore"):
            out = array.astype(decl.dtype, order="C")
        if out.dtype.itemsize < array.dtype.itemsize and not (fits := np.isfinite(out)).all():
            flat = int(np.argmin(fits.ravel()))
            raise ProtocolError(
                400,
                f"{label}: value {array.ravel()[flat]} at {_position(array.shape, flat)} is too "
                f"large for {decl.datatype}",
            )
        return out
    if decl.datatype in _INTEGERS:
        _check_range(array, decl.datatype, label=label)
    return array.astype(decl.dtype, order="C")


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
    outputs: Sequence[tuple[Tensor, npt.NDArray[Any]]],
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers that describe it (content type, binary header length).

    Each output goes out in its declared datatype with the array's own shape.
    """
    described: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for tensor, values in outputs:
        array = np.ascontiguousarray(values, dtype=tensor.dtype.newbyteorder("<"))
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(array.shape),
        }
        if binary:
            out["parameters"] = {"binary_data_size": array.nbytes}
            payloads.append(array.tobytes())
        else:
            out["data"] = array.ravel()
        described.append(out)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = described
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return head, {"content-type": JSON_CONTENT_TYPE}
    return head + b"".join(payloads), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(head)),
    }


def decode_outputs(body: bytes, *, header_length: str | None) -> dict[str, npt.NDArray[Any]]:
    """Every output tensor of an infer response (JSON or binary), by name, in its datatype and
    shape. A reply that cannot be read is a 502 ProtocolError."""
    try:
        json_part, binary_part = _split_body(body, header_length)
        tensors = _response_outputs(json_part)
        arrays: dict[str, npt.NDArray[Any]] = {}
        offset = 0
        for i, tensor in enumerate(tensors):
            name = tensor.get("name") if isinstance(tensor, dict) else None
            if not isinstance(name, str) or name in arrays:
                raise ProtocolError(502, f"outputs[{i}] has no name or a repeated one")
            array, used = _read_output(tensor, binary_part, offset, label=f"output {name!r}")
            offset += used
            arrays[name] = array
        return arrays
    except ProtocolError as exc:
        raise ProtocolError(502, exc.message) from None


def decode_output(body: bytes, *, header_length: str | None) -> npt.NDArray[np.float32]:
    """The first output tensor of an infer response (JSON or binary) as float32, flattened."""
    try:
        json_part, binary_part = _split_body(body, header_length)
        tensor = _response_outputs(json_part)[0]
        if not isinstance(tensor, dict):
            raise ProtocolError(502, "outputs[0] must be an object")
        array, _ = _read_output(tensor, binary_part, 0, label="output")
    except ProtocolError as exc:
        raise ProtocolError(502, exc.message) from None
    return np.asarray(array, dtype=np.float32).ravel()


def _response_outputs(json_part: bytes) -> list[Any]:
    doc = _load_json(json_part, "response body")
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError(502, "response has no outputs")
    return outputs


def _read_output(
    tensor: dict[str, Any], binary: bytes, offset: int, *, label: str
) -> tuple[npt.NDArray[Any], int]:
    datatype, shape = _header(tensor, label)
    array, used = _values(tensor, binary, offset, datatype=datatype, shape=shape, label=label)
    with np.errstate(over="ignore"):  # a JSON float beyond FP16/FP32 reads as infinity
        return array.astype(DTYPES[datatype], copy=False), used


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
