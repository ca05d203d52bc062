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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click
from pydantic import ValidationError

from turnout.core import actions
from turnout.core.actions import ActionError, Change
from turnout.core.crd import GROUP
from turnout.core.spec import (
    KIND,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    describe,
)
from turnout.io.kube import Conflict, Kube, KubeApi, KubeError, NotFound, Obj

#: How kubectl names the kind in its messages (``modeldeployment.turnout.dev/fraud``).
RESOURCE = f"{KIND.lower()}.{GROUP}"
#: Read-decide-patch rounds before a command gives up on an object that keeps changing.
ATTEMPTS = 3

F = TypeVar("F", bound=Callable[..., Any])
Decide = Callable[[ModelDeploymentSpec, ModelDeploymentStatus], Change]


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
        click.echo(detail(_read(session, name), now=now))
        return
    namespace = None if all_namespaces else session.namespace
    items, _ = session.api.list_deployments(namespace)
    if not items:
        where = "" if namespace is None else f" in {namespace} namespace"
        click.echo(f"No resources found{where}.", err=True)
        return
    click.echo(table(items, now=now, namespaces=namespace is None))


@cli.command()
@click.argument("name")
@_kube_flags
@click.pass_context
def promote(ctx: click.Context, name: str) -> None:
    """Promote the candidate now, skipping the remaining steps."""
    _act(ctx, name, decide=lambda spec, _: actions.promote(spec, name=name))


@cli.command()
@click.argument("name")
@_kube_flags
@click.pass_context
def abort(ctx: click.Context, name: str) -> None:
    """Roll the candidate back now (it stays in history as rolled back)."""
    _act(ctx, name, decide=lambda spec, _: actions.abort(spec, name=name))


@cli.command()
@click.argument("name")
@_kube_flags
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Freeze the rollout's weights; no analysis runs until resume."""
    _act(ctx, name, decide=lambda spec, _: actions.pause(spec))


