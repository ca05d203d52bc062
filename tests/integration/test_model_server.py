"""The model server as a client sees it: a real `turnout serve` (bentoml serve) process."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import numpy as np
import pytest

from tests.servers import model_server
from training import store
from training.data import Drift, features_matrix, generate
from training.model import predict_proba

pytestmark = pytest.mark.slow
F = 14


@pytest.fixture(scope="module")
def server(trained):
    _, tag = trained
    with model_server(tag, env={"TURNOUT_DRIFT_WINDOW": "1000", "TURNOUT_MAX_ROWS": "512"}) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def rows():
    return features_matrix(generate(64, seed=21))


@pytest.fixture(scope="module")
def expected(trained, rows):
    return predict_proba(store.load(trained[1]).net, rows)


def infer_body(x: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": "features",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


# --- protocol surface ---------------------------------------------------------------------


def test_server_metadata_and_health(client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "turnout" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/fraud", "/v2/models/fraud/versions/v1"])
def test_model_metadata_names_tensors(client, path: str) -> None:
    resp = client.get(path)
    meta = resp.json()
    assert resp.headers["x-turnout-model-version"] == "v1"
    assert meta["name"] == "fraud" and meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, F]}]
    assert meta["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1]}]
    assert meta["parameters"]["feature_names"][0] == "amount"
    assert client.get(path + "/ready").json() == {"name": "fraud", "ready": True}


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v2/models/nope", "model 'nope' not found; this server serves 'fraud'"),
        ("GET", "/v2/models/nope/ready", "model 'nope' not found"),
        ("GET", "/v2/models/fraud/versions/v9", "version 'v9' of model 'fraud' not found"),
        ("GET", "/v2/models/fraud/versions/v9/ready", "version 'v9'"),
        ("POST", "/v2/models/nope/infer", "model 'nope' not found"),
        ("POST", "/v2/models/fraud/versions/v9/infer", "version 'v9'"),
    ],
)
def test_unknown_model_or_version_is_404(client, method: str, path: str, message: str) -> None:
    resp = client.request(method, path, json=infer_body(np.zeros((1, F), np.float32)))
    assert resp.status_code == 404
    assert message in resp.json()["error"]


# --- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/fraud/infer", "/v2/models/fraud/versions/v1/infer"])
@pytest.mark.parametrize("n", [1, 64])
def test_v2_json_infer_matches_the_model(client, rows, expected, path: str, n: int) -> None:
    resp = client.post(path, json=infer_body(rows[:n], id="req-1"))
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert resp.headers["x-turnout-model-version"] == "v1"
    assert doc["model_name"] == "fraud" and doc["model_version"] == "v1" and doc["id"] == "req-1"
    out = doc["outputs"][0]
    assert out["name"] == "probability" and out["datatype"] == "FP32" and out["shape"] == [n]
    np.testing.assert_allclose(out["data"], expected[:n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_binary_and_json(server, rows, expected, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready("fraud")
        inp = triton.InferInput("features", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=binary)
        out = triton.InferRequestedOutput("probability", binary_data=binary)
        result = client.infer("fraud", [inp], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-5, atol=1e-7)
        # Default tritonclient call: binary input, no outputs named (binary response).
        inp = triton.InferInput("features", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        np.testing.assert_allclose(
            client.infer("fraud", [inp]).as_numpy("probability"), expected, rtol=1e-5, atol=1e-7
        )
    finally:
        client.close()


def test_kserve_rest_client(server, rows, expected) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        try:
            inp = InferInput("features", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=False)
            request = InferRequest(model_name="fraud", infer_inputs=[inp])
            response = await client.infer(server, request, model_name="fraud")
            return response.outputs[0].as_numpy()
        finally:
            await client.close()

    np.testing.assert_allclose(asyncio.run(call()), expected, rtol=1e-5, atol=1e-7)


def test_predict_endpoint(client, rows, expected) -> None:
    resp = client.post("/predict", json={"features": rows[:5].tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-turnout-model-version"] == "v1"
    doc = resp.json()
    assert doc["model_version"] == "v1"
    np.testing.assert_allclose(doc["probability"], expected[:5], rtol=1e-5, atol=1e-7)


def test_concurrent_callers_each_get_their_own_answer(server, rows, expected) -> None:
    """64 single-row clients at once: batching must never mix up whose row is whose."""

    async def burst():
        async with httpx.AsyncClient(base_url=server, timeout=10) as c:
            calls = [
                c.post("/v2/models/fraud/infer", json=infer_body(rows[i : i + 1], id=str(i)))
                for i in range(len(rows))
            ]
            return await asyncio.gather(*calls)

    for resp in asyncio.run(burst()):
        doc = resp.json()
        i = int(doc["id"])
        assert doc["outputs"][0]["data"][0] == pytest.approx(float(expected[i]), rel=1e-5, abs=1e-7)


# --- bad input ----------------------------------------------------------------------------


def _v2(shape, data, datatype="FP32"):
    return {"inputs": [{"name": "features", "shape": shape, "datatype": datatype, "data": data}]}


ROW = [50.0, 12, 40, 400, 3, 2, 45, 1.1, 0.2, 0.8, 0, 1, 0, 1]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (_v2([1, 13], ROW[:13]), 400, "shape must be [N, 14], got [1, 13]"),
        (_v2([2, 14], ROW), 400, "shape [2, 14] needs 28 values but 'data' has 14"),
        (_v2([1, 14], ROW, "BYTES"), 400, "datatype BYTES"),
        (_v2([1, 14], ROW, "INT32"), 400, "datatype INT32"),
        (_v2([1, 14], [*ROW[:3], None, *ROW[4:]]), 400, "'data' has null"),
        (_v2([600, 14], ROW * 600), 413, "600 rows is more than the limit of 512"),
        ({"inputs": []}, 400, "non-empty 'inputs'"),
        ({"inputs": [{"name": "features", "shape": [1, 14]}]}, 400, "'datatype' is missing"),
        (
            {"inputs": [{"name": "features", "shape": [1, 14], "datatype": "FP32"}]},
            400,
            "no 'data'",
        ),
        (
            _v2([1, 14], [*ROW[:11], 9, 0, 1]),
            400,
            "feature 'merchant_category' (column 11) at row 0 is 9",
        ),
        (_v2([1, 14], [*ROW[:12], 0.5, 1]), 400, "feature 'channel' (column 12) at row 0 is 0.5"),
    ],
)
def test_bad_v2_requests_get_4xx_naming_the_problem(client, body, status, message) -> None:
    resp = client.post("/v2/models/fraud/infer", json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


def test_non_json_and_wrong_header_length(client) -> None:
    resp = client.post("/v2/models/fraud/infer", content=b"features=1,2,3")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    resp = client.post(
        "/v2/models/fraud/infer", content=b"{}", headers={"Inference-Header-Content-Length": "500"}
    )
    assert resp.status_code == 400 and "only 2 bytes" in resp.json()["error"]


def test_nan_in_binary_tensor_is_rejected(client) -> None:
    x = np.array([ROW], dtype="<f4")
    x[0, 4] = np.nan
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 14],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    resp = client.post(
        "/v2/models/fraud/infer",
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert resp.status_code == 400
    assert "NaN or infinity at row 0, column 4" in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"features": [ROW[:5]]}, "shape must be [N, 14], got [1, 5]"),
        ({"features": [[*ROW[:13], 7]]}, "feature 'card_present' (column 13) at row 0 is 7"),
        ({"rows": [ROW]}, "features"),
        ({"features": [ROW, ROW[:3]]}, "list of rows of equal length"),
        ({"features": []}, "has no rows"),
        ({"features": [["a"] * 14]}, "features"),
        ({"features": [ROW] * 600}, "600 rows is more than the limit of 512"),
    ],
)
def test_bad_predict_requests_get_4xx(client, body, message) -> None:
    resp = client.post("/predict", json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert message in resp.text


def test_predict_rejects_non_json(client) -> None:
    resp = client.post(
        "/predict", content=b"not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "Invalid JSON" in resp.text


@pytest.mark.parametrize("path", ["/v2/models/fraud/infer", "/predict"])
def test_oversized_bodies_get_413_without_being_read(client, path: str) -> None:
    big = b"[" + b"1," * (3 * 1024 * 1024) + b"1]"  # ~6 MiB, over the 4 MiB default
    resp = client.post(path, content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "over the limit" in resp.json()["error"]

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for _ in range(6):
            yield b" " * (1024 * 1024)

    resp = client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_bad_input_is_counted_and_the_server_keeps_serving(client, rows) -> None:
    client.post("/v2/models/fraud/infer", json={"inputs": []})
    metrics = client.get("/metrics").text
    assert re.search(
        r'turnout_model_inference_errors_total\{[^}]*reason="bad_input"[^}]*\} [1-9]', metrics
    )
    assert client.post("/v2/models/fraud/infer", json=infer_body(rows[:1])).status_code == 200


# --- drift monitoring -----------------------------------------------------------------------


def _gauge(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _send(client, x: np.ndarray) -> None:
    for start in range(0, len(x), 200):
        resp = client.post("/v2/models/fraud/infer", json=infer_body(x[start : start + 200]))
        assert resp.status_code == 200


def _wait_for(client, predicate, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_psi_stays_low_in_distribution_and_rises_under_drift(client) -> None:
    # The window holds 1000 rows; each phase fills it completely.
    _send(client, features_matrix(generate(1000, seed=31)))
    text = _wait_for(
        client,
        lambda t: (
            (_gauge(t, "turnout_model_drift_window_rows") or 0) >= 1000
            and (_gauge(t, "turnout_model_feature_psi", feature="amount") or 1) < 0.1
        ),
    )
    assert _gauge(text, "turnout_model_feature_psi", feature="amount") < 0.1
    assert _gauge(text, "turnout_model_feature_psi", feature="channel") < 0.1
    assert _gauge(text, "turnout_model_prediction_psi") < 0.1

    drifted = generate(1000, seed=32, day=30, drift=Drift(covariate=1.0, mode="sudden"))
    _send(client, features_matrix(drifted))
    text = _wait_for(
        client, lambda t: (_gauge(t, "turnout_model_feature_psi", feature="amount") or 0) > 0.25
    )
    assert _gauge(text, "turnout_model_feature_psi", feature="amount") > 0.25
    assert _gauge(text, "turnout_model_prediction_psi") > 0.1
    # Unshifted features stay quiet: the gauge points at what moved.
    assert _gauge(text, "turnout_model_feature_psi", feature="customer_age") < _gauge(
        text, "turnout_model_feature_psi", feature="amount"
    )
    assert "turnout_model_prediction_score_bucket" in text


# --- several versions side by side ---------------------------------------------------------


def test_two_versions_served_from_one_store_keep_their_own_metrics(client, fraud_data) -> None:
    """Stable and candidate run side by side; neither may erase or mix the other's metrics."""
    from training.train import TrainParams, train

    tag = store.save(train(fraud_data, seed=5, params=TrainParams(max_epochs=2)), name="fraud")
    version = tag.split(":")[1]
    with model_server(tag) as other, httpx.Client(base_url=other, timeout=10) as c2:
        x = features_matrix(generate(5, seed=1))
        assert (
            c2.post("/v2/models/fraud/infer", json=infer_body(x)).headers["x-turnout-model-version"]
            == version
        )
        assert client.post("/v2/models/fraud/infer", json=infer_body(x)).status_code == 200
        mine = _wait_for(c2, lambda t: f'version="{version}"' in t)
        theirs = client.get("/metrics").text
    assert f'turnout_model_prediction_score_count{{model="fraud",version="{version}"}}' in mine
    assert 'version="v1"' not in mine
    assert f'version="{version}"' not in theirs and 'version="v1"' in theirs
