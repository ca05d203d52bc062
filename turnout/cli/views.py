"""What a person reads about a ModelDeployment, rendered once for every front door.

``turnout status`` (the local file store) and ``kubectl turnout status`` (a cluster) show the
same table and the same detail through this module, and the HTML report takes its ages,
check cells and experiment wording from it, so the three never disagree on how a check, an
age or an experiment reads. Pure: callers pass ``now`` and the objects; nothing is read here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from turnout.core.spec import (
    Check,
    Experiment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Routing,
)

#: The printer columns of ``kubectl get mdep``, in order.
TABLE_HEAD = ("NAME", "STABLE", "CANDIDATE", "STRATEGY", "WEIGHT", "PHASE", "AGE")


@dataclass(frozen=True)
class Event:
    """One recorded event: when, Normal/Warning, the reason and the message."""

    at: datetime
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class View:
    """One ModelDeployment as both commands know it.

    ``spec`` is the object's spec as stored (camelCase keys), so a spec the models reject can
    still be shown; ``spec_error`` says why it was rejected when the caller knows.
    """

    name: str
    spec: Mapping[str, Any]
    status: ModelDeploymentStatus
    namespace: str | None = None
    created: datetime | None = None
    spec_error: str | None = None
    events: Sequence[Event] = ()


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


def weight(routing: Routing) -> str:
    """The WEIGHT column: the candidate's percent, ``shadow N`` while mirroring, else 0."""
    if routing.candidate is not None:
        return f"{routing.candidate.weight:g}"
    if routing.shadow is not None:
        return f"shadow {routing.shadow.percent:g}"
    return "0"


def check_row(check: Check) -> list[str]:
    """CHECK, VALUE, THRESHOLD, RESULT cells of one check."""
    return [check.name, check.value_text, check.bound, "pass" if check.passed else "FAIL"]


def experiment_lines(ex: Experiment) -> list[str]:
    """Arms with their sizes and means, then the lift, its confidence sequence and verdict."""
    arms = "  ".join(
        f"{arm} n={a.n:.0f} mean={'-' if a.mean is None else f'{a.mean:.4g}'}"
        for arm, a in ex.arms.items()
    )
    lines = [f"{ex.metric}: {arms}"]
    if ex.lift is not None:
        lines.append(f"lift {ex.lift:+.4f} CI {ci_text(ex.ci)} p={ex.p_value:.3g} -> {ex.decision}")
    return lines


