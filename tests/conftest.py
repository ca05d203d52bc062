"""Shared fixtures. All state goes to a throwaway TURNOUT_HOME, set before bentoml is imported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="turnout-test-"))
os.environ["TURNOUT_HOME"] = str(_HOME)
os.environ["BENTOML_HOME"] = str(_HOME / "bentoml")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def turnout_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def fraud_data():
    from training.data import generate

    return generate(20_000, seed=0)


@pytest.fixture(scope="session")
def trained(fraud_data):
    """One trained model version, registered as fraud:v1 in the test store."""
    from training import store
    from training.train import train

    result = train(fraud_data, seed=0)
    tag = store.save(result, name="fraud", version="v1")
    return result, tag
