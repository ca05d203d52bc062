"""HTML report of one rollout, drawn from the controller's decision log.

A rollout is judged afterwards, often by someone who did not watch it: why was it promoted
or rolled back, when did a check fail, how long was it paused, what did the experiment
conclude. The status only holds the latest of all that; the decision log holds every step,
so this module turns the log into one page a person can read, keep and attach to a ticket.

Pure: decision records in, one HTML string out. The CLI reads
``$TURNOUT_HOME/deployments/<name>.events.jsonl`` and writes the page; nothing here touches
files or the clock (``generated_at`` is passed in), so one log always renders the same bytes
and the tests need neither files nor time. ``rollouts`` splits a log into its rollouts, which
``turnout history`` and ``turnout report --rollout N`` number the same way.

The page stands alone: inline CSS and SVG charts drawn here, no scripts, fonts or CDN links,
so it opens offline. Every string taken from the log is HTML-escaped. Times on the axes
count from the rollout's first decision; the event table gives that and the clock time.
Checks, ages and the confidence sequence read as in ``turnout status`` (``Check`` and
``turnout.cli.views`` render them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from pydantic import ValidationError

from turnout.cli.views import age, check_row, ci_text
from turnout.core.spec import Check, Experiment, ModelDeploymentStatus, Phase, SpecError, describe

#: One line of the decision log: ``{"at": ..., "status": <wire status>, "events": [...]}``.
Record = Mapping[str, Any]

#: Banner colour by final phase (green, red); anything else is grey.
_BANNER_CLASS = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolledback"}

_INK = "#1f2933"
_MUTED = "#6b7280"
_GRID = "#e4e7eb"
_BLUE = "#2563eb"
_RED = "#dc2626"
_BAND = "#93c5fd"
_PAUSED = "#fcd34d"

_WIDE = (720, 220)  # weight, lift and p-value charts
_SMALL = (340, 170)  # one per check
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 16, 20, 36
#: Above this many points only failing ones get a dot; the line carries the rest.
_MAX_DOTS = 200
#: p-values are drawn on a log axis, which needs a floor above zero.
_P_FLOOR = 1e-12
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200)


# --- which records -----------------------------------------------------------------------


def rollouts(records: Sequence[Record]) -> list[list[Record]]:
    """Every rollout in the log, oldest first, each as its records in order.

    A rollout is a run of consecutive records sharing one ``status.rolloutVersion``; records
    after the rollout ended (Promoted, RolledBack) keep its version and so belong to it.
    ``status.rolloutStartedAt`` tells apart two rollouts of the same version (a redeploy
    after a rollback). Records naming no version (before the first rollout) belong to none.
    """
    runs: list[list[Record]] = []
    previous: tuple[Any, Any] | None = None
    for record in records:
        key = _rollout_key(record)
        if key[0] is None:
            previous = None
            continue
        if key != previous:
            runs.append([])
        runs[-1].append(record)
        previous = key
    return runs


def _rollout_key(record: Record) -> tuple[Any, Any]:
    status = record.get("status")
    if not isinstance(status, Mapping):
        return None, None
    return status.get("rolloutVersion"), status.get("rolloutStartedAt")


def describe_rollout(records: Sequence[Record]) -> str:
    """One line about one rollout (an item of ``rollouts``), for listings:
    ``v2 over v1, Canary, started 2026-12-04 17:01:02 UTC, RolledBack``.

    Raises SpecError naming the record if a status does not validate.
    """
    if not records:
        raise ValueError("a rollout has at least one record")
    summary = _Summary.of(_decisions(records))
    over = f" over {summary.replacing}" if summary.replacing else ""
    return (
        f"{summary.version}{over}, {summary.strategy}, started {_clock(summary.started)}, "
        f"{summary.phase}"
    )


# --- parsed records ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class _Decision:
    at: datetime
    #: Seconds since the rollout's first decision.
    t: float
    status: ModelDeploymentStatus
    events: tuple[_Event, ...]


@dataclass(frozen=True)
class _Summary:
    """What a rollout was, as its header and its one-line description say it."""

    version: str
    #: The stable version when it started; None if nothing was stable yet.
    replacing: str | None
    strategy: str
    started: datetime
    #: The phase of its last record: how it ended, or where it stands.
    phase: Phase

    @classmethod
    def of(cls, decisions: Sequence[_Decision]) -> _Summary:
        first, last = decisions[0].status, decisions[-1].status
        strategies = dict.fromkeys(d.status.rollout_strategy for d in decisions)
        stable = first.routing.stable
        return cls(
            version=last.rollout_version or "-",
            replacing=stable.version if stable is not None else None,
            strategy=" -> ".join(s for s in strategies if s is not None) or "-",
            started=_utc(first.rollout_started_at or decisions[0].at),
            phase=last.phase,
        )


def _decisions(records: Sequence[Record]) -> list[_Decision]:
    parsed = [_parse(record) for record in records]
    if not parsed:
        return []
    start = parsed[0][0]
    return [
        _Decision(at=at, t=_since(at, start), status=status, events=events)
        for at, status, events in parsed
    ]


def _parse(record: Record) -> tuple[datetime, ModelDeploymentStatus, tuple[_Event, ...]]:
    at = record.get("at")
    try:
        status = ModelDeploymentStatus.model_validate(record.get("status"))
        when = _utc(datetime.fromisoformat(str(at)))
    except ValidationError as exc:
        raise SpecError(f"record at {at}: {describe(exc)}") from None
    except ValueError:
        raise SpecError(f"record at {at!r}: 'at' is not an ISO 8601 time") from None
    events = tuple(
        _Event(
            type=str(e.get("type", "")),
            reason=str(e.get("reason", "")),
            message=str(e.get("message", "")),
        )
        for e in record.get("events") or ()
        if isinstance(e, Mapping)
    )
    return when, status, events


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _since(at: datetime, start: datetime) -> float:
    return (_utc(at) - start).total_seconds()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _candidate_share(status: ModelDeploymentStatus) -> float:
    """Percent of live traffic on the rollout's version: all of it once it is stable."""
    routing = status.routing
    if routing.stable is not None and routing.stable.version == status.rollout_version:
        return 100.0
    return routing.candidate.weight if routing.candidate is not None else 0.0


