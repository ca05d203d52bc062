"""The front door as a new user meets it: `turnout --help`, option help, commands run with no
state, and the status that `turnout status` and `kubectl turnout status` share."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from turnout.cli import kubectl, views
from turnout.cli import main as cli
from turnout.core.spec import (
    Check,
    Experiment,
    HistoryEntry,
    Metadata,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    dump,
)
from turnout.io.deployments import DeploymentStore, State

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield name, command
        if isinstance(command, click.Group):
            sub = click.Context(command, parent=ctx, info_name=name)
            yield from ((f"{name} {n}", c) for n, c in _commands(command, sub))


# --- --help ------------------------------------------------------------------------------------


def test_help_groups_every_command_exactly_once() -> None:
    group = cli.main
    assert isinstance(group, cli._Main)
    listed = [name for names in group.sections.values() for name in names]
    registered = {*click.Group.list_commands(group, click.Context(group)), *group.lazy}
    assert sorted(listed) == sorted(registered)
    assert len(listed) == len(set(listed))


def test_help_shows_each_command_with_a_whole_one_line_description() -> None:
    out = CliRunner().invoke(cli.main, ["--help"], terminal_width=100).output
    for section in cli._Main.sections:
        assert f"\n{section}:\n" in out
    lines = out.splitlines()
    for names in cli._Main.sections.values():
        for name in names:
            line = next(line for line in lines if line.strip().startswith(name + " "))
            description = line.strip()[len(name) :].strip()
            assert description.endswith("."), line  # a sentence, not cut mid-way
            assert not description.endswith("..."), line


@pytest.mark.parametrize("group", [cli.main, kubectl.cli], ids=["turnout", "kubectl-turnout"])
def test_every_option_of_every_command_says_what_it_does(group: click.Group) -> None:
    ctx = click.Context(group, info_name="turnout")
    undocumented = [
        f"{name} {'/'.join(param.opts)}"
        for name, command in _commands(group, ctx)
        for param in command.params
        if isinstance(param, click.Option) and not param.help and "--help" not in param.opts
    ]
    assert undocumented == []


# --- a command that finds no state -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["status"], "no ModelDeployments in {home}"),
        (["status", "fraud"], "no ModelDeployment 'fraud' in {home}"),
        (["history", "fraud"], "no ModelDeployment 'fraud' in {home}"),
        (["report", "fraud"], "no ModelDeployment 'fraud' in {home}"),
        (["rollback", "fraud"], "no ModelDeployment 'fraud' in {home}"),
        (["pause", "fraud"], "no ModelDeployment 'fraud' in {home}"),
        (["models"], "no models in {home}"),
        (["serve", "fraud:v1"], "model fraud:v1 not found in {home}"),
        (["deploy", "fraud", "--version", "v1"], "model fraud:v1 not found in {home}"),
    ],
)
def test_a_command_that_finds_no_state_names_the_home_and_creates_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    home = tmp_path / "nothing-here"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "BENTOML_"))}
    done = subprocess.run(
        [sys.executable, "-m", "turnout", *args],
        env={**env, "TURNOUT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert says.format(home=home) in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not home.exists()
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


# --- local status, history and report -----------------------------------------------------------


def _spec(stable: str, candidate: str | None) -> ModelDeploymentSpec:
    doc = {"model": "fraud", "stable": {"version": stable}}
    if candidate:
        doc["candidate"] = {"version": candidate}
    return ModelDeploymentSpec.model_validate(doc)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DeploymentStore:
    ds = DeploymentStore(tmp_path)
    monkeypatch.setattr(cli, "_store", lambda: ds)
    ds.save(ModelDeployment(metadata=Metadata(name="fraud"), spec=_spec("v3", "v4")))
    return ds


def test_local_and_cluster_status_render_the_same_checks_and_experiment(
    store: DeploymentStore,
) -> None:
    status = ModelDeploymentStatus(
        phase=Phase.PROGRESSING,
        checks=[
            Check(name="errorRate", value=0.2, threshold=0.01, passed=False, at=NOW),
            Check(name="latencyP99Ms", value=12.5, threshold=100, passed=True, at=NOW),
        ],
        experiment=Experiment(metric="conversion", lift=0.0123, ci=(0.001, 0.02), p_value=0.01),
    )
    store.save_state("fraud", State(status=status, spec=None))
    local = CliRunner().invoke(cli.main, ["status", "fraud"]).output
    obj = {
        "metadata": {"name": "fraud", "namespace": "default"},
        "spec": dump(_spec("v3", "v4")),
        "status": dump(status),
    }
    cluster = views.detail(kubectl.view(obj), now=NOW)
    for text in (local, cluster):
        assert "errorRate" in text and "0.2" in text and "<= 0.01" in text and "FAIL" in text
        assert "lift +0.0123 CI [+0.0010, +0.0200] p=0.01" in text
    section = lambda text: text[text.index("Checks:") : text.index("Experiment:")]  # noqa: E731
    assert section(local).split("\n", 1)[1] == section(cluster).split("\n", 1)[1]


def test_values_sit_right_aligned_under_their_header() -> None:
    rows = views.columns([["CHECK", "VALUE"], ["errorRate", "0.2"], ["p99", "12.5"]], right=(1,))
    ends = {len(line) for line in rows}
    assert len(ends) == 1  # VALUE, 0.2 and 12.5 all end in the same column


def test_history_lists_versions_and_rollouts_newest_first(store: DeploymentStore) -> None:
    history = [
        HistoryEntry(version="v3", promoted_at=NOW, reason="promoted"),
        HistoryEntry(version="v2", promoted_at=NOW - timedelta(days=1), reason="promoted"),
    ]
    store.save_state("fraud", State(status=ModelDeploymentStatus(history=history), spec=None))
    out = CliRunner().invoke(cli.main, ["history", "fraud"]).output
    assert out.index("v3") < out.index("v2")


def _rollout(store: DeploymentStore, version: str, start: datetime, end: Phase) -> None:
    for offset, phase in ((0, Phase.PROGRESSING), (60, end)):
        status = ModelDeploymentStatus(
            phase=phase, rollout_version=version, rollout_started_at=start
        )
        store.append_record("fraud", at=start + timedelta(seconds=offset), status=status, events=[])


def test_report_shows_the_rollout_history_numbers_and_writes_under_turnout_home(
    store: DeploymentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setattr(cli, "settings", lambda: type("S", (), {"home": home})())
    _rollout(store, "v4", NOW, Phase.ROLLED_BACK)
    _rollout(store, "v5", NOW + timedelta(hours=1), Phase.PROMOTED)
    listed = CliRunner().invoke(cli.main, ["history", "fraud"]).output.splitlines()
    rows = [line.split(None, 1) for line in listed[1:]]
    assert [(n, what.split(",")[0]) for n, what in rows] == [("2", "v5"), ("1", "v4")]
    assert "RolledBack" in rows[1][1]

    done = CliRunner().invoke(cli.main, ["report", "fraud", "--rollout", "1"])
    assert done.exit_code == 0, done.output
    page = (home / "reports" / "fraud-rollout-1.html").read_text()
    assert "v4" in page and "v5" not in page
    wrong = CliRunner().invoke(cli.main, ["report", "fraud", "--rollout", "3"])
    assert wrong.exit_code == 2
    assert "fraud has 2 rollouts; choose 1 to 2" in wrong.output
