"""The ``turnout`` command: the laptop's front door to everything turnout does.

Each command is a thin adapter: it reads the local file store ($TURNOUT_HOME), asks the pure
core (turnout.core) or starts the processes in services/ and workflows/, and says what
happened in one or two lines. Status is rendered by turnout/cli/views.py and the rollout
actions by turnout/cli/action_commands.py, shared with ``kubectl turnout``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import click
import yaml

from turnout.cli import views
from turnout.cli.action_commands import Decide, add_action_commands
from turnout.core import actions
from turnout.core.spec import (
    API_VERSION,
    KIND,
    ComparisonType,
    ModelDeployment,
    SpecError,
    dump,
    parse_deployment,
    seconds,
)
from turnout.io.deployments import DeploymentStore, NotFound
from turnout.io.processes import serve_command
from turnout.io.settings import settings

DEFAULT_MODEL = "fraud"


class _Main(click.Group):
    """The CLI, its commands listed by what they are for, with heavy command groups imported
    only when run (``turnout --help`` and the rollout commands stay fast; the pipeline pulls
    in torch, BentoML and the trainer)."""

    #: name -> ("module:attribute", one-line help shown without importing it)
    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "pipeline": (
            "workflows.cli:pipeline",
            "Retrain: drift check, train, gate, package and propose.",
        ),
        "batch-predict": (
            "workflows.batch_cli:batch_predict_command",
            "Score a CSV or Parquet file with a model version, in chunks.",
        ),
        "batch-merge": (
            "workflows.batch_cli:batch_merge_command",
            "Join batch-predict's fan-out parts into one output file.",
        ),
    }
    #: --help's sections, in order; every command is in exactly one (a test checks).
    sections: ClassVar[dict[str, tuple[str, ...]]] = {
        "Everyday": ("up", "status", "deploy", "history", "report", "demo"),
        "Rollout actions": ("promote", "abort", "pause", "resume", "rollback"),
        "Models": ("train", "models", "serve"),
        "Pipelines": ("pipeline", "batch-predict", "batch-merge"),
        "Cluster": ("operator", "route"),
        "Access": ("keys",),
        "Rendering": ("render",),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for names in self.sections.values() for name in names]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for section, names in self.sections.items():
            rows = [(name, self.one_line(ctx, name)) for name in names]
            with formatter.section(section):
                formatter.write_dl(rows)

    def one_line(self, ctx: click.Context, name: str) -> str:
        """The command's first help line, whole (click's short help cuts it mid-sentence)."""
        if name in self.lazy:
            return self.lazy[name][1]
        command = super().get_command(ctx, name)
        return (command.help or "").strip().splitlines()[0] if command else ""


@click.group(cls=_Main)
@click.version_option(package_name="turnout")
def main() -> None:
    """turnout: train, serve and roll out model versions safely.

    State (models, deployments, logs, reports) lives in $TURNOUT_HOME (default ~/.turnout).
    """


@main.command()
@click.option(
    "--data", default="synthetic", show_default=True, help="'synthetic' or a CSV/Parquet path"
)
@click.option("--rows", default=60_000, show_default=True, help="synthetic rows to generate")
@click.option(
    "--seed", default=0, show_default=True, type=int, help="seeds the data and the training"
)
@click.option(
    "--day", default=0.0, show_default=True, help="synthetic day (drift is indexed by it)"
)
@click.option(
    "--drift",
    "drift_spec",
    default="",
    help="synthetic drift, e.g. covariate=0.8,concept=0.5,mode=sudden,start_day=0",
)
@click.option("--name", default=DEFAULT_MODEL, show_default=True, help="the model's name")
@click.option("--version", "version", default=None, help="version label (default: next vN)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def train(
    data: str,
    rows: int,
    seed: int,
    day: float,
    drift_spec: str,
    name: str,
    version: str | None,
    as_json: bool,
) -> None:
    """Train a model version and register it in the model store."""
    from training import data as datasets
    from training import store
    from training.evaluate import summary
    from training.train import train as fit

    try:
        if data == "synthetic":
            drift = datasets.Drift.parse(drift_spec)
            df = datasets.generate(rows, seed=seed, day=day, drift=drift)
            source = f"synthetic rows={rows} day={day} drift={drift_spec or 'none'}"
        else:
            if drift_spec:
                raise click.UsageError("--drift applies only to --data synthetic")
            df = datasets.load_table(data)
            source = data
        if version is not None and store.exists(f"{name}:{version}"):
            raise click.ClickException(f"model {name}:{version} already exists")
        result = fit(df, seed=seed)
        tag = store.save(result, name=name, version=version, extra={"data_source": source})
    except (ValueError, datasets.DataError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tag": tag,
                    "metrics": result.metrics,
                    "baseline_metrics": result.baseline_metrics,
                    "weights_sha256": result.weights_sha256,
                    "epochs": result.epochs,
                }
            )
        )
        return
    click.echo(f"trained {tag}  ({source}, seed {seed}, {result.epochs} epochs)")
    click.echo(f"  model     {summary(result.metrics)}")
    click.echo(f"  baseline  {summary(result.baseline_metrics)}")


@main.command()
@click.option("--name", default=None, help="only this model")
@click.option("--json", "as_json", is_flag=True, help="print one JSON array")
def models(name: str | None, as_json: bool) -> None:
    """List model versions with their key metrics."""
    if not _model_store_exists():
        click.echo(f"no models in {settings().home}: run `turnout train`")
        return
    from training import store

    rows = store.list_versions(name)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no models in {settings().home}: run `turnout train`")
        return
    table = [["TAG", "CREATED", "METRICS"]]
    for r in rows:
        # Each model's own metrics, whatever its training recorded (none: said so).
        metrics = r["metrics"] or {}
        shown = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, int | float) else f"{k} {v}"
            for k, v in list(metrics.items())[:4]
        )
        table.append([r["tag"], r["created"], shown or "(no metrics recorded)"])
    click.echo("\n".join(views.columns(table)))


def _model_store_exists() -> bool:
    return (settings().bentoml_home / "models").is_dir()


def _check_model(tag: str) -> str:
    """``tag`` when that model version is in the model store; else why not and how to add it."""
    name, sep, version = tag.partition(":")
    if not sep or not name or not version:
        raise click.UsageError(f"name the version as name:version, e.g. {tag}:v1")
    how = (
        "`turnout train` trains one"
        if name == DEFAULT_MODEL
        else f"train {name} and save it to the BentoML model store with "
        f"BENTOML_HOME={settings().bentoml_home} (e.g. examples/digits/train.py)"
    )
    if not _model_store_exists():  # checked first: importing bentoml would create the store
        raise click.ClickException(f"model {tag} not found in {settings().home} (no models); {how}")
    from turnout.io.settings import use_local_model_store

    use_local_model_store()
    import bentoml
    from bentoml.exceptions import NotFound as ModelMissing

    try:
        bentoml.models.get(tag)
    except ModelMissing:
        try:
            versions = sorted(str(m.tag.version) for m in bentoml.models.list(name))
        except ModelMissing:
            versions = []
        have = f"{name} has {', '.join(versions)}" if versions else f"no {name}"
        raise click.ClickException(
            f"model {tag} not found in {settings().home} ({have}); {how}, or name a version "
            "`turnout models` lists"
        ) from None
    except ValueError as exc:  # not a valid tag
        raise click.UsageError(f"{tag}: {exc}") from None
    return tag


def _service_option(path: str | None) -> str | None:
    """A --service that names a directory, as an absolute path (the controller runs elsewhere)."""
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.is_dir() or "/" in path else path


def _check_service(service: str, *, tag: str, env: Mapping[str, str], refused: str) -> None:
    """Refuse (``refused``: "not deployed") a target that is not a turnout model server."""
    from turnout.io.processes import service_problem

    problem = service_problem(service, tag=tag, env=env)
    if problem is not None:
        raise click.ClickException(f"{refused}: {problem}")


_SERVICE_HELP = (
    "what `bentoml serve` runs: a Bento tag, a directory holding a bentofile.yaml, or "
    "module:Class from the project root"
)


@main.command()
@click.argument("tag")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=3000, show_default=True, help="port to listen on")
@click.option(
    "--service", "service", metavar="TARGET", help=_SERVICE_HELP + " (default: the fraud server)"
)
def serve(tag: str, host: str, port: int, service: str | None) -> None:
    """Serve model version TAG (e.g. fraud:v1) with BentoML."""
    service = _service_option(service)
    _check_model(tag)
    if service is not None:  # the built-in server is known to be one
        _check_service(service, tag=tag, env={}, refused="not served")
    cmd, env = serve_command(tag, host=host, port=port, service=service)
    os.execve(cmd[0], cmd, env)


@main.command()
@click.option("--routes", type=click.Path(dir_okay=False), help="route table file (local)")
@click.option("--kube", is_flag=True, help="route from the cluster's ModelDeployments")
@click.option("--namespace", "-n", multiple=True, help="with --kube: watch this namespace")
@click.option("--all-namespaces", "-A", is_flag=True, help="with --kube: watch every namespace")
@click.option(
    "--api-keys",
    type=click.Path(dir_okay=False),
    help="keys file (`turnout keys create` writes it): callers need a key from it; re-read "
    "on change. Without it the router is open",
)
@click.option(
    "--token-secret",
    type=click.Path(dir_okay=False),
    help="secret file signing A/B assignment tokens (one per line, >= 32 characters; every "
    "replica the same). Without it, a random secret for this process only",
)
@click.option("--token-ttl", help="how long an assignment token is accepted (default: 7d)")
@click.option(
    "--ledger",
    help="where accepted A/B outcomes are kept: a directory (default with --routes: "
    "$TURNOUT_HOME/ab) or 'configmaps' (default with --kube)",
)
@click.option("--replica-id", help="this replica's ledger name (default: $POD_NAME or host-pid)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, help="port to listen on")
def route(
    routes: str | None,
    kube: bool,
    namespace: tuple[str, ...],
    all_namespaces: bool,
    api_keys: str | None,
    token_secret: str | None,
    token_ttl: str | None,
    ledger: str | None,
    replica_id: str | None,
    host: str,
    port: int,
) -> None:
    """Run the router: one stable endpoint per model.

    Locally it reads a route table file (--routes); in a cluster it watches ModelDeployments
    (--kube) in the current namespace, the ones named, or all of them.
    """
    if (routes is None) == (not kube):
        raise click.UsageError("give exactly one of --routes FILE or --kube")
    if not kube and (namespace or all_namespaces):
        raise click.UsageError("--namespace and --all-namespaces go with --kube")
    if namespace and all_namespaces:
        raise click.UsageError("give --namespace or --all-namespaces, not both")
    cmd = [sys.executable, "-m", "services.router", "--host", host, "--port", str(port)]
    if routes is not None:
        cmd += ["--routes", routes]
    else:
        cmd += ["--kube", *(["--all-namespaces"] if all_namespaces else [])]
        for ns in namespace:
            cmd += ["--namespace", ns]
    for flag, value in (
        ("--api-keys", api_keys),
        ("--token-secret", token_secret),
        ("--token-ttl", token_ttl),
        ("--ledger", ledger),
        ("--replica-id", replica_id),
    ):
        if value is not None:
            cmd += [flag, value]
    os.execv(cmd[0], cmd)


def _example_row() -> list[float]:
    from training.data import FRAUD_SCHEMA, generate

    row = generate(1, seed=7)[FRAUD_SCHEMA.names].iloc[0]
    return [round(float(v), 4) for v in row]


def _ensure_versions(name: str, *, rows: int) -> tuple[str, str | None]:
    """The stable version to serve and a newer one to canary (None: none to canary).

    Only the built-in fraud model is trained when missing; any other model is the user's to
    train, register and deploy (with its --service) first.
    """
    ds = _store()
    stable = None
    if name in ds.names():
        state = ds.state(name)
        if state.status.routing.stable is not None:
            stable = state.status.routing.stable.version
        elif state.spec is not None:
            stable = state.spec.stable.version
    if name != DEFAULT_MODEL:
        if stable is None:
            raise click.ClickException(_no_user_model(name))
        return stable, None  # its candidates are the user's to deploy

    from training import store
    from training.data import generate
    from training.train import train as fit

    def make(version: str, seed: int) -> None:
        click.echo(f"training {name}:{version} ({rows} synthetic rows, seed {seed})...")
        store.save(fit(generate(rows, seed=seed), seed=seed), name=name, version=version)

    if stable is None:
        if not store.exists(f"{name}:v1"):
            make("v1", 0)
        stable = "v1"
    versions = [v["tag"].partition(":")[2] for v in store.list_versions(name)]  # newest first
    newer = [v for v in versions if v != stable]
    if not newer or versions.index(newer[0]) > versions.index(stable):
        candidate = store.next_version(name)
        make(candidate, len(versions))
    else:
        candidate = newer[0]
    return stable, candidate


def _no_user_model(name: str) -> str:
    return (
        f"no ModelDeployment {name} in {settings().home}, and turnout trains only its built-in "
        f"{DEFAULT_MODEL} model: train {name}, save it to the BentoML model store "
        f"(BENTOML_HOME={settings().bentoml_home}), deploy it with "
        f"`turnout deploy {name} --version V --service DIR` (DIR holds its bentofile.yaml, as "
        f"examples/digits does), then run `turnout up --name {name}` again"
    )


@main.command()
@click.option("--name", default=DEFAULT_MODEL, show_default=True, help="the model")
@click.option("--port", default=8080, show_default=True, help="the stable endpoint (router)")
@click.option("--steps", default="10,25,50", show_default=True, help="canary weights")
@click.option("--interval", default="20s", show_default=True, help="time per canary step")
@click.option("--rate", default=20.0, show_default=True, help="synthetic requests per second")
@click.option("--rows", default=60_000, show_default=True, help="rows to train missing models on")
@click.option("--no-canary", is_flag=True, help="serve stable only; start nothing")
@click.option("--no-prometheus", is_flag=True, help="judge from direct scrapes")
@click.option(
    "--retrain-every",
    help="run the retraining pipeline on this schedule, e.g. 3m (logs in $TURNOUT_HOME/logs)",
)
@click.option(
    "--drift",
    default="covariate=0.8,concept=0.3,mode=sudden",
    show_default=True,
    help="with --retrain-every: how the synthetic world drifts from day 0",
)
def up(
    name: str,
    port: int,
    steps: str,
    interval: str,
    rate: float,
    rows: int,
    no_canary: bool,
    no_prometheus: bool,
    retrain_every: str | None,
    drift: str,
) -> None:
    """Run the local platform with a live canary until Ctrl-C.

    Trains the demo model's versions if missing, serves the stable one behind the router,
    starts Prometheus (when installed) and the controller, canaries the newer version under
    light synthetic traffic (with A/B feedback) and shows `turnout status --watch`. Another
    model (--name) must be deployed first; it is served as deployed, without a canary.
    """
    from turnout.cli.platform import LocalPlatform
    from turnout.cli.traffic import Traffic, conversion
    from turnout.io.api_keys import LOCAL_KEY_FILE

    every = _duration_option("--retrain-every", retrain_every) if retrain_every else None
    if every is not None and name != DEFAULT_MODEL:
        raise click.UsageError(f"--retrain-every retrains the built-in {DEFAULT_MODEL} model only")
    if every is not None:
        from training.data import Drift

        try:
            Drift.parse(drift)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--drift") from None
    stable, candidate = _ensure_versions(name, rows=rows)
    ds = _store()
    if name not in ds.names():
        ctx = click.get_current_context()
        ctx.invoke(deploy, model=name, version=stable)
    # SIGTERM (e.g. from a supervisor) must stop the processes too: make it a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    platform = LocalPlatform(settings().home, port=port, prometheus=not no_prometheus)
    traffic, retraining = None, None
    try:
        click.echo(
            "starting Prometheus, the controller (it starts the model servers) and the router..."
        )
        platform.start()
        base = platform.url
        key_file = settings().home / LOCAL_KEY_FILE
        call = f"  curl -si {base}/v2/models/{name}/infer -H 'content-type: application/json'"
        call += f' \\\n    -H "authorization: Bearer $(cat {key_file})"'
        if name == DEFAULT_MODEL:
            row = _example_row()
            doc = {
                "inputs": [{"name": "features", "shape": [1, 14], "datatype": "FP32", "data": row}]
            }
            call += f" -H 'x-user-id: alice' \\\n    -d '{json.dumps(doc)}'"
        else:
            call += f" -d '...'   (the inputs {name}'s service declares)"
        if platform.api_key_made:  # shown this once; kept in key_file for local clients
            click.echo(
                f"\nmade an API key for the router (every model and action): {platform.api_key}"
                f"\n  kept in {key_file}; `turnout keys create` makes narrower ones"
            )
        click.echo(
            f"\nturnout serves {name} at {base}\n\n{call}\n\n"
            f"  routes {base}/routes   metrics {base}/metrics   "
            f"prometheus {platform.prometheus_url or '(not installed: direct scrapes)'}\n"
            f"  state  {settings().home} (deployments/, logs/)\n"
        )
        if name == DEFAULT_MODEL:  # the synthetic traffic is fraud's rows
            traffic = Traffic(
                base, name, rate=rate, outcome=conversion({}, 0.1), api_key=platform.api_key
            ).start()
        if not no_canary and candidate is not None:
            spec = ds.state(name).spec
            if spec is not None and spec.candidate is None:
                ctx = click.get_current_context()
                ctx.invoke(
                    deploy,
                    model=name,
                    version=candidate,
                    strategy="canary",
                    steps=steps,
                    interval=interval,
                )
        if every is not None:
            retraining = _Retraining(name, every_s=every, drift=drift).start()
            click.echo(
                f"retraining {name} every {retrain_every} on drifting data ({drift}); "
                f"runs log to {retraining.logs}"
            )
        click.echo("Ctrl-C stops everything. Showing `turnout status --watch` in 3 s...")
        time.sleep(3)
        ctx = click.get_current_context()
        ctx.invoke(status, name=name, watch=True, as_json=False)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("\nstopping...")
        if retraining is not None:
            retraining.stop()
        if traffic is not None:
            traffic.stop()
        platform.stop()


def _duration_option(flag: str, text: str) -> float:
    try:
        value = seconds(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if value <= 0:
        raise click.BadParameter(f"{text!r} is not a positive duration", param_hint=flag)
    return value


class _Retraining:
    """`turnout up --retrain-every`: the retraining pipeline on a short schedule, each run on
    data one simulated week further into the drift, proposing what passes its gate."""

    DAYS_PER_RUN = 7

    def __init__(self, name: str, *, every_s: float, drift: str) -> None:
        self.name, self.every_s, self.drift = name, every_s, drift
        self.logs = settings().home / "logs"
        self._stop = threading.Event()
        self._lock = threading.Lock()  # no run starts once stop() has begun
        self._thread = threading.Thread(target=self._loop, name="retrain", daemon=True)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _Retraining:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scheduling; a run in progress is interrupted and cleans up (its smoke-test
        server included) before the process group is killed."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        run = 0
        while not self._stop.wait(self.every_s):
            run += 1
            day = run * self.DAYS_PER_RUN
            params = [f"model={self.name}", "rows=20000", f"day={day}", f"drift={self.drift}"]
            args = [sys.executable, "-m", "turnout", "pipeline", "run", "retrain"]
            args += [a for p in params for a in ("-p", p)]
            with open(self.logs / f"retrain-{run:03d}.log", "wb") as log, self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            self._proc.wait()


@main.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="state directory (default: a new one under $TURNOUT_HOME/demo)",
)
@click.option(
    "--interval",
    default="3s",
    show_default=True,
    help="canary step and A/B look; the shadow mirrors for twice this",
)
@click.option(
    "--rate",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="synthetic requests per second",
)
def demo(home: str | None, interval: str, rate: float) -> None:
    """Scripted rollouts that must each behave; exit 0 only if all did.

    A healthy canary is promoted; candidates with errors, NaN scores or 3x latency are rolled
    back with the failing numbers; a divergent shadow is blocked; an A/B test with a real
    lift promotes the candidate and one without ends Inconclusive (or for stable). Runs in
    its own state directory, so `turnout up`'s deployments are left alone.
    """
    from turnout.cli import demo as stories
    from turnout.core.spec import seconds

    try:
        if seconds(interval) <= 0:
            raise ValueError("must be longer than zero")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--interval") from None
    ok = stories.run(home=Path(home) if home else None, interval=interval, rate=rate)
    sys.exit(0 if ok else 1)


# --- ModelDeployments (the local controller acts on them) ------------------------------------


def _store() -> DeploymentStore:
    return DeploymentStore(settings().home)


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        nxt = doc.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise click.UsageError(f"--set {dotted}: {key} is not an object")
        doc = nxt
    doc[keys[-1]] = value


def _parse_set(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise click.UsageError(
            f"--set {item!r}: expected field=value, e.g. analysis.maxErrorRate=0.05"
        )
    return key, yaml.safe_load(raw) if raw else ""


def _parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--env {item!r}: expected NAME=value")
        env[key] = value
    return env


@main.command()
@click.argument("model")
@click.option("--version", "version", required=True, help="the version to roll out, e.g. v2")
@click.option(
    "--strategy",
    type=click.Choice(["canary", "shadow", "abtest"]),
    default=None,
    help="how to roll it out (default: the deployment's current strategy, else canary)",
)
@click.option("--steps", help="canary weights in percent, e.g. 5,25,50")
@click.option("--interval", help="time per canary step or between A/B looks, e.g. 60s")
@click.option("--max-failed-checks", type=int, help="failed analyses that roll back")
@click.option("--duration", help="shadow: how long to mirror, e.g. 30m")
@click.option(
    "--then",
    "then",
    type=click.Choice(["Canary", "Promote", "Stop"]),
    help="shadow: what follows a passing gate",
)
@click.option("--split", type=float, help="A/B: percent of keys on the candidate")
@click.option("--min-samples", type=int, help="A/B: outcomes per arm before testing")
@click.option("--max-samples", type=int, help="A/B: outcomes per arm before Inconclusive")
@click.option("--mde", type=float, help="A/B: smallest difference in means worth detecting")
@click.option(
    "--comparison",
    type=click.Choice([t.value for t in ComparisonType], case_sensitive=False),
    help="shadow: how replies are compared with stable's (parameters by --set, e.g."
    " comparison.tolerance=0.05)",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="any spec field by path, e.g. analysis.maxErrorRate=0.05 (repeatable)",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="NAME=VALUE",
    help="environment for this version's model server (repeatable)",
)
@click.option("--image", help="container image of the version (used in a cluster)")
@click.option(
    "--service",
    "service",
    metavar="TARGET",
    help=_SERVICE_HELP + " (default: the stable version's, else the fraud server)",
)
@click.option("--name", help="ModelDeployment name (default: MODEL)")
def deploy(
    model: str,
    version: str,
    strategy: str | None,
    steps: str | None,
    interval: str | None,
    max_failed_checks: int | None,
    duration: str | None,
    then: str | None,
    split: float | None,
    min_samples: int | None,
    max_samples: int | None,
    mde: float | None,
    comparison: str | None,
    sets: tuple[str, ...],
    env: tuple[str, ...],
    image: str | None,
    service: str | None,
    name: str | None,
) -> None:
    """Roll out VERSION of MODEL; a model's first deploy makes it stable.

    Nothing is written unless the version's server would start: the model version must be in
    the store and its service must import as a turnout model server.
    """
    name = name or model
    tag = _check_model(f"{model}:{version}")
    service = _service_option(service)
    ds = _store()
    ref: dict[str, Any] = {"version": version, "env": _parse_env(env)}
    if image:
        ref["image"] = image
    if service:
        ref["service"] = service
    try:
        current = ds.load(name)
        doc = dump(current)
        doc.pop("status", None)
        first = False
    except NotFound:
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {"model": model, "stable": ref},
        }
        first = True
    except SpecError as exc:
        raise click.ClickException(f"fix the file first: {exc}") from None
    spec = doc["spec"]
    if spec["model"] != model:
        raise click.ClickException(f"ModelDeployment {name} serves model {spec['model']!r}")
    if not first:
        if spec["stable"]["version"] == version:
            raise click.ClickException(f"{model}:{version} is already stable in {name}")
        if "service" not in ref and spec["stable"].get("service"):  # same model, same server
            ref["service"] = spec["stable"]["service"]
        spec["candidate"] = ref
    strategy_doc = spec.setdefault("strategy", {})
    if strategy is not None:
        strategy_doc["type"] = {"canary": "Canary", "shadow": "Shadow", "abtest": "ABTest"}[
            strategy
        ]
    kind = strategy_doc.get("type", "Canary")
    options: dict[str, Any] = {
        "canary.steps": [float(w) for w in steps.split(",")] if steps else None,
        "canary.interval": interval if kind != "ABTest" else None,
        "canary.maxFailedChecks": max_failed_checks,
        "shadow.duration": duration,
        "shadow.then": then,
        "abTest.split": split,
        "abTest.interval": interval if kind == "ABTest" else None,
        "abTest.minSamplesPerArm": min_samples,
        "abTest.maxSamplesPerArm": max_samples,
        "abTest.minDetectableEffect": mde,
    }
    for path, value in options.items():
        if value is not None:
            _set_path(strategy_doc, path, value)
    if comparison is not None and spec.get("comparison", {}).get("type") != comparison:
        spec["comparison"] = {"type": comparison}  # another type's parameters do not carry over
    for item in sets:
        key, value = _parse_set(item)
        _set_path(spec, key, value)
    try:
        md = parse_deployment(doc)
    except (SpecError, ValueError) as exc:
        raise click.ClickException(f"not deployed: {exc}") from None
    if ref.get("service"):  # the built-in server is known to be one; its model was checked
        _check_service(ref["service"], tag=tag, env=ref["env"], refused="not deployed")
    with ds.locked(name):
        ds.save(md)
    if first:
        click.echo(f"created ModelDeployment {name}: {model}:{version} is stable")
        return
    s = md.spec.strategy
    how = {
        "Canary": f"canary steps {','.join(f'{w:g}' for w in s.canary.steps)}% every "
        f"{s.canary.interval}",
        "Shadow": f"shadow {s.shadow.percent:g}% for {s.shadow.duration}, then {s.shadow.then},"
        f" agreement: {md.spec.comparison.measure}",
        "ABTest": f"A/B split {s.ab_test.split:g}% on {s.ab_test.sticky_header}, "
        f"metric {s.ab_test.metric}",
    }[s.type.value]
    click.echo(f"{name}: rolling out {version} over {md.spec.stable.version} ({how})")
    click.echo(f"  follow it: turnout status {name} --watch    stop it: turnout rollback {name}")


def _show(name: str, *, events: int = 5) -> str:
    """NAME as turnout/cli/views.py renders it, with its last few recorded events."""
    ds = _store()
    state = ds.state(name)
    spec: Mapping[str, Any] = {}
    error = None
    try:
        spec = dump(ds.load(name).spec)
    except SpecError as exc:
        error = str(exc)
        if state.spec is not None:
            spec = dump(state.spec)
    recent = [
        views.Event(
            at=datetime.fromisoformat(r["at"]),
            type=e["type"],
            reason=e["reason"],
            message=e["message"],
        )
        for r in ds.records(name)
        for e in r["events"]
    ]
    view = views.View(
        name=name,
        spec=spec,
        status=state.status,
        spec_error=error,
        events=recent[-events:] if events else (),
    )
    return views.detail(view, now=datetime.now(UTC))


@main.command()
@click.argument("name", required=False)
@click.option("--watch", "-w", is_flag=True, help="refresh every second until Ctrl-C")
@click.option("--json", "as_json", is_flag=True, help="print the status objects as JSON")
def status(name: str | None, watch: bool, as_json: bool) -> None:
    """Phase, weights, checks with their numbers, and the experiment.

    Without NAME, every ModelDeployment in $TURNOUT_HOME, each in detail.
    """
    ds = _store()
    names = [name] if name else ds.names()
    if name and name not in ds.names():
        raise _no_deployment(name)
    if not names:
        click.echo(
            f"no ModelDeployments in {settings().home}: "
            "`turnout deploy MODEL --version V` creates one"
        )
        return
    if as_json:
        click.echo(json.dumps({n: dump(ds.state(n).status) for n in names}, indent=2))
        return
    while True:
        text = "\n\n".join(_show(n) for n in names)
        if not watch:
            click.echo(text)
            return
        click.clear()
        click.echo(f"{datetime.now().strftime('%H:%M:%S')}  turnout status --watch (Ctrl-C ends)\n")
        click.echo(text)
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return


def _patch(name: str, change: Any) -> ModelDeployment:
    try:
        return _store().update(name, change)
    except (NotFound, SpecError) as exc:
        raise click.ClickException(str(exc)) from None


def _act(ctx: click.Context, name: str, decide: Decide) -> None:
    """Carry out a rollout action on the local file store and say what it did."""
    if name not in _store().names():
        raise _no_deployment(name)
    status = _store().state(name).status
    said: list[str] = []

    def change(md: ModelDeployment) -> ModelDeployment:
        try:
            done = decide(md.spec, status)
        except actions.ActionError as exc:
            raise click.ClickException(str(exc)) from None
        said[:] = done.said
        return actions.apply(md, done)

    _patch(name, change)
    for line in said:
        click.echo(f"{name}: {line}")


add_action_commands(main, run=_act)


def _no_deployment(name: str) -> click.ClickException:
    return click.ClickException(
        f"no ModelDeployment {name!r} in {settings().home}; `turnout deploy` creates one"
    )


@main.command()
@click.argument("name")
def history(name: str) -> None:
    """Past stable versions and ended rollouts, newest first.

    Rollouts are numbered from the first; `turnout report NAME --rollout N` shows one.
    """
    ds = _store()
    if name not in ds.names():
        raise _no_deployment(name)
    from turnout.cli import report as reports

    st = ds.state(name).status
    rollouts = reports.rollouts(ds.records(name))
    if not st.history and not rollouts:
        click.echo(f"{name}: no history yet")
        return
    if st.history:
        rows = [["VERSION", "STABLE SINCE (UTC)", "REASON"]]
        rows += [
            [h.version, f"{h.promoted_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}", h.reason]
            for h in st.history
        ]
        click.echo("\n".join(views.columns(rows)))
    if rollouts:
        rows = [["ROLLOUT", "WHAT"]]
        rows += [
            [str(i), reports.describe_rollout(r)] for i, r in reversed(list(enumerate(rollouts, 1)))
        ]
        click.echo(("\n" if st.history else "") + "\n".join(views.columns(rows, right=(0,))))


@main.command()
@click.argument("name")
@click.option(
    "--rollout",
    type=click.IntRange(min=1),
    help="which rollout, numbered as `turnout history` lists them (default: the last)",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="where to write it (default: $TURNOUT_HOME/reports/NAME-rollout-N.html)",
)
def report(name: str, rollout: int | None, output: str | None) -> None:
    """Write an HTML report of one rollout: charts, checks and events."""
    from turnout.cli import report as reports

    ds = _store()
    if name not in ds.names():
        raise _no_deployment(name)
    records = ds.records(name)
    if not records:
        raise click.ClickException(f"no decisions recorded for {name!r} yet")
    try:
        count = len(reports.rollouts(records))
        page = reports.render(name, records, generated_at=datetime.now(UTC), rollout=rollout)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--rollout") from None
    except SpecError as exc:
        raise click.ClickException(f"the decision log has a bad record: {exc}") from None
    path = (
        Path(output)
        if output
        else settings().home / "reports" / f"{name}-rollout-{rollout or count}.html"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    click.echo(f"wrote {path} ({len(page) // 1024} KiB)")


# --- files generated from the models -----------------------------------------------------------


@main.group()
def render() -> None:
    """Write generated files: the CRD and the Argo workflows.

    They are checked in; tests fail when they are stale.
    """


@render.command("crd")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="default: manifests/crds/modeldeployments.turnout.dev.yaml in the project",
)
def render_crd(output: str | None) -> None:
    """Write the ModelDeployment CustomResourceDefinition."""
    from turnout.core.crd import CRD_PATH, crd_yaml
    from turnout.io.processes import project_root

    path = Path(output) if output else project_root() / CRD_PATH
    text = crd_yaml()
    if path.exists() and path.read_text() == text:
        click.echo(f"{path} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {path} (ModelDeployment CRD, {len(text.splitlines())} lines)")


@main.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def operator(args: tuple[str, ...]) -> None:
    """Run the Kubernetes operator (the Helm chart starts it in a cluster).

    Its own flags: `turnout operator --help`.
    """
    from services.controller.operator import main as run

    run(list(args))


def _register_workflows() -> None:
    """Commands that live with the workflows they run (workflows/); `pipeline` is lazy."""
    from workflows.render import render_workflows

    render.add_command(render_workflows)


def _register_keys() -> None:
    from turnout.cli.keys import keys

    main.add_command(keys)


_register_workflows()
_register_keys()


if __name__ == "__main__":
    main()