@cli.command()
@click.argument("name")
@_kube_flags
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Continue a paused rollout (the current step's interval starts again)."""
    _act(ctx, name, decide=lambda spec, _: actions.resume(spec))


@cli.command()
@click.argument("name")
@click.option("--to", "to", metavar="VERSION", help="a version from the status history")
@_kube_flags
@click.pass_context
def rollback(ctx: click.Context, name: str, to: str | None) -> None:
    """Send all traffic back to safety: drop the candidate, or return stable to a past version.

    With a candidate in flight, it is removed at once and stable keeps serving. Without one
    (or with --to), stable goes back to the previous (or the named) version from history.
    """
    _act(
        ctx,
        name,
        decide=lambda spec, st: actions.rollback(spec, name=name, history=st.history, to=to),
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


# --- what status shows (pure) --------------------------------------------------------------


def table(items: Sequence[Obj], *, now: datetime, namespaces: bool) -> str:
    """The rows ``kubectl get mdep`` shows (its printer columns), NAMESPACE first with -A."""
    head = ["NAME", "STABLE", "CANDIDATE", "STRATEGY", "WEIGHT", "PHASE", "AGE"]
    if namespaces:
        head = ["NAMESPACE", *head]
    rows = [_row(obj, now=now, namespace=namespaces) for obj in items]
    return "\n".join(_columns([head, *rows]))


def detail(obj: Obj, *, now: datetime) -> str:
    """One ModelDeployment as an operator reads it during a rollout."""
    st = _status(obj)
    sections = [
        _summary(obj, st, now=now),
        _routing(st),
        _checks(st, now=now),
        _experiment(st),
        _conditions(st, now=now),
        _history(st),
    ]
    return "\n".join(line for section in sections for line in section)


def age(since: datetime | None, now: datetime) -> str:
    """An age the way kubectl shows one: 45s, 3m20s, 25m, 5h10m, 30h, 3d4h, 12d."""
    if since is None:
        return "-"
    s = max(0, int((now - since).total_seconds()))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def _row(obj: Obj, *, now: datetime, namespace: bool) -> list[str]:
    created = _get(obj, "metadata", "creationTimestamp")
    cells = [
        _get(obj, "metadata", "name"),
        _get(obj, "spec", "stable", "version"),
        _get(obj, "spec", "candidate", "version"),
        _get(obj, "spec", "strategy", "type"),
        _weight(_dig(obj, "status", "routing") or {}),
        _get(obj, "status", "phase"),
        age(_timestamp(created), now),
    ]
    return [_get(obj, "metadata", "namespace"), *cells] if namespace else cells


def _summary(obj: Obj, st: ModelDeploymentStatus, *, now: datetime) -> list[str]:
    strategy = st.rollout_strategy or _get(obj, "spec", "strategy", "type")
    phase = st.phase.value
    if st.rollout_started_at is not None and st.phase is not Phase.IDLE:
        phase += f" (rollout started {age(st.rollout_started_at, now)} ago)"
    fields = [
        ("Name", _get(obj, "metadata", "name")),
        ("Namespace", _get(obj, "metadata", "namespace")),
        ("Stable", _ref(_dig(obj, "spec", "stable"))),
        ("Candidate", _ref(_dig(obj, "spec", "candidate"))),
        ("Strategy", str(strategy)),
        ("Paused", str(bool(_dig(obj, "spec", "paused"))).lower()),
        ("Phase", phase),
        ("Message", st.message or "-"),
    ]
    lines = [f"{key + ':':<12}{value}" for key, value in fields]
    lines += [
        f"{'Warning:':<12}spec rejected, the last good spec keeps running: {c.message}"
        for c in st.conditions
        if c.type == "SpecValid" and c.status == "False"
    ]
    return lines + _progress(obj, st)


def _progress(obj: Obj, st: ModelDeploymentStatus) -> list[str]:
    if st.phase is not Phase.PROGRESSING:
        return []
    try:
        canary = ModelDeploymentSpec.model_validate(obj.get("spec")).strategy.canary
    except ValidationError:
        return []
    step = min(st.step, len(canary.steps) - 1)
    return [
        f"{'Step:':<12}{step + 1} of {len(canary.steps)} ({canary.steps[step]:g}%), "
        f"failed analyses {st.failed_checks}/{canary.max_failed_checks}"
    ]


def _routing(st: ModelDeploymentStatus) -> list[str]:
    r = st.routing
    if r.stable is None:
        return ["Routing:    none yet (no version is ready)"]
    weight = r.candidate.weight if r.candidate else 0.0
    rows = [["stable", r.stable.version, f"{100 - weight:g}%", r.stable.url]]
    if r.candidate is not None:
        rows.append(["candidate", r.candidate.version, f"{weight:g}%", r.candidate.url])
    if r.shadow is not None:
        rows.append(["shadow", r.shadow.version, f"mirrors {r.shadow.percent:g}%", r.shadow.url])
    return ["Routing:", *_columns(rows, indent=2)]


def _checks(st: ModelDeploymentStatus, *, now: datetime) -> list[str]:
    if not st.checks:
        return []
    rows = [["CHECK", "VALUE", "THRESHOLD", "RESULT"]]
    for c in st.checks:
        value = "no data" if c.value is None else f"{c.value:.4g}"
        op = "<=" if c.kind == "max" else ">="
        rows.append([c.name, value, f"{op} {c.threshold:g}", "pass" if c.passed else "FAIL"])
    when = f"{age(st.last_analysis_at, now)} ago" if st.last_analysis_at else "at an unknown time"
    header = f"Checks:     last analysis {when}, failed analyses so far {st.failed_checks}"
    return [header, *_columns(rows, indent=2)]


def _experiment(st: ModelDeploymentStatus) -> list[str]:
    ex = st.experiment
    if ex is None:
        return []
    arms = "  ".join(
        f"{arm} n={a.n:.0f} mean={'-' if a.mean is None else f'{a.mean:.4g}'}"
        for arm, a in ex.arms.items()
    )
    lines = [f"Experiment: {ex.metric}: {arms}"]
    if ex.lift is not None:
        ci = f"[{ex.ci[0]:+.4f}, {ex.ci[1]:+.4f}]" if ex.ci else "[-inf, inf]"
        lines.append(f"  lift {ex.lift:+.4f} CI {ci} p={ex.p_value:.3g} -> {ex.decision}")
    return lines


def _conditions(st: ModelDeploymentStatus, *, now: datetime) -> list[str]:
    if not st.conditions:
        return []
    rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
    rows += [
        [c.type, c.status, c.reason, age(c.last_transition_time, now), c.message or "-"]
        for c in st.conditions
    ]
    return ["Conditions:", *_columns(rows, indent=2)]


def _history(st: ModelDeploymentStatus) -> list[str]:
    if not st.history:
        return []
    rows = [["VERSION", "IMAGE", "STABLE SINCE (UTC)", "REASON"]]
    rows += [
        [h.version, h.image or "-", f"{h.promoted_at.astimezone(UTC):%Y-%m-%d %H:%M}", h.reason]
        for h in st.history
    ]
    return ["History:", *_columns(rows, indent=2)]


def _weight(routing: Obj) -> str:
    candidate, shadow = routing.get("candidate"), routing.get("shadow")
    if candidate:
        return f"{float(candidate.get('weight', 0)):g}"
    if shadow:
        return f"shadow {float(shadow.get('percent', 100)):g}"
    return "0"


def _ref(ref: Any) -> str:
    if not isinstance(ref, dict):
        return "-"
    image = ref.get("image")
    return f"{ref.get('version', '-')} ({image})" if image else str(ref.get("version", "-"))


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _dig(obj: Obj, *path: str) -> Any:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _get(obj: Obj, *path: str) -> str:
    value = _dig(obj, *path)
    return "-" if value is None or value == "" else str(value)


def _columns(rows: Sequence[Sequence[str]], *, indent: int = 0) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    pad = " " * indent
    return [
        pad + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
