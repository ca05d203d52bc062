"""API keys at a real router process: who may call which model for what, and rotation.

`turnout route --api-keys FILE` in front of a stub model server (tests/fake_upstream.py): the
401s and 403s a caller gets with their JSON messages, the endpoints probes and Prometheus need
staying open, keys added, revoked or broken in the file while the router runs, refusals counted
by reason, and no key ever written to the router's log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import eventually, fake_upstream, process
from turnout.core.api_keys import Action
from turnout.io.api_keys import create_key, revoke_key
from turnout.io.processes import free_port

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
INFER, FEEDBACK, ADMIN = Action.INFER, Action.FEEDBACK, Action.ADMIN


@dataclass
class Keys:
    path: Path
    admin: str
    fraud: str  # infer on fraud only
    outcomes: str  # feedback on fraud only


@dataclass
class Front:
    url: str
    log: Path
    keys: Keys
    pid: int

    def call(self, method: str, path: str, key: str | None = None, **kw: object) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))  # type: ignore[arg-type]
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def auth(self) -> dict:
        return self.call("GET", "/routes", self.keys.admin).json()["auth"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    url, running = fake_upstream(version="v1")
    with running:
        yield url


def make_keys(path: Path) -> Keys:
    admin, _ = create_key(path, name="admin", models=["*"], actions=list(Action))
    fraud, _ = create_key(path, name="fraud-app", models=["fraud"], actions=[INFER])
    outcomes, _ = create_key(path, name="outcomes", models=["fraud"], actions=[FEEDBACK])
    return Keys(path, admin, fraud, outcomes)


def start(tmp: Path, upstream: str):  # type: ignore[no-untyped-def]
    routes = tmp / "routes.json"
    stable = {"stable": {"version": "v1", "url": upstream}}
    routes.write_text(json.dumps({"models": {"fraud": stable, "credit": stable}}))
    keys = make_keys(tmp / "api-keys.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "turnout", "route", "--routes", str(routes), "--port", str(port)]
    args += ["--api-keys", str(keys.path)]
    log_name = f"router-auth-{port}.log"
    return (
        url,
        keys,
        Path(os.environ["TURNOUT_HOME"]) / log_name,
        process(args, f"{url}/v2/health/ready", log_name),
    )


@pytest.fixture(scope="module")
def front(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    url, keys, log, running = start(tmp_path_factory.mktemp("auth"), upstream)
    with running as proc:
        yield Front(url, log, keys, proc.pid)


@pytest.fixture
def own_front(upstream: str, tmp_path: Path) -> Iterator[Front]:
    """A router of the test's own, for tests that change its keys file."""
    url, keys, log, running = start(tmp_path, upstream)
    with running as proc:
        yield Front(url, log, keys, proc.pid)


# --- 401: no key, or not one of ours -----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason", "says"),
    [
        ({}, "missing", 'no API key: send the header "Authorization: Bearer <key>"'),
        ({"authorization": "Basic YWxpY2U6c2VjcmV0"}, "malformed", 'expected "Bearer <key>"'),
        ({"authorization": "Bearer " + "k" * 400}, "malformed", "too long (407 > 256"),
        ({"authorization": "Bearer tk_revoked0000"}, "unknown", "unknown API key"),
        ({"x-api-key": "tk_wrong-header"}, "missing", "Authorization: Bearer <key>"),
    ],
)
def test_a_request_without_a_known_key_gets_401_saying_why(
    front: Front, headers: dict[str, str], reason: str, says: str
) -> None:
    counted = front.metric(f'turnout_router_auth_refusals_total{{reason="{reason}"}}')
    for method, path in [
        ("POST", "/v2/models/fraud/infer"),
        ("GET", "/routes"),
        ("POST", "/predict"),
    ]:
        reply = front.call(method, path, json=BODY, headers=headers)
        assert reply.status_code == 401, (path, reply.text)
        assert says in reply.json()["error"]
        assert reply.headers["www-authenticate"] == 'Bearer realm="turnout"'
    after = front.metric(f'turnout_router_auth_refusals_total{{reason="{reason}"}}')
    assert after == counted + 3


# --- 403: a key without the scope ---------------------------------------------------------------


def test_a_key_for_one_model_is_refused_on_another(front: Front) -> None:
    ok = front.call("POST", "/v2/models/fraud/infer", front.keys.fraud, json=BODY)
    assert ok.status_code == 200 and ok.headers["x-turnout-model-version"] == "v1"
    refused = front.call("POST", "/v2/models/credit/infer", front.keys.fraud, json=BODY)
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "API key 'fraud-app' lacks the scope infer on model 'credit' "
        "(it has: infer on fraud)"
    }
    # The same through /predict, pinned versions and metadata reads.
    for method, path, headers in [
        ("POST", "/predict", {"x-turnout-model": "credit"}),
        ("POST", "/v2/models/credit/versions/v1/infer", {}),
        ("GET", "/v2/models/credit", {}),
        ("GET", "/v2/models/credit/ready", {}),
    ]:
        reply = front.call(method, path, front.keys.fraud, json=BODY, headers=headers)
        assert reply.status_code == 403, path
        assert "lacks the scope infer on model 'credit'" in reply.json()["error"]
    assert (
        front.call("POST", "/v2/models/credit/infer", front.keys.admin, json=BODY).status_code
        == 200
    )


