"""``kubectl turnout``: the operator commands of ``turnout``, for ModelDeployments in a cluster.

kubectl runs any executable named ``kubectl-<name>`` on PATH for ``kubectl <name>``; this is
``kubectl-turnout`` (a console script). It takes kubectl's flags anywhere on the line:
``-n/--namespace``, ``--context``, ``--kubeconfig`` (else KUBECONFIG, else ~/.kube/config),
and ``-A/--all-namespaces`` for status.

The actions are turnout/core/actions.py's, shared with the local CLI; this module reads the
object, asks, and sends the change as a JSON merge patch carrying the object's
``metadata.resourceVersion``. If anyone wrote in between (the operator updates status all the
time) the server answers Conflict and the command reads again and decides afresh, so e.g. a
rollback never acts on a history it did not see. Every cluster call goes through
turnout/io/kube.py; tests replace :func:`connect`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click
from pydantic import ValidationError

from turnout.cli import views
from turnout.cli.action_commands import Decide, add_action_commands
from turnout.core import actions
from turnout.core.actions import ActionError, Change
from turnout.core.crd import GROUP
from turnout.core.spec import (
    KIND,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    describe,
)
from turnout.io.kube import Conflict, Kube, KubeApi, KubeError, NotFound, Obj

#: How kubectl names the kind in its messages (``modeldeployment.turnout.dev/fraud``).
RESOURCE = f"{KIND.lower()}.{GROUP}"
#: Read-decide-patch rounds before a command gives up on an object that keeps changing.
ATTEMPTS = 3

F = TypeVar("F", bound=Callable[..., Any])


def connect(*, kubeconfig: str | None, context: str | None) -> KubeApi:
    """The cluster, reached as kubectl reaches it (tests replace this function)."""
    return Kube.connect(kubeconfig=kubeconfig, context=context)


def clock() -> datetime:
    """Now, for ages in the status views (tests replace this function)."""
    return datetime.now(UTC)


class PluginError(click.ClickException):
    """A one-line failure, printed the way kubectl prints its own (``error: ...``)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


# --- kubectl's flags -----------------------------------------------------------------------


@dataclass
class Flags:
    """kubectl's flags, collected from wherever on the line they were given."""

    namespace: str | None = None
    all_namespaces: bool = False
    context: str | None = None
    kubeconfig: str | None = None


@dataclass(frozen=True)
class Session:
    api: KubeApi
    namespace: str


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value and param.name:
        setattr(ctx.ensure_object(Flags), param.name, value)


_NAMESPACE = click.option(
    "-n",
    "--namespace",
    metavar="NS",
    expose_value=False,
    callback=_remember,
    help="namespace (default: the kubeconfig context's)",
)
_CONTEXT = click.option(
    "--context", expose_value=False, callback=_remember, help="kubeconfig context to use"
)
_KUBECONFIG = click.option(
    "--kubeconfig",
    metavar="PATH",
    expose_value=False,
    callback=_remember,
    help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)",
)
_ALL_NAMESPACES = click.option(
    "-A",
    "--all-namespaces",
    is_flag=True,
    expose_value=False,
    callback=_remember,
    help="status of every namespace",
)


def _kube_flags(command: F) -> F:
    return _NAMESPACE(_CONTEXT(_KUBECONFIG(command)))


def _session(ctx: click.Context) -> Session:
    flags = ctx.ensure_object(Flags)
    # Passed on explicitly, so a pod's service account does not win over KUBECONFIG.
    kubeconfig = flags.kubeconfig or os.environ.get("KUBECONFIG") or None
    api = connect(kubeconfig=kubeconfig, context=flags.context)
    return Session(api=api, namespace=flags.namespace or api.default_namespace())


# --- the commands --------------------------------------------------------------------------


class _Plugin(click.Group):
    """Turns refusals by the actions and by the cluster into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ActionError as exc:
            raise PluginError(str(exc)) from None
        except KubeError as exc:
            raise PluginError(" ".join(str(exc).split())) from None


@click.group(cls=_Plugin, name="kubectl turnout")
@click.version_option(package_name="turnout")
@_kube_flags
@_ALL_NAMESPACES
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Roll out model versions in the cluster: status, promote, abort, pause, resume, rollback.

    Drives ModelDeployments (modeldeployments.turnout.dev, short name mdep); the turnout
    operator carries the changes out. kubectl's -n, --context and --kubeconfig flags work
    before or after the command.
    """
    ctx.ensure_object(Flags)


