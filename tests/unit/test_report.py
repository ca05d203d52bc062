"""The rollout report: what a reader of the page sees, built from real status records."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from turnout.cli.report import describe_rollout, render, rollouts
from turnout.core.spec import (
    ArmSummary,
    Check,
    Experiment,
    ModelDeploymentStatus,
    Phase,
    Routing,
    ShadowTarget,
    SpecError,
    StrategyType,
    Target,
    WeightedTarget,
    dump,
)

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
GENERATED = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
STABLE = Target(version="v1", url="http://fraud-v1:3000")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def routing(version: str, weight: float | None) -> Routing:
    """Stable v1 plus the candidate at ``weight`` (None: candidate removed)."""
    candidate = None
    if weight is not None:
        candidate = WeightedTarget(
            version=version, url=f"http://fraud-{version}:3000", weight=weight
        )
    return Routing(stable=STABLE, candidate=candidate)


def check(name: str, value: float | None, threshold: float, seconds: float) -> Check:
    passed = value is not None and value <= threshold
    return Check(name=name, value=value, threshold=threshold, passed=passed, at=at(seconds))


def record(seconds: float, status: ModelDeploymentStatus, *events: tuple[str, str, str]) -> Any:
    """One decision-log line, through JSON as the controller writes and the CLI reads it."""
    line = {
        "at": at(seconds).isoformat(),
        "status": dump(status),
        "events": [{"type": t, "reason": r, "message": m} for t, r, m in events],
    }
    return json.loads(json.dumps(line))


def canary(
    phase: Phase, weight: float | None, *, version: str = "v2", start: float = 0, **fields: Any
) -> ModelDeploymentStatus:
    """A canary's status; like the controller's, every record of one rollout has its start."""
    return ModelDeploymentStatus(
        phase=phase,
        routing=routing(version, weight),
        rollout_version=version,
        rollout_strategy=StrategyType.CANARY,
        rollout_started_at=at(start),
        **fields,
    )


def started(version: str) -> tuple[str, str, str]:
    return ("Normal", "Started", f"Canary of {version} over stable v1 started")


def promoted_canary(version: str = "v2", start: float = 0) -> list[Any]:
    """Steps 5, 25, 50, then promotion: every analysis passes."""

    def checks(s: float, err: float) -> list[Check]:
        return [check("errorRate", err, 0.01, s), check("latencyP99Ms", 40 + s / 10, 100, s)]

    promoted = ModelDeploymentStatus(
        phase=Phase.PROMOTED,
        message=f"{version} passed every step and is stable",
        routing=Routing(stable=Target(version=version, url=f"http://fraud-{version}:3000")),
        rollout_version=version,
        rollout_strategy=StrategyType.CANARY,
        rollout_started_at=at(start),
        step=2,
        checks=checks(start + 180, 0.001),
    )
    return [
        record(start, canary(Phase.PROGRESSING, 5, version=version, start=start), started(version)),
        record(
            start + 60,
            canary(
                Phase.PROGRESSING,
                25,
                version=version,
                start=start,
                step=1,
                checks=checks(start + 60, 0),
            ),
            ("Normal", "StepPassed", "weight 5 -> 25: errorRate 0.000 <= 0.010"),
        ),
        record(
            start + 120,
            canary(
                Phase.PROGRESSING,
                50,
                version=version,
                start=start,
                step=2,
                checks=checks(start + 120, 0),
            ),
            ("Normal", "StepPassed", "weight 25 -> 50: errorRate 0.000 <= 0.010"),
        ),
        record(start + 180, promoted, ("Normal", "Promoted", f"{version} promoted")),
    ]


def rolled_back_canary(version: str = "v2", start: float = 0) -> list[Any]:
    """The error rate fails twice at weight 5 and the candidate is removed."""

    def checks(s: float, err: float) -> list[Check]:
        return [check("errorRate", err, 0.01, s), check("latencyP99Ms", 45, 100, s)]

    return [
        record(start, canary(Phase.PROGRESSING, 5, version=version, start=start), started(version)),
        record(
            start + 60,
            canary(
                Phase.PROGRESSING,
                5,
                version=version,
                start=start,
                checks=checks(start + 60, 0.0625),
                failed_checks=1,
            ),
            ("Warning", "ChecksFailed", "errorRate 0.0625 > 0.010 (1 of 2)"),
        ),
        record(
            start + 120,
            canary(
                Phase.ROLLED_BACK,
                None,
                version=version,
                start=start,
                message="errorRate 0.0875 > 0.010; candidate removed",
                checks=checks(start + 120, 0.0875),
                failed_checks=2,
            ),
            ("Warning", "RolledBack", "errorRate 0.0875 > 0.010 (2 of 2)"),
        ),
    ]


def ab_test() -> list[Any]:
    """Four looks: the confidence sequence narrows until it excludes zero, then promotion."""
    looks = [
        (2000, 0.021, (-0.090, 0.130), 0.90),
        (4000, 0.019, (-0.040, 0.080), 0.45),
        (8000, 0.020, (-0.010, 0.050), 0.12),
        (16000, 0.020, (0.004, 0.036), 0.01),
    ]
    records = []
    for i, (n, lift, ci, p) in enumerate(looks):
        experiment = Experiment(
            metric="conversion",
            arms={
                "stable": ArmSummary(n=n, mean=0.10),
                "candidate": ArmSummary(n=n, mean=0.10 + lift),
            },
            lift=lift,
            relative_lift=lift / 0.10,
            ci=ci,
            p_value=p,
            srm_p_value=0.6,
            decision="Candidate" if i == len(looks) - 1 else "Pending",
        )
        won = i == len(looks) - 1
        status = ModelDeploymentStatus(
            phase=Phase.PROMOTED if won else Phase.EXPERIMENTING,
            message="candidate won: lift 0.020, p 0.01" if won else "",
            routing=routing("v2", 50),
            rollout_version="v2",
            rollout_strategy=StrategyType.AB_TEST,
            rollout_started_at=T0,
            experiment=experiment,
        )
        events = [("Normal", "CandidateWon", "lift 0.020 [0.004, 0.036]")] if won else []
        if i == 0:
            events.append(("Normal", "Started", "ABTest of v2 over stable v1 started"))
        records.append(record(600 * i, status, *events))
    return records


# --- reading the page --------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Element]:
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if child.tag == tag and all(
                    child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()
                ):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def one(self, tag: str, **attrs: str) -> Element:
        (found,) = self.find_all(tag, **attrs)
        return found


class _TreeBuilder(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def rows(doc: Element, table_id: str) -> list[tuple[str, list[str]]]:
    """(row class, cell texts) of each body row."""
    body = doc.one("table", id=table_id).one("tbody")
    return [
        (tr.attrs.get("class", ""), [td.text() for td in tr.find_all("td")])
        for tr in body.children
        if isinstance(tr, Element)
    ]


def charts(doc: Element) -> dict[str, Element]:
    return {f.attrs["data-chart"]: f for f in doc.find_all("figure")}


def banner(doc: Element) -> Element:
    (found,) = [d for d in doc.find_all("div") if "banner" in d.attrs.get("class", "")]
    return found


# --- the outcome -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "colour", "text"),
    [
        (promoted_canary(), "promoted", "Promoted v2 passed every step and is stable"),
        (rolled_back_canary(), "rolledback", "RolledBack errorRate 0.0875 > 0.010"),
        (promoted_canary()[:2], "neutral", "Progressing"),
    ],
    ids=["promoted", "rolled-back", "in-progress"],
)
def test_banner_shows_the_final_phase_and_message(records, colour: str, text: str) -> None:
    shown = banner(parse(render("fraud", records, generated_at=GENERATED)))
    assert shown.attrs["class"] == f"banner {colour}"
    assert shown.text().startswith(text)


def test_header_names_the_model_candidate_and_strategy() -> None:
    doc = parse(render("fraud", promoted_canary(), generated_at=GENERATED))
    assert doc.one("h1").text() == "fraud: rollout of v2"
    facts = dict(zip(*(map(Element.text, doc.find_all(t)) for t in ("dt", "dd")), strict=True))
    assert facts["Candidate"] == "v2"
    assert facts["Replacing"] == "v1"
    assert facts["Strategy"] == "Canary"
    assert facts["Duration"] == "3m"
    assert facts["Decisions"] == "4"
    assert facts["Rollout"] == "1 of 1 in the log"


# --- charts ------------------------------------------------------------------------------


def test_canary_draws_the_weight_and_one_chart_per_check() -> None:
    doc = parse(render("fraud", promoted_canary(), generated_at=GENERATED))
    figures = charts(doc)
    assert list(figures) == ["weight", "check:errorRate", "check:latencyP99Ms"]
    assert all(len(f.find_all("svg")) == 1 for f in figures.values())
    assert len(doc.find_all("svg")) == 3


def test_weight_chart_steps_up_to_full_traffic_on_promotion() -> None:
    weight = charts(parse(render("fraud", promoted_canary(), generated_at=GENERATED)))["weight"]
    dots = [c.one("title").text() for c in weight.find_all("circle")]
    assert dots == [
        "+0s: live traffic 5",
        "+1m: live traffic 25",
        "+2m: live traffic 50",
        "+3m: live traffic 100",
    ]
    (line,) = weight.find_all("path")
    assert "H" in line.attrs["d"] and "L" not in line.attrs["d"]  # steps, not ramps


def test_x_axis_counts_time_since_the_rollout_started() -> None:
    weight = charts(parse(render("fraud", promoted_canary(), generated_at=GENERATED)))["weight"]
    labels = [t.text() for t in weight.find_all("text")]
    assert {"0s", "1m", "2m", "3m", "time since rollout start"} <= set(labels)


def paused_canary(*, resumed: bool = True) -> list[Any]:
    """Paused at weight 25 from +1m30s; resumed at +3m30s, then promoted (or still paused)."""
    log = promoted_canary()[:2]
    for seconds in (90, 150):
        status = canary(Phase.PAUSED, 25, step=1, message="paused at candidate weight 25%")
        events = [("Normal", "Paused", "rollout paused; weights frozen")] if seconds == 90 else []
        log.append(record(seconds, status, *events))
    if resumed:
        resume = ("Normal", "Resumed", "rollout resumed")
        log.append(record(210, canary(Phase.PROGRESSING, 25, step=1), resume))
        log.append(record(270, canary(Phase.PROGRESSING, 50, step=2)))
    return log


def test_pauses_are_shaded_on_the_traffic_chart() -> None:
    weight = charts(parse(render("fraud", paused_canary(), generated_at=GENERATED)))["weight"]
    (band,) = weight.find_all("rect", class_="paused")
    assert band.one("title").text() == "paused +1m30s to +3m30s"
    dots = {c.one("title").text(): float(c.attrs["cx"]) for c in weight.find_all("circle")}
    left, width = float(band.attrs["x"]), float(band.attrs["width"])
    assert left == dots["+1m30s: live traffic 25"]
    assert left + width == pytest.approx(dots["+3m30s: live traffic 25"], abs=0.2)
    assert weight.one("figcaption").text().endswith("live trafficpaused")  # the legend


def test_a_pause_still_on_runs_to_the_end_of_the_chart() -> None:
    weight = charts(parse(render("fraud", paused_canary(resumed=False), generated_at=GENERATED)))
    (band,) = weight["weight"].find_all("rect", class_="paused")
    assert band.one("title").text() == "paused from +1m30s"
    assert float(band.attrs["width"]) > 100


@pytest.mark.parametrize("records", [promoted_canary(), rolled_back_canary(), ab_test()])
def test_no_pause_no_shading(records) -> None:
    weight = charts(parse(render("fraud", records, generated_at=GENERATED)))["weight"]
    assert not weight.find_all("rect")
    assert "paused" not in weight.one("figcaption").text()


def test_rolled_back_weight_drops_to_zero() -> None:
    weight = charts(parse(render("fraud", rolled_back_canary(), generated_at=GENERATED)))["weight"]
    assert weight.find_all("circle")[-1].one("title").text() == "+2m: live traffic 0"


def test_failing_check_points_are_red_and_the_threshold_is_dashed() -> None:
    figure = charts(parse(render("fraud", rolled_back_canary(), generated_at=GENERATED)))[
        "check:errorRate"
    ]
    failing = [c.one("title").text() for c in figure.find_all("circle", class_="fail")]
    assert failing == ["+1m: errorRate 0.0625 > 0.01", "+2m: errorRate 0.0875 > 0.01"]
    rule = figure.one("line", class_="rule")
    assert "stroke-dasharray" in rule.attrs
    assert "threshold (<= 0.01)" in figure.text()


def latency_log(values: list[float], threshold: float) -> list[Any]:
    return [
        record(s, canary(Phase.PROGRESSING, 5, checks=[check("latencyP99Ms", v, threshold, s)]))
        for s, v in zip(range(60, 60 * (len(values) + 1), 60), values, strict=True)
    ]


def y_ticks(figure: Element) -> list[float]:
    return [float(t.text()) for t in figure.find_all("text", class_="y-tick")]


def test_a_check_far_below_its_threshold_is_scaled_to_its_data() -> None:
    records = latency_log([1.0, 1.3, 1.1, 1.6], threshold=100)  # 100x below
    figure = charts(parse(render("fraud", records, generated_at=GENERATED)))["check:latencyP99Ms"]
    ticks = y_ticks(figure)
    assert len(ticks) >= 3 and all(0.9 <= t <= 1.7 for t in ticks)
    assert not figure.find_all("line", class_="rule")
    marker = figure.one("text", class_="rule off-chart")
    assert marker.text() == "▲ threshold (<= 100), above the chart"


def test_a_check_far_above_its_threshold_is_scaled_to_its_data() -> None:
    records = latency_log([4800, 5200, 5000], threshold=100)
    figure = charts(parse(render("fraud", records, generated_at=GENERATED)))["check:latencyP99Ms"]
    assert all(4700 <= t <= 5300 for t in y_ticks(figure))
    assert "below the chart" in figure.one("text", class_="rule off-chart").text()
    assert len(figure.find_all("circle", class_="fail")) == 3


@pytest.mark.parametrize(
    ("values", "threshold"),
    [([40, 52, 58], 100), ([0.0, 0.0], 0.01), ([0.002, 0.004], 0.01), ([45, 45], 60)],
    ids=["near", "all-zero", "within-5x", "flat-near"],
)
def test_a_check_near_its_threshold_shows_both(values: list[float], threshold: float) -> None:
    figure = charts(parse(render("fraud", latency_log(values, threshold), generated_at=GENERATED)))[
        "check:latencyP99Ms"
    ]
    ticks = y_ticks(figure)
    assert min(ticks) <= min(values) and max(ticks) >= threshold
    assert figure.find_all("line", class_="rule")
    assert not figure.find_all("text", class_="rule off-chart")


def test_passing_checks_have_no_red_points() -> None:
    figures = charts(parse(render("fraud", promoted_canary(), generated_at=GENERATED)))
    assert not figures["check:errorRate"].find_all("circle", class_="fail")


def test_experiment_draws_lift_band_that_narrows_and_p_value() -> None:
    doc = parse(render("fraud", ab_test(), generated_at=GENERATED))
    figures = charts(doc)
    assert list(figures) == ["weight", "lift", "p-value"]
    assert len(doc.find_all("svg")) == 3
    assert "Experiment: conversion" in [h2.text() for h2 in doc.find_all("h2")]

    band = figures["lift"].one("polygon", class_="band")
    corners = [tuple(map(float, p.split(","))) for p in band.attrs["points"].split()]
    upper, lower = corners[:4], corners[4:][::-1]
    heights = [lo[1] - hi[1] for hi, lo in zip(upper, lower, strict=True)]
    assert heights == sorted(heights, reverse=True) and heights[-1] < heights[0] / 5
    assert "no difference" in figures["lift"].text()  # the zero line
    assert "1e-" not in figures["p-value"].text()  # 0.01 and above read as decimals
    assert {"1", "0.1", "0.01"} <= {t.text() for t in figures["p-value"].find_all("text")}


def test_look_without_an_interval_breaks_the_band() -> None:
    records = ab_test()
    records[2]["status"]["experiment"]["ci"] = None
    lift = charts(parse(render("fraud", records, generated_at=GENERATED)))["lift"]
    assert len(lift.find_all("polygon", class_="band")) == 1  # looks 1-2
    assert len(lift.find_all("line", class_="band")) == 1  # look 4 alone


def test_experiment_tables_show_the_last_look() -> None:
    doc = parse(render("fraud", ab_test(), generated_at=GENERATED))
    assert rows(doc, "arms") == [
        ("", ["stable", "16,000", "0.1"]),
        ("", ["candidate", "16,000", "0.12"]),
    ]
    head = [th.text() for th in doc.one("table", id="experiment").find_all("th")]
    ((_, cells),) = rows(doc, "experiment")
    assert dict(zip(head, cells, strict=True)) == {
        "Lift": "+0.0200",
        "Relative lift": "+20.00%",
        "Confidence sequence": "[+0.0040, +0.0360]",  # as `turnout status` prints it
        "p-value": "0.01",
        "Sample-ratio p-value": "0.6",
        "Decision": "Candidate",
    }


# --- tables ------------------------------------------------------------------------------


def test_events_table_lists_every_event_and_highlights_warnings() -> None:
    events = rows(parse(render("fraud", rolled_back_canary(), generated_at=GENERATED)), "events")
    assert events == [
        ("", ["+0s", "10:00:00", "Normal", "Started", "Canary of v2 over stable v1 started"]),
        (
            "warning",
            ["+1m", "10:01:00", "Warning", "ChecksFailed", "errorRate 0.0625 > 0.010 (1 of 2)"],
        ),
        (
            "warning",
            ["+2m", "10:02:00", "Warning", "RolledBack", "errorRate 0.0875 > 0.010 (2 of 2)"],
        ),
    ]


@pytest.mark.parametrize(
    ("records", "table_id", "numeric"),
    [
        (rolled_back_canary(), "events", ["Time", "At (UTC)"]),
        (rolled_back_canary(), "last-checks", ["Value", "Threshold"]),
        (ab_test(), "arms", ["n", "Mean"]),
        (
            ab_test(),
            "experiment",
            ["Lift", "Relative lift", "Confidence sequence", "p-value", "Sample-ratio p-value"],
        ),
    ],
)
def test_numbers_and_their_headers_are_right_aligned(records, table_id, numeric) -> None:
    page = render("fraud", records, generated_at=GENERATED)
    table = parse(page).one("table", id=table_id)
    head = table.find_all("th")
    assert [th.text() for th in head if th.attrs.get("class") == "num"] == numeric
    for tr in table.one("tbody").find_all("tr"):
        cells = tr.find_all("td")
        assert [c.attrs.get("class") for c in cells] == [th.attrs.get("class") for th in head]
    assert re.search(r"th\.num, td\.num \{ text-align: right;", page)


def test_last_checks_table_shows_the_failing_value() -> None:
    checks = rows(
        parse(render("fraud", rolled_back_canary(), generated_at=GENERATED)), "last-checks"
    )
    assert checks == [
        ("fail", ["errorRate", "0.0875", "<= 0.01", "FAIL"]),
        ("pass", ["latencyP99Ms", "45", "<= 100", "pass"]),
    ]


# --- a page that stands alone ------------------------------------------------------------


@pytest.mark.parametrize("records", [promoted_canary(), rolled_back_canary(), ab_test()])
def test_page_has_no_external_references(records) -> None:
    page = render("fraud", records, generated_at=GENERATED)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert not parse(page).find_all("link")


def test_text_from_the_log_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    records = rolled_back_canary()
    records[-1]["events"][0]["message"] = hostile
    records[-1]["status"]["message"] = hostile
    page = render("<b>fraud</b>", records, generated_at=GENERATED)
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    doc = parse(page)
    assert rows(doc, "events")[-1][1][-1] == hostile  # shown to the reader as text
    assert hostile in banner(doc).text()


def test_same_log_renders_the_same_page() -> None:
    assert render("fraud", ab_test(), generated_at=GENERATED) == render(
        "fraud", ab_test(), generated_at=GENERATED
    )


# --- thin logs ---------------------------------------------------------------------------


def test_single_record_rollout() -> None:
    doc = parse(render("fraud", promoted_canary()[:1], generated_at=GENERATED))
    weight = charts(doc)["weight"]
    assert [c.one("title").text() for c in weight.find_all("circle")] == ["+0s: live traffic 5"]
    assert "No analysis ran in this rollout." in doc.text()


def test_single_look_experiment_draws_its_interval_as_a_bar() -> None:
    lift = charts(parse(render("fraud", ab_test()[:1], generated_at=GENERATED)))["lift"]
    assert lift.find_all("line", class_="band") and not lift.find_all("polygon")


def test_missing_check_values_leave_gaps_and_read_no_data() -> None:
    statuses = [
        canary(Phase.PROGRESSING, 5, checks=[check("errorRate", value, 0.01, s)])
        for s, value in [(60, 0.002), (120, None), (180, 0.004), (240, 0.003)]
    ]
    records = [record(s, status) for s, status in zip([60, 120, 180, 240], statuses, strict=True)]
    doc = parse(render("fraud", records, generated_at=GENERATED))
    line = charts(doc)["check:errorRate"].one("path").attrs["d"]
    assert line.count("M") == 2  # the line breaks at the missing value
    assert rows(doc, "last-checks")[0][1][1] == "0.003"

    blank = [record(60, canary(Phase.PROGRESSING, 5, checks=[check("errorRate", None, 0.01, 60)]))]
    doc = parse(render("fraud", blank, generated_at=GENERATED))
    assert "no data" in charts(doc)["check:errorRate"].text()
    assert rows(doc, "last-checks") == [("fail", ["errorRate", "no data", "<= 0.01", "FAIL"])]


def test_shadow_traffic_is_drawn_as_a_second_line() -> None:
    status = ModelDeploymentStatus(
        phase=Phase.SHADOWING,
        routing=Routing(
            stable=STABLE, shadow=ShadowTarget(version="v2", url="http://fraud-v2:3000", percent=30)
        ),
        rollout_version="v2",
        rollout_strategy=StrategyType.SHADOW,
    )
    weight = charts(parse(render("fraud", [record(0, status)], generated_at=GENERATED)))["weight"]
    assert "mirrored" in weight.one("figcaption").text()
    assert [c.one("title").text() for c in weight.find_all("circle")] == [
        "+0s: live traffic 0",
        "+0s: mirrored 30",
    ]


def test_log_without_a_rollout_says_so() -> None:
    idle = record(0, ModelDeploymentStatus(phase=Phase.IDLE, routing=Routing(stable=STABLE)))
    for records in ([], [idle]):
        doc = parse(render("fraud", records, generated_at=GENERATED))
        assert banner(doc).text().startswith("No rollout recorded")
        assert not doc.find_all("svg")


def test_invalid_status_names_the_record_and_field() -> None:
    records = promoted_canary()
    records[1]["status"]["phase"] = "Sideways"
    with pytest.raises(SpecError, match=r"record at 2026-11-21T10:01:00\+00:00: phase"):
        render("fraud", records, generated_at=GENERATED)


# --- choosing a rollout -----------------------------------------------------------------


def versions(records) -> list[tuple[str | None, str]]:
    return [(r["status"]["rolloutVersion"], r["status"]["phase"]) for r in records]


def idle(seconds: float) -> Any:
    return record(seconds, ModelDeploymentStatus(phase=Phase.IDLE, routing=Routing(stable=STABLE)))


def two_rollouts() -> tuple[list[Any], list[Any], list[Any]]:
    """A log where v2 is rolled back, then v3 promoted; idle records around them."""
    first = rolled_back_canary("v2")
    second = promoted_canary("v3", start=600)
    return [idle(-60), *first, idle(300), *second, idle(900)], first, second


def test_rollouts_are_every_rollout_oldest_first() -> None:
    log, first, second = two_rollouts()
    assert rollouts(log) == [first, second]


def test_report_shows_the_last_rollout_by_default() -> None:
    log, _, _ = two_rollouts()
    page = render("fraud", log, generated_at=GENERATED)
    doc = parse(page)
    assert doc.one("h1").text() == "fraud: rollout of v3"
    assert "ChecksFailed" not in page and "v2" not in page
    assert rows(doc, "events")[0][1][0] == "+0s"  # times count from v3's start


def test_report_shows_the_chosen_rollout_and_not_the_others() -> None:
    log, _, _ = two_rollouts()
    page = render("fraud", log, generated_at=GENERATED, rollout=1)
    doc = parse(page)
    assert doc.one("h1").text() == "fraud: rollout of v2"
    assert "v3" not in page
    assert "Rollout</dt><dd>1 of 2 in the log" in page
    assert banner(doc).attrs["class"] == "banner rolledback"
    assert rows(doc, "events")[0][1][:2] == ["+0s", "10:00:00"]

    later = render("fraud", log, generated_at=GENERATED, rollout=2)
    assert later == render("fraud", log, generated_at=GENERATED)
    assert "v2" not in later


@pytest.mark.parametrize("asked", [0, 3, -1])
def test_a_rollout_out_of_range_says_how_many_there_are(asked: int) -> None:
    log, _, _ = two_rollouts()
    with pytest.raises(LookupError, match=r"^fraud has 2 rollouts; choose 1 to 2$"):
        render("fraud", log, generated_at=GENERATED, rollout=asked)
    with pytest.raises(LookupError, match=r"^fraud has 1 rollout; choose 1$"):
        render("fraud", promoted_canary(), generated_at=GENERATED, rollout=asked or 2)
    with pytest.raises(LookupError, match=r"^fraud has no rollout recorded"):
        render("fraud", [idle(0)], generated_at=GENERATED, rollout=1)


def test_each_rollout_has_a_one_line_description() -> None:
    log, _, _ = two_rollouts()
    assert [describe_rollout(r) for r in rollouts(log)] == [
        "v2 over v1, Canary, started 2026-11-21 10:00:00 UTC, RolledBack",
        "v3 over v1, Canary, started 2026-11-21 10:10:00 UTC, Promoted",
    ]
    in_flight = describe_rollout(ab_test()[:2])
    assert in_flight == "v2 over v1, ABTest, started 2026-11-21 10:00:00 UTC, Experimenting"


def test_same_version_rolled_out_again_starts_a_new_rollout() -> None:
    first = rolled_back_canary("v2")
    settled = settle(first[-1], seconds=300)  # still names v2, as the controller leaves it
    retry = promoted_canary("v2", start=600)
    assert rollouts([*first, settled, *retry]) == [[*first, settled], retry]


def test_records_after_the_end_belong_to_the_rollout() -> None:
    log = promoted_canary()
    settled = settle(log[-1], seconds=240)
    assert rollouts([*log, settled]) == [[*log, settled]]


def test_without_start_times_the_version_alone_groups_records() -> None:
    log = [*rolled_back_canary("v2"), *promoted_canary("v3", start=600)]
    for r in log:
        r["status"]["rolloutStartedAt"] = None
    assert [versions(r) for r in rollouts(log)] == [
        [("v2", "Progressing"), ("v2", "Progressing"), ("v2", "RolledBack")],
        [("v3", "Progressing"), ("v3", "Progressing"), ("v3", "Progressing"), ("v3", "Promoted")],
    ]


def test_no_rollout_in_the_log() -> None:
    assert rollouts([]) == []
    assert rollouts([idle(0), idle(60)]) == []


def settle(ended: Any, *, seconds: float) -> Any:
    """A later record of an ended rollout: Idle, its version and start still in status."""
    later = json.loads(json.dumps(ended))
    later["at"] = at(seconds).isoformat()
    later["status"]["phase"] = "Idle"
    later["events"] = []
    return later
