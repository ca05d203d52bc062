"""``turnout render workflows``: write the Argo Workflows YAML generated from the definitions.

Kept apart from workflows/definitions.py so that registering the command costs nothing: Hera
and the pipeline (torch, bentoml) load only when the command runs.
"""

from __future__ import annotations

import click


@click.command("workflows")
@click.option("--check", is_flag=True, help="Exit 1 if a file is stale instead of writing it.")
def render_workflows(check: bool) -> None:
    """Write the Argo workflows: manifests/workflows/ and the chart's files/workflows/."""
    from workflows.definitions import ROOT, write

    stale = write(check=check)
    for path in stale:
        click.echo(f"{'stale' if check else 'wrote'} {path.relative_to(ROOT)}")
    if check and stale:
        raise SystemExit(1)
    if not stale:
        click.echo("manifests/workflows and helm/turnout/files/workflows are up to date")
