"""A user's model served for real: examples/digits trained into the store and run with
`bentoml serve service:Digits`, answering the Open Inference Protocol v2 as sdk/CONTRACT.md
promises — to tritonclient over JSON and binary tensors, with strict 4xx errors, the version in
every reply and the prediction drift gauge once enough rows have been seen."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.support import digits

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    base: str
    version: str
    #: GET /metrics before any inference.
    metrics_at_start: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    tag = digits.train()
    with digits.sdk_server(tag) as base:
        yield Served(base, tag.partition(":")[2], httpx.get(f"{base}/metrics").text)


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base, timeout=30) as c:
        yield c


def sample(value: str, metric: str) -> float | None:
    """The value of the (one) labelled series ``metric{...}`` in Prometheus text, if any."""
    found = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", value, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_metadata_and_readiness_come_from_the_declarations(client, served) -> None:
    expected = {
        "name": "digits",
        "versions": [served.version],
        "platform": "turnout-sdk",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {"task": {"type": "MultiClass"}},
    }
    for path in ("/v2/models/digits", f"/v2/models/digits/versions/{served.version}"):
        resp = client.get(path)
        assert resp.status_code == 200
        assert resp.json() == expected
        assert resp.headers["x-turnout-model-version"] == served.version
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_gets_class_probabilities(served, binary: bool) -> None:
    import tritonclient.http as triton

    images, labels = digits.images()
    x, y = images[:200], labels[:200]
    client = triton.InferenceServerClient(served.base.removeprefix("http://"))
    try:
        image = triton.InferInput("image", list(x.shape), "FP32")
        image.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("digits", [image], outputs=[wanted])
        pinned = client.infer("digits", [image], model_version=served.version, outputs=[wanted])
        metadata = client.get_model_metadata("digits")
    finally:
        client.close()
    p = result.as_numpy("probabilities")
    assert p.dtype == np.float32 and p.shape == (200, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(p.argmax(axis=1) == y) >= 0.9
    np.testing.assert_array_equal(pinned.as_numpy("probabilities"), p)
    reply = result.get_response()
    assert reply["model_version"] == served.version
    assert ("data" in reply["outputs"][0]) is not binary  # binary data follows the JSON header
    assert metadata["inputs"][0]["shape"] == [-1, 1, 8, 8]


def test_json_and_binary_answers_agree(client) -> None:
    import tritonclient.http as triton

    x = digits.images()[0][:16]
    by_json = client.post("/v2/models/digits/infer", json=digits.v2_body(x))
    out = by_json.json()["outputs"][0]
    assert out["shape"] == [16, 10] and out["datatype"] == "FP32"
    image = triton.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x, binary_data=True)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([image], [wanted])
    by_binary = client.post(
        "/v2/models/digits/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert by_binary.status_code == 200
    result = triton.InferenceServerClient.parse_response_body(
        by_binary.content, header_length=int(by_binary.headers["Inference-Header-Content-Length"])
    )
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"),
        np.asarray(out["data"], dtype=np.float32).reshape(16, 10),
    )


def test_requests_that_do_not_match_the_declaration_get_400(client, served) -> None:
    x = digits.images()[0][:2]
    flat = client.post("/v2/models/digits/infer", json=digits.v2_body(x.reshape(2, 64)))
    assert flat.status_code == 400
    assert flat.json()["error"] == "input 'image': shape must be [N, 1, 8, 8], got [2, 64]"
    assert flat.headers["x-turnout-model-version"] == served.version

    values = ",".join(["0"] * 63)
    nan = client.post(
        "/v2/models/digits/infer",
        content=(
            '{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], '
            f'"data": [NaN,{values}]}}]}}'
        ),
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400
    assert nan.json()["error"].startswith("NaN is not valid JSON; send numbers (JSON has no NaN)")

    renamed = client.post("/v2/models/digits/infer", json=digits.v2_body(x, name="pixels"))
    assert renamed.status_code == 400
    assert "this model takes 'image' FP32 [N, 1, 8, 8]" in renamed.json()["error"]


def test_another_model_or_version_gets_404(client, served) -> None:
    body = digits.v2_body(digits.images()[0][:1])
    other = client.post("/v2/models/fraud/infer", json=body)
    assert other.status_code == 404
    assert other.json() == {"error": "model 'fraud' not found; this server serves 'digits'"}
    old = client.post("/v2/models/digits/versions/v0/infer", json=body)
    assert old.status_code == 404
    assert f"this server serves version {served.version!r}" in old.json()["error"]
    assert client.get("/v2/models/fraud").status_code == 404


def test_prediction_psi_is_exported_once_rows_arrive(client, served) -> None:
    # No rows yet: no PSI at all ("no data"), never a reassuring zero.
    assert sample(served.metrics_at_start, "turnout_model_prediction_psi") is None
    images, _ = digits.images()
    before = sample(client.get("/metrics").text, "turnout_model_drift_window_rows") or 0
    sent = 0
    for start in range(0, 400, 20):
        resp = client.post(
            "/v2/models/digits/infer", json=digits.v2_body(images[start : start + 20])
        )
        assert resp.status_code == 200
        sent += 20
    deadline = time.monotonic() + 10
    while True:  # the monitor folds new rows into its window every half second
        metrics = client.get("/metrics").text
        rows = sample(metrics, "turnout_model_drift_window_rows")
        if (rows is not None and rows >= before + sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows is not None and rows >= before + sent
    psi = sample(metrics, "turnout_model_prediction_psi")
    assert psi is not None
    assert 0 <= psi < 0.1  # the same digits the reference came from: no drift
    assert f'version="{served.version}"' in metrics
    assert (sample(metrics, "turnout_model_prediction_score_count") or 0) >= sent
