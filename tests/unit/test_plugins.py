"""Retraining plugins (workflows/plugins.py): the contract is checked where a plugin breaks it,
a train without metrics is refused before anything is registered, the gate is the one the
plugin configures, and batch prediction scores any model through its plugin.

The plugin here is a nearest-centroid classifier on 2-D points (numpy only), so whole runs of
the real pipeline take a second; the serving smoke test is stubbed (a real one runs in
tests/integration/test_retrain_digits.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

import turnout_sdk as turnout
from training import store
from training.data import DataError
from training.gate import GateConfig, GateReport, GateThresholds, Regression, judge
from turnout.core.spec import VersionRef, parse_deployment
from turnout.io.deployments import DeploymentStore
from turnout.io.settings import settings
from workflows import plugins, staging, steps
from workflows.batch import batch_predict, merge_parts, part_paths
from workflows.batch_cli import batch_predict_command
from workflows.cli import pipeline
from workflows.params import ParamError, RetrainParams
from workflows.plugins import Dataset, Plugin, PluginError, Trained

HERE = "tests.unit.test_plugins"


class Centroids:
    """Two classes of 2-D points; the model is each class's mean; scores are softmax(-distance)."""

    name = "centroids"
    inputs = (turnout.Tensor("x", "FP32", (-1, 2)),)
    outputs = (turnout.Tensor("scores", "FP32", (-1, 2)),)
    task = turnout.MultiClass()
    service = f"{HERE}:NotServed"  # the smoke test is stubbed here
    gate = GateConfig(
        floors={"accuracy": 0.9}, regression=Regression("accuracy", 0.02), max_latency_ms=50.0
    )

    def __init__(self, **behaviour: Any) -> None:
        self.behaviour = behaviour

    def data(self, params: RetrainParams) -> Dataset:
        rng = np.random.default_rng(params.seed)
        labels = rng.integers(0, 2, 600)
        x = (rng.normal(size=(600, 2)) + 3.0 * labels[:, None]).astype(np.float32)
        return Dataset(
            train={"x": x[:400], "label": labels[:400]},
            newest={"x": x[400:], "label": labels[400:]},
            source="two clouds",
        )

    def train(self, dataset: Dataset, *, seed: int) -> Any:
        split = dataset.train
        labels = split["label"]
        if self.behaviour.get("flip"):
            labels = 1 - labels
        centroids = np.stack([split["x"][labels == k].mean(axis=0) for k in (0, 1)])
        if self.behaviour.get("nan"):
            centroids[0, 0] = np.nan
        if self.behaviour.get("bare"):
            return {"centroids": centroids}
        metrics = {} if self.behaviour.get("no_metrics") else {"accuracy": 1.0}
        return Trained(model=centroids, metrics=metrics)

    def save(self, trained: Trained, directory: Path) -> Mapping[str, Any]:
        np.save(directory / "centroids.npy", trained.model)
        points = np.array([[0, 0], [3, 3]], dtype=np.float32)
        (scores,) = self.predict(trained.model, {"x": points}).values()
        return {"reference": turnout.reference(outputs={"scores": scores}, task=self.task)}

    def load(self, directory: Path) -> np.ndarray:
        return np.load(directory / "centroids.npy")

    def predict(self, model: np.ndarray, inputs: Mapping[str, np.ndarray]) -> Any:
        distance = np.linalg.norm(inputs["x"][:, None, :] - model[None], axis=2)
        scores = np.exp(-distance) / np.exp(-distance).sum(axis=1, keepdims=True)
        name = self.behaviour.get("output", "scores")
        return {name: scores.astype(np.float32)}

    def evaluate(self, model: np.ndarray, split: Any) -> dict[str, float]:
        scores = self.predict(model, split)["scores"]
        return {"accuracy": float((scores.argmax(axis=1) == split["label"]).mean())}


CENTROIDS = Centroids()
NO_METRICS = Centroids(no_metrics=True)
BARE = Centroids(bare=True)
FLIPPED = Centroids(flip=True)
NAN = Centroids(nan=True)
WRONG_OUTPUT = Centroids(output="y")


