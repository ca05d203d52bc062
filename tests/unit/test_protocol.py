"""Open Inference Protocol codec: declared tensors in JSON and binary, clear 4xx reasons out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from turnout_sdk import protocol as oip
from turnout_sdk.tensors import DTYPES, Tensor

FEATURES = Tensor("features", "FP32", (-1, 3))
IMAGE = Tensor("image", "FP32", (-1, 1, 8, 8))
IDS = Tensor("ids", "INT64", (-1, 2))
MASK = Tensor("mask", "BOOL", (-1,))


def decode(
    doc: object,
    *,
    binary: bytes = b"",
    inputs: Sequence[Tensor] = (FEATURES,),
    max_rows: int = 10,
) -> oip.InferRequest:
    head = orjson.dumps(doc)
    return oip.decode_infer(
        head + binary,
        header_length=str(len(head)) if binary else None,
        inputs=inputs,
        max_rows=max_rows,
    )


def entry(name: str, data: object, shape: object, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def tensor(data: object, shape: object, datatype: str = "FP32", **extra: object) -> dict:
    return {"inputs": [{**entry("features", data, shape, datatype), **extra}]}


def binary_entry(name: str, array: np.ndarray, datatype: str) -> tuple[dict[str, Any], bytes]:
    payload = array.astype(DTYPES[datatype].newbyteorder("<")).tobytes()
    head = {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(payload)},
    }
    return head, payload


def rejection(doc: object, **kwargs: Any) -> oip.ProtocolError:
    with pytest.raises(oip.ProtocolError) as err:
        decode(doc, **kwargs)
    return err.value


# --- what a model receives --------------------------------------------------------------------


def test_json_flat_and_nested_data_decode_to_the_same_rows() -> None:
    flat = decode(tensor([1, 2, 3, 4, 5, 6], [2, 3]))
    nested = decode(tensor([[1, 2, 3], [4, 5, 6]], [2, 3]))
    a = flat.inputs["features"]
    assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.tolist() == nested.inputs["features"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert flat.rows == 2 and not flat.binary_output


@pytest.mark.parametrize("datatype", ["FP16", "FP64"])
def test_other_float_types_are_converted_to_the_declared_one(datatype: str) -> None:
    req = decode(tensor([1.5, 2, 3], [1, 3], datatype))
    assert req.inputs["features"].dtype == np.float32
    assert req.inputs["features"].tolist() == [[1.5, 2, 3]]


def test_several_inputs_of_different_types_arrive_by_name_in_declared_order() -> None:
    doc = {
        "inputs": [
            entry("mask", [True, False], [2], "BOOL"),
            entry("ids", [1, 2, 3, 4], [2, 2], "INT32"),
            entry("features", [[0.5, 1, 2], [3, 4, 5]], [2, 3]),
        ]
    }
    req = decode(doc, inputs=[FEATURES, IDS, MASK])
    assert list(req.inputs) == ["features", "ids", "mask"]
    assert req.inputs["ids"].dtype == np.int64 and req.inputs["ids"].tolist() == [[1, 2], [3, 4]]
    assert req.inputs["mask"].dtype == np.bool_ and req.inputs["mask"].tolist() == [True, False]
    assert req.rows == 2


def test_image_input_keeps_its_four_dimensions() -> None:
    images = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    req = decode(
        {"inputs": [entry("image", images.ravel().tolist(), [2, 1, 8, 8])]}, inputs=[IMAGE]
    )
    assert req.inputs["image"].shape == (2, 1, 8, 8)
    assert np.array_equal(req.inputs["image"], images)


def test_unsigned_integers_beyond_int64_decode_exactly() -> None:
    big = Tensor("big", "UINT64", (-1,))
    req = decode({"inputs": [entry("big", [1, 2**64 - 1], [2], "UINT64")]}, inputs=[big])
    assert req.inputs["big"].dtype == np.uint64
    assert req.inputs["big"].tolist() == [1, 2**64 - 1]


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_binary_round_trip_of_every_datatype(datatype: str) -> None:
    declared = Tensor("x", datatype, (-1, 3))
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        array = rng.integers(0, 2, size=(2, 3)).astype(np.bool_)
    elif datatype.startswith(("INT", "UINT")):
        info = np.iinfo(DTYPES[datatype])
        array = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=DTYPES[datatype])
    else:
        array = rng.normal(size=(2, 3)).astype(DTYPES[datatype])
    head, payload = binary_entry("x", array, datatype)
    req = decode({"inputs": [head]}, binary=payload, inputs=[declared])
    assert req.inputs["x"].dtype == DTYPES[datatype]
    assert req.inputs["x"].flags.writeable  # torch.from_numpy warns on read-only arrays
    assert np.array_equal(req.inputs["x"], array)

    body, headers = oip.encode_infer(
        model_name="m",
        model_version="v1",
        request_id=None,
        outputs=[(declared, req.inputs["x"])],
        binary=True,
    )
    assert headers["content-type"] == oip.BINARY_CONTENT_TYPE
    n = headers[oip.HEADER_LENGTH]
    assert len(body) - int(n) == array.size * DTYPES[datatype].itemsize  # BOOL: 1 byte each
    out = oip.decode_outputs(body, header_length=n)["x"]
    assert out.dtype == DTYPES[datatype] and np.array_equal(out, array)


def test_binary_inputs_follow_each_other_in_the_payload() -> None:
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, 2], [3, 4]], dtype=np.int16)
    head_f, bytes_f = binary_entry("features", features, "FP32")
    head_i, bytes_i = binary_entry("ids", ids, "INT16")
    doc = {
        "id": "r1",
        "inputs": [head_i, head_f],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
    }
    req = decode(doc, binary=bytes_i + bytes_f, inputs=[FEATURES, IDS])
    assert req.id == "r1" and req.binary_output
    assert req.inputs["features"].tolist() == features.tolist()
    assert req.inputs["ids"].dtype == np.int64 and req.inputs["ids"].tolist() == ids.tolist()


def test_binary_output_asked_for_the_whole_response() -> None:
    doc = {**tensor([1, 2, 3], [1, 3]), "parameters": {"binary_data_output": True}}
    assert decode(doc).binary_output


# --- what a model sends back ------------------------------------------------------------------


def test_json_response_names_model_version_and_echoes_id() -> None:
    body, headers = oip.encode_infer(
        model_name="fraud",
        model_version="v7",
        request_id="abc",
        outputs=[(Tensor("probability", "FP32", (-1,)), np.array([0.5], dtype=np.float32))],
        binary=False,
    )
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "fraud",
        "model_version": "v7",
        "id": "abc",
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [1], "data": [0.5]}],
    }


MULTI = [
    (Tensor("probabilities", "FP32", (-1, 3)), np.array([[0.2, 0.3, 0.5], [1, 0, 0]])),
    (Tensor("label", "INT64", (-1,)), np.array([2, 0])),
    (Tensor("flagged", "BOOL", (-1,)), np.array([False, True])),
]


@pytest.mark.parametrize("binary", [False, True])
def test_several_outputs_go_out_in_their_datatypes_and_come_back_shaped(binary: bool) -> None:
    body, headers = oip.encode_infer(
        model_name="m", model_version="v1", request_id=None, outputs=MULTI, binary=binary
    )
    n = headers.get(oip.HEADER_LENGTH)
    head = orjson.loads(body[: int(n)] if n else body)
    assert [(o["name"], o["datatype"], o["shape"]) for o in head["outputs"]] == [
        ("probabilities", "FP32", [2, 3]),
        ("label", "INT64", [2]),
        ("flagged", "BOOL", [2]),
    ]
    outputs = oip.decode_outputs(body, header_length=n)
    assert list(outputs) == ["probabilities", "label", "flagged"]
    assert outputs["probabilities"].dtype == np.float32
    assert np.allclose(outputs["probabilities"], MULTI[0][1])
    assert outputs["label"].dtype == np.int64 and outputs["label"].tolist() == [2, 0]
    assert outputs["flagged"].tolist() == [False, True]
    # The first output, flat float32, as the router has always read it.
    first = oip.decode_output(body, header_length=n)
    assert first.dtype == np.float32 and first.shape == (6,)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{nope", None, "not valid JSON"),
        (b"{}", None, "no outputs"),
        (b'{"outputs": [{"name": "y", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', None,
         "BYTES"),
        (b'{"outputs": [{"name": "y", "shape": [1], "datatype": "FP32"}]}', None, "no 'data'"),
        (b"{}", "99", "only 2 bytes"),
    ],
)  # fmt: skip
def test_unreadable_replies_are_502(body: bytes, header_length: str | None, message: str) -> None:
    for decode_reply in (oip.decode_outputs, oip.decode_output):
        with pytest.raises(oip.ProtocolError, match=message) as err:
            decode_reply(body, header_length=header_length)
        assert err.value.status == 502


# --- what a caller hears when a request is wrong ----------------------------------------------


@pytest.mark.parametrize(
    ("doc", "status", "message"),
    [
        ([1, 2], 400, "JSON object"),
        ({}, 400, "this model takes 'features' FP32 [N, 3]"),
        (tensor([1, 2, 3], [1, 3], "BYTES"), 400, "datatype BYTES (strings) is not accepted"),
        (tensor([1, 2, 3], [1, 3], "COMPLEX"), 400, "not a v2 numeric datatype"),
        (tensor([1, 2, 3], [1, 3], "INT64"), 400, "send FP32 (FP16, FP32 and FP64"),
        (tensor([1, 2, 3], [1, 4]), 400, "shape must be [N, 3], got [1, 4]"),
        (tensor([1, 2, 3], [3]), 400, "shape must be [N, 3], got [3]"),
        (tensor([1, 2], [1, 3]), 400, "needs 3 values but 'data' has 2"),
        (tensor(["a", "b", "c"], [1, 3]), 400, "must be numbers"),
        (tensor([[1, 2, 3], [4, None, 6]], [2, 3]), 400, "'data' has null at row 1, column 1"),
        (tensor([], [0, 3]), 400, "has no rows"),
        (tensor([1, 2, 3], "1x3"), 400, "'shape' must be a list"),
        (tensor([1, 2, 3] * 11, [11, 3]), 413, "11 rows is more than the limit of 10"),
        (
            {"inputs": [entry("other", [1, 2, 3], [1, 3])]},
            400,
            "unknown input 'other': this model takes 'features' FP32 [N, 3]",
        ),
        ({"inputs": [{"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "'name'"),
        (
            {"inputs": [{"name": "features", "shape": [1, 3], "data": [1, 2, 3]}]},
            400,
            "'datatype' is missing",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32"}]},
            400,
            "has no 'data'",
        ),
        (
            {"inputs": [entry("features", [1, 2, 3], [1, 3])] * 2},
            400,
            "input 'features' is sent twice",
        ),
        ({"id": 5, **tensor([1, 2, 3], [1, 3])}, 400, "'id' must be a string"),
    ],
)
def test_bad_requests_are_rejected_with_a_reason(doc: object, status: int, message: str) -> None:
    err = rejection(doc)
    assert err.status == status
    assert message in err.message


def test_image_of_the_wrong_shape_names_the_declared_shape() -> None:
    flat = {"inputs": [entry("image", [0.0] * 64, [1, 64])]}
    err = rejection(flat, inputs=[IMAGE])
    assert err.message == "input 'image': shape must be [N, 1, 8, 8], got [1, 64]"


def test_every_declared_input_is_required() -> None:
    err = rejection(tensor([1, 2, 3], [1, 3]), inputs=[FEATURES, IDS])
    assert "missing input 'ids'" in err.message
    assert "'features' FP32 [N, 3], 'ids' INT64 [N, 2]" in err.message


def test_inputs_must_agree_on_rows() -> None:
    doc = {
        "inputs": [entry("features", [1, 2, 3], [1, 3]), entry("ids", [1, 2] * 2, [2, 2], "INT64")]
    }
    err = rejection(doc, inputs=[FEATURES, IDS])
    assert err.message == (
        "input 'ids' has 2 rows but input 'features' has 1; every input needs the same number "
        "of rows"
    )


@pytest.mark.parametrize(
    ("entry_", "message"),
    [
        (entry("ids", [1, 2.5], [1, 2], "INT64"), "must be integers for INT64; got 2.5"),
        (entry("ids", [1, None], [1, 2], "INT32"), "got null at flat index 1"),
        (
            entry("ids", [1, 300], [1, 2], "UINT8"),
            "value 300 at row 0, column 1 does not fit UINT8",
        ),
        (
            entry("ids", [-1, 2**64 - 1], [1, 2], "UINT64"),
            "value -1 at flat index 0 does not fit UINT64",
        ),
        (entry("ids", [1, 2**63], [1, 2], "INT64"), "does not fit INT64"),
        (entry("ids", [1, 2], [1, 2], "FP32"), "send INT64 (any integer type is converted"),
        (entry("ids", [True, False], [1, 2], "BOOL"), "send INT64"),
    ],
)
def test_integer_inputs_must_be_integers_that_fit(entry_: dict, message: str) -> None:
    assert message in rejection({"inputs": [entry_]}, inputs=[IDS]).message


def test_integers_are_range_checked_against_the_declared_type() -> None:
    small = Tensor("ids", "INT8", (-1, 2))
    ok = decode({"inputs": [entry("ids", [-128, 127], [1, 2], "INT64")]}, inputs=[small])
    assert ok.inputs["ids"].dtype == np.int8 and ok.inputs["ids"].tolist() == [[-128, 127]]
    head, payload = binary_entry("ids", np.array([[5, 1000]]), "INT32")
    err = rejection({"inputs": [head]}, binary=payload, inputs=[small])
    assert err.message == (
        "input 'ids': value 1000 at row 0, column 1 does not fit INT8; send values in [-128, 127]"
    )


@pytest.mark.parametrize(
    ("entry_", "message"),
    [
        (entry("mask", [1, 0], [2], "BOOL"), "must be true or false"),
        (entry("mask", [True, False], [2], "UINT8"), "datatype UINT8 is not accepted; send BOOL"),
    ],
)
def test_bool_inputs_are_true_or_false(entry_: dict, message: str) -> None:
    assert message in rejection({"inputs": [entry_]}, inputs=[MASK]).message


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    doc = {
        "inputs": [
            {
                "name": "mask",
                "shape": [2],
                "datatype": "BOOL",
                "parameters": {"binary_data_size": 2},
            }
        ]
    }
    err = rejection(doc, binary=b"\x01\x02", inputs=[MASK])
    assert "BOOL bytes must be 0 or 1, got 2 at flat index 1" in err.message


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        (b"NaN", "NaN is not valid JSON; send numbers (JSON has no NaN)"),
        (b"Infinity", "Infinity is not valid JSON"),
        (b"-Infinity", "Infinity is not valid JSON"),
    ],
)
def test_nan_literal_in_json_says_json_has_no_nan(literal: bytes, message: str) -> None:
    # What Python's json.dumps writes for float("nan"): orjson (rightly) refuses it.
    body = b'{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, '
    body += literal + b", 3]}]}"
    with pytest.raises(oip.ProtocolError) as err:
        oip.decode_infer(body, header_length=None, inputs=[FEATURES], max_rows=1)
    assert err.value.status == 400
    assert message in err.value.message and "line 1, column" in err.value.message


@pytest.mark.parametrize(
    ("declared", "array", "message"),
    [
        (FEATURES, np.array([[1, 2, 3], [4, np.inf, 6]]), "NaN or infinity at row 1, column 1"),
        (
            IMAGE,
            np.where(np.arange(128).reshape(2, 1, 8, 8) == 64 + 13, np.nan, 0),
            "NaN or infinity at row 1, flat position 13 within the row",
        ),
        (Tensor("y", "FP32", (-1,)), np.array([0, np.nan]), "NaN or infinity at row 1"),
        (
            FEATURES,
            np.array([[1, 2, 1e300]]),
            "value 1e+300 at row 0, column 2 is too large for FP32",
        ),
    ],
)
def test_non_finite_floats_are_rejected_with_their_position(
    declared: Tensor, array: np.ndarray, message: str
) -> None:
    # JSON has no NaN literal, so non-finite values arrive through the binary extension.
    head, payload = binary_entry(declared.name, array, "FP64")
    err = rejection({"inputs": [head]}, binary=payload, inputs=[declared])
    assert err.status == 400
    assert err.message.startswith(f"input {declared.name!r}: {message}")


def test_row_limit_is_checked_before_the_data_is_read() -> None:
    doc = {"inputs": [{"name": "image", "shape": [11, 1, 8, 8], "datatype": "FP32", "data": []}]}
    err = rejection(doc, inputs=[IMAGE])
    assert err.status == 413
    assert err.message == "input 'image': 11 rows is more than the limit of 10; send fewer rows"


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        ("abc", b"{}", "must be an integer"),
        ("99", b"{}", "only 2 bytes"),
    ],
)
def test_bad_binary_header_length(header: str, body: bytes, message: str) -> None:
    with pytest.raises(oip.ProtocolError, match=message):
        oip.decode_infer(body, header_length=header, inputs=[FEATURES], max_rows=10)


def test_binary_size_must_match_shape_and_payload() -> None:
    doc = tensor(None, [1, 3])
    del doc["inputs"][0]["data"]
    doc["inputs"][0]["parameters"] = {"binary_data_size": 8}
    with pytest.raises(oip.ProtocolError, match="does not match shape"):
        decode(doc, binary=b"\0" * 8)
    doc["inputs"][0]["parameters"] = {"binary_data_size": 12}
    with pytest.raises(oip.ProtocolError, match="too short"):
        decode(doc, binary=b"\0" * 4)
    with pytest.raises(oip.ProtocolError, match="not claimed"):
        decode(doc, binary=b"\0" * 16)


def test_malformed_json_is_a_400_naming_json() -> None:
    with pytest.raises(oip.ProtocolError, match="not valid JSON") as err:
        oip.decode_infer(b"{nope", header_length=None, inputs=[FEATURES], max_rows=1)
    assert err.value.status == 400


# --- what the router reads without knowing the model ------------------------------------------


@pytest.mark.parametrize(
    ("body", "header_length", "rows"),
    [
        (orjson.dumps(tensor([1, 2, 3] * 4, [4, 3])), None, 4),
        (b"{nope", None, None),
        (b"{}", None, None),
        (b"{}", "x", None),
    ],
)
def test_rows_of_reads_the_first_input_or_nothing(
    body: bytes, header_length: str | None, rows: int | None
) -> None:
    assert oip.rows_of(body, header_length=header_length) == rows


def test_error_body_is_a_json_object() -> None:
    assert orjson.loads(oip.error_body("nope")) == {"error": "nope"}


# --- rows from outside the protocol (the fraud model's plain JSON /predict) -------------------


@pytest.mark.parametrize(
    ("array", "status", "message"),
    [
        (np.zeros((1, 4)), 400, "input 'features': shape must be [N, 3], got [1, 4]"),
        (np.zeros((0, 3)), 400, "input 'features': has no rows"),
        (np.zeros((11, 3)), 413, "11 rows is more than the limit of 10"),
        (np.array([[1, np.nan, 3]]), 400, "NaN or infinity at row 0, column 1"),
    ],
)
def test_check_features_holds_plain_rows_to_the_same_rules(
    array: np.ndarray, status: int, message: str
) -> None:
    with pytest.raises(oip.ProtocolError) as err:
        oip.check_features(array, "features", 3, 10)
    assert err.value.status == status and message in err.value.message


def test_check_features_converts_to_float32() -> None:
    checked = oip.check_features(np.array([[1, 2, 3]], dtype=np.float64), "features", 3, 10)
    assert checked.dtype == np.float32 and checked.tolist() == [[1, 2, 3]]
