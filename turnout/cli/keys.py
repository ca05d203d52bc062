"""``turnout keys``: make, list and revoke the router's API keys.

A key is printed once, alone on stdout (``KEY=$(turnout keys create ci --model fraud)``), and
only its hash is written to the keys file, which a running router re-reads within a second.
The default file is the local platform's ($TURNOUT_HOME/api-keys.yaml); in a cluster, edit a
copy of the chart's Secret and put it back (the README's Authentication section shows how).
"""

from __future__ import annotations

from pathlib import Path

import click

from turnout.core.api_keys import ALL_MODELS, Action, KeysError
from turnout.io.api_keys import LOCAL_KEYS_FILE, create_key, read_keys, revoke_key
from turnout.io.settings import settings

_FILE_HELP = "the keys file (default: $TURNOUT_HOME/api-keys.yaml, the local router's)"


def _file(path: str | None) -> Path:
    return Path(path) if path else settings().home / LOCAL_KEYS_FILE


def _actions(text: str) -> list[Action]:
    known = [a.value for a in Action]
    wanted = [a.strip() for a in text.split(",") if a.strip()]
    unknown = sorted(set(wanted) - set(known))
    if not wanted or unknown:
        raise click.BadParameter(
            f"{', '.join(unknown) or text!r}: name one or more of {', '.join(known)},"
            " comma-separated",
            param_hint="--action",
        )
    return [Action(a) for a in wanted]


@click.group()
def keys() -> None:
    """Make, list and revoke API keys for calling the router.

    Each key may call some models (or every one, '*') for some actions: infer (predict,
    infer, model metadata), feedback (A/B outcomes), admin (/routes).
    """


@keys.command("create")
@click.argument("name")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help=f"a model the key may call, repeatable; '{ALL_MODELS}' for every model",
)
@click.option(
    "--action",
    "actions",
    default="infer",
    show_default=True,
    help="what it may do, comma-separated: infer, feedback, admin",
)
@click.option("--file", "path", type=click.Path(dir_okay=False), help=_FILE_HELP)
def create(name: str, models: tuple[str, ...], actions: str, path: str | None) -> None:
    """Make a key: printed once on stdout, its hash added to the keys file."""
    file = _file(path)
    try:
        key, made = create_key(file, name=name, models=list(models), actions=_actions(actions))
    except KeysError as exc:
        raise click.ClickException(str(exc)) from None
    [entry] = [k for k in made.keys if k.name == name]
    click.echo(
        f"API key {name!r} ({entry.scopes()}) added to {file}; it is shown only now:", err=True
    )
    click.echo(key)
    click.echo("send it as the header: Authorization: Bearer <key>", err=True)


@keys.command("list")
@click.option("--file", "path", type=click.Path(dir_okay=False), help=_FILE_HELP)
def list_keys(path: str | None) -> None:
    """The keys in the file by name, with what each may do (keys themselves are not kept)."""
    file = _file(path)
    if not file.exists():
        click.echo(f"no keys file at {file}: `turnout keys create NAME --model M` makes one")
        return
    try:
        found = read_keys(file)
    except KeysError as exc:
        raise click.ClickException(str(exc)) from None
    for key in found.keys:
        click.echo(f"{key.name}\t{key.scopes()}")
    if not found.keys:
        click.echo(f"no keys in {file}: every request to a router reading it is refused")


@keys.command("revoke")
@click.argument("name")
@click.option("--file", "path", type=click.Path(dir_okay=False), help=_FILE_HELP)
def revoke(name: str, path: str | None) -> None:
    """Remove key NAME: a router reading the file refuses it within a second."""
    file = _file(path)
    try:
        revoke_key(file, name)
    except KeysError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked API key {name!r} in {file}")