def _check_history(decisions: Sequence[_Decision]) -> dict[str, list[Check]]:
    """Each check's distinct measurements (a status repeats them until the next analysis)."""
    by_name: dict[str, dict[datetime, Check]] = {}
    for decision in decisions:
        for check in decision.status.checks:
            by_name.setdefault(check.name, {})[check.at] = check
    return {name: sorted(checks.values(), key=lambda c: c.at) for name, checks in by_name.items()}


# --- the page ----------------------------------------------------------------------------


def render(
    name: str, records: Sequence[Record], *, generated_at: datetime, rollout: int | None = None
) -> str:
    """One self-contained HTML page about one rollout in ``records``.

    ``records`` may be the whole decision log; ``rollout`` is a 1-based index into
    ``rollouts(records)``, None for the last. Raises LookupError if there is no such rollout,
    SpecError naming the record if a status does not validate.
    """
    runs = rollouts(records)
    if rollout is None:
        index = len(runs)
    elif 1 <= rollout <= len(runs):
        index = rollout
    else:
        raise LookupError(_no_such_rollout(name, rollout, len(runs)))
    decisions = _decisions(runs[index - 1]) if runs else []
    stamp = generated_at.isoformat(timespec="seconds")
    if not decisions:
        body = [
            f"<h1>{escape(name)}</h1>",
            _banner(None, "No rollout recorded: no decision in the log names a rollout version."),
        ]
        return _page(f"turnout: {name}", body, footer=f"Generated by turnout at {stamp}.")

    last = decisions[-1].status
    checks = _check_history(decisions)
    start = decisions[0].at
    times = [d.t for d in decisions] + [_since(c.at, start) for cs in checks.values() for c in cs]
    t_range = _time_range(times)
    body = [
        _header(name, decisions, index=index, count=len(runs)),
        _banner(last.phase, last.message),
        _section("Traffic", _weight_chart(decisions, t_range=t_range)),
        _checks_section(checks, start=start, t_range=t_range),
        _experiment_section(decisions, t_range=t_range),
        _section("Events", _events_table(decisions)),
        _section("Last checks", _last_checks_table(decisions)),
    ]
    footer = (
        f"Generated by turnout at {stamp} from {len(decisions)} decisions. "
        f"Times count from the first decision, {start.isoformat(timespec='seconds')}."
    )
    return _page(f"turnout: {name} {last.rollout_version}", body, footer=footer)


