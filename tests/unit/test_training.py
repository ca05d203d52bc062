"""Training: deterministic weights, honest metrics, a baseline to beat, and a safe model store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import store
from training.data import FRAUD_SCHEMA, features_matrix, generate
from training.model import predict_proba, state_hash
from training.train import TrainParams, train

FAST = TrainParams(max_epochs=3)


def test_same_data_and_seed_give_bit_identical_weights(fraud_data) -> None:
    a = train(fraud_data, seed=11, params=FAST)
    b = train(fraud_data, seed=11, params=FAST)
    c = train(fraud_data, seed=12, params=FAST)
    assert state_hash(a.net) == state_hash(b.net) == a.weights_sha256
    assert state_hash(c.net) != a.weights_sha256


def test_model_learns_and_beats_the_linear_baseline(trained) -> None:
    result, _ = trained
    m, base = result.metrics, result.baseline_metrics
    assert m["roc_auc"] > 0.93
    assert m["pr_auc"] > base["pr_auc"]
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "recall_at_precision"):
        assert 0 <= m[key] <= 1 or key == "log_loss"
    assert set(result.slices) <= set(FRAUD_SCHEMA.features[11].categories)
    assert any("roc_auc" in s for s in result.slices.values())


def test_stored_version_loads_without_pickle_and_predicts_the_same(trained) -> None:
    result, tag = trained
    loaded = store.load(tag)
    x = features_matrix(generate(500, seed=9))
    np.testing.assert_array_equal(predict_proba(loaded.net, x), predict_proba(result.net, x))
    model_dir = Path(store.bentoml.models.get(tag).path)
    assert (model_dir / "weights.safetensors").exists()
    assert not any(p.suffix in (".pkl", ".pt", ".pth") for p in model_dir.iterdir())


def test_metadata_carries_what_later_stages_need(trained) -> None:
    _, tag = trained
    meta = store.load(tag).metadata
    for key in (
        "metrics",
        "baseline_metrics",
        "data_fingerprint",
        "params",
        "seed",
        "code_version",
        "feature_schema",
        "reference",
        "weights_sha256",
    ):
        assert key in meta, key
    assert set(meta["reference"]["features"]) == set(FRAUD_SCHEMA.names)
    assert sum(meta["reference"]["prediction"]["proportions"]) == pytest.approx(1.0)


def test_versions_are_never_overwritten(trained) -> None:
    result, tag = trained
    with pytest.raises(ValueError, match="already exists"):
        store.save(result, name="fraud", version=tag.split(":")[1])
    with pytest.raises(ValueError, match="must be 1-63 letters"):
        store.save(result, name="fraud", version="bad version!")
    with pytest.raises(store.ModelNotFound, match="fraud:nope not found"):
        store.load("fraud:nope")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_trains_lists_and_explains_mistakes(trained, tmp_path) -> None:
    out = _cli("train", "--rows", "8000", "--seed", "3", "--name", "clitest", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["tag"] == "clitest:v1" and report["metrics"]["roc_auc"] > 0.8

    listing = _cli("models")
    assert "clitest:v1" in listing.stdout and "fraud:v1" in listing.stdout

    bad = tmp_path / "bad.csv"
    generate(30, seed=0).drop(columns=["amount"]).to_csv(bad, index=False)
    out = _cli("train", "--data", str(bad), "--name", "clitest")
    assert out.returncode != 0 and "missing column 'amount'" in out.stderr
    assert "clitest:v2" not in _cli("models").stdout  # nothing partial was registered

    out = _cli("train", "--drift", "wind=3", "--name", "clitest")
    assert out.returncode != 0 and "unknown drift option 'wind'" in out.stderr

    out = _cli("serve", "fraud:nope")
    assert out.returncode != 0 and "model fraud:nope not found" in out.stderr
    out = _cli("serve", "fraud")
    assert out.returncode != 0 and "name:version" in out.stderr
