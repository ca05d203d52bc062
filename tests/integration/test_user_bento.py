"""A user's Bento served by turnout, and servers that cannot start, with real processes.

Two models side by side behind one router: the built-in fraud model and the digits example
(trained here with examples/digits/train.py into the test's model store), each its own
ModelDeployment made by `turnout deploy`, each answering its own v2 infer through the router.
On the same platform a fraud candidate whose model is not a fraud model (the real fraud server
fails to load it) is rolled back with the reason from its log while stable keeps serving; and
a stable whose service exits at import is given up on and shown in `turnout status`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.controller.local import LocalController
from services.controller.supervisor import MAX_FAILED_STARTS, Supervisor
from tests.servers import ROOT, eventually, free_port, turnout
from turnout.cli.platform import LocalPlatform
from turnout.core.observation import Metrics, MetricsQuery
from turnout.core.spec import Phase, parse_deployment
from turnout.io.deployments import DeploymentStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def digits_version() -> str:
    """The digits example trained (briefly) into the test's model store; its version."""
    out = subprocess.run(
        [sys.executable, "train.py", "--epochs", "3"],
        cwd=ROOT / "examples" / "digits",
        env=dict(os.environ),  # BENTOML_HOME is the test's (tests/conftest.py)
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].partition(":")[2]


@pytest.fixture(scope="module")
def not_a_fraud_model() -> Iterator[str]:
    """A model stored as fraud:vbad that holds no fraud network; removed afterwards, since
    the store is shared and it would otherwise become every later test's fraud:latest."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get("fraud:vbad")
    except NotFound:
        with bentoml.models.create("fraud:vbad") as model:
            Path(model.path, "weights.txt").write_text("not a network")
    yield "vbad"
    bentoml.models.delete("fraud:vbad")


@pytest.fixture(scope="module")
def platform(trained, digits_version, tmp_path_factory) -> Iterator[LocalPlatform]:
    home = tmp_path_factory.mktemp("side-by-side")
    out = turnout("deploy", "fraud", "--version", "v1", home=home)
    assert out.returncode == 0, out.stderr
    # A relative directory, as a user in the repository would type it.
    out = turnout(
        "deploy", "digits", "--version", digits_version, "--service", "examples/digits", home=home
    )
    assert out.returncode == 0, out.stderr
    plat = LocalPlatform(home, port=free_port(), prometheus=False)
    with plat:
        yield plat


def infer(plat: LocalPlatform, model: str, name: str, array: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "data": array.ravel().tolist(),
            }
        ]
    }
    url = f"{plat.url}/v2/models/{model}/infer"
    return httpx.post(url, json=body, headers=plat.headers, timeout=10)


def routed_models(plat: LocalPlatform) -> set[str]:
    """The models the router itself routes now (it reloads the controller's table)."""
    try:
        reply = httpx.get(f"{plat.url}/routes", headers=plat.headers, timeout=2)
        return set(reply.json()["table"]["models"])
    except (httpx.HTTPError, KeyError, TypeError):
        return set()


def test_two_models_side_by_side_and_a_candidate_that_cannot_load(
    platform: LocalPlatform, digits_version: str, not_a_fraud_model: str
) -> None:
    from sklearn.datasets import load_digits

    from training.data import FRAUD_SCHEMA, features_matrix, generate

    plat, home = platform, platform.home
    spec = DeploymentStore(home).load("digits").spec
    assert spec.stable.service == str(ROOT / "examples" / "digits")  # written absolute
    eventually(lambda: routed_models(plat) == {"fraud", "digits"}, "both models routed")

    digits = load_digits()
    images = digits.images[:4].astype(np.float32)[:, None]
    reply = infer(plat, "digits", "image", images)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-turnout-model-version"] == digits_version
    (out,) = reply.json()["outputs"]
    assert (out["name"], out["shape"]) == ("probabilities", [4, 10])
    predicted = np.asarray(out["data"]).reshape(4, 10).argmax(axis=1)
    assert (predicted == digits.target[:4]).mean() >= 0.75

    rows = features_matrix(generate(3, seed=5))
    reply = infer(plat, "fraud", "features", rows)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-turnout-model-version"] == "v1"
    (out,) = reply.json()["outputs"]
    assert (out["name"], out["shape"]) == ("probability", [3])
    assert rows.shape[1] == len(FRAUD_SCHEMA.features)
    # Each model refuses the other's tensors by name.
    assert infer(plat, "digits", "features", rows).status_code == 400

    # A candidate whose server cannot load its model: given up on, rolled back, with why.
    out = turnout("deploy", "fraud", "--version", not_a_fraud_model, home=home)
    assert out.returncode == 0, out.stderr
    store = DeploymentStore(home)
    eventually(
        lambda: store.state("fraud").status.phase is Phase.ROLLED_BACK,
        "the candidate rolled back",
        timeout=240,
    )
    status = store.state("fraud").status
    assert f"failed {MAX_FAILED_STARTS} starts in a row" in status.message
    log = re.search(r"\(log (\S+)\)", status.message)
    assert log is not None and Path(log.group(1)).is_file()
    assert "architecture.json" in status.message  # the exception the fraud server raised
    assert status.routing.stable is not None and status.routing.stable.version == "v1"
    eventually(lambda: store.load("fraud").spec.candidate is None, "the candidate removed")
    shown = turnout("status", "fraud", home=home).stdout
    assert "RolledBack" in shown and "ServerFailed" in shown
    assert infer(plat, "fraud", "features", rows).status_code == 200
    assert infer(plat, "digits", "image", images).status_code == 200


class NoMetrics:
    def observe(self, query: MetricsQuery) -> Metrics:
        raise AssertionError("no analysis runs without a candidate")


def test_a_stable_whose_service_exits_at_import_is_shown_failed(
    tmp_path: Path, not_a_fraud_model: str
) -> None:
    target = tmp_path / "exits"
    target.mkdir()
    (target / "bentofile.yaml").write_text('service: "service:Svc"\n')
    (target / "service.py").write_text(
        textwrap.dedent(
            """
            raise RuntimeError("the weights are on a disk that is not mounted")
            """
        )
    )
    home = tmp_path / "home"
    store = DeploymentStore(home)
    doc = {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "broken"},
        # Written by hand: `turnout deploy` would refuse this service.
        "spec": {"model": "fraud", "stable": {"version": "vbad", "service": str(target)}},
    }
    store.save(parse_deployment(doc))
    sup = Supervisor(home)
    loop = LocalController(
        store=store, supervisor=sup, metrics=NoMetrics(), routes_file=home / "routes.yaml"
    )
    try:
        deadline = time.monotonic() + 180
        while store.state("broken").status.phase is not Phase.FAILED:
            assert time.monotonic() < deadline, "never reported"
            loop.run_once()
            time.sleep(0.1)
        for _ in range(10):  # given up on: nothing is started again
            loop.run_once()
        assert sup.servers == {}
    finally:
        sup.stop_all()
    status = store.state("broken").status
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ServerFailed")
    assert "RuntimeError: the weights are on a disk that is not mounted" in ready.message
    logs = list((home / "logs").glob("fraud-vbad-*.log"))
    assert len(logs) == MAX_FAILED_STARTS
    assert any(f"(log {path})" in ready.message for path in logs)
    shown = " ".join(turnout("status", "broken", home=home).stdout.split())
    assert "Failed" in shown and "ServerFailed" in shown
    assert "the weights are on a disk that is not mounted" in shown
