"""``turnout pipeline`` end to end on this machine: real data, real training, the real gate.

The stable model is the session's trained model registered as ``fraud-rt:v1`` (its own name,
so versions registered here never collide with other tests' ``fraud:vN``), and each test
proposes into a ModelDeployment of its own in the test TURNOUT_HOME. What a user would check:
the exit code and the line that says why, the ModelDeployment's spec afterwards, and what the
model store holds — a candidate that is refused, or a run that fails on bad input, registers
nothing and proposes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from training import store
from training.data import MERCHANT_CATEGORIES, Drift, generate
from turnout.core.spec import VersionRef, parse_deployment
from turnout.io.deployments import DeploymentStore
from turnout.io.settings import settings
from workflows import steps
from workflows.cli import pipeline

pytestmark = pytest.mark.slow

MODEL = "fraud-rt"
DRIFT = "covariate=0.8,concept=0.5,mode=sudden"


@pytest.fixture(scope="module")
def stable(trained: tuple[Any, str]) -> str:
    result, _ = trained
    tag = f"{MODEL}:v1"
    if not store.exists(tag):
        store.save(result, name=MODEL, version="v1")
    return tag


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `pipeline step` writes Argo's output parameters (/tmp/outputs in a pod)."""
    monkeypatch.setenv("TURNOUT_OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def deployments() -> DeploymentStore:
    return DeploymentStore(settings().home)


def deploy(name: str, *, stable: str = "v1") -> str:
    deployments().save(
        parse_deployment(
            {
                "apiVersion": "turnout.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name},
                "spec": {"model": MODEL, "stable": {"version": stable}},
            }
        )
    )
    return name


def versions() -> list[str]:
    return sorted(r["tag"] for r in store.list_versions(MODEL))


def params(*pairs: str) -> list[str]:
    out = ["-p", f"model={MODEL}", "-p", "rows=20000"]
    for pair in pairs:
        out += ["-p", pair]
    return out


def retrain(run_dir: Path, *pairs: str) -> Result:
    return CliRunner().invoke(
        pipeline, ["run", "retrain", "--run-dir", str(run_dir), *params(*pairs)]
    )


def step(name: str, run_dir: Path, *pairs: str, cluster: bool = False) -> Result:
    flags = ["--cluster"] if cluster else []
    return CliRunner().invoke(
        pipeline, ["step", name, "--run-dir", str(run_dir), *params(*pairs), *flags]
    )


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Skip the `bentoml serve` smoke test where the test is about something else (the real
    one runs in the drift test)."""
    monkeypatch.setattr(steps, "default_smoke_test", lambda d, t: (True, "not served here"))
    yield


def test_drift_injected_run_registers_and_proposes_a_validated_candidate(
    stable: str, tmp_path: Path, outputs: Path
) -> None:
    name = deploy("rt-drift")
    expected = f"{MODEL}:{store.next_version(MODEL)}"
    run_dir = tmp_path / "run"

    result = retrain(run_dir, f"deployment={name}", f"drift={DRIFT}", "seed=1")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[:2] for ln in lines[1:8]] == [
        ["snapshot", "ok"],
        ["check-drift", "ok"],
        ["train", "ok"],
        ["validate", "ok"],
        ["package", "ok"],
        ["propose", "ok"],
        ["notify", "ok"],
    ]
    assert "drift, retrain" in lines[2]
    assert "completed: all steps ran" in result.output

    version = expected.partition(":")[2]
    spec = deployments().load(name).spec
    assert spec.candidate == VersionRef(version=version)
    assert spec.stable.version == "v1"

    candidate = json.loads((run_dir / "train.json").read_text())
    meta = store.load(expected).metadata
    assert meta["weights_sha256"] == candidate["weights_sha256"]
    assert meta["validation"]["passed"] is True
    checks = {c["name"]: c for c in meta["validation"]["checks"]}
    assert checks["servingSmoke"]["passed"] and checks["reproducible"]["passed"]
    assert checks["noRegression"]["value"] > 0  # the stable model has not seen this world
    assert meta["retrain"]["stable"] == stable
    assert "passed" in (run_dir / "report.md").read_text().splitlines()[0]

    # In a cluster, package (retried here) also writes the bento the image builder needs.
    again = step(
        "package",
        run_dir,
        f"deployment={name}",
        f"drift={DRIFT}",
        "seed=1",
        "image_registry=registry.example/ml",
        cluster=True,
    )
    assert again.exit_code == 0, again.output
    bento = run_dir / "bento"
    assert (bento / "env" / "docker" / "Dockerfile").is_file()
    assert (bento / "models" / MODEL / version / "weights.safetensors").is_file()
    assert (outputs / "image").read_text() == f"registry.example/ml/{MODEL}:{version}"
    assert (outputs / "version").read_text() == version
    assert versions().count(expected) == 1


def test_no_drift_skips_training_quickly(stable: str, tmp_path: Path) -> None:
    name = deploy("rt-quiet")
    before = versions()
    start = time.monotonic()

    result = retrain(tmp_path / "run", f"deployment={name}", "seed=5")

    took = time.monotonic() - start
    assert result.exit_code == 0, result.output
    assert "no drift, nothing to retrain" in result.output
    assert "train       skipped" in result.output
    assert "skipped: stopped after check-drift" in result.output
    assert took < 20, f"a run without drift took {took:.1f}s"
    assert not (tmp_path / "run" / "candidate").exists()
    assert versions() == before
    assert deployments().load(name).spec.candidate is None


def test_a_candidate_failing_the_gate_is_neither_registered_nor_proposed(
    stable: str, tmp_path: Path, no_serving: None
) -> None:
    # A user's file this time, categories as names, from the drifted world.
    df = generate(20_000, seed=4, drift=Drift.parse(DRIFT))
    df["merchant_category"] = [MERCHANT_CATEGORIES[c] for c in df["merchant_category"]]
    source = tmp_path / "transactions.csv"
    df.to_csv(source, index=False)
    name = deploy("rt-strict")
    before = versions()

    result = retrain(
        tmp_path / "run", f"deployment={name}", f"source={source}", "gate=min_roc_auc=0.999"
    )

    assert result.exit_code == 1, result.output
    assert "validate    failed" in result.output
    assert "gate failed for fraud-rt:" in result.output and "rocAuc:" in result.output
    assert "package     skipped" in result.output and "propose     skipped" in result.output
    assert "not registered, not proposed" in result.output
    assert versions() == before
    assert deployments().load(name).spec.candidate is None
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["passed"] is False and "rocAuc" in report["failed"]


def bad_input(case: str, tmp_path: Path) -> list[str]:
    if case == "missing file":
        return [f"source={tmp_path}/missing.csv"]
    if case == "malformed csv":
        df = generate(2_000, seed=9)
        df["amount"] = df["amount"].astype(object)
        df.loc[3, "amount"] = "twelve euros"
        df.to_csv(tmp_path / "bad.csv", index=False)
        return [f"source={tmp_path}/bad.csv"]
    if case == "unknown model":
        return ["model=nosuch"]
    if case == "stable not in store":
        return [f"deployment={deploy('rt-ghost', stable='v9')}"]
    assert case == "wrong type"
    return ["rows=lots"]


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("missing file", 1, "snapshot failed: {tmp}/missing.csv: file not found"),
        ("malformed csv", 1, "column 'amount' must be numeric; row 3 has 'twelve euros'"),
        ("unknown model", 1, "check-drift failed: no ModelDeployment 'nosuch'"),
        ("stable not in store", 1, "model fraud-rt:v9, the stable version of ModelDeployment"),
        ("wrong type", 2, "parameter 'rows' must be an integer, got 'lots'"),
    ],
)
def test_bad_input_fails_clearly_and_registers_nothing(
    stable: str, tmp_path: Path, case: str, exit_code: int, message: str
) -> None:
    pairs = bad_input(case, tmp_path)
    before = versions()

    result = retrain(tmp_path / "run", *pairs)

    assert result.exit_code == exit_code, result.output
    assert message.format(tmp=tmp_path) in " ".join(result.output.split())
    assert versions() == before
    assert not (tmp_path / "run" / "candidate").exists()


def test_steps_run_one_at_a_time_as_argo_runs_them(
    stable: str, tmp_path: Path, outputs: Path
) -> None:
    name = deploy("rt-argo")
    run_dir = tmp_path / "run"
    for each in ("snapshot", "check-drift"):
        result = step(each, run_dir, f"deployment={name}", "seed=3")
        assert result.exit_code == 0, result.output
    assert (outputs / "skip").read_text() == "true"
    drift = json.loads((outputs / "check-drift.json").read_text())
    assert drift["skip"] is True and drift["stable"] == stable
    assert {f["name"] for f in drift["features"]} >= {"amount", "merchant_category"}

    result = step("notify", run_dir, f"deployment={name}", "workflow_status=Succeeded")
    assert result.exit_code == 0, result.output
    notice = json.loads((outputs / "notify.json").read_text())
    assert notice["outcome"] == "skipped"
    assert notice["text"].startswith("retrain fraud-rt: skipped: max PSI")
