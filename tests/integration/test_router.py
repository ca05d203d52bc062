"""The router as applications and operators see it: real model servers, a real router process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import fake_upstream, kill_tree, router, served
from training import store
from training.data import features_matrix, generate
from training.model import predict_proba
from turnout.core.assign import Arm, assign

pytestmark = pytest.mark.slow
ROWS = features_matrix(generate(200, seed=41))


def body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": "features",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }


def write_routes(path: Path, **route) -> None:
    path.write_text(json.dumps({"models": {"fraud": route}}))


def wait_for_table(client: httpx.Client, check, timeout: float = 5.0) -> float:
    """Poll GET /routes until ``check(table)``; returns how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        doc = client.get("/routes").json()
        if doc["table"] and check(doc["table"]["models"]["fraud"]):
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError("route table not reloaded")


@pytest.fixture(scope="module")
def versions(trained, fraud_data):
    """Two versions trained with different seeds."""
    from training.train import TrainParams, train

    v2 = store.save(
        train(fraud_data, seed=1, params=TrainParams(max_epochs=3)), name="fraud", version="r2"
    )
    return trained[1], v2


@pytest.fixture(scope="module")
def servers(versions):
    (url1, cm1), (url2, cm2) = served(versions[0]), served(versions[1])
    with cm1, cm2:
        yield {"v1": url1, "r2": url2}


@pytest.fixture
def routes(tmp_path, servers):
    path = tmp_path / "routes.json"
    write_routes(
        path,
        stable={"version": "v1", "url": servers["v1"]},
        candidate={"version": "r2", "url": servers["r2"], "weight": 30},
    )
    return path


@pytest.fixture
def front(routes):
    base, cm = router(routes)
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def infer(client: httpx.Client, x: np.ndarray = ROWS[:1], **headers: str) -> httpx.Response:
    return client.post("/v2/models/fraud/infer", json=body(x), headers=headers)


# --- traffic split --------------------------------------------------------------------------


def test_weighted_split_and_sticky_users(front) -> None:
    variants = [infer(front).headers["x-turnout-variant"] for _ in range(600)]
    share = variants.count("candidate") / len(variants)
    assert 0.30 - 0.075 < share < 0.30 + 0.075  # 4 sigma at n=600

    for user in (f"user-{i}" for i in range(40)):
        seen = {infer(front, **{"x-user-id": user}).headers["x-turnout-variant"] for _ in range(4)}
        expected = assign(weight=30, salt="", key=user, uniform=0).value
        assert seen == {expected}


def test_replies_name_variant_version_and_request_id(front, versions) -> None:
    resp = infer(front, **{"x-request-id": "trace-me", "x-user-id": "someone"})
    assert resp.status_code == 200
    arm = assign(weight=30, salt="", key="someone", uniform=0)
    version = "r2" if arm is Arm.CANDIDATE else "v1"
    assert resp.headers["x-turnout-variant"] == arm.value
    assert resp.headers["x-turnout-model-version"] == version == resp.json()["model_version"]
    assert resp.headers["x-request-id"] == "trace-me"
    assert len(infer(front).headers["x-request-id"]) == 32  # generated when absent
    meta = front.get("/v2/models/fraud")
    assert meta.status_code == 200 and meta.json()["inputs"][0]["name"] == "features"
    # A version in the path pins the request to it, whatever the weight says.
    pinned = front.post("/v2/models/fraud/versions/r2/infer", json=body(ROWS[:1]))
    assert (
        pinned.headers["x-turnout-variant"] == "candidate"
        and pinned.json()["model_version"] == "r2"
    )
    assert front.get("/v2/models/fraud/versions/r2/ready").json()["ready"] is True
    missing = front.get("/v2/models/fraud/versions/v9")
    assert (
        missing.status_code == 404
        and "'v9' of model 'fraud' is not routed" in missing.json()["error"]
    )


def test_binary_tensors_pass_through_untouched(front, versions) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(str(front.base_url).removeprefix("http://"))
    try:
        inp = triton.InferInput("features", list(ROWS[:8].shape), "FP32")
        inp.set_data_from_numpy(ROWS[:8])
        result = client.infer("fraud", [inp], headers={"x-user-id": "binary-user"})
        arm = assign(weight=30, salt="", key="binary-user", uniform=0)
        tag = versions[1] if arm is Arm.CANDIDATE else versions[0]
        expected = predict_proba(store.load(tag).net, ROWS[:8])
        np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-5, atol=1e-7)
    finally:
        client.close()


