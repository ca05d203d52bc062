"""Route tables: bad files are rejected with the field named, and the last good one is kept."""

from __future__ import annotations

import pytest

from services.router.file_source import FileRouteSource
from turnout.core.spec import (
    Comparison,
    ComparisonType,
    RouteTable,
    Routing,
    SpecError,
    Target,
    dump,
    parse_deployment,
    parse_route_table,
    route_for,
)

GOOD = {"models": {"fraud": {"stable": {"version": "v1", "url": "http://127.0.0.1:1"}}}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"models": {}}, "models: Dictionary should have at least 1 item"),
        (
            {"models": {"f": {"candidate": {"version": "v2", "url": "http://a:1"}}}},
            "models.f.stable: Field required",
        ),
        (
            {
                "models": {
                    "f": {
                        **GOOD["models"]["fraud"],
                        "candidate": {"version": "v2", "url": "http://a:1", "weight": 130},
                    }
                }
            },
            "models.f.candidate.weight: Input should be less than or equal to 100",
        ),
        ({"models": {"f": {"stable": {"version": "v1", "url": "ftp://a"}}}}, "models.f.stable.url"),
        (
            {"models": {"f": {**GOOD["models"]["fraud"], "wieght": 3}}},
            "models.f.wieght: Extra inputs are not permitted",
        ),
        (
            {"models": {"f": {**GOOD["models"]["fraud"], "fallback": {"mode": "static"}}}},
            "needs 'probability'",
        ),
        (
            {
                "models": {
                    "f": {
                        **GOOD["models"]["fraud"],
                        "shadow": {"version": "v3", "url": "http://a:1", "percent": -1},
                    }
                }
            },
            "models.f.shadow.percent",
        ),
        (
            {"models": {"f": {**GOOD["models"]["fraud"], "comparison": {"type": "Regression"}}}},
            "models.f.comparison: type Regression needs tolerance or relativeTolerance",
        ),
        ("just text", "(document)"),
    ],
)
def test_invalid_tables_name_the_field(doc, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_route_table(doc)
    assert message in str(err.value)


def test_camel_case_fields_and_defaults() -> None:
    table = parse_route_table(
        {
            "models": {
                "fraud": {**GOOD["models"]["fraud"], "stickyHeader": "X-User", "timeoutMs": 250}
            }
        }
    )
    route = table.models["fraud"]
    assert route.sticky_header == "x-user" and route.timeout_ms == 250
    assert route.candidate is None and route.fallback.mode == "error"


def test_a_route_compares_as_its_deployment_says() -> None:
    deployment = parse_deployment(
        {
            "metadata": {"name": "digits"},
            "spec": {
                "model": "digits",
                "stable": {"version": "v1"},
                "comparison": {"type": "MultiClass", "output": "probabilities"},
            },
        }
    )
    routing = Routing(stable=Target(version="v1", url="http://127.0.0.1:1"))
    route = route_for(deployment.spec, routing)
    assert route is not None
    assert route.comparison == Comparison(type=ComparisonType.MULTI_CLASS, output="probabilities")
    table = parse_route_table({"models": {"digits": dump(route)}})  # the file round-trips
    assert table.models["digits"].comparison == route.comparison
    assert parse_route_table(GOOD).models["fraud"].comparison == Comparison()  # Binary at 0.5


def test_a_table_written_with_agreement_threshold_still_reads() -> None:
    old = {"models": {"fraud": {**GOOD["models"]["fraud"], "agreementThreshold": 0.3}}}
    route = parse_route_table(old).models["fraud"]
    assert route.comparison == Comparison(type=ComparisonType.BINARY, threshold=0.3)
    both = {"models": {"f": {**old["models"]["fraud"], "comparison": {"type": "Exact"}}}}
    with pytest.raises(SpecError, match=r"models\.f\.agreementThreshold: Extra inputs"):
        parse_route_table(both)


def test_file_source_reloads_on_change_and_keeps_the_last_good_table(tmp_path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("models:\n  fraud:\n    stable: {version: v1, url: 'http://127.0.0.1:1'}\n")
    tables: list[RouteTable] = []
    errors: list[str] = []
    source = FileRouteSource(path, on_table=tables.append, on_error=errors.append)
    source.poll()
    source.poll()  # unchanged: not loaded again
    assert [t.models["fraud"].stable.version for t in tables] == ["v1"]

    path.write_text(
        "models:\n  fraud:\n    stable: {version: v1, url: 'http://127.0.0.1:1'}\n"
        "    candidate: {version: v2, url: 'http://127.0.0.1:2', weight: 400}\n"
    )
    source.poll()
    assert len(tables) == 1 and "models.fraud.candidate.weight" in errors[-1]

    path.write_text("models: [unclosed")
    source.poll()
    assert len(tables) == 1 and "not valid YAML/JSON" in errors[-1]

    path.write_text(
        '{"models": {"fraud": {"stable": {"version": "v9", "url": "http://127.0.0.1:1"}}}}'
    )
    source.poll()
    assert tables[-1].models["fraud"].stable.version == "v9"
