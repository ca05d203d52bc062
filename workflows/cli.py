"""``turnout pipeline``: run the retrain pipeline locally, or one of its steps in a pod.

- ``turnout pipeline run retrain [--param k=v ...] [--run-dir DIR]`` runs the whole DAG
  in-process and prints its timeline; the candidate is proposed into the local store
  ($TURNOUT_HOME/deployments). Exit 0 when the run completed or stopped as designed (no
  drift), 1 when a step failed or the gate refused the candidate, 2 for a bad parameter.
- ``turnout pipeline step NAME --run-dir DIR [--param k=v ...] [--cluster]`` runs one step,
  as each Argo task does: earlier outputs come from ``DIR/<step>.json``, its own goes there
  and to ``$TURNOUT_OUTPUTS_DIR`` (default /tmp/outputs) with its output parameters. Exit 0
  when the step ran, whatever it decided (skip=true, passed=false: the DAG's ``when`` reads
  them, and a retry would decide the same), 1 with one line on stderr when it failed.
  ``--cluster`` reads and patches the ModelDeployment through the API server, and makes
  ``package`` write the bento for the image builder.
- ``turnout pipeline params`` lists the parameters.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import click

from turnout.io.settings import settings
from workflows.params import ParamError, RetrainParams, param_info
from workflows.pipeline import PIPELINES, StepContext, step
from workflows.runner import run, run_step
from workflows.steps import NOTIFY, ORDER
from workflows.targets import ClusterTarget, DeploymentTarget, LocalTarget

#: Where a step writes its Argo output parameters.
OUTPUTS_ENV = "TURNOUT_OUTPUTS_DIR"
DEFAULT_OUTPUTS = "/tmp/outputs"

_PARAM = click.option(
    "--param",
    "-p",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="a pipeline parameter (repeatable); `turnout pipeline params` lists them",
)


@click.group()
def pipeline() -> None:
    """Retraining: drift check, train, validation gate, package, propose."""


def _params(pairs: tuple[str, ...]) -> RetrainParams:
    try:
        return RetrainParams.from_pairs(pairs)
    except ParamError as exc:
        raise click.UsageError(str(exc)) from None


def _target(params: RetrainParams, *, cluster: bool) -> DeploymentTarget:
    if cluster:
        from turnout.io.kube import Kube

        return ClusterTarget(Kube.connect, namespace=params.namespace or None)
    return LocalTarget(settings().home)


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


@pipeline.command("run")
@click.argument("name", type=click.Choice(sorted(PIPELINES)))
@_PARAM
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where the run's files go (default: $TURNOUT_HOME/runs/<name>-<UTC time>)",
)
def run_command(name: str, pairs: tuple[str, ...], run_dir: Path | None) -> None:
    """Run pipeline NAME locally, step by step, printing a timeline."""
    # SIGTERM (a scheduler stopping the run) unwinds like Ctrl-C, so every `finally` runs and
    # the smoke test's model server, in a session of its own, is stopped too.
    signal.signal(signal.SIGTERM, _interrupted)
    params = _params(pairs)
    if run_dir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_dir = settings().home / "runs" / f"{name}-{stamp}"
    elif any(run_dir.glob("*.json")):
        raise click.UsageError(f"{run_dir} holds an earlier run; choose an empty --run-dir")
    ctx = StepContext(
        params=params, run_dir=run_dir.resolve(), target=_target(params, cluster=False)
    )
    click.echo(f"{name}: {' '.join(params.to_pairs()) or 'default parameters'}")
    width = max(len(s.name) for s in PIPELINES[name])
    result = run(PIPELINES[name], ctx, name=name, on_record=lambda r: click.echo(r.line(width)))
    click.echo(f"{result.outcome.value}: {result.reason()}")
    click.echo(f"run dir {result.run_dir}")
    if result.exit_code:
        raise SystemExit(result.exit_code)


@pipeline.command("step")
@click.argument("name", type=click.Choice([*ORDER, NOTIFY]))
@click.option(
    "--run-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the run's directory, shared by its steps",
)
@_PARAM
@click.option("--cluster", is_flag=True, help="in a cluster: the API server, and build a bento")
def step_command(name: str, run_dir: Path, pairs: tuple[str, ...], cluster: bool) -> None:
    """Run one step NAME of the retrain pipeline (what each Argo task runs)."""
    params = _params(pairs)
    spec = step(PIPELINES["retrain"], name)
    ctx = StepContext(
        params=params, run_dir=run_dir, target=_target(params, cluster=cluster), cluster=cluster
    )
    outputs = Path(os.environ.get(OUTPUTS_ENV) or DEFAULT_OUTPUTS)
    record, output = run_step(spec, ctx, outputs_dir=outputs)
    if output is None and name != NOTIFY:
        # (A failed gate has an output, passed=false: a decision the DAG reads, not an error.)
        click.echo(f"{name} failed: {record.summary}", err=True)
        raise SystemExit(1)
    click.echo(f"{name}: {record.summary}")


@pipeline.command("params")
def params_command() -> None:
    """List the pipeline parameters with their defaults."""
    infos = param_info()
    defaults = [info.default if info.default != "" else '""' for info in infos]
    width = max(len(d) for d in defaults)
    for info, default in zip(infos, defaults, strict=True):
        click.echo(f"  {info.name:<16} {info.type:<6} {default:<{width}} {info.help}")
