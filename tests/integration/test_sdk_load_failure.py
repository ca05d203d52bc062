"""A model server that cannot load its model stops, non-zero, with the reason: BentoML on its
own restarts the failing worker forever while the server never becomes ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT
from turnout.io.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_server_that_cannot_load_its_model_exits_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "BENTOML_"))}
    env.update(TURNOUT_HOME=str(tmp_path), BENTOML_HOME=str(tmp_path / "bentoml"))
    train = [sys.executable, str(ROOT / "examples/digits/train.py"), "--epochs", "1"]
    done = subprocess.run(
        [*train, "--name", "notfraud", "--version", "v1"], env=env, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    # The built-in fraud server, handed a model of another kind: it cannot load it.
    served = subprocess.run(
        [sys.executable, "-m", "turnout", "serve", "notfraud:v1", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert served.returncode != 0
    assert "FraudModel cannot start" in served.stderr
    assert "is not a model of the built-in fraud server" in served.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