def ci_text(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "[-inf, inf]"


def columns(
    rows: Sequence[Sequence[str]], *, indent: int = 0, right: Collection[int] = ()
) -> list[str]:
    """Rows padded into columns; the columns in ``right`` (numbers) are right-aligned, and so
    are their headers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    pad = " " * indent
    return [
        pad
        + "   ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def table(views: Sequence[View], *, now: datetime, namespaces: bool) -> str:
    """The rows ``kubectl get mdep`` shows (its printer columns), NAMESPACE first with -A."""
    head = ["NAMESPACE", *TABLE_HEAD] if namespaces else list(TABLE_HEAD)
    rows = [_row(v, now=now, namespace=namespaces) for v in views]
    return "\n".join(columns([head, *rows], right=(head.index("WEIGHT"),)))


def detail(view: View, *, now: datetime) -> str:
    """One ModelDeployment as an operator reads it during a rollout."""
    st = view.status
    sections = [
        _summary(view, now=now),
        _routing(st.routing),
        _checks(st, now=now),
        _experiment(st),
        _conditions(st, now=now),
        _history(st),
        _events(view.events),
    ]
    return "\n".join(line for section in sections for line in section)


def _row(view: View, *, now: datetime, namespace: bool) -> list[str]:
    cells = [
        view.name,
        _get(view.spec, "stable", "version"),
        _get(view.spec, "candidate", "version"),
        _get(view.spec, "strategy", "type"),
        weight(view.status.routing),
        view.status.phase.value,
        age(view.created, now),
    ]
    return [view.namespace or "-", *cells] if namespace else cells


def _summary(view: View, *, now: datetime) -> list[str]:
    st = view.status
    strategy = (
        st.rollout_strategy.value if st.rollout_strategy else _get(view.spec, "strategy", "type")
    )
    phase = st.phase.value
    if st.rollout_started_at is not None and st.phase is not Phase.IDLE:
        phase += f" (rollout started {age(st.rollout_started_at, now)} ago)"
    fields = [("Name", view.name)]
    if view.namespace is not None:
        fields.append(("Namespace", view.namespace))
    fields += [
        ("Stable", _ref(_dig(view.spec, "stable"))),
        ("Candidate", _ref(_dig(view.spec, "candidate"))),
        ("Strategy", strategy),
        ("Paused", str(bool(_dig(view.spec, "paused"))).lower()),
        ("Phase", phase),
        ("Message", st.message or "-"),
    ]
    lines = [f"{key + ':':<12}{value}" for key, value in fields]
    rejected = [c.message for c in st.conditions if c.type == "SpecValid" and c.status == "False"]
    if view.spec_error and view.spec_error not in rejected:
        rejected.append(view.spec_error)
    lines += [
        f"{'Warning:':<12}spec rejected, the last good spec keeps running: {m}" for m in rejected
    ]
    return lines + _progress(view)


def _progress(view: View) -> list[str]:
    st = view.status
    if st.phase is not Phase.PROGRESSING:
        return []
    try:
        canary = ModelDeploymentSpec.model_validate(view.spec).strategy.canary
    except ValidationError:
        return []
    step = min(st.step, len(canary.steps) - 1)
    return [
        f"{'Step:':<12}{step + 1} of {len(canary.steps)} ({canary.steps[step]:g}%), "
        f"failed analyses {st.failed_checks}/{canary.max_failed_checks}"
    ]


def _routing(r: Routing) -> list[str]:
    if r.stable is None:
        return ["Routing:    none yet (no version is ready)"]
    share = r.candidate.weight if r.candidate else 0.0
    rows = [["stable", r.stable.version, f"{100 - share:g}%", r.stable.url]]
    if r.candidate is not None:
        rows.append(["candidate", r.candidate.version, f"{share:g}%", r.candidate.url])
    if r.shadow is not None:
        rows.append(["shadow", r.shadow.version, f"mirrors {r.shadow.percent:g}%", r.shadow.url])
    return ["Routing:", *columns(rows, indent=2, right=(2,))]


def _checks(st: ModelDeploymentStatus, *, now: datetime) -> list[str]:
    if not st.checks:
        return []
    rows = [["CHECK", "VALUE", "THRESHOLD", "RESULT"], *(check_row(c) for c in st.checks)]
    when = f"{age(st.last_analysis_at, now)} ago" if st.last_analysis_at else "at an unknown time"
    header = f"Checks:     last analysis {when}, failed analyses so far {st.failed_checks}"
    return [header, *columns(rows, indent=2, right=(1,))]


def _experiment(st: ModelDeploymentStatus) -> list[str]:
    if st.experiment is None:
        return []
    first, *rest = experiment_lines(st.experiment)
    return [f"Experiment: {first}", *(f"  {line}" for line in rest)]


def _conditions(st: ModelDeploymentStatus, *, now: datetime) -> list[str]:
    if not st.conditions:
        return []
    rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
    rows += [
        [c.type, c.status, c.reason, age(c.last_transition_time, now), c.message or "-"]
        for c in st.conditions
    ]
    return ["Conditions:", *columns(rows, indent=2)]


def _history(st: ModelDeploymentStatus) -> list[str]:
    if not st.history:
        return []
    rows = [["VERSION", "IMAGE", "STABLE SINCE (UTC)", "REASON"]]
    rows += [
        [h.version, h.image or "-", f"{h.promoted_at.astimezone(UTC):%Y-%m-%d %H:%M}", h.reason]
        for h in st.history
    ]
    return ["History:", *columns(rows, indent=2)]


def _events(events: Sequence[Event]) -> list[str]:
    if not events:
        return []
    rows = [["AT (UTC)", "TYPE", "REASON", "MESSAGE"]]
    rows += [[f"{e.at.astimezone(UTC):%H:%M:%S}", e.type, e.reason, e.message] for e in events]
    return ["Events:", *columns(rows, indent=2)]


def _ref(ref: Any) -> str:
    if not isinstance(ref, Mapping):
        return "-"
    image = ref.get("image")
    return f"{ref.get('version', '-')} ({image})" if image else str(ref.get("version", "-"))


def _dig(doc: Mapping[str, Any], *path: str) -> Any:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _get(doc: Mapping[str, Any], *path: str) -> str:
    value = _dig(doc, *path)
    return "-" if value is None or value == "" else str(value)
