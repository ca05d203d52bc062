"""The router's cluster route source: the table it serves as ModelDeployments come and go.

Watch streams are scripted through FakeKube; the source is stepped with ``run_once()`` (one
list, or one watch to its end) and its retry sleep is recorded, so nothing here waits.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.router.dispatch import Router
from services.router.kube_source import KubeRouteSource, entry_of
from services.router.main import build_kube, table_setter
from tests.k8s.fake_kube import FakeKube, no_http  # noqa: F401
from turnout.core.spec import RouteTable
from turnout.io.kube import Gone, KubeError, Obj, WatchEvent


def md(
    name: str,
    *,
    namespace: str = "prod",
    model: str | None = None,
    stable: str = "v1",
    candidate: str | None = None,
    weight: float = 0,
    reconciled: bool = True,
) -> Obj:
    """A ModelDeployment as the API serves it, with ``status.routing`` as the controller writes."""
    model = model or name
    spec: Obj = {"model": model, "stable": {"version": stable}}
    routing: Obj = {"stable": {"version": stable, "url": f"http://{model}-{stable}.{namespace}"}}
    if candidate is not None:
        spec["candidate"] = {"version": candidate}
        url = f"http://{model}-{candidate}.{namespace}"
        routing["candidate"] = {"version": candidate, "url": url, "weight": weight}
    obj: Obj = {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": spec,
    }
    if reconciled:
        obj["status"] = {"phase": "Idle", "routing": routing}
    return obj


def event(kind: str, obj: Obj, rv: str = "200") -> WatchEvent:
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = rv
    return WatchEvent(kind, obj)


def bookmark(rv: str) -> WatchEvent:
    return WatchEvent("BOOKMARK", {"kind": "ModelDeployment", "metadata": {"resourceVersion": rv}})


def served(table: RouteTable | None) -> dict[str, str]:
    """What a caller of each model gets: ``v1``, or ``v1 + v2@25%``."""
    if table is None:
        return {}
    out = {}
    for name, route in table.models.items():
        arms = route.stable.version
        if route.candidate is not None:
            arms += f" + {route.candidate.version}@{route.candidate.weight:g}%"
        out[name] = arms
    return out


class RecordingKube(FakeKube):
    """FakeKube that also records where each list and watch started."""

    def __init__(self) -> None:
        super().__init__(namespace="prod")
        self.calls: list[tuple[str, str | None, str]] = []

    def list_deployments(self, namespace: str | None) -> tuple[list[Obj], str]:
        items, rv = super().list_deployments(namespace)
        self.calls.append(("list", namespace, rv))
        return items, rv

    def watch_deployments(
        self, namespace: str | None, resource_version: str, *, timeout_s: int
    ) -> Iterator[WatchEvent]:
        self.calls.append(("watch", namespace, resource_version))
        return super().watch_deployments(namespace, resource_version, timeout_s=timeout_s)


class Fed:
    """A source over a kube, with everything it hands the router recorded."""

    def __init__(self, kube: FakeKube, namespaces: list[str] | None = None) -> None:
        self.tables: list[RouteTable | None] = []
        self.errors: list[str] = []
        self.sleeps: list[float] = []
        self.source = KubeRouteSource(
            kube,
            namespaces,
            on_table=self.tables.append,
            on_error=self.errors.append,
            sleep=self.sleeps.append,
        )

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.source.run_once()

    @property
    def now(self) -> dict[str, str]:
        return served(self.tables[-1]) if self.tables else {}


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        return await client.get(path)


def get(app: Any, path: str) -> httpx.Response:
    return asyncio.run(_get(app, path))


# --- listing and watching --------------------------------------------------------------------


def test_initial_list_serves_each_reconciled_deployment() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud", candidate="v2", weight=25))
    kube.add_deployment(md("churn", stable="v7"))
    kube.add_deployment(md("spam", reconciled=False))  # the controller has not got to it yet
    fed = Fed(kube)
    fed.step()
    assert fed.now == {"fraud": "v1 + v2@25%", "churn": "v7"}
    assert len(fed.tables) == 1 and fed.errors == []
    url = fed.tables[-1].models["fraud"].candidate.url  # type: ignore[union-attr]
    assert url == "http://fraud-v2.prod"


def test_watch_events_move_traffic_and_only_real_changes_reach_the_router() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud"))
    kube.streams = [
        [
            event("MODIFIED", md("fraud", candidate="v2", weight=5)),
            event("ADDED", md("churn")),
            event("MODIFIED", md("fraud", candidate="v2", weight=5)),  # status.message only, say
            event("MODIFIED", md("fraud", candidate="v2", weight=25)),
            event("DELETED", md("churn")),
        ]
    ]
    fed = Fed(kube)
    fed.step(2)
    assert [served(t) for t in fed.tables] == [
        {"fraud": "v1"},
        {"fraud": "v1 + v2@5%"},
        {"fraud": "v1 + v2@5%", "churn": "v1"},
        {"fraud": "v1 + v2@25%", "churn": "v1"},
        {"fraud": "v1 + v2@25%"},
    ]


def test_rewatches_from_the_last_resource_version_and_a_bookmark_moves_it() -> None:
    kube = RecordingKube()
    kube.add_deployment(md("fraud"))
    kube.streams = [
        [event("MODIFIED", md("fraud", candidate="v2", weight=5), rv="300"), bookmark("350")],
        [],  # timed out quietly
    ]
    fed = Fed(kube)
    fed.step(4)
    listed_at = kube.calls[0][2]
    assert kube.calls == [
        ("list", None, listed_at),
        ("watch", None, listed_at),
        ("watch", None, "350"),
        ("watch", None, "350"),
    ]
    assert fed.now == {"fraud": "v1 + v2@5%"} and len(fed.tables) == 2  # a bookmark changes none


def test_deployment_without_status_routes_nothing_until_the_controller_writes_it() -> None:
    kube = FakeKube(namespace="prod")
    kube.streams = [
        [
            event("ADDED", md("fraud", reconciled=False)),
            event("MODIFIED", md("fraud")),
        ]
    ]
    fed = Fed(kube)
    fed.step()
    assert fed.tables == [None] and fed.errors == []  # listed, nothing to route yet
    fed.step()
    assert fed.now == {"fraud": "v1"} and fed.errors == []


def test_deleting_the_last_deployment_stops_serving_its_model() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud"))
    kube.streams = [[event("DELETED", md("fraud"))]]
    router = Router()
    source = KubeRouteSource(
        kube, ["prod"], on_table=table_setter(router), on_error=router.reject_table
    )
    source.run_once()
    assert get(router, "/v2/health/ready").status_code == 200
    source.run_once()
    assert router.table is None
    assert get(router, "/v2/health/ready").status_code == 200, "up, serving no model"
    reply = get(router, "/v2/models/fraud/ready")
    assert reply.status_code == 404 and "not found" in reply.json()["error"]


# --- API failures -----------------------------------------------------------------------------


def test_watch_error_is_reported_backed_off_and_the_watch_resumes_where_it_was() -> None:
    kube = RecordingKube()
    kube.add_deployment(md("fraud"))
    kube.streams = [
        [event("MODIFIED", md("fraud", candidate="v2", weight=5), rv="300"), KubeError(0, "reset")],
        [KubeError(500, "etcdserver: request timed out")],
        [event("MODIFIED", md("fraud", candidate="v2", weight=25), rv="400")],
        [KubeError(0, "reset")],
    ]
    fed = Fed(kube)
    fed.step(5)
    assert fed.now == {"fraud": "v1 + v2@25%"}
    assert [c for c in kube.calls if c[0] == "list"] == [kube.calls[0]]  # never relisted
    assert [c[2] for c in kube.calls[1:]] == [kube.calls[0][2], "300", "300", "400"]
    # an event after two failures resets the back-off
    assert fed.sleeps == [0.5, 1.0, 0.5]
    assert fed.errors[0] == "kubernetes: ModelDeployments in all namespaces: reset"
    assert "etcdserver" in fed.errors[1] and len(fed.errors) == 3


def test_back_off_doubles_up_to_ten_seconds_while_the_api_is_down() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud"))
    kube.streams = [[KubeError(0, "connection refused")] for _ in range(7)]
    fed = Fed(kube)
    fed.step(8)
    assert fed.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert fed.now == {"fraud": "v1"} and len(fed.tables) == 1  # still serving


def test_list_failure_is_retried_before_anything_is_served() -> None:
    class Down(FakeKube):
        failures = 2

        def list_deployments(self, namespace: str | None) -> tuple[list[Obj], str]:
            if self.failures:
                self.failures -= 1
                raise KubeError(403, "modeldeployments.turnout.dev is forbidden")
            return super().list_deployments(namespace)

    kube = Down(namespace="prod")
    kube.add_deployment(md("fraud"))
    fed = Fed(kube)
    fed.step(3)
    assert fed.now == {"fraud": "v1"} and fed.sleeps == [0.5, 1.0]
    assert all("forbidden" in e for e in fed.errors) and len(fed.errors) == 2


def test_gone_relists_and_catches_up_with_what_changed_meanwhile() -> None:
    kube = RecordingKube()
    kube.add_deployment(md("fraud"))
    kube.add_deployment(md("churn"))
    kube.streams = [[Gone(410, "too old resource version: 100 (900)")]]
    fed = Fed(kube)
    fed.step(2)
    kube.delete_deployment("prod", "churn")  # missed while the watch was gone
    kube.add_deployment(md("fraud", candidate="v2", weight=50))
    fed.step()
    assert [c[0] for c in kube.calls] == ["list", "watch", "list"]
    assert fed.now == {"fraud": "v1 + v2@50%"}
    assert fed.errors == [] and fed.sleeps == []  # expected, not an error


def test_a_relist_of_one_namespace_leaves_the_others_alone() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud", namespace="team-a"))
    kube.add_deployment(md("churn", namespace="team-b"))
    kube.add_deployment(md("spam", namespace="team-c"))  # not watched
    kube.streams = [[Gone(410, "expired")], []]  # team-a's watch, then team-b's
    fed = Fed(kube, ["team-a", "team-b"])
    fed.step()
    assert fed.now == {"fraud": "v1", "churn": "v1"}
    fed.step()
    kube.delete_deployment("team-a", "fraud")
    fed.step()  # team-a lists again; team-b watches
    assert fed.now == {"churn": "v1"}
    assert fed.source.description == "kubernetes: namespaces team-a, team-b"


# --- bad objects ------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        node = obj
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (
            _set("status.routing.candidate.url", "ftp://fraud-v2"),
            "prod/fraud: status.routing.candidate.url: must be an http:// or https:// base URL",
        ),
        (
            _set("status.routing.candidate.weight", 150),
            "prod/fraud: status.routing.candidate.weight: Input should be less than or equal",
        ),
        (_set("status.routing.stable.url", "nope"), "prod/fraud: status.routing.stable.url:"),
        (_set("status.routing.weight", 5), "prod/fraud: status.routing.weight: Extra inputs"),
        (_set("spec.model", None), "prod/fraud: spec.model: a model name is required"),
    ],
)
def test_malformed_deployment_is_rejected_and_its_previous_route_kept(
    change: Callable[[Obj], None], reported: str
) -> None:
    bad = md("fraud", candidate="v2", weight=50)
    change(bad)
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud", candidate="v2", weight=5))
    kube.add_deployment(md("churn"))
    kube.streams = [[event("MODIFIED", bad), event("MODIFIED", md("churn", stable="v3"))]]
    fed = Fed(kube)
    fed.step(2)
    assert len(fed.errors) == 1 and fed.errors[0].startswith(reported), fed.errors
    assert fed.now == {"fraud": "v1 + v2@5%", "churn": "v3"}  # others still move


def test_a_spec_the_operator_rejects_still_routes_by_its_status() -> None:
    """The operator keeps the last good routing in status when it rejects a spec edit; a router
    that starts afterwards (a scale-up, a restart) must serve it too."""
    rejected = md("fraud", candidate="v2", weight=25)
    rejected["spec"]["strategy"] = {"canary": {"steps": [50, 10]}}
    kube = FakeKube(namespace="prod")
    kube.add_deployment(rejected)
    fed = Fed(kube)
    fed.step()
    assert fed.now == {"fraud": "v1 + v2@25%"}
    assert fed.errors == []


def test_malformed_new_deployment_adds_nothing_and_the_router_says_why() -> None:
    kube = FakeKube(namespace="prod")
    bad = md("fraud")
    bad["status"]["routing"]["stable"]["url"] = "fraud-v1:3000"
    kube.add_deployment(bad)
    kube.add_deployment(md("churn"))
    router = Router()
    source = KubeRouteSource(
        kube, None, on_table=table_setter(router), on_error=router.reject_table
    )
    source.run_once()
    routes = get(router, "/routes").json()
    assert list(routes["table"]["models"]) == ["churn"]
    assert routes["lastError"].startswith("prod/fraud: status.routing.stable.url")


# --- one model, two deployments ---------------------------------------------------------------


def test_two_deployments_of_one_model_keep_the_first_and_report_the_other() -> None:
    kube = FakeKube()
    kube.add_deployment(md("fraud", namespace="team-a", stable="v1"))
    kube.add_deployment(md("fraud-copy", namespace="team-b", model="fraud", stable="v9"))
    kube.streams = [
        [
            event("MODIFIED", md("fraud-copy", namespace="team-b", model="fraud", stable="v10")),
            event("DELETED", md("fraud", namespace="team-a")),
        ]
    ]
    fed = Fed(kube)
    fed.step()
    assert fed.now == {"fraud": "v1"}
    assert fed.errors == [
        "team-b/fraud-copy: spec.model: model 'fraud' is already served by ModelDeployment "
        "team-a/fraud; this one is ignored while that one exists"
    ]
    fed.step()  # team-b's edit is still refused; then team-a's goes and team-b's takes over
    assert len(fed.errors) == 2 and "team-a/fraud" in fed.errors[1]
    assert [served(t) for t in fed.tables] == [{"fraud": "v1"}, {"fraud": "v10"}]


def test_renaming_the_model_frees_the_old_name_for_the_waiting_deployment() -> None:
    kube = FakeKube()
    kube.add_deployment(md("a", namespace="x", model="fraud", stable="v1"))
    kube.add_deployment(md("b", namespace="y", model="fraud", stable="v2"))
    kube.streams = [[event("MODIFIED", md("a", namespace="x", model="churn", stable="v1"))]]
    fed = Fed(kube)
    fed.step(2)
    assert fed.now == {"churn": "v1", "fraud": "v2"}


# --- the real router behind the source --------------------------------------------------------


def test_router_keeps_answering_with_the_last_good_table_after_errors() -> None:
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud", candidate="v2", weight=25))
    bad = md("fraud", candidate="v2", weight=150)
    kube.streams = [[event("MODIFIED", bad), KubeError(0, "connection reset by peer")]]
    router = Router()
    source = KubeRouteSource(
        kube,
        ["prod"],
        on_table=table_setter(router),
        on_error=router.reject_table,
        sleep=lambda _: None,
    )
    router.source = source.description
    assert get(router, "/v2/health/ready").status_code == 503  # nothing listed yet
    source.run_once()
    source.run_once()
    routes = get(router, "/routes").json()
    assert routes["source"] == "kubernetes: namespace prod"
    assert routes["table"]["models"]["fraud"]["candidate"]["weight"] == 25
    assert "connection reset by peer" in routes["lastError"]
    assert get(router, "/v2/health/ready").status_code == 200
    errors = router.metrics.registry.get_sample_value("turnout_router_route_errors_total")
    assert errors == 2  # the bad object, then the dropped watch


def test_routes_stops_reporting_a_problem_once_it_no_longer_stands() -> None:
    """A refused status corrected back to the routing the router kept, a refused new object
    deleted, the API answering again: the table does not change, and /routes says no error."""
    kube = FakeKube(namespace="prod")
    kube.add_deployment(md("fraud", candidate="v2", weight=25))
    bad_new = md("churn")
    bad_new["status"]["routing"]["stable"]["url"] = "churn:3000"
    kube.streams = [
        [event("MODIFIED", md("fraud", candidate="v2", weight=150))],
        [event("MODIFIED", md("fraud", candidate="v2", weight=25))],  # the operator's next pass
        [event("ADDED", bad_new)],
        [event("MODIFIED", md("fraud", candidate="v2", weight=25))],  # unrelated: churn stands
        [event("DELETED", bad_new)],
        [KubeError(0, "connection reset by peer")],
        [bookmark("900")],  # the next watch answers
        [KubeError(0, "connection reset by peer")],
        [],  # ... or ends quietly at its timeout
    ]
    router = Router()
    source = KubeRouteSource(
        kube, ["prod"], on_table=table_setter(router), on_error=router.reject_table,
        sleep=lambda _: None,
    )  # fmt: skip
    source.run_once()

    def after_step() -> str | None:
        source.run_once()
        routes = get(router, "/routes").json()
        assert routes["table"]["models"]["fraud"]["candidate"]["weight"] == 25
        assert list(routes["table"]["models"]) == ["fraud"]
        error: str | None = routes["lastError"]
        return error

    assert (after_step() or "").startswith("prod/fraud: status.routing.candidate.weight")
    assert after_step() is None
    assert (after_step() or "").startswith("prod/churn: status.routing.stable.url")
    assert (after_step() or "").startswith("prod/churn: status.routing.stable.url")
    assert after_step() is None
    assert "connection reset by peer" in (after_step() or "")
    assert after_step() is None
    assert "connection reset by peer" in (after_step() or "")
    assert after_step() is None
    errors = router.metrics.registry.get_sample_value("turnout_router_route_errors_total")
    assert errors == 4  # each problem counted once


class BlockingKube(FakeKube):
    """A watch that waits, like a real one with nothing to report, until released."""

    def __init__(self) -> None:
        super().__init__(namespace="prod")
        self.watching = threading.Event()
        self.release = threading.Event()

    def watch_deployments(
        self, namespace: str | None, resource_version: str, *, timeout_s: int
    ) -> Iterator[WatchEvent]:
        self.watching.set()
        self.release.wait(timeout=10)
        yield from ()


def test_server_lifespan_runs_the_watch_in_a_thread_and_tables_land_on_the_loop() -> None:
    kube = BlockingKube()
    kube.add_deployment(md("fraud"))
    app = build_kube(kube, None)
    router = app.router
    set_on: list[int] = []
    set_table = router.set_table

    def recording(table: RouteTable) -> None:
        set_on.append(threading.get_ident())
        set_table(table)

    router.set_table = recording  # type: ignore[method-assign]

    async def serve() -> None:
        assert (await _get(router, "/v2/health/ready")).status_code == 503  # not started yet
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        assert (await outbox.get())["type"] == "lifespan.startup.complete"
        # once the thread is watching, its table is already queued on this loop, ahead of us
        assert await asyncio.to_thread(kube.watching.wait, 10)
        assert served(router.table) == {"fraud": "v1"}
        assert (await _get(app, "/v2/health/ready")).status_code == 200
        assert set_on == [threading.get_ident()]
        kube.release.set()
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan

    asyncio.run(serve())
    assert router.source == "kubernetes: all namespaces"
    assert not [t for t in threading.enumerate() if t.name.startswith("routes ")]


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "ran"),
    [
        (["--kube"], ("kube", [])),  # [] : the current namespace
        (["--kube", "--namespace", "a", "--namespace", "b"], ("kube", ["a", "b"])),
        (["--kube", "--all-namespaces", "--port", "9"], ("kube", None)),
        (["--routes", "r.yaml"], ("file", "r.yaml")),
    ],
)
def test_command_line_picks_the_source(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], ran: tuple[str, Any]
) -> None:
    from services.router import main as router_main

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(router_main, "run_kube", lambda ns, **_: calls.append(("kube", ns)))
    monkeypatch.setattr(router_main, "run", lambda path, **_: calls.append(("file", str(path))))
    router_main.main(argv)
    assert calls == [ran]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--kube", "--routes", "r.yaml"],
        ["--kube", "--namespace", "a", "--all-namespaces"],
        ["--routes", "r.yaml", "--namespace", "a"],
    ],
)
def test_command_line_refuses_ambiguous_sources(argv: list[str]) -> None:
    from services.router import main as router_main

    with pytest.raises(SystemExit) as exc:
        router_main.main(argv)
    assert exc.value.code == 2


def test_the_route_compares_shadow_replies_as_the_spec_says() -> None:
    """spec.comparison reaches the router in a cluster as it does locally."""
    obj = md("digits")
    obj["spec"]["comparison"] = {"type": "MultiClass"}
    entry = entry_of(obj)
    assert entry.route is not None
    assert entry.route.comparison.type.value == "MultiClass"