class Half:
    name = "half"

    def data(self, params: RetrainParams) -> Dataset:
        raise AssertionError("must not be called")


class BadTensors(Centroids):
    inputs = (turnout.Tensor("x", "BYTES", (-1, 2)),)


class BadGate(Centroids):
    gate = 0.9  # type: ignore[assignment]


HALF, BAD_TENSORS, BAD_GATE = Half(), BadTensors(), BadGate()


# --- loading: refused up front, naming the plugin -------------------------------------------


def test_the_fraud_plugin_is_the_default() -> None:
    plugin = RetrainParams().load_plugin()
    assert plugin.path == "workflows.fraud:PIPELINE" and plugin.name == "fraud"
    assert [(t.name, t.datatype) for t in plugin.outputs] == [("probability", "FP32")]
    assert plugin.service is None  # the built-in fraud server
    # Its gate keeps the fraud thresholds' names, so `-p gate=...` reads as it always did.
    assert set(plugin.gate.settings()) == set(GateThresholds().to_dict())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("examples.digits", "must be module:attribute, e.g. examples.digits.pipeline:PIPELINE"),
        ("no.such.module:X", "cannot import no.such.module: ModuleNotFoundError"),
        (f"{HERE}:MISSING", f"{HERE} has no MISSING"),
        (f"{HERE}:HALF", "lacks inputs, outputs, task, service, gate, train, save, load, predict"),
        (f"{HERE}:BAD_TENSORS", "inputs: "),
        (f"{HERE}:BAD_GATE", "gate must be a GateConfig"),
    ],
)
def test_a_plugin_that_cannot_serve_is_refused_naming_it(path: str, message: str) -> None:
    with pytest.raises(ParamError, match="parameter 'plugin'") as caught:
        RetrainParams.from_pairs([f"plugin={path}"])
    assert message in str(caught.value)
    assert path in str(caught.value) or "must be module:attribute" in str(caught.value)


