"""KServe's own Python ModelServer as a turnout version (sdk/CONTRACT.md).

bench/support/kserve_digits.py serves the digits example's torch model through ``kserve.Model``
and ``kserve.ModelServer`` — no turnout code in the request path. It keeps the contract's
endpoints (health, metadata, readiness, JSON and binary infer, JSON errors), and a real
`turnout route` process puts it behind one endpoint as stable with an SDK server as candidate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import router
from tests.support import digits

pytestmark = pytest.mark.slow
WEIGHT = 40


@pytest.fixture(scope="module")
def versions() -> tuple[str, str]:
    """Two digits versions: the stable one KServe serves, the candidate the SDK serves."""
    return digits.train(), digits.train("--seed", "1")


@pytest.fixture(scope="module")
def kserve(versions) -> Iterator[str]:
    with digits.kserve_server(versions[0]) as base:
        yield base


@pytest.fixture(scope="module")
def sdk(versions) -> Iterator[str]:
    with digits.sdk_server(versions[1]) as base:
        yield base


def version_of(tag: str) -> str:
    return tag.partition(":")[2]


# --- the contract's endpoints ---------------------------------------------------------------


def test_health_and_model_readiness(kserve) -> None:
    assert httpx.get(f"{kserve}/v2/health/live").status_code == 200
    assert httpx.get(f"{kserve}/v2/health/ready").status_code == 200  # what the supervisor polls
    ready = httpx.get(f"{kserve}/v2/models/digits/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "digits", "ready": True}


def test_metadata_declares_the_tensors_the_sdk_server_declares(kserve, sdk) -> None:
    theirs = httpx.get(f"{kserve}/v2/models/digits").json()
    ours = httpx.get(f"{sdk}/v2/models/digits").json()
    for key in ("name", "inputs", "outputs"):
        assert theirs[key] == ours[key]
    # KServe 0.21 does not list versions ("versions": null); nothing in turnout reads them.
    assert theirs.get("versions") is None


def test_json_infer_answers_what_the_stored_version_computes(kserve, versions) -> None:
    x = digits.images()[0][:32]
    resp = httpx.post(f"{kserve}/v2/models/digits/infer", json=digits.v2_body(x))
    assert resp.status_code == 200
    assert resp.headers["x-turnout-model-version"] == version_of(versions[0])
    doc = resp.json()
    assert doc["model_name"] == "digits" and doc["model_version"] == version_of(versions[0])
    (out,) = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [32, 10])
    got = np.asarray(out["data"], dtype=np.float32).reshape(32, 10)
    np.testing.assert_allclose(got, digits.probabilities(versions[0], x), rtol=1e-5, atol=1e-7)


def test_binary_infer_with_tritonclient(kserve, versions) -> None:
    import tritonclient.http as triton

    x = digits.images()[0][:32]
    client = triton.InferenceServerClient(kserve.removeprefix("http://"))
    try:
        image = triton.InferInput("image", list(x.shape), "FP32")
        image.set_data_from_numpy(x, binary_data=True)
        result = client.infer("digits", [image])
    finally:
        client.close()
    assert "data" not in result.get_response()["outputs"][0]  # binary back, as asked
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        digits.probabilities(versions[0], x),
        rtol=1e-5,
        atol=1e-7,
    )


def test_errors_are_json_with_the_contract_statuses(kserve) -> None:
    x = digits.images()[0][:2]
    flat = httpx.post(f"{kserve}/v2/models/digits/infer", json=digits.v2_body(x.reshape(2, 64)))
    assert flat.status_code == 400 and "shape must be [N, 1, 8, 8]" in flat.json()["error"]
    other = httpx.post(f"{kserve}/v2/models/fraud/infer", json=digits.v2_body(x))
    assert other.status_code == 404 and "fraud" in other.json()["error"]


def test_kserve_does_not_serve_the_versioned_paths(kserve, versions) -> None:
    """The contract's ``/versions/{v}`` forms: KServe 0.21 answers 501 for any version."""
    base = f"{kserve}/v2/models/digits/versions/{version_of(versions[0])}"
    x = digits.images()[0][:1]
    for resp in (
        httpx.get(base),
        httpx.get(f"{base}/ready"),
        httpx.post(f"{base}/infer", json=digits.v2_body(x)),
    ):
        assert resp.status_code == 501
        assert resp.json() == {"error": "Model versioning not supported yet."}


# --- behind turnout's router ----------------------------------------------------------------


def sample(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def test_router_serves_a_kserve_stable_and_an_sdk_candidate(
    tmp_path: Path, kserve, sdk, versions
) -> None:
    stable, candidate = version_of(versions[0]), version_of(versions[1])
    routes = tmp_path / "routes.json"
    route = {
        "stable": {"version": stable, "url": kserve},
        "candidate": {"version": candidate, "url": sdk, "weight": WEIGHT},
        "comparison": {"type": "MultiClass"},
    }
    routes.write_text(json.dumps({"models": {"digits": route}}))
    x = digits.images()[0][:4]
    expected = {
        "stable": (stable, digits.probabilities(versions[0], x)),
        "candidate": (candidate, digits.probabilities(versions[1], x)),
    }
    base, running = router(routes)
    seen = {"stable": 0, "candidate": 0}
    with running, httpx.Client(base_url=base, timeout=10) as client:
        for i in range(200):
            resp = client.post(
                "/v2/models/digits/infer",
                json=digits.v2_body(x),
                headers={"x-user-id": f"user-{i}"},
            )
            assert resp.status_code == 200, resp.text
            variant = resp.headers["x-turnout-variant"]
            version, want = expected[variant]
            assert resp.headers["x-turnout-model-version"] == version
            out = resp.json()["outputs"][0]
            got = np.asarray(out["data"], dtype=np.float32).reshape(4, 10)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            seen[variant] += 1
        metadata = client.get("/v2/models/digits")
        metrics = client.get("/metrics").text
    assert 0.40 - 0.14 < seen["candidate"] / 200 < 0.40 + 0.14  # 4 sigma at n=200
    assert metadata.status_code == 200 and metadata.json()["name"] == "digits"
    for variant, version in (("stable", stable), ("candidate", candidate)):
        calls = sample(
            metrics, "turnout_router_upstream_calls_total", variant=variant, version=version
        )
        assert calls == seen[variant]
        assert sample(metrics, "turnout_router_upstream_calls_total", result="error") == 0
