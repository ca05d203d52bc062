"""Open Inference Protocol decoding: JSON and binary tensors in, clear 4xx reasons out."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from turnout.core import inference_protocol as oip

F = 3


def decode(doc: object, *, binary: bytes = b"", max_rows: int = 10) -> oip.InferRequest:
    head = orjson.dumps(doc)
    return oip.decode_infer(
        head + binary,
        header_length=str(len(head)) if binary else None,
        input_name="features",
        n_features=F,
        max_rows=max_rows,
    )


def tensor(data: object, shape: list[int], datatype: str = "FP32", **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "features", "shape": shape, "datatype": datatype, "data": data, **extra}
        ]
    }


def test_json_flat_and_nested_data_decode_to_the_same_rows() -> None:
    flat = decode(tensor([1, 2, 3, 4, 5, 6], [2, 3]))
    nested = decode(tensor([[1, 2, 3], [4, 5, 6]], [2, 3]))
    assert flat.features.dtype == np.float32
    assert flat.features.tolist() == nested.features.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert not flat.binary_output


def test_binary_tensor_extension_round_trip() -> None:
    rows = np.arange(6, dtype="<f4").reshape(2, 3)
    doc = {
        "id": "r1",
        "inputs": [
            {
                "name": "features",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": rows.nbytes},
            }
        ],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
    }
    req = decode(doc, binary=rows.tobytes())
    assert req.id == "r1" and req.binary_output
    assert req.features.tolist() == rows.tolist()

    body, headers = oip.encode_infer(
        model_name="m",
        model_version="v1",
        request_id=req.id,
        output_name="probability",
        values=np.array([0.25, 0.5], dtype=np.float32),
        binary=True,
    )
    n = int(headers["inference-header-content-length"])
    head = orjson.loads(body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(body[n:], dtype="<f4").tolist() == [0.25, 0.5]


def test_json_response_names_model_version_and_echoes_id() -> None:
    body, headers = oip.encode_infer(
        model_name="fraud",
        model_version="v7",
        request_id="abc",
        output_name="probability",
        values=np.array([0.5], dtype=np.float32),
        binary=False,
    )
    doc = orjson.loads(body)
    assert headers["content-type"] == "application/json"
    assert doc == {
        "model_name": "fraud",
        "model_version": "v7",
        "id": "abc",
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [1], "data": [0.5]}],
    }


def test_fp64_is_accepted_and_converted() -> None:
    assert decode(tensor([1.5, 2, 3], [1, 3], "FP64")).features.dtype == np.float32


@pytest.mark.parametrize(
    ("doc", "status", "message"),
    [
        ([1, 2], 400, "JSON object"),
        ({}, 400, "'inputs'"),
        (tensor([1, 2, 3], [1, 3], "BYTES"), 400, "datatype BYTES"),
        (tensor([1, 2, 3], [1, 3], "INT64"), 400, "send FP32"),
        (tensor([1, 2, 3], [1, 4]), 400, "needs 4 values but 'data' has 3"),
        (tensor([1, 2, 3, 4], [1, 4]), 400, "shape must be [N, 3], got [1, 4]"),
        (tensor([1, 2, 3], [3]), 400, "shape must be [N, 3], got [3]"),
        (tensor(["a", "b", "c"], [1, 3]), 400, "must be numbers"),
        (tensor([1, None, 3], [1, 3]), 400, "'data' has null at flat index 1"),
        (tensor([], [0, 3]), 400, "has no rows"),
        (tensor([1, 2, 3], "1x3"), 400, "'shape' must be a list"),
        (tensor([1, 2, 3] * 11, [11, 3]), 413, "11 rows is more than the limit of 10"),
        (
            {"inputs": [{"name": "other", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            400,
            "unknown input 'other'",
        ),
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
        ({"id": 5, **tensor([1, 2, 3], [1, 3])}, 400, "'id' must be a string"),
    ],
)
def test_bad_requests_are_rejected_with_a_reason(doc: object, status: int, message: str) -> None:
    with pytest.raises(oip.ProtocolError) as err:
        decode(doc)
    assert err.value.status == status
    assert message in err.value.message


def test_nan_and_infinity_are_rejected_with_their_position() -> None:
    # JSON has no NaN literal, so non-finite values arrive through the binary extension.
    rows = np.array([[1, 2, 3], [4, np.inf, 6]], dtype="<f4")
    doc = tensor(None, [2, 3])
    del doc["inputs"][0]["data"]
    doc["inputs"][0]["parameters"] = {"binary_data_size": rows.nbytes}
    with pytest.raises(oip.ProtocolError, match=r"NaN or infinity at row 1, column 1"):
        decode(doc, binary=rows.tobytes())


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        ("abc", b"{}", "must be an integer"),
        ("99", b"{}", "only 2 bytes"),
    ],
)
def test_bad_binary_header_length(header: str, body: bytes, message: str) -> None:
    with pytest.raises(oip.ProtocolError, match=message):
        oip.decode_infer(
            body, header_length=header, input_name="features", n_features=F, max_rows=10
        )


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
        oip.decode_infer(
            b"{nope", header_length=None, input_name="features", n_features=F, max_rows=1
        )
    assert err.value.status == 400