def test_weight_zero_in_the_file_stops_candidate_traffic_within_a_second(
    front, routes, servers
) -> None:
    before = httpx.get(f"{servers['r2']}/metrics").text
    write_routes(
        routes,
        stable={"version": "v1", "url": servers["v1"]},
        candidate={"version": "r2", "url": servers["r2"], "weight": 0},
    )
    took = wait_for_table(front, lambda t: t["candidate"]["weight"] == 0)
    assert took <= 1.0
    assert {infer(front).headers["x-turnout-variant"] for _ in range(200)} == {"stable"}
    count = r"turnout_model_prediction_score_count\{[^}]*\} (\S+)"
    assert re.search(count, httpx.get(f"{servers['r2']}/metrics").text).group(1) == re.search(
        count, before
    ).group(1)


def test_invalid_route_file_is_rejected_and_the_old_table_keeps_serving(front, routes) -> None:
    routes.write_text('{"models": {"fraud": {"stable": {"version": "v1"}}}}')
    deadline = time.monotonic() + 5
    while (err := front.get("/routes").json()["lastError"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "models.fraud.stable.url: Field required" in err
    assert front.get("/routes").json()["table"]["models"]["fraud"]["candidate"]["weight"] == 30
    assert infer(front).status_code == 200


# --- bad input ------------------------------------------------------------------------------


def test_bad_requests(front) -> None:
    resp = front.post("/v2/models/nope/infer", json=body(ROWS[:1]))
    assert resp.status_code == 404 and "known models: ['fraud']" in resp.json()["error"]
    resp = front.post("/v2/models/fraud/infer", content=b"{not json", headers={"x-user-id": "u"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    big = b"[" + b"1," * (3 * 1024 * 1024) + b"1]"
    resp = front.post("/v2/models/fraud/infer", content=big)
    assert resp.status_code == 413 and "over the limit" in resp.json()["error"]
    resp = front.post(
        "/v2/models/fraud/infer",
        json={
            "inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
        },
    )
    assert resp.status_code == 400 and "shape must be [N, 14]" in resp.json()["error"]


def feedback(client: httpx.Client, key: str, outcome: float) -> httpx.Response:
    """The outcome of a request by ``key``, posted with its reply's assignment token."""
    reply = infer(client, **{"x-user-id": key})
    token = reply.headers["turnout-assignment"]
    return client.post("/v2/models/fraud/feedback", json={"token": token, "outcome": outcome})


def test_feedback_builds_per_arm_sufficient_statistics(front) -> None:
    outcomes = {f"fb-{i}": float(i % 3) for i in range(60)}
    for key, outcome in outcomes.items():
        resp = feedback(front, key, outcome)
        assert resp.status_code == 200
        assert resp.json()["arm"] == assign(weight=30, salt="", key=key, uniform=0).value
    metrics = front.get("/metrics").text
    for arm in ("stable", "candidate"):
        mine = [
            v
            for k, v in outcomes.items()
            if assign(weight=30, salt="", key=k, uniform=0).value == arm
        ]
        for stat, value in (
            ("count", len(mine)),
            ("sum", sum(mine)),
            ("sumsq", sum(v * v for v in mine)),
        ):
            line = re.search(
                rf'turnout_ab_outcomes\{{arm="{arm}",model="fraud",stat="{stat}"\}} (\S+)', metrics
            )
            assert float(line.group(1)) == pytest.approx(value)
    token = infer(front, **{"x-user-id": "k"}).headers["turnout-assignment"]
    for bad, message in (
        ({"outcome": 1}, "'token'"),
        ({"key": "k", "outcome": 1}, "turnout-assignment header"),
        ({"token": token, "outcome": "yes"}, "'outcome'"),
        ({"token": token, "outcome": float("inf")}, ""),
    ):
        resp = front.post("/v2/models/fraud/feedback", content=json.dumps(bad))
        assert resp.status_code == 400 and message in resp.json()["error"]


def _samples(text: str, name: str) -> dict[frozenset, float]:
    """Every sample called ``name`` in a /metrics text, keyed by its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _ab(client: httpx.Client) -> dict[tuple[str, str], float]:
    found = _samples(client.get("/metrics").text, "turnout_ab_outcomes")
    return {(dict(k)["arm"], dict(k)["stat"]): v for k, v in found.items()}


def test_ab_statistics_restart_when_the_candidate_or_salt_changes(tmp_path, servers) -> None:
    path = tmp_path / "routes.json"
    stable = {"version": "v1", "url": servers["v1"]}

    def table(version: str, weight: float, salt: str) -> None:
        candidate = {"version": version, "url": servers["r2"], "weight": weight}
        write_routes(path, stable=stable, candidate=candidate, salt=salt)

    def outcomes(n: int) -> None:
        for i in range(n):
            assert feedback(client, f"k{i}", 1).status_code == 200

    table("r2", 50, "")
    base, cm = router(path)
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        outcomes(20)
        assert _ab(client)[("stable", "count")] + _ab(client)[("candidate", "count")] == 20

        table("r2", 80, "")  # a new weight is the same experiment: the statistics carry on
        wait_for_table(client, lambda t: t["candidate"]["weight"] == 80)
        assert sum(v for (_, stat), v in _ab(client).items() if stat == "count") == 20

        table("r2", 80, "round-2")  # a new salt reshuffles the arms: a new experiment
        wait_for_table(client, lambda t: t["salt"] == "round-2")
        assert set(_ab(client).values()) == {0.0}
        outcomes(5)
        assert sum(v for (_, stat), v in _ab(client).items() if stat == "sum") == 5

        table("r3", 80, "round-2")  # a new candidate version: a new experiment
        wait_for_table(client, lambda t: t["candidate"]["version"] == "r3")
        assert set(_ab(client).values()) == {0.0}


# --- shadow ---------------------------------------------------------------------------------


def _shadow_counts(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    out = {}
    for agree in ("true", "false"):
        m = re.search(
            rf'turnout_shadow_agreement_total\{{agree="{agree}",model="fraud"\}} (\S+)', text
        )
        out[agree] = float(m.group(1)) if m else 0.0
    return out


def _wait_counts(client: httpx.Client, total: float, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        counts = _shadow_counts(client)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_shadow_never_changes_replies_and_reports_real_agreement(
    tmp_path, servers, versions
) -> None:
    path = tmp_path / "routes.json"
    stable = {"version": "v1", "url": servers["v1"]}
    v1 = predict_proba(store.load(versions[0]).net, ROWS)
    v2 = predict_proba(store.load(versions[1]).net, ROWS)
    threshold = float(np.median(v1))  # a threshold where the two models can disagree
    binary = {"type": "Binary", "threshold": threshold}
    write_routes(path, stable=stable, comparison=binary)
    base, cm = router(path)
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        plain = [infer(client, ROWS[i : i + 1]).content for i in range(150)]

        # A different model as shadow: replies byte-identical; disagreement where it is real.
        write_routes(
            path,
            stable=stable,
            comparison=binary,
            shadow={"version": "r2", "url": servers["r2"], "percent": 100},
        )
        wait_for_table(client, lambda t: t["shadow"] is not None)
        assert [infer(client, ROWS[i : i + 1]).content for i in range(150)] == plain
        counts = _wait_counts(client, 150)
        expected_disagree = int(np.sum((v1[:150] >= threshold) != (v2[:150] >= threshold)))
        assert expected_disagree > 0
        assert counts["false"] == pytest.approx(expected_disagree, abs=1)
        assert counts["true"] + counts["false"] == 150

        # An identical shadow (the stable version itself) agrees on every row. Its copies share
        # the server's micro-batches, so scores may differ in the last float32 digit only.
        write_routes(
            path,
            stable=stable,
            agreementThreshold=threshold,  # a table written before comparisons still reads
            shadow={"version": "v1", "url": servers["v1"], "percent": 100},
        )
        wait_for_table(client, lambda t: t["shadow"]["version"] == "v1")
        for i in range(150, 200):
            got = infer(client, ROWS[i : i + 1]).json()["outputs"][0]["data"]
            assert got == pytest.approx([float(v1[i])], rel=1e-5, abs=1e-7)
        after = _wait_counts(client, 200)
        assert after["true"] - counts["true"] == 50 and after["false"] == counts["false"]


def test_shadow_rows_agree_as_the_routes_comparison_says(tmp_path, servers, versions) -> None:
    path = tmp_path / "routes.json"
    v1 = predict_proba(store.load(versions[0]).net, ROWS[:100]).astype(np.float64)
    v2 = predict_proba(store.load(versions[1]).net, ROWS[:100]).astype(np.float64)
    gap = np.abs(v1 - v2)
    tolerance = float(np.median(gap))  # half the rows within it, half not
    write_routes(
        path,
        stable={"version": "v1", "url": servers["v1"]},
        shadow={"version": "r2", "url": servers["r2"], "percent": 100},
        comparison={"type": "Regression", "tolerance": tolerance},
    )
    base, cm = router(path)
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        wait_for_table(client, lambda t: t["shadow"] is not None)
        for i in range(0, 100, 4):  # four rows a request: rows, not requests, are counted
            assert infer(client, ROWS[i : i + 4]).status_code == 200
        counts = _wait_counts(client, 100)
        assert counts["true"] + counts["false"] == 100
        # float32 and micro-batching move scores in the last digit: a row at the median may flip.
        assert counts["false"] == pytest.approx(int(np.sum(gap > tolerance)), abs=2)
        text = client.get("/metrics").text
        m = re.search(r'turnout_shadow_abs_diff_sum\{model="fraud"\} (\S+)', text)
        assert m is not None and float(m.group(1)) == pytest.approx(gap.sum(), rel=1e-3)


def test_plain_json_predict_is_routed_mirrored_and_falls_back_in_its_own_shape(
    tmp_path, servers, versions
) -> None:
    path = tmp_path / "routes.json"
    stable = {"version": "v1", "url": servers["v1"]}
    write_routes(path, stable=stable, shadow={"version": "v1", "url": servers["v1"]})
    x = ROWS[:3]
    base, cm = router(path)
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        resp = client.post("/predict", json={"features": x.tolist()})
        assert resp.status_code == 200 and resp.headers["x-turnout-variant"] == "stable"
        expected = predict_proba(store.load(versions[0]).net, x)
        np.testing.assert_allclose(resp.json()["probability"], expected, rtol=1e-5, atol=1e-7)
        assert _wait_counts(client, 3) == {"true": 3, "false": 0}  # the shadow read every row

        write_routes(
            path,
            stable={"version": "v1", "url": "http://127.0.0.1:9"},  # nothing listens
            fallback={"mode": "static", "probability": 0.25},
        )
        wait_for_table(client, lambda t: t["fallback"]["mode"] == "static")
        resp = client.post("/predict", json={"features": x.tolist()})
        assert resp.status_code == 200 and resp.headers["x-turnout-fallback"] == "true"
        assert resp.json() == {"model_version": "fallback", "probability": [0.25] * 3}


def test_a_slow_shadow_does_not_slow_the_primary(tmp_path, servers) -> None:
    slow_url, slow = fake_upstream(delay=2.0, version="slow")
    path = tmp_path / "routes.json"
    stable = {"version": "v1", "url": servers["v1"]}
    write_routes(path, stable=stable)
    base, cm = router(path)
    with slow, cm, httpx.Client(base_url=base, timeout=10) as client:

        def median_latency() -> float:
            times = []
            for i in range(40):
                start = time.perf_counter()
                assert infer(client, ROWS[i : i + 1]).status_code == 200
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        without = median_latency()
        write_routes(
            path,
            stable=stable,
            shadowTimeoutMs=5000,
            shadow={"version": "slow", "url": slow_url, "percent": 100},
        )
        wait_for_table(client, lambda t: t["shadow"] is not None)
        with_slow_shadow = median_latency()
        assert with_slow_shadow < without + 0.010  # a 2 s shadow adds nothing the caller waits for


# --- failures -------------------------------------------------------------------------------


def test_killing_the_candidate_mid_traffic_fails_no_request(tmp_path, versions, servers) -> None:
    cand_url, cand = served(versions[1])
    path = tmp_path / "routes.json"
    write_routes(
        path,
        stable={"version": "v1", "url": servers["v1"]},
        candidate={"version": "r2", "url": cand_url, "weight": 50},
        timeoutMs=2000,
    )
    base, cm = router(path)
    with cand as cand_proc, cm:

        async def traffic() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                done: list[httpx.Response] = []

                async def worker(n: int) -> None:
                    for i in range(n):
                        done.append(
                            await client.post(
                                "/v2/models/fraud/infer", json=body(ROWS[i % 200 : i % 200 + 1])
                            )
                        )
                        if len(done) == 600:
                            kill_tree(cand_proc, signal.SIGKILL)

                await asyncio.gather(*(worker(250) for _ in range(8)))
                return done

        replies = asyncio.run(traffic())
    assert len(replies) == 2000
    assert [r.status_code for r in replies if r.status_code != 200] == []
    late = replies[700:]
    assert {r.headers["x-turnout-variant"] for r in late} == {"stable"}
    assert any(r.headers.get("x-turnout-retried") == "true" for r in replies)


def test_every_upstream_attempt_is_counted_and_timed(tmp_path, servers) -> None:
    """A candidate failure retried on stable never reaches the caller, but it is counted."""
    path = tmp_path / "routes.json"
    write_routes(
        path,
        stable={"version": "v1", "url": servers["v1"]},
        candidate={"version": "r2", "url": "http://127.0.0.1:9", "weight": 50},  # nothing there
        shadow={"version": "v1", "url": servers["v1"], "percent": 100},
    )
    keys = [f"user-{i}" for i in range(40)]
    on_candidate = sum(assign(weight=50, salt="", key=k, uniform=0) is Arm.CANDIDATE for k in keys)
    assert 0 < on_candidate < len(keys)
    base, cm = router(path)
    with cm, httpx.Client(base_url=base, timeout=10) as client:

        def calls() -> dict[tuple[str, str, str], float]:
            found = _samples(client.get("/metrics").text, "turnout_router_upstream_calls_total")
            return {
                (dict(k)["variant"], dict(k)["version"], dict(k)["result"]): v
                for k, v in found.items()
            }

        # Every routed upstream is exported at zero before its first call.
        assert set(calls().values()) == {0.0} and len(calls()) == 6
        for key in keys:
            assert infer(client, **{"x-user-id": key}).status_code == 200
        # A 4xx is the caller's fault: an answer, not a failure of the version.
        bad = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1]}]}
        assert client.post("/v2/models/fraud/versions/v1/infer", json=bad).status_code == 400

        deadline = time.monotonic() + 10
        while calls()[("shadow", "v1", "ok")] < len(keys) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls() == {
            ("stable", "v1", "ok"): len(keys) + 1,
            ("stable", "v1", "error"): 0,
            ("candidate", "r2", "ok"): 0,
            ("candidate", "r2", "error"): on_candidate,
            ("shadow", "v1", "ok"): len(keys),
            ("shadow", "v1", "error"): 0,
        }
        text = client.get("/metrics").text
        timed = _samples(text, "turnout_router_upstream_duration_seconds_count")
        assert {(dict(k)["variant"], v) for k, v in timed.items()} == {
            ("stable", len(keys) + 1),
            ("candidate", on_candidate),
            ("shadow", len(keys)),
        }
        retries = _samples(text, "turnout_router_retries_total")
        assert sum(retries.values()) == on_candidate


def test_with_every_version_down_the_fallback_answers_in_time(tmp_path) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    path = tmp_path / "routes.json"
    write_routes(
        path,
        stable={"version": "v1", "url": dead},
        timeoutMs=300,
        candidate={"version": "r2", "url": dead, "weight": 50},
        fallback={"mode": "static", "probability": 0.0},
    )
    slow_url, slow = fake_upstream(delay=5.0)
    base, cm = router(path)
    with slow, cm, httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(20):
            start = time.perf_counter()
            resp = infer(client, ROWS[:3])
            assert time.perf_counter() - start < 0.3 * 2 + 0.2
            assert resp.status_code == 200 and resp.headers["x-turnout-fallback"] == "true"
            assert resp.json()["outputs"][0]["data"] == [0.0, 0.0, 0.0]
        # A hanging stable: the timeout, not the hang, decides; error mode says why.
        write_routes(
            path,
            stable={"version": "v1", "url": slow_url},
            timeoutMs=300,
            fallback={"mode": "error", "message": "fraud scoring is down"},
        )
        wait_for_table(client, lambda t: t["fallback"]["mode"] == "error")
        start = time.perf_counter()
        resp = infer(client, ROWS[:1])
        assert time.perf_counter() - start < 0.8
        assert resp.status_code == 503 and resp.headers["x-turnout-fallback"] == "true"
        assert "fraud scoring is down (v1 timed out)" in resp.json()["error"]


def test_sigterm_lets_in_flight_requests_finish(tmp_path) -> None:
    slow_url, slow = fake_upstream(delay=1.0)
    path = tmp_path / "routes.json"
    write_routes(path, stable={"version": "fake", "url": slow_url}, timeoutMs=5000)
    base, cm = router(path)
    with slow, cm as proc:

        async def call_then_term() -> httpx.Response:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                pending = asyncio.ensure_future(infer_async(client))
                await asyncio.sleep(0.3)  # the request is now waiting on the 1 s upstream
                os.killpg(proc.pid, signal.SIGTERM)
                return await pending

        async def infer_async(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post("/v2/models/fraud/infer", json=body(ROWS[:1]))

        resp = asyncio.run(call_then_term())
        assert resp.status_code == 200 and resp.headers["x-turnout-model-version"] == "fake"
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
        assert proc.returncode is not None