def test_the_cli_refuses_a_bad_plugin_before_any_step(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        pipeline, ["run", "retrain", "-p", f"plugin={HERE}:HALF", "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert f"plugin {HERE}:HALF lacks" in result.output
    assert not list(tmp_path.iterdir())


def test_a_plugin_is_found_from_the_project_root_wherever_turnout_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    plugin = plugins.load("examples.digits.pipeline:PIPELINE")
    assert plugin.name == "digits" and plugin.service == "examples/digits"
    assert plugin.gate.floors["accuracy"] == 0.9


# --- the gate each plugin configures --------------------------------------------------------


def test_gate_thresholds_are_the_plugins_and_the_gate_parameter_changes_them() -> None:
    base = [f"plugin={HERE}:CENTROIDS"]
    config = RetrainParams.from_pairs([*base, "gate=min_accuracy=0.95,max_regression=0.1"])
    gate = config.gate_config()
    assert gate.floors == {"accuracy": 0.95}
    assert gate.regression == Regression("accuracy", 0.1)
    assert gate.max_latency_ms == 50.0  # the plugin's own, not the default
    with pytest.raises(ParamError, match=r"unknown threshold 'min_roc_auc' \(known: min_acc"):
        RetrainParams.from_pairs([*base, "gate=min_roc_auc=0.9"])
    with pytest.raises(ParamError, match=r"parameter 'gate\.latency_rows' must be an integer"):
        RetrainParams.from_pairs([*base, "gate=latency_rows=many"])


def test_a_gate_config_round_trips_in_the_report() -> None:
    config = GateConfig(
        floors={"accuracy": 0.9}, regression=Regression("accuracy", 0.02), extra={"min_x": 3}
    )
    report = GateReport(model="m:v2", checks=(), thresholds=config)
    assert GateReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    # A report from before gates were per model: the fraud gate's flat thresholds.
    old = {"model": "fraud:v2", "checks": [], "thresholds": GateThresholds().to_dict()}
    assert GateReport.from_dict(old).thresholds == GateThresholds().config()


def test_judge_names_a_metric_evaluate_did_not_return() -> None:
    report = judge(
        model="m:v2",
        config=GateConfig(floors={"accuracy": 0.9, "macro_f1": 0.9}),
        outputs={"scores": np.ones((3, 2))},
        metrics={"accuracy": 0.95},
        stable_metrics=lambda: None,
        latency_ms=lambda n: np.full(n, 1.0),
        serve_smoke=lambda: (True, "ok"),
        reproduce=lambda: "h",
        weights_sha256="h",
    )
    assert [c.name for c in report.failed()] == ["macroF1"]
    assert "evaluate returned no 'macro_f1' (it returned accuracy)" in report.failed()[0].detail
    assert report.check("accuracy").threshold == 0.9 and report.check("accuracy").op == ">="


# --- whole runs of the pipeline with a plugin -----------------------------------------------


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(steps, "default_smoke_test", lambda d, t: (True, "not served here"))
    yield


def stable_version(model: str) -> str:
    """Register a first version of the centroids model, as a user would before retraining."""
    tag = f"{model}:v1"
    if not store.exists(tag):
        plugin = plugins.load(f"{HERE}:CENTROIDS")
        params = RetrainParams.from_pairs([f"plugin={HERE}:CENTROIDS"])
        trained = plugin.train(plugin.data(params), seed=0)
        directory = Path(settings().home) / "staged" / model
        steps._stage(plugin, trained, directory, extra={})
        staging.register(directory, tag=tag, labels={"task": "centroids"})
    return tag


def deploy(name: str, model: str) -> None:
    stable_version(model)
    DeploymentStore(settings().home).save(
        parse_deployment(
            {
                "apiVersion": "turnout.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name},
                "spec": {"model": model, "stable": {"version": "v1"}},
            }
        )
    )


def retrain(run_dir: Path, model: str, plugin: str, *pairs: str) -> Result:
    args = ["run", "retrain", "--run-dir", str(run_dir), "-p", f"model={model}"]
    for pair in (f"plugin={HERE}:{plugin}", "force=true", *pairs):
        args += ["-p", pair]
    return CliRunner().invoke(pipeline, args)


def versions(model: str) -> list[str]:
    return sorted(r["tag"] for r in store.list_versions(model))


def test_a_plugin_retrains_and_proposes_with_its_own_gate(tmp_path: Path, no_serving: None) -> None:
    deploy("centroids-ok", "centroids")
    result = retrain(tmp_path / "run", "centroids", "CENTROIDS", "deployment=centroids-ok")

    assert result.exit_code == 0, result.output
    assert "completed: all steps ran" in result.output
    assert "600 rows from two clouds; newest 200 held out for the gate" in result.output
    assert "held-out accuracy 1.0000" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [c["name"] for c in report["checks"]] == [
        "finiteOutputs",
        "accuracy",
        "noRegression",
        "latencyP99Ms",
        "servingSmoke",
        "reproducible",
    ]
    assert report["thresholds"]["floors"] == {"accuracy": 0.9}
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["accuracy"]["value"] > 0.95 and checks["accuracy"]["threshold"] == 0.9
    assert checks["latencyP99Ms"]["threshold"] == 50.0
    assert checks["reproducible"]["passed"]  # the hash of the files save wrote, twice
    candidate = DeploymentStore(settings().home).load("centroids-ok").spec.candidate
    assert candidate == VersionRef(version="v2")
    meta = staging.stored("centroids:v2").metadata
    assert meta["plugin"] == f"{HERE}:CENTROIDS" and meta["validation"]["passed"] is True


def test_a_train_without_metrics_is_refused_before_anything_is_registered(
    tmp_path: Path, no_serving: None
) -> None:
    deploy("centroids-quiet", "centroids-nm")
    before = versions("centroids-nm")
    for plugin, said in (
        ("NO_METRICS", "train() returned no metrics (Trained.metrics is empty); return Trained("),
        ("BARE", "train() returned a dict and no metrics; return Trained(model=..., metrics="),
    ):
        result = retrain(tmp_path / plugin, "centroids-nm", plugin, "deployment=centroids-quiet")
        assert result.exit_code == 1, result.output
        line = " ".join(result.output.split())
        assert f"train failed: plugin {HERE}:{plugin}: {said}" in line
        assert "validate skipped" in line and "package skipped" in line
        assert not (tmp_path / plugin / "candidate").exists()
    assert versions("centroids-nm") == before
    assert DeploymentStore(settings().home).load("centroids-quiet").spec.candidate is None


@pytest.mark.parametrize(
    ("plugin", "pairs", "failed"),
    [
        ("CENTROIDS", ("gate=min_accuracy=0.999",), {"accuracy"}),
        ("FLIPPED", (), {"accuracy", "noRegression"}),
        ("NAN", (), {"finiteOutputs", "accuracy", "noRegression"}),
    ],
)
def test_a_candidate_failing_the_plugins_gate_is_not_registered(
    tmp_path: Path, no_serving: None, plugin: str, pairs: tuple[str, ...], failed: set[str]
) -> None:
    deploy("centroids-strict", "centroids-gate")
    before = versions("centroids-gate")
    result = retrain(
        tmp_path / "run", "centroids-gate", plugin, "deployment=centroids-strict", *pairs
    )
    assert result.exit_code == 1, result.output
    assert "not registered, not proposed" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["failed"]) == failed
    if plugin == "NAN":
        accuracy = next(c for c in report["checks"] if c["name"] == "accuracy")
        assert "outputs are NaN or infinite" in accuracy["detail"]
    assert versions("centroids-gate") == before


# --- the entry points' returns are checked ------------------------------------------------


def test_predict_must_return_the_declared_outputs() -> None:
    plugin = Plugin("x:WRONG_OUTPUT", WRONG_OUTPUT)
    wrong = r"predict\(\) returned outputs \['y'\], not \['scores'\]"
    with pytest.raises(PluginError, match=wrong):
        plugin.predict(np.zeros((2, 2)), {"x": np.zeros((2, 2), dtype=np.float32)})


def test_data_must_be_a_dataset_of_equal_length_arrays() -> None:
    class Ragged(Centroids):
        def data(self, params: RetrainParams) -> Dataset:
            return Dataset(train={"x": np.zeros((3, 2)), "label": np.zeros(2)}, newest={})

    with pytest.raises(PluginError, match="train split that holds arrays of different lengths"):
        Plugin("x:RAGGED", Ragged()).data(RetrainParams())


def test_a_dataset_round_trips_through_files_and_a_changed_file_is_noticed(
    tmp_path: Path,
) -> None:
    dataset = Dataset(
        train=pd.DataFrame({"a": [1.0, 2.0], "is_fraud": [0, 1]}),
        newest={"x": np.arange(6, dtype=np.float32).reshape(3, 2), "label": np.arange(3)},
        source="s",
    )
    stored = plugins.write_dataset(dataset, tmp_path)
    assert stored.files == {"train": "train.parquet", "newest": "newest.npz"}
    assert stored.rows == {"train": 2, "newest": 3}
    back = plugins.read_dataset(tmp_path, stored, source="s")
    pd.testing.assert_frame_equal(back.train, dataset.train)
    np.testing.assert_array_equal(back.newest["x"], dataset.newest["x"])
    (tmp_path / "newest.npz").write_bytes(b"changed")
    with pytest.raises(ValueError, match="changed since the snapshot step wrote it"):
        plugins.read_dataset(tmp_path, stored)


# --- batch prediction of any model, through its plugin --------------------------------------


class CentroidsTable(Centroids):
    """The same model, for rows of a table with columns x0 and x1."""

    def inputs_of(self, split: Any) -> dict[str, np.ndarray]:
        if isinstance(split, pd.DataFrame):
            return {"x": split[["x0", "x1"]].to_numpy(dtype=np.float32)}
        return {"x": split["x"]}


TABLE = CentroidsTable()


@pytest.fixture
def points(tmp_path: Path) -> np.ndarray:
    x = np.random.default_rng(3).normal(size=(50, 2)).astype(np.float32) * 3
    np.savez(tmp_path / "points.npz", x=x)
    return x


def expected_scores(tag: str, x: np.ndarray) -> np.ndarray:
    plugin = plugins.load(f"{HERE}:CENTROIDS")
    return plugin.predict(plugin.load(staging.stored(tag).path), {"x": x})["scores"]


def test_batch_scores_arrays_with_the_plugin_its_metadata_names(
    tmp_path: Path, points: np.ndarray
) -> None:
    tag = stable_version("centroids-batch")
    result = batch_predict(model=tag, input=tmp_path / "points.npz", output=tmp_path / "s.npz")
    assert result.rows == 50 and result.model == tag
    with np.load(tmp_path / "s.npz", allow_pickle=False) as out:
        np.testing.assert_allclose(out["scores"], expected_scores(tag, points), rtol=1e-6)
        assert str(out["model_version"]) == "v1"


def test_batch_scores_a_table_into_a_column_per_output_value(
    tmp_path: Path, points: np.ndarray
) -> None:
    tag = stable_version("centroids-batch")
    table = pd.DataFrame(
        {"id": [f"p{i}" for i in range(50)], "x0": points[:, 0], "x1": points[:, 1]}
    )
    table.to_parquet(tmp_path / "points.parquet")
    with pytest.raises(PluginError, match=r"inputs_of\(\) is missing"):
        batch_predict(model=tag, input=tmp_path / "points.parquet", output=tmp_path / "s.csv")

    batch_predict(
        model=tag,
        input=tmp_path / "points.parquet",
        output=tmp_path / "s.csv",
        chunk_rows=16,
        plugin=f"{HERE}:TABLE",
    )
    out = pd.read_csv(tmp_path / "s.csv")
    assert list(out.columns) == ["id", "x0", "x1", "scores[0]", "scores[1]", "model_version"]
    assert list(out["id"]) == list(table["id"]) and set(out["model_version"]) == {"v1"}
    scores = out[["scores[0]", "scores[1]"]].to_numpy()
    np.testing.assert_allclose(scores, expected_scores(tag, points), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_batch_fans_out_any_model_and_merges_in_order(
    tmp_path: Path, points: np.ndarray, suffix: str
) -> None:
    tag = stable_version("centroids-batch")
    whole = tmp_path / f"whole{suffix}"
    batch_predict(model=tag, input=tmp_path / "points.npz", output=whole)
    out = tmp_path / f"merged{suffix}"
    for i in range(3):
        batch_predict(
            model=tag, input=tmp_path / "points.npz", output=out, chunk_index=i, chunk_count=3
        )
    assert merge_parts(part_paths(out, 3), out).rows == 50
    if suffix == ".npz":
        with np.load(whole) as a, np.load(out) as b:
            np.testing.assert_array_equal(a["scores"], b["scores"])
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(whole), pd.read_parquet(out))


def test_batch_of_a_model_naming_no_plugin_says_how_to_give_one(tmp_path: Path) -> None:
    directory = tmp_path / "by-hand"
    directory.mkdir()
    np.save(directory / "centroids.npy", np.zeros((2, 2)))
    (directory / "metadata.json").write_text("{}")
    tag = "centroids-hand:v1"
    if not store.exists(tag):
        staging.register(directory, tag=tag, labels={})
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"names no retraining plugin .* give the plugin"):
        batch_predict(model=tag, input=tmp_path / "in.npz", output=tmp_path / "o.npz")
    result = CliRunner().invoke(
        batch_predict_command,
        [tag, str(tmp_path / "in.npz"), str(tmp_path / "o.npz"), "--plugin", f"{HERE}:CENTROIDS"],
    )
    assert result.exit_code == 0, result.output
    assert f"scored 3 rows with {tag}" in result.output
