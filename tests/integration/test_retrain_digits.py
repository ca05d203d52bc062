"""``turnout pipeline run retrain`` of a user's model: the digits example through its plugin.

One real run end to end (examples/digits/pipeline.py): the bundled digits split by the run's
seed, the CNN trained for a few epochs, its own gate (accuracy and macro-F1 floors, no
regression in accuracy against the stable version on the newest images, latency, a v2 smoke
test through `bentoml serve` of examples/digits with the candidate in a private store, same
seed same weights), then registered, proposed, and scored in batch. The stable version is an
under-trained one of the same plugin, registered as a first run would have.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits

from training import store
from turnout.core.spec import VersionRef, parse_deployment
from turnout.io.deployments import DeploymentStore
from turnout.io.settings import settings
from workflows import plugins, staging, steps
from workflows.batch import batch_predict
from workflows.cli import pipeline
from workflows.params import RetrainParams

pytestmark = pytest.mark.slow

PLUGIN = "examples.digits.pipeline:PIPELINE"
MODEL = "digits-rt"
#: Enough for ~0.97 accuracy in a few seconds; the stable version gets fewer.
EPOCHS, STABLE_EPOCHS = 10, 2


@pytest.fixture
def stable(tmp_path: Path) -> str:
    """digits-rt:v1, trained by the same plugin (another seed, fewer epochs) and deployed with
    the example's service, as `turnout deploy digits-rt --version v1 --service examples/digits`
    would."""
    plugin = plugins.load(PLUGIN)
    weak = plugins.Plugin("stable", type(plugin.obj)(epochs=STABLE_EPOCHS))
    tag = f"{MODEL}:v1"
    if not store.exists(tag):
        data = weak.data(RetrainParams.from_pairs([f"plugin={PLUGIN}", f"model={MODEL}"]))
        steps._stage(weak, weak.train(data, seed=1), tmp_path / "v1", extra={})
        staging.register(tmp_path / "v1", tag=tag, labels={"task": "digits"})
    DeploymentStore(settings().home).save(
        parse_deployment(
            {
                "apiVersion": "turnout.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": MODEL},
                "spec": {
                    "model": MODEL,
                    "stable": {"version": "v1", "service": "examples/digits"},
                },
            }
        )
    )
    return tag


def test_digits_retrains_with_its_own_gate_and_is_proposed(
    stable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugins.load(PLUGIN).obj, "epochs", EPOCHS)
    expected = f"{MODEL}:{store.next_version(MODEL)}"
    run_dir = tmp_path / "run"

    result = CliRunner().invoke(
        pipeline,
        [
            "run",
            "retrain",
            "--run-dir",
            str(run_dir),
            *("-p", f"model={MODEL}", "-p", f"plugin={PLUGIN}", "-p", "force=true"),
            # A budget a busy test machine always meets: one stalled call is the p99 of 200.
            *("-p", "gate=max_latency_ms=250"),
        ],
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[:2] for ln in lines[1:8]] == [
        [step, "ok"]
        for step in ("snapshot", "check-drift", "train", "validate", "package", "propose")
    ] + [["notify", "ok"]]
    assert "1797 rows from scikit-learn load_digits, 10 classes" in lines[1]
    assert "(prediction)" in lines[2]  # an image model: drift of its predicted classes

    report = json.loads((run_dir / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == [
        "finiteOutputs",
        "accuracy",
        "macroF1",
        "noRegression",
        "latencyP99Ms",
        "servingSmoke",
        "reproducible",
    ]
    assert all(c["passed"] for c in checks.values()), report
    assert checks["accuracy"]["value"] >= 0.9 and checks["accuracy"]["threshold"] == 0.9
    assert checks["latencyP99Ms"]["threshold"] == 250.0
    assert checks["noRegression"]["value"] > 0  # better than the under-trained stable
    smoke = checks["servingSmoke"]["detail"]
    assert f"{expected} served by bentoml answered v2 infer: 200" in smoke
    assert "probabilities FP32 [8, 10]" in smoke

    version = expected.partition(":")[2]
    spec = DeploymentStore(settings().home).load(MODEL).spec
    assert spec.candidate == VersionRef(version=version, service="examples/digits")
    meta = staging.stored(expected).metadata
    assert meta["plugin"] == PLUGIN and meta["validation"]["passed"] is True
    assert meta["reference"]["prediction"]["kind"] == "categorical"
    assert meta["training"]["epochs"] == EPOCHS

    # The registered version scores in batch too: its metadata names the plugin that knows
    # its input, so the images go in as an .npz and come back a column per class.
    digits = load_digits()
    np.savez(tmp_path / "images.npz", image=digits.images.astype(np.float32)[:, None])
    scored = batch_predict(
        model=expected, input=tmp_path / "images.npz", output=tmp_path / "scores.parquet"
    )
    assert scored.rows == len(digits.target)
    out = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(out.columns) == [*(f"probabilities[{k}]" for k in range(10)), "model_version"]
    predicted = out[[f"probabilities[{k}]" for k in range(10)]].to_numpy().argmax(axis=1)
    assert (predicted == digits.target).mean() > 0.9
