"""The cluster's A/B ledger: ConfigMaps per replica, sharded before they fill up, written with
the resourceVersion read so a write behind a replica's back is never lost.

The API server is played by a fake of the four CoreV1Api calls the store makes, which enforces
resourceVersions and label selectors as the API server does.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from turnout.core.ab_ledger import Outcome, moments
from turnout.core.assign import Arm
from turnout.io import ab_store
from turnout.io.ab_store import LEDGER_LABEL, ConfigMapLedger


class ApiException(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason


class FakeCore:
    """ConfigMaps in one namespace, as the API server keeps them."""

    def __init__(self) -> None:
        self.maps: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.calls: list[str] = []

    class api_client:  # the attribute the store reads
        @staticmethod
        def sanitize_for_serialization(obj: Any) -> Any:
            return obj

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self.versions))
        self.maps[body["metadata"]["name"]] = body
        return copy.deepcopy(body)

    def create_namespaced_config_map(self, namespace: str, body: Any, **_: Any) -> Any:
        self.calls.append("create")
        if body["metadata"]["name"] in self.maps:
            raise ApiException(409, "AlreadyExists")
        assert "resourceVersion" not in body["metadata"]
        return self._stamp(body)

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        self.calls.append("replace")
        found = self.maps.get(name)
        if found is None:
            raise ApiException(404, "NotFound")
        if body["metadata"].get("resourceVersion") != found["metadata"]["resourceVersion"]:
            raise ApiException(409, "Conflict")
        return self._stamp(body)

    def list_namespaced_config_map(self, namespace: str, label_selector: str, **_: Any) -> Any:
        self.calls.append("list")
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        items = [
            copy.deepcopy(m)
            for m in self.maps.values()
            if all(m["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return {"items": items}


@pytest.fixture
def core(monkeypatch: pytest.MonkeyPatch) -> FakeCore:
    import kubernetes.client.exceptions as exceptions

    monkeypatch.setattr(exceptions, "ApiException", ApiException)
    return FakeCore()


def ledger(core: FakeCore) -> ConfigMapLedger:
    store = ConfigMapLedger(None, namespace="turnout")
    store._core = core  # type: ignore[assignment]
    return store


def outcomes(start: int, n: int, arm: Arm = Arm.CANDIDATE) -> list[Outcome]:
    return [Outcome(f"r{i}", arm, float(i % 3), float(i)) for i in range(start, start + n)]


def test_replicas_write_their_own_configmaps_and_anyone_reads_them_all(core: FakeCore) -> None:
    a, b = ledger(core), ledger(core)
    a.append(model="fraud", experiment="x", replica="router-a", records=outcomes(0, 3))
    a.append(model="fraud", experiment="x", replica="router-a", records=outcomes(3, 2))
    b.append(model="fraud", experiment="x", replica="router-b", records=outcomes(2, 3))
    b.append(model="digits", experiment="x", replica="router-b", records=outcomes(9, 1))
    read = ledger(core).read(model="fraud", experiment="x")
    assert read == {"router-a": outcomes(0, 5), "router-b": outcomes(2, 3)}
    assert moments(read)["candidate"].n == 5  # r2..r4 counted once
    assert {m["metadata"]["labels"][LEDGER_LABEL] for m in core.maps.values()} == {
        "fraud",
        "digits",
    }
    assert len(core.maps) == 3  # one per replica per model and experiment


def test_a_full_configmap_is_followed_by_the_next(
    core: FakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ab_store, "MAX_CONFIGMAP_BYTES", 2_000)
    store = ledger(core)
    for start in range(0, 200, 20):
        store.append(model="fraud", experiment="x", replica="a", records=outcomes(start, 20))
    assert len(core.maps) > 2
    assert all(len(m["data"][ab_store.DATA_KEY]) <= 2_000 for m in core.maps.values())
    assert ledger(core).read(model="fraud", experiment="x") == {"a": outcomes(0, 200)}


def test_a_restarted_replica_appends_to_its_last_configmap(core: FakeCore) -> None:
    ledger(core).append(model="fraud", experiment="x", replica="a", records=outcomes(0, 2))
    ledger(core).append(model="fraud", experiment="x", replica="a", records=outcomes(2, 2))
    assert len(core.maps) == 1
    assert ledger(core).read(model="fraud", experiment="x") == {"a": outcomes(0, 4)}


def test_a_write_behind_a_replicas_back_is_reread_not_lost(core: FakeCore) -> None:
    first, impostor = ledger(core), ledger(core)
    first.append(model="fraud", experiment="x", replica="a", records=outcomes(0, 1))
    impostor.append(model="fraud", experiment="x", replica="a", records=outcomes(1, 1))
    first.append(model="fraud", experiment="x", replica="a", records=outcomes(2, 1))  # 409, redone
    assert ledger(core).read(model="fraud", experiment="x") == {"a": outcomes(0, 3)}
    assert core.calls.count("replace") == 3


def test_an_unreachable_api_server_is_a_ledger_error(core: FakeCore) -> None:
    from turnout.core.ab_ledger import LedgerUnavailable

    def down(*_: Any, **__: Any) -> Any:
        raise ApiException(403, "Forbidden")

    core.list_namespaced_config_map = down  # type: ignore[method-assign]
    with pytest.raises(LedgerUnavailable, match="403 Forbidden"):
        ledger(core).read(model="fraud", experiment="x")
    with pytest.raises(LedgerUnavailable, match="403 Forbidden"):
        ledger(core).append(model="fraud", experiment="x", replica="a", records=outcomes(0, 1))
