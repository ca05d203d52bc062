"""The ``turnout`` command line."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from turnout.settings import settings, use_local_model_store

DEFAULT_MODEL = "fraud"


def _project_root() -> Path:
    spec = importlib.util.find_spec("services")
    if spec is None or spec.origin is None:
        raise click.ClickException("turnout's services package is not installed")
    return Path(spec.origin).resolve().parent.parent


@click.group()
@click.version_option(package_name="turnout")
def main() -> None:
    """turnout: train, serve and roll out model versions safely."""
    use_local_model_store()


@main.command()
@click.option(
    "--data", default="synthetic", show_default=True, help="'synthetic' or a CSV/Parquet path"
)
@click.option("--rows", default=60_000, show_default=True, help="synthetic rows to generate")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--day", default=0.0, show_default=True, help="synthetic day (drift is indexed by it)"
)
@click.option(
    "--drift",
    "drift_spec",
    default="",
    help="synthetic drift, e.g. covariate=0.8,concept=0.5,mode=sudden,start_day=0",
)
@click.option("--name", default=DEFAULT_MODEL, show_default=True)
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
@click.option("--json", "as_json", is_flag=True)
def models(name: str | None, as_json: bool) -> None:
    """List model versions with their key metrics."""
    from training import store

    rows = store.list_versions(name)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no models yet: run `turnout train`")
        return
    click.echo(f"{'TAG':<24} {'CREATED':<26} {'ROC-AUC':>8} {'PR-AUC':>8} {'BASE PR':>8}")
    for r in rows:
        m, b = r["metrics"], r["baseline_metrics"]
        click.echo(
            f"{r['tag']:<24} {r['created']:<26} {m.get('roc_auc', 0):>8.4f} "
            f"{m.get('pr_auc', 0):>8.4f} {b.get('pr_auc', 0):>8.4f}"
        )


def _server_home(tag: str, port: int) -> Path:
    """A BENTOML_HOME of the server's own, sharing the model store.

    `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir at start-up, so two servers
    (say stable and candidate) under one BENTOML_HOME would erase and then mix each other's
    metrics. Each server gets its own home whose `models` links to the shared store.
    """
    store = use_local_model_store() / "models"
    store.mkdir(parents=True, exist_ok=True)
    home = settings().home / "run" / f"{tag.replace(':', '-')}-{port}"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if not link.is_symlink():
        link.symlink_to(store, target_is_directory=True)
    return home


def _serve_command(tag: str, *, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    # bentoml reads BENTOML_HOME before it imports the service, so pass it explicitly.
    env = {**os.environ, "TURNOUT_MODEL": tag, "BENTOML_HOME": str(_server_home(tag, port))}
    env.setdefault("TURNOUT_HOME", str(settings().home))
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "services.model.service:FraudModel",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(_project_root()),
    ]
    return cmd, env


def _check_model(tag: str) -> str:
    from training import store

    if ":" not in tag:
        raise click.UsageError(f"name the version as name:version, e.g. {tag}:v1")
    if not store.exists(tag):
        raise click.ClickException(f"model {tag} not found; `turnout models` lists what exists")
    return tag


@main.command()
@click.argument("tag")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
def serve(tag: str, host: str, port: int) -> None:
    """Serve model version TAG (e.g. fraud:v1) with BentoML."""
    cmd, env = _serve_command(_check_model(tag), host=host, port=port)
    os.execve(cmd[0], cmd, env)


@main.command()
@click.option("--routes", required=True, type=click.Path(dir_okay=False), help="route table file")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def route(routes: str, host: str, port: int) -> None:
    """Run the router: one stable endpoint per model in front of its versions."""
    cmd = [sys.executable, "-m", "services.router", "--routes", routes, "--host", host]
    cmd += ["--port", str(port)]
    os.execv(cmd[0], cmd)


def wait_ready(url: str, *, timeout: float, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise click.ClickException(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise click.ClickException(f"{url} not ready after {timeout:.0f}s")


def _example_row() -> list[float]:
    from training.data import FRAUD_SCHEMA, generate

    row = generate(1, seed=7)[FRAUD_SCHEMA.names].iloc[0]
    return [round(float(v), 4) for v in row]


@main.command()
@click.option("--name", default=DEFAULT_MODEL, show_default=True)
@click.option("--port", default=8080, show_default=True, help="the stable endpoint (router)")
@click.option("--model-port", default=3000, show_default=True, help="the model server behind it")
def up(name: str, port: int, model_port: int) -> None:
    """Run the local platform: train the demo model if missing, serve it behind the router."""
    from training import store

    versions = store.list_versions(name)
    if versions:
        tag = versions[0]["tag"]
        click.echo(f"model store: {settings().bentoml_home} (serving newest: {tag})")
    else:
        click.echo("no model yet: training the demo model (about a minute)...")
        from training.data import generate
        from training.train import train as fit

        tag = store.save(fit(generate(60_000, seed=0), seed=0), name=name, version="v1")
        click.echo(f"trained {tag}")
    model, _, version = tag.partition(":")
    model_url = f"http://127.0.0.1:{model_port}"
    routes = settings().home / "routes.yaml"
    routes.write_text(
        f"# Written by `turnout up`; edit it and the router reloads within a second.\n"
        f"models:\n  {model}:\n    stable: {{version: {version}, url: '{model_url}'}}\n"
    )
    serve_cmd, serve_env = _serve_command(tag, host="127.0.0.1", port=model_port)
    route_cmd = [sys.executable, "-m", "services.router", "--routes", str(routes)]
    route_cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # SIGTERM (e.g. from a supervisor) must stop the servers too: turn it into SystemExit so
    # the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    procs = [subprocess.Popen(serve_cmd, env=serve_env)]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{model_url}/v2/health/ready", timeout=120, process=procs[0])
        procs.append(subprocess.Popen(route_cmd))
        wait_ready(f"{base}/v2/health/ready", timeout=60, process=procs[1])
        body = json.dumps(
            {"inputs": [{"name": "features", "shape": [1, 14], "datatype": "FP32",
                         "data": _example_row()}]}
        )  # fmt: skip
        click.echo(
            f"\nturnout is serving {tag} at {base} (router -> model server {model_url})\n\n"
            f"  curl -si {base}/v2/models/{model}/infer -H 'content-type: application/json' \\\n"
            f"    -H 'x-user-id: alice' -d '{body}'\n\n"
            f"  routes: {base}/routes (file {routes})   metrics: {base}/metrics, "
            f"{model_url}/metrics\n"
            "Ctrl-C stops it."
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
