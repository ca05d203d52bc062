"""A user's predict that raises: the SDK answers a JSON 500 naming the failure, with the
version header, and counts it (sdk/CONTRACT.md: "500 when the model fails")."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from turnout_sdk.server import Runtime, _v2_app
from turnout_sdk.settings import server_settings
from turnout_sdk.tasks import BinaryScore
from turnout_sdk.tensors import Tensor


class Broken:
    def predict(self, x):  # type: ignore[no-untyped-def]
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


# The SDK's monitor registers its metrics through bentoml.metrics (multiprocess-aware in a
# server), which BentoML 1.4 marks deprecated.
@pytest.mark.filterwarnings("ignore:bentoml.metrics module is deprecated:DeprecationWarning")
def test_a_failing_predict_is_a_json_500_with_the_version() -> None:
    from prometheus_client import REGISTRY

    runtime = Runtime(
        service=Broken(),
        name="broken",
        version="v1",
        inputs=[Tensor("x", "FP32", (-1, 2))],
        outputs=[Tensor("y", "FP32", (-1,))],
        task=BinaryScore(),
        metadata={},
        settings=server_settings(),
    )
    app = _v2_app()
    app.state.runtime = runtime
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    with TestClient(app) as client:
        resp = client.post("/v2/models/broken/infer", json=body)
    assert resp.status_code == 500
    assert resp.json() == {
        "error": "model broken:v1 failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    }
    assert resp.headers["x-turnout-model-version"] == "v1"
    labels = {"model": "broken", "version": "v1", "reason": "model_error"}
    assert REGISTRY.get_sample_value("turnout_model_inference_errors_total", labels) == 1
