"""A/B feedback against real router processes: outcomes are counted only with the assignment
token of a reply, once per request, durably, and summed exactly over replicas that restart or
go away.

The model servers are stand-ins (tests/fake_upstream.py): what is tested is the router and the
ledger the controller reads, with the controller's own reading code (WithLedger over the
directory the routers write, asked by ``rollout.analysis_due``'s query).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.servers import eventually, fake_upstream, kill_tree, readme_recipe, router
from turnout.core.ab_ledger import experiment_id
from turnout.core.assign import Arm
from turnout.core.observation import Metrics, MetricsQuery, WithLedger
from turnout.core.stats import Moments
from turnout.core.tokens import Assignment, issue, verify
from turnout.io.ab_store import DirectoryLedger
from turnout.io.api_keys import LOCAL_KEYS_FILE, local_key
from turnout.io.processes import free_port

pytestmark = pytest.mark.slow
SECRET = "k" * 48
SALT = "fraud/v2/1700000000"
BODY = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    (v1, cm1), (v2, cm2) = fake_upstream(version="v1"), fake_upstream(version="v2")
    with cm1, cm2:
        yield {"v1": v1, "v2": v2}


def write_routes(path: Path, upstreams: dict[str, str], *, salt: str = SALT, weight=50) -> None:
    route: dict = {"stable": {"version": "v1", "url": upstreams["v1"]}, "salt": salt}
    if weight is not None:
        route["candidate"] = {"version": "v2", "url": upstreams["v2"], "weight": weight}
    path.write_text(json.dumps({"models": {"fraud": route}}))


class Platform:
    """A routes file, a token secret and a ledger directory shared by the routers started."""

    def __init__(self, root: Path, upstreams: dict[str, str]) -> None:
        self.root = root
        self.upstreams = upstreams
        self.routes = root / "routes.json"
        self.secret = root / "token-secret"
        self.ledger = root / "ab"
        self.secret.write_text(SECRET + "\n")
        write_routes(self.routes, upstreams)

    def router(self, replica: str, *extra: str, port: int | None = None):  # type: ignore[no-untyped-def]
        return router(
            self.routes,
            "--token-secret",
            str(self.secret),
            "--ledger",
            str(self.ledger),
            "--replica-id",
            replica,
            *extra,
            port=port,
        )

    def merged(self, salt: str = SALT) -> dict[str, Moments]:
        """What the controller reads for the running A/B test: its own reader and query."""

        class NoMetrics:
            def observe(self, query: MetricsQuery) -> Metrics:
                return Metrics()

        experiment = experiment_id(model="fraud", candidate="v2", salt=salt)
        query = MetricsQuery("fraud", "v1", "v2", "candidate", 60, experiment=experiment)
        return dict(WithLedger(NoMetrics(), DirectoryLedger(self.ledger)).observe(query).ab)


@pytest.fixture
def platform(tmp_path: Path, upstreams: dict[str, str]) -> Platform:
    return Platform(tmp_path, upstreams)


@pytest.fixture
def front(platform: Platform) -> Iterator[httpx.Client]:
    base, cm = platform.router("one")
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def infer(client: httpx.Client, user: str | None = None, path: str = "/v2/models/fraud/infer"):  # type: ignore[no-untyped-def]
    headers = {"x-user-id": user} if user else {}
    return client.post(path, json=BODY, headers=headers)


def token_of(client: httpx.Client, user: str) -> str:
    resp = infer(client, user)
    assert resp.status_code == 200
    return resp.headers["turnout-assignment"]


def post(client: httpx.Client, token: object, outcome: object = 1.0) -> httpx.Response:
    return client.post("/v2/models/fraud/feedback", json={"token": token, "outcome": outcome})


# --- tokens on replies --------------------------------------------------------------------------


def test_a_split_reply_carries_a_token_naming_what_served_it(front: httpx.Client) -> None:
    for user in (f"user-{i}" for i in range(20)):
        resp = infer(front, user)
        found = verify(
            resp.headers["turnout-assignment"], secrets=(SECRET.encode(),), now=time.time()
        )
        assert isinstance(found, Assignment)
        assert found.arm.value == resp.headers["x-turnout-variant"]
        assert found.version == resp.headers["x-turnout-model-version"]
        assert found.model == "fraud"
        assert found.expires - time.time() == pytest.approx(7 * 24 * 3600, abs=5)
    tokens = {token_of(front, "same-user") for _ in range(5)}
    assert len(tokens) == 5  # one request, one token: the same user's requests count apart
    # A version named in the path is not assigned by the split: nothing to judge.
    pinned = infer(front, "u", "/v2/models/fraud/versions/v2/infer")
    assert pinned.status_code == 200 and "turnout-assignment" not in pinned.headers


def test_no_token_without_a_split(platform: Platform) -> None:
    write_routes(platform.routes, platform.upstreams, weight=None)
    base, cm = platform.router("one")
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        resp = infer(client, "alice")
        assert resp.status_code == 200 and "turnout-assignment" not in resp.headers
        write_routes(platform.routes, platform.upstreams, weight=0)  # candidate at 0%: no split
        eventually(
            lambda: client.get("/routes").json()["table"]["models"]["fraud"]["candidate"],
            "the table with a candidate at 0%",
        )
        assert "turnout-assignment" not in infer(client, "alice").headers


# --- what feedback accepts ------------------------------------------------------------------------


def test_an_outcome_counts_once_however_often_it_is_posted(
    platform: Platform, front: httpx.Client
) -> None:
    token = token_of(front, "alice")
    arm = verify(token, secrets=(SECRET.encode(),), now=time.time())
    assert isinstance(arm, Assignment)
    first = post(front, token, 0.25)
    assert first.status_code == 200
    assert first.json() == {
        "model": "fraud",
        "arm": arm.arm.value,
        "version": arm.version,
        "request": arm.request,
        "counted": True,
    }
    for outcome in (0.25, 7.0):
        again = post(front, token, outcome)
        assert again.status_code == 409
        assert again.json()["reason"] == "replayed" and again.json()["counted"] is False
        assert "already counted" in again.json()["error"]
    merged = platform.merged()
    assert merged[arm.arm.value] == Moments(1, 0.25, 0.0625)
    assert sum(m.n for m in merged.values()) == 1


def test_bad_feedback_is_refused_with_a_reason_and_never_counted(
    platform: Platform, front: httpx.Client
) -> None:
    good = token_of(front, "bob")
    now = int(time.time())
    experiment = experiment_id(model="fraud", candidate="v2", salt=SALT)

    def made(secret: str = SECRET, **change) -> str:  # type: ignore[no-untyped-def]
        fields = {
            "model": "fraud",
            "arm": Arm.CANDIDATE,
            "version": "v2",
            "experiment": experiment,
            "request": f"r{random.random()}",
            "expires": now + 60,
        }
        return issue(Assignment(**{**fields, **change}), secret.encode())

    tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    cases = [
        (b"{not json", 400, "body", "must be JSON"),
        ({"key": "bob", "outcome": 1}, 400, "key_only", "turnout-assignment header"),
        ({"outcome": 1}, 400, "missing", "needs 'token'"),
        ({"token": good}, 400, "outcome", "'outcome'"),
        ({"token": good, "outcome": True}, 400, "outcome", "'outcome'"),
        ({"token": good, "outcome": "1"}, 400, "outcome", "'outcome'"),
        (b'{"token": "' + good.encode() + b'", "outcome": 1e999}', 400, "body", "JSON"),
        ({"token": "not-a-token", "outcome": 1}, 400, "malformed", "turnout-assignment header"),
        ({"token": tampered, "outcome": 1}, 403, "forged", "forged"),
        ({"token": made("x" * 40), "outcome": 1}, 403, "forged", "signature does not match"),
        ({"token": made(expires=now - 10), "outcome": 1}, 410, "expired", "expired"),
        ({"token": made(model="digits"), "outcome": 1}, 400, "other_model", "'digits', not"),
        ({"token": made(experiment="old"), "outcome": 1}, 409, "ended", "has ended"),
    ]
    for body, status, reason, says in cases:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = front.post("/v2/models/fraud/feedback", content=content)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["reason"] == reason and says in resp.json()["error"], resp.text
    big = {"token": good, "outcome": 1, "pad": "x" * (5 * 1024 * 1024)}
    assert front.post("/v2/models/fraud/feedback", json=big).status_code == 413
    assert platform.merged() == {"stable": Moments(), "candidate": Moments()}
    # The refusals are counted by reason; the good token still counts once.
    metrics = front.get("/metrics").text
    assert 'turnout_router_feedback_refusals_total{reason="forged"} 2.0' in metrics
    assert post(front, good, 1).status_code == 200


def test_an_ended_experiment_takes_no_more_outcomes(
    platform: Platform, front: httpx.Client
) -> None:
    token = token_of(front, "carol")
    write_routes(platform.routes, platform.upstreams, salt="round-2")
    eventually(
        lambda: front.get("/routes").json()["table"]["models"]["fraud"]["salt"] == "round-2",
        "the new salt",
    )
    resp = post(front, token)
    assert resp.status_code == 409 and resp.json()["reason"] == "ended"
    assert post(front, token_of(front, "carol"), 2).status_code == 200
    assert sum(m.n for m in platform.merged(salt="round-2").values()) == 1
    assert sum(m.n for m in platform.merged().values()) == 0


def test_a_rotated_secret_keeps_the_old_tokens_valid(
    platform: Platform, front: httpx.Client
) -> None:
    old = token_of(front, "dave")
    new_secret = "n" * 48
    platform.secret.write_text(f"{new_secret}\n{SECRET}\n")

    def signs_with_new() -> bool:
        token = token_of(front, "erin")
        return isinstance(
            verify(token, secrets=(new_secret.encode(),), now=time.time()), Assignment
        )

    eventually(signs_with_new, "tokens signed with the new secret")
    assert post(front, old).status_code == 200
    platform.secret.write_text("too short\n")  # rejected: the secrets in force are kept
    eventually(
        lambda: front.get("/routes").json()["feedback"]["lastError"] is not None,
        "the short secret rejected",
    )
    assert "too short to sign" in front.get("/routes").json()["feedback"]["lastError"]
    assert post(front, token_of(front, "frank")).status_code == 200


def test_a_router_refuses_to_start_with_a_short_secret(platform: Platform) -> None:
    platform.secret.write_text("abc\n")
    port = free_port()
    args = ["--routes", str(platform.routes), "--token-secret", str(platform.secret)]
    run = subprocess.run(
        [sys.executable, "-m", "turnout", "route", *args, "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "too short to sign tokens (at least 32)" in run.stderr
    assert "abc" not in run.stderr


def test_without_a_secret_file_tokens_work_for_that_process_only(platform: Platform) -> None:
    base, cm = router(platform.routes, "--ledger", str(platform.ledger))
    with cm, httpx.Client(base_url=base, timeout=10) as client:
        token = token_of(client, "gina")
        assert post(client, token).status_code == 200
    log = Path(os.environ["TURNOUT_HOME"]) / f"router-{base.rsplit(':', 1)[1]}.log"
    assert "no --token-secret" in log.read_text()
    other, cm = router(platform.routes, "--ledger", str(platform.ledger))
    with cm, httpx.Client(base_url=other, timeout=10) as client:
        resp = post(client, token_of(client, "gina"))
        assert resp.status_code == 200
        resp = post(client, token)  # made by another process: its secret died with it
        assert resp.status_code == 403 and resp.json()["reason"] == "forged"


def test_concurrent_outcomes_are_all_durable(platform: Platform, front: httpx.Client) -> None:
    """Group commit: 300 outcomes posted 30 at a time, each acknowledged only once durable."""
    tokens = [token_of(front, f"user-{i}") for i in range(300)]
    values = [float(i % 5) - 1.5 for i in range(300)]
    with ThreadPoolExecutor(30) as pool:
        codes = list(
            pool.map(lambda tv: post(front, *tv).status_code, zip(tokens, values, strict=True))
        )
    assert codes == [200] * 300
    assert platform.merged() == expected(tokens, values)


def expected(tokens: list[str], values: list[float]) -> dict[str, Moments]:
    """Per arm, what the clients sent: each token's outcome once."""
    by_arm: dict[str, list[float]] = {"stable": [], "candidate": []}
    for token, value in dict(zip(tokens, values, strict=True)).items():
        found = verify(token, secrets=(SECRET.encode(),), now=time.time())
        assert isinstance(found, Assignment)
        by_arm[found.arm.value].append(value)
    return {
        arm: Moments(float(len(v)), math.fsum(v), math.fsum(x * x for x in v))
        for arm, v in by_arm.items()
    }