def main() -> None:
    """The ``kubectl-turnout`` executable."""
    cli(prog_name="kubectl turnout")


@cli.command()
@click.argument("name", required=False)
@_kube_flags
@_ALL_NAMESPACES
@click.pass_context
def status(ctx: click.Context, name: str | None) -> None:
    """A table of ModelDeployments, or one in detail: routing, checks, conditions, history."""
    all_namespaces = ctx.ensure_object(Flags).all_namespaces
    if name is not None and all_namespaces:
        raise click.UsageError("NAME is looked up in one namespace: use -n, not -A")
    session = _session(ctx)
    now = clock()
    if name is not None:
        click.echo(views.detail(view(_read(session, name)), now=now))
        return
    namespace = None if all_namespaces else session.namespace
    items, _ = session.api.list_deployments(namespace)
    if not items:
        where = "" if namespace is None else f" in {namespace} namespace"
        click.echo(f"No resources found{where}.", err=True)
        return
    click.echo(views.table([view(i) for i in items], now=now, namespaces=namespace is None))


add_action_commands(
    cli,
    run=lambda ctx, name, decide: _act(ctx, name, decide=decide),
    decorators=[_kube_flags],
)


# --- read, decide, patch -------------------------------------------------------------------


def _act(ctx: click.Context, name: str, *, decide: Decide) -> None:
    if ctx.ensure_object(Flags).all_namespaces:
        raise click.UsageError("-A/--all-namespaces works with status only; use -n")
    session = _session(ctx)
    for _ in range(ATTEMPTS):
        done = _patch_once(session, name, decide=decide)
        if done is not None:
            change, changed = done
            suffix = "" if changed else " (no change)"
            for line in change.said:
                click.echo(f"{RESOURCE}/{name}: {line}{suffix}")
            return
    raise PluginError(
        f"{RESOURCE}/{name} changed under every one of {ATTEMPTS} attempts; try again"
    )


def _patch_once(session: Session, name: str, *, decide: Decide) -> tuple[Change, bool] | None:
    """Read, decide and patch at the read's resourceVersion: (change, whether anything was
    sent), or None when someone else wrote first."""
    obj = _read(session, name)
    spec = _spec(obj)
    change = decide(spec, _status(obj))
    body = actions.merge_patch(spec, change)
    if not body:
        return change, False
    body.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
    try:
        session.api.patch_deployment(session.namespace, name, body)
    except Conflict:
        return None
    return change, True


def _read(session: Session, name: str) -> Obj:
    try:
        return session.api.get_deployment(session.namespace, name)
    except NotFound:
        raise PluginError(
            f'{RESOURCE} "{name}" not found in namespace "{session.namespace}"'
        ) from None


def _spec(obj: Obj) -> ModelDeploymentSpec:
    try:
        return ModelDeploymentSpec.model_validate(obj.get("spec"))
    except ValidationError as exc:
        name = obj["metadata"]["name"]
        raise PluginError(
            f"{RESOURCE}/{name} has an invalid spec ({describe(exc)}); "
            f"fix it with kubectl edit mdep {name}"
        ) from None


def _status(obj: Obj) -> ModelDeploymentStatus:
    try:
        return ModelDeploymentStatus.model_validate(obj.get("status") or {})
    except ValidationError as exc:
        raise PluginError(
            f"{RESOURCE}/{obj['metadata']['name']} has a status this plugin cannot read "
            f"({describe(exc)}); is the plugin older than the operator?"
        ) from None


# --- what status shows -----------------------------------------------------------------------


def view(obj: Obj) -> views.View:
    """The object as turnout/cli/views.py renders it."""
    meta = obj.get("metadata") or {}
    created = meta.get("creationTimestamp")
    return views.View(
        name=str(meta.get("name", "-")),
        namespace=str(meta.get("namespace", "-")),
        spec=obj.get("spec") or {},
        status=_status(obj),
        created=_timestamp(created) if isinstance(created, str) else None,
    )


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