def _no_such_rollout(name: str, asked: int, count: int) -> str:
    if count == 0:
        return f"{name} has no rollout recorded (asked for rollout {asked})"
    if count == 1:
        return f"{name} has 1 rollout; choose 1"
    return f"{name} has {count} rollouts; choose 1 to {count}"


def _page(title: str, body: Sequence[str], *, footer: str) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *(part for part in body if part),
            f"<footer>{escape(footer)}</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933;
  max-width: 1080px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e4e7eb; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 16px; }
dl.facts dt { color: #6b7280; }
dl.facts dd { margin: 0; }
.banner { padding: 12px 16px; border-radius: 6px; color: #fff; background: #6b7280; }
.banner.promoted { background: #15803d; }
.banner.rolledback { background: #b91c1c; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 16px; }
figure { margin: 0 0 16px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }
.swatch.shaded { opacity: 0.6; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-size: 11px; fill: #6b7280; }
svg text.off-chart { fill: #1f2933; }
table { border-collapse: collapse; }
caption { text-align: left; font-weight: 600; margin-bottom: 4px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e7eb;
  vertical-align: top; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table + table { margin-top: 16px; }
tr.warning td, tr.fail td { background: #fee2e2; }
.muted, footer { color: #6b7280; }
footer { margin-top: 32px; font-size: 12px; }
"""


def _header(name: str, decisions: Sequence[_Decision], *, index: int, count: int) -> str:
    summary = _Summary.of(decisions)
    facts = [
        ("Candidate", summary.version),
        ("Replacing", summary.replacing or "-"),
        ("Strategy", summary.strategy),
        ("Started", _clock(summary.started)),
        ("Duration", age(decisions[0].at, decisions[-1].at)),
        ("Decisions", str(len(decisions))),
        ("Rollout", f"{index} of {count} in the log"),
    ]
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    heading = f"{name}: rollout of {summary.version}"
    return f'<header><h1>{escape(heading)}</h1><dl class="facts">{items}</dl></header>'


def _banner(phase: Phase | None, message: str) -> str:
    kind = "neutral" if phase is None else _BANNER_CLASS.get(phase, "neutral")
    title = f"<strong>{escape(phase)}</strong> " if phase is not None else ""
    return f'<div class="banner {kind}" role="status">{title}{escape(message)}</div>'


def _section(title: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n{content}\n</section>"


def _weight_chart(decisions: Sequence[_Decision], *, t_range: tuple[float, float]) -> str:
    series = [
        _Series(
            "live traffic",
            tuple(_Point(d.t, _candidate_share(d.status)) for d in decisions),
            step=True,
        )
    ]
    if any(d.status.routing.shadow is not None for d in decisions):
        mirrored = tuple(
            _Point(d.t, d.status.routing.shadow.percent if d.status.routing.shadow else 0.0)
            for d in decisions
        )
        series.append(_Series("mirrored", mirrored, color=_MUTED, step=True, dashed=True))
    pauses = _paused_spans(decisions, end=t_range[1])
    chart = _line_chart(
        series,
        label="candidate weight",
        t_range=t_range,
        size=_WIDE,
        y_range=(0.0, 100.0),
        spans=pauses,
    )
    keys = [_key(s) for s in series]
    if pauses:
        keys.append(_Key("paused", _PAUSED, shaded=True))
    return _figure("Candidate's share of traffic (%)", chart, chart_id="weight", keys=keys)


def _paused_spans(decisions: Sequence[_Decision], *, end: float) -> list[_Span]:
    """From each decision that found the rollout paused to the next one that did not.

    The log holds statuses, not specs: ``spec.paused`` shows there as phase Paused, which the
    controller keeps until it resumes (or the rollout ends). A pause still on at the last
    decision runs to the end of the chart.
    """
    spans = []
    began: float | None = None
    for d in decisions:
        paused = d.status.phase is Phase.PAUSED
        if paused and began is None:
            began = d.t
        elif not paused and began is not None:
            spans.append(_Span(began, d.t, f"paused +{_elapsed(began)} to +{_elapsed(d.t)}"))
            began = None
    if began is not None:
        spans.append(_Span(began, end, f"paused from +{_elapsed(began)}"))
    return spans


def _checks_section(
    checks: Mapping[str, Sequence[Check]], *, start: datetime, t_range: tuple[float, float]
) -> str:
    if not checks:
        return _section("Checks", '<p class="muted">No analysis ran in this rollout.</p>')
    figures = [
        _check_chart(name, history, start=start, t_range=t_range)
        for name, history in checks.items()
    ]
    return _section("Checks", '<div class="grid">' + "\n".join(figures) + "</div>")


def _check_chart(
    name: str, history: Sequence[Check], *, start: datetime, t_range: tuple[float, float]
) -> str:
    last = history[-1]
    points = tuple(
        _Point(_since(c.at, start), _finite(c.value), failing=not c.passed, title=c.describe())
        for c in history
    )
    values = [p.v for p in points if p.v is not None]
    chart = _line_chart(
        [_Series(name, points)],
        label=f"{name} over time",
        t_range=t_range,
        size=_SMALL,
        rules=[_Rule(last.threshold, f"threshold ({last.bound})")],
        y_range=_check_range(values, last.threshold),
    )
    return _figure(f"{name} ({last.bound})", chart, chart_id=f"check:{name}")


def _check_range(values: Sequence[float], threshold: float) -> tuple[float, float]:
    """The y-range of a check's chart: its values, and the threshold when it is near them.

    A check far from its threshold (p99 latency of 1 ms against 100 ms) is common and
    healthy, and what the reader wants then is the data's own movement; a range stretched to
    the threshold flattens that into a line on the floor. So the threshold is left out when
    the data would fill less than a fifth of the height, and is drawn instead as a labelled
    marker at the chart's edge. Not a log scale: error rates are often exactly 0, which a log
    axis cannot show, and a log axis squeezes the movement at the data's own magnitude.
    A flat series counts as a tenth of its size, so noise is not blown up to full height.
    """
    if not values:
        return _value_range([threshold])
    lo, hi = min(values), max(values)
    size = max(abs(lo), abs(hi))
    spread = max(hi - lo, size / 10)
    if size == 0 or max(hi, threshold) - min(lo, threshold) <= 5 * spread:
        return _value_range([*values, threshold])
    middle = (lo + hi) / 2
    return _value_range([min(lo, middle - spread / 2), max(hi, middle + spread / 2)])


def _experiment_section(decisions: Sequence[_Decision], *, t_range: tuple[float, float]) -> str:
    looks = [(d.t, d.status.experiment) for d in decisions if d.status.experiment is not None]
    if not looks:
        return ""
    band = tuple(_interval(t, e.ci) for t, e in looks)
    lift = _Series("lift", tuple(_Point(t, _finite(e.lift)) for t, e in looks))
    lift_chart = _line_chart(
        [lift],
        label="lift with its confidence sequence",
        t_range=t_range,
        size=_WIDE,
        band=band,
        rules=[_Rule(0.0, "no difference")],
    )
    p_value = _Series("p-value", tuple(_Point(t, _finite(e.p_value)) for t, e in looks))
    p_chart = _line_chart(
        [p_value], label="p-value over time", t_range=t_range, size=_WIDE, log_y=True
    )
    final = looks[-1][1]
    return _section(
        f"Experiment: {final.metric}",
        "\n".join(
            [
                _figure(
                    "Lift (candidate − stable), shaded: always-valid confidence sequence",
                    lift_chart,
                    chart_id="lift",
                ),
                _figure("Always-valid p-value (log scale)", p_chart, chart_id="p-value"),
                _experiment_table(final),
            ]
        ),
    )


def _experiment_table(experiment: Experiment) -> str:
    """The last look: each arm's size and mean, then the lift and the verdict.

    Numbers read as ``turnout status`` prints them (``views.experiment_lines``).
    """
    arms = _table(
        "arms",
        [_Column("Arm"), _Column("n", numeric=True), _Column("Mean", numeric=True)],
        [
            ["", arm, f"{a.n:,.0f}", "-" if a.mean is None else f"{a.mean:.4g}"]
            for arm, a in experiment.arms.items()
        ],
        caption=f"Last look at {experiment.metric}",
    )
    lift, relative, srm = experiment.lift, experiment.relative_lift, experiment.srm_p_value
    verdict = _table(
        "experiment",
        [
            _Column("Lift", numeric=True),
            _Column("Relative lift", numeric=True),
            _Column("Confidence sequence", numeric=True),
            _Column("p-value", numeric=True),
            _Column("Sample-ratio p-value", numeric=True),
            _Column("Decision"),
        ],
        [
            [
                "",
                "-" if lift is None else f"{lift:+.4f}",
                "-" if relative is None else f"{relative:+.2%}",
                ci_text(experiment.ci),
                f"{experiment.p_value:.3g}",
                "-" if srm is None else f"{srm:.3g}",
                experiment.decision,
            ]
        ],
    )
    return arms + "\n" + verdict


def _events_table(decisions: Sequence[_Decision]) -> str:
    rows = [
        [
            "warning" if event.type == "Warning" else "",
            f"+{_elapsed(decision.t)}",
            f"{decision.at.astimezone(UTC):%H:%M:%S}",
            event.type,
            event.reason,
            event.message,
        ]
        for decision in decisions
        for event in decision.events
    ]
    if not rows:
        return '<p class="muted">No events recorded.</p>'
    columns = [
        _Column("Time", numeric=True),
        _Column("At (UTC)", numeric=True),
        _Column("Type"),
        _Column("Reason"),
        _Column("Message"),
    ]
    return _table("events", columns, rows)


def _last_checks_table(decisions: Sequence[_Decision]) -> str:
    checks = next((d.status.checks for d in reversed(decisions) if d.status.checks), [])
    if not checks:
        return '<p class="muted">No analysis ran in this rollout.</p>'
    columns = [
        _Column("Check"),
        _Column("Value", numeric=True),
        _Column("Threshold", numeric=True),
        _Column("Result"),
    ]
    rows = [["pass" if c.passed else "fail", *check_row(c)] for c in checks]
    return _table("last-checks", columns, rows)


@dataclass(frozen=True)
class _Column:
    name: str
    #: Right-aligned, header and cells alike, so digits line up under their heading.
    numeric: bool = False


def _table(
    table_id: str,
    columns: Sequence[_Column],
    rows: Sequence[Sequence[str]],
    *,
    caption: str = "",
) -> str:
    """A table; each row is its CSS class (may be empty) followed by one text per column."""

    def cell(tag: str, column: _Column, text: str) -> str:
        css = ' class="num"' if column.numeric else ""
        return f"<{tag}{css}>{escape(text)}</{tag}>"

    head = "".join(cell("th", c, c.name) for c in columns)
    body = "".join(
        (f'<tr class="{css}">' if css else "<tr>")
        + "".join(cell("td", c, text) for c, text in zip(columns, texts, strict=True))
        + "</tr>"
        for css, *texts in rows
    )
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<table id="{table_id}">{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _figure(caption: str, svg: str, *, chart_id: str, keys: Sequence[_Key] = ()) -> str:
    legend = ""
    if len(keys) > 1:
        legend = "".join(
            f'<span class="swatch{" shaded" if k.shaded else ""}" '
            f'style="background:{k.color}"></span>{escape(k.name)}'
            for k in keys
        )
    return (
        f'<figure data-chart="{escape(chart_id)}"><figcaption>{escape(caption)}{legend}'
        f"</figcaption>\n{svg}\n</figure>"
    )


# --- charts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    t: float
    #: None is a gap in the line.
    v: float | None
    failing: bool = False
    #: What hovering the point says (default: the series' name and the value).
    title: str | None = None


@dataclass(frozen=True)
class _Series:
    name: str
    points: tuple[_Point, ...]
    color: str = _BLUE
    #: Hold each value until the next point (weights change in steps, not gradually).
    step: bool = False
    dashed: bool = False


@dataclass(frozen=True)
class _Key:
    """One legend entry: a line's colour, or a shaded area's."""

    name: str
    color: str
    shaded: bool = False


def _key(series: _Series) -> _Key:
    return _Key(series.name, series.color)


@dataclass(frozen=True)
class _Span:
    """A stretch of time shaded across the whole chart (a pause)."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class _Rule:
    """A horizontal reference line: a threshold, or zero."""

    v: float
    label: str


@dataclass(frozen=True)
class _Band:
    """One interval of a shaded band; None in a band's sequence is a gap."""

    t: float
    lo: float
    hi: float


def _interval(t: float, ci: tuple[float, float] | None) -> _Band | None:
    lo, hi = ci or (None, None)
    lo, hi = _finite(lo), _finite(hi)
    return None if lo is None or hi is None else _Band(t, lo, hi)


@dataclass(frozen=True)
class _Frame:
    """Maps (seconds, value) onto the plot area of one SVG; log frames hold log10 bounds."""

    width: int
    height: int
    t_range: tuple[float, float]
    y_range: tuple[float, float]
    log: bool = False

    @property
    def left(self) -> float:
        return _MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - _MARGIN_RIGHT

    @property
    def top(self) -> float:
        return _MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - _MARGIN_BOTTOM

    def x(self, t: float) -> float:
        lo, hi = self.t_range
        return self.left + (t - lo) / (hi - lo) * (self.right - self.left)

    def y(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, _P_FLOOR))
        lo, hi = self.y_range
        return self.bottom - (v - lo) / (hi - lo) * (self.bottom - self.top)


def _line_chart(
    series: Sequence[_Series],
    *,
    label: str,
    t_range: tuple[float, float],
    size: tuple[int, int],
    band: Sequence[_Band | None] = (),
    rules: Sequence[_Rule] = (),
    spans: Sequence[_Span] = (),
    y_range: tuple[float, float] | None = None,
    log_y: bool = False,
) -> str:
    """An SVG of lines over time, with an optional shaded band, horizontal rules (marked at
    the edge when outside ``y_range``) and shaded stretches of time."""
    values = [p.v for s in series for p in s.points if p.v is not None]
    values += [v for b in band if b is not None for v in (b.lo, b.hi)]
    if y_range is None:
        y_range = _log_range(values) if log_y else _value_range([*values, *(r.v for r in rules)])
    frame = _Frame(*size, t_range=t_range, y_range=y_range, log=log_y)
    width, height = size
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}">',
        *_axes(frame),
        *(_span(span, frame) for span in spans),
        *_band_shapes(band, frame),
        *(_rule(r, frame) for r in rules),
    ]
    for s in series:
        parts += _series_shapes(s, frame)
    if not values:
        mid_x, mid_y = (frame.left + frame.right) / 2, (frame.top + frame.bottom) / 2
        parts.append(f'<text x="{mid_x:.1f}" y="{mid_y:.1f}" text-anchor="middle">no data</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(frame: _Frame) -> list[str]:
    parts = []
    for v in _log_ticks(frame.y_range) if frame.log else _ticks(frame.y_range):
        y = frame.y(10.0**v if frame.log else v)
        text = f"{10.0**v:g}" if frame.log else f"{v:.3g}"
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.right:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{_GRID}"/>'
            f'<text class="y-tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{text}</text>"
        )
    most = max(2, frame.width // 110)
    for t in _time_ticks(frame.t_range, most=most):
        x = frame.x(t)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom:.1f}" y2="{frame.bottom + 4:.1f}" '
            f'stroke="{_MUTED}"/>'
            f'<text x="{x:.1f}" y="{frame.bottom + 16:.1f}" text-anchor="middle">'
            f"{_elapsed(t)}</text>"
        )
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.right:.1f}" y1="{frame.bottom:.1f}" '
        f'y2="{frame.bottom:.1f}" stroke="{_MUTED}"/>'
        f'<text x="{frame.right:.1f}" y="{frame.height - 4}" text-anchor="end">'
        "time since rollout start</text>"
    )
    return parts


def _series_shapes(series: _Series, frame: _Frame) -> list[str]:
    dash = ' stroke-dasharray="5 3"' if series.dashed else ""
    parts = [
        f'<path d="{_path(series.points, frame, step=series.step)}" fill="none" '
        f'stroke="{series.color}" stroke-width="2"{dash}/>'
    ]
    dotted = len(series.points) <= _MAX_DOTS
    for p in series.points:
        if p.v is None or not (dotted or p.failing):
            continue
        color, css, radius = (_RED, ' class="fail"', 4) if p.failing else (series.color, "", 2.5)
        title = p.title or f"{series.name} {p.v:.4g}"
        parts.append(
            f'<circle cx="{frame.x(p.t):.1f}" cy="{frame.y(p.v):.1f}" r="{radius}" '
            f'fill="{color}"{css}><title>+{_elapsed(p.t)}: {escape(title)}</title></circle>'
        )
    return parts


def _path(points: Sequence[_Point], frame: _Frame, *, step: bool) -> str:
    commands = []
    pen_down = False
    for p in points:
        if p.v is None:
            pen_down = False
            continue
        x, y = frame.x(p.t), frame.y(p.v)
        if not pen_down:
            commands.append(f"M{x:.1f},{y:.1f}")
        elif step:
            commands.append(f"H{x:.1f}V{y:.1f}")
        else:
            commands.append(f"L{x:.1f},{y:.1f}")
        pen_down = True
    return " ".join(commands)


def _band_shapes(band: Sequence[_Band | None], frame: _Frame) -> list[str]:
    """One polygon per unbroken run of intervals; a lone interval is drawn as a bar."""
    shapes = []
    for run in _runs(band):
        if len(run) == 1:
            b = run[0]
            x = frame.x(b.t)
            shapes.append(
                f'<line class="band" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y(b.hi):.1f}" '
                f'y2="{frame.y(b.lo):.1f}" stroke="{_BAND}" stroke-width="6"/>'
            )
            continue
        upper = [(frame.x(b.t), frame.y(b.hi)) for b in run]
        lower = [(frame.x(b.t), frame.y(b.lo)) for b in reversed(run)]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower)
        shapes.append(
            f'<polygon class="band" points="{points}" fill="{_BAND}" fill-opacity="0.6"/>'
        )
    return shapes


def _runs(band: Sequence[_Band | None]) -> list[list[_Band]]:
    runs: list[list[_Band]] = [[]]
    for interval in band:
        if interval is None:
            runs.append([])
        else:
            runs[-1].append(interval)
    return [run for run in runs if run]


def _rule(rule: _Rule, frame: _Frame) -> str:
    lo, hi = frame.y_range
    if not lo <= rule.v <= hi:
        where = "above" if rule.v > hi else "below"
        arrow = "▲" if rule.v > hi else "▼"
        return (
            f'<text class="rule off-chart" x="{frame.right:.1f}" y="{frame.top - 5}" '
            f'text-anchor="end" fill="{_INK}">{arrow} {escape(rule.label)}, {where} the chart'
            "</text>"
        )
    y = frame.y(rule.v)
    return (
        f'<line class="rule" x1="{frame.left}" x2="{frame.right:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
        f'stroke="{_INK}" stroke-dasharray="4 4"/>'
        f'<text x="{frame.left + 4}" y="{y - 4:.1f}">{escape(rule.label)}</text>'
    )


def _span(span: _Span, frame: _Frame) -> str:
    left = frame.x(span.start)
    width = max(frame.x(span.end) - left, 3.0)  # a pause seen by one decision stays visible
    return (
        f'<rect class="paused" x="{left:.1f}" y="{frame.top}" width="{width:.1f}" '
        f'height="{frame.bottom - frame.top:.1f}" fill="{_PAUSED}" fill-opacity="0.45">'
        f"<title>{escape(span.label)}</title></rect>"
    )


# --- scales and numbers ------------------------------------------------------------------


def _time_range(times: Iterable[float]) -> tuple[float, float]:
    ts = list(times)
    lo, hi = min(ts), max(ts)
    return lo, max(hi, lo + 1.0)  # one decision, or several within a second


def _value_range(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi > lo else (abs(lo) * 0.1 or 1.0)
    return lo - pad, hi + pad


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    """log10 bounds from a power of ten at or below the smallest value up to 1."""
    smallest = min((max(v, _P_FLOOR) for v in values), default=0.1)
    return float(min(math.floor(math.log10(smallest)), -1)), 0.0


def _ticks(bounds: tuple[float, float], *, most: int = 5) -> list[float]:
    lo, hi = bounds
    raw = (hi - lo) / most
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _log_ticks(bounds: tuple[float, float], *, most: int = 6) -> list[float]:
    lo, hi = int(bounds[0]), int(bounds[1])
    every = math.ceil((hi - lo + 1) / most)
    return [float(k) for k in range(hi, lo - 1, -every)]


def _time_ticks(bounds: tuple[float, float], *, most: int) -> list[float]:
    lo, hi = bounds
    span = hi - lo
    step = next((s for s in _TIME_STEPS if span / s <= most), None)
    if step is None:
        step = 86400 * math.ceil(span / (86400 * most))
    return [float(k * step) for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _elapsed(seconds: float) -> str:
    """``45s``, ``2m``, ``2m30s``, ``1h05m``: short enough for an axis."""
    sign = "-" if seconds < 0 else ""
    s = round(abs(seconds))
    if s < 60:
        return f"{sign}{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{sign}{minutes}m" + (f"{s:02d}s" if s else "")
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h" + (f"{minutes:02d}m" if minutes else "")