# --- durable over replicas ------------------------------------------------------------------------


def test_outcomes_survive_a_killed_replica_and_a_scale_down_exactly(platform: Platform) -> None:
    """Two replicas share the ledger directory; clients post to both (some outcomes to both,
    some twice); one replica is SIGKILLed mid-stream and restarted, the other stopped (2 -> 1).
    The controller's per-arm n and sums equal what the clients sent, each request once."""
    rng = random.Random(7)
    port_a = free_port()
    base_a, cm_a = platform.router("a", port=port_a)
    base_b, cm_b = platform.router("b")
    proc_a = cm_a.__enter__()
    proc_b = cm_b.__enter__()
    try:
        with (
            httpx.Client(base_url=base_a, timeout=10) as a,
            httpx.Client(base_url=base_b, timeout=10) as b,
        ):
            tokens = [token_of(a if i % 2 else b, f"user-{i}") for i in range(600)]
            values = [round(rng.uniform(-5, 5), 3) for _ in tokens]
            sent: dict[str, float] = {}
            failovers = []

            def deliver(token: str, value: float, first: httpx.Client, other: httpx.Client) -> None:
                """Post until the router says counted (200) or already counted (409); a
                connection that died is retried on the other replica."""
                for client in (first, other, first, other):
                    try:
                        resp = post(client, token, value)
                    except httpx.HTTPError:
                        failovers.append(token)
                        continue
                    assert resp.status_code in (200, 409), resp.text
                    sent.setdefault(token, value)
                    return
                raise AssertionError("no replica took the outcome")

            # 1. Both replicas take outcomes; every 5th goes to both, every 7th twice to one.
            for i in range(200):
                t, v = tokens[i], values[i]
                deliver(t, v, a if i % 2 else b, b if i % 2 else a)
                if i % 5 == 0:
                    assert post(b if i % 2 else a, t, v).status_code in (200, 409)
                if i % 7 == 0:
                    assert post(a if i % 2 else b, t, v).status_code == 409

            # 2. Replica a is SIGKILLed while outcomes stream to it; the lost ones go to b.
            stream = threading.Thread(
                target=lambda: [deliver(tokens[i], values[i], a, b) for i in range(200, 400)]
            )
            stream.start()
            eventually(lambda: len(sent) >= 260, "outcomes streaming to replica a")
            kill_tree(proc_a, signal.SIGKILL)
            proc_a.wait()
            stream.join()
            assert failovers  # outcomes were on their way to a when it died

            # 3. a comes back (same replica id, same port): it knows what was counted.
            _, cm_a2 = platform.router("a", port=port_a)
            with cm_a2:
                resp = post(a, tokens[1], values[1])
                assert resp.status_code == 409 and resp.json()["reason"] == "replayed"
                for i in range(400, 500):
                    deliver(tokens[i], values[i], a if i % 2 else b, b if i % 2 else a)

                # 4. Scale 2 -> 1: b stops; everything else goes to a.
                cm_b.__exit__(None, None, None)
                proc_b = None
                for i in range(500, 600):
                    deliver(tokens[i], values[i], a, a)
                    if i % 9 == 0:
                        assert post(a, tokens[i], values[i]).status_code == 409

                merged = platform.merged()
    finally:
        if proc_b is not None:
            cm_b.__exit__(None, None, None)
        cm_a.__exit__(None, None, None)
    assert len(sent) == 600
    want = expected(list(sent), list(sent.values()))
    assert merged == want  # exact: n, sum and sum of squares
    assert merged["stable"].n > 200 and merged["candidate"].n > 200
    ledgers = DirectoryLedger(platform.ledger).read(
        model="fraud", experiment=experiment_id(model="fraud", candidate="v2", salt=SALT)
    )
    assert set(ledgers) == {"a", "b"}
    assert sum(len(r) for r in ledgers.values()) > 600  # some counted by both: merged once


# --- the README ------------------------------------------------------------------------------


def test_the_readmes_feedback_recipe_works_as_written(platform: Platform, tmp_path: Path) -> None:
    """Run through bash in a folder whose .turnout holds the local platform's key, against a
    router asking for keys (the README's port swapped for a free one)."""
    home = tmp_path / "user" / ".turnout"
    key, _ = local_key(home)
    base, cm = platform.router("readme", "--api-keys", str(home / LOCAL_KEYS_FILE))
    script = readme_recipe("ab-feedback").replace("http://127.0.0.1:8080", base)
    with cm:
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=home.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        reply = json.loads(ran.stdout.strip().splitlines()[-1])
        assert reply["counted"] is True and reply["model"] == "fraud"
        assert key not in ran.stdout + ran.stderr
        again = subprocess.run(
            ["bash", "-c", script], cwd=home.parent, capture_output=True, text=True, timeout=60
        )
        assert '"counted":true' in again.stdout  # a new request: a new token, counted too
    assert sum(m.n for m in platform.merged().values()) == 2