def test_a_scoped_key_cannot_learn_which_models_exist(front: Front) -> None:
    scoped = front.call("POST", "/v2/models/secret/infer", front.keys.fraud, json=BODY)
    assert scoped.status_code == 403 and "'secret'" in scoped.json()["error"]
    everything = front.call("POST", "/v2/models/secret/infer", front.keys.admin, json=BODY)
    assert everything.status_code == 404 and "known models" in everything.json()["error"]


def test_feedback_needs_the_feedback_scope(front: Front) -> None:
    outcome = {"token": "not-a-real-token", "outcome": 1}
    refused = front.call("POST", "/v2/models/fraud/feedback", front.keys.fraud, json=outcome)
    assert refused.status_code == 403
    assert (
        "lacks the scope feedback on model 'fraud' (it has: infer on fraud)"
        in refused.json()["error"]
    )
    # Past authentication, the feedback handler's own checks decide (here: no such token).
    passed = front.call("POST", "/v2/models/fraud/feedback", front.keys.outcomes, json=outcome)
    assert passed.status_code == 400 and passed.json()["reason"] == "malformed", passed.text
    infer = front.call("POST", "/v2/models/fraud/infer", front.keys.outcomes, json=BODY)
    assert infer.status_code == 403


def test_routes_need_the_admin_scope_and_show_the_keys_by_name(front: Front) -> None:
    refused = front.call("GET", "/routes", front.keys.fraud)
    assert refused.status_code == 403
    assert "lacks the scope admin (it has: infer on fraud)" in refused.json()["error"]
    auth = front.auth()
    assert auth["enabled"] is True and auth["lastError"] is None
    assert auth["keys"] == ["admin", "fraud-app", "outcomes"]
    assert front.metric("turnout_router_auth_keys") == 3


def test_health_metrics_and_server_metadata_stay_open(front: Front) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v2"):
        assert httpx.get(front.url + path, timeout=5).status_code == 200, path
    refusals = front.metric('turnout_router_auth_refusals_total{reason="scope"}')
    assert refusals >= 0  # exported before the first refusal, so rate() sees the first


# --- the keys file changes while the router runs ------------------------------------------------


def test_keys_are_added_and_revoked_without_a_restart(own_front: Front) -> None:
    path = own_front.keys.path
    new, _ = create_key(path, name="ci", models=["credit"], actions=[INFER])
    eventually(
        lambda: (
            own_front.call("POST", "/v2/models/credit/infer", new, json=BODY).status_code == 200
        ),
        "the new key is accepted",
        timeout=10,
    )
    revoke_key(path, "fraud-app")
    eventually(
        lambda: (
            own_front.call(
                "POST", "/v2/models/fraud/infer", own_front.keys.fraud, json=BODY
            ).status_code
            == 401
        ),
        "the revoked key is refused",
        timeout=10,
    )
    assert own_front.auth()["keys"] == ["admin", "outcomes", "ci"]
    assert os.path.exists(f"/proc/{own_front.pid}")  # the same process throughout


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("keys: [oops\n", "not valid YAML/JSON at line"),
        ("keys:\n- name: ci\n  sha256: tk_pasted-the-key\n  models: ['*']\n  actions: [infer]\n",
         "key 1 (ci): sha256 must be 64 lowercase hexadecimal characters"),
    ],
)  # fmt: skip
def test_a_bad_keys_file_keeps_the_last_good_keys_and_says_so(
    own_front: Front, text: str, says: str
) -> None:
    path = own_front.keys.path
    good = path.read_text()
    path.write_text(text)
    eventually(
        lambda: own_front.auth()["lastError"] is not None, "the error on /routes", timeout=10
    )
    assert says in own_front.auth()["lastError"]
    assert own_front.metric("turnout_router_auth_keys_errors_total") == 1
    assert own_front.metric("turnout_router_auth_keys") == 3
    ok = own_front.call("POST", "/v2/models/fraud/infer", own_front.keys.fraud, json=BODY)
    assert ok.status_code == 200  # the last good keys still in force
    path.write_text(good)
    eventually(lambda: own_front.auth()["lastError"] is None, "the error cleared", timeout=10)
    assert "tk_pasted-the-key" not in own_front.log.read_text()


def test_a_deleted_keys_file_keeps_the_last_good_keys(own_front: Front) -> None:
    own_front.keys.path.unlink()
    eventually(
        lambda: own_front.auth()["lastError"] is not None, "the error on /routes", timeout=10
    )
    assert "cannot read the keys file" in own_front.auth()["lastError"]
    assert (
        own_front.call(
            "POST", "/v2/models/fraud/infer", own_front.keys.fraud, json=BODY
        ).status_code
        == 200
    )


def test_a_router_with_a_bad_keys_file_does_not_start(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"models": {}}))
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n- name: ci\n  sha256: abc\n  models: [fraud]\n  actions: [infer]\n")
    args = ["route", "--routes", str(routes), "--api-keys", str(keys), "--port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "turnout", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert f"turnout route: {keys}: key 1 (ci): sha256 must be 64" in done.stderr


# --- what the log never holds -------------------------------------------------------------------


def test_no_key_reaches_the_log(front: Front) -> None:
    stray = "tk_" + "s" * 43
    front.call("POST", "/v2/models/fraud/infer", stray, json=BODY)
    front.call("POST", "/v2/models/fraud/infer", front.keys.fraud, json=BODY)
    front.call("POST", "/v2/models/credit/infer", front.keys.fraud, json=BODY)
    log = front.log.read_text()
    assert "API keys loaded from" in log  # the log is the right one, and says what it loaded
    for key in (front.keys.admin, front.keys.fraud, front.keys.outcomes, stray):
        assert key not in log
