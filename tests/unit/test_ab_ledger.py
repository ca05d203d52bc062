"""A/B ledgers: the merge over replicas counts each request once and sums exactly; the
directory store keeps what it acknowledged and never glues a torn write to the next record.

Real router processes writing and the controller reading: tests/integration/test_feedback.py.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core import ab_ledger
from turnout.core.ab_ledger import Outcome, experiment_id, moments, unique
from turnout.core.assign import Arm
from turnout.core.observation import Metrics, MetricsQuery, WithLedger, observe
from turnout.core.spec import ModelDeploymentStatus, Phase, Routing, Target, WeightedTarget
from turnout.core.stats import Moments
from turnout.io.ab_store import DirectoryLedger, MemoryLedger, path_part

values = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
records = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from(list(Arm)), values), max_size=40
).map(lambda rows: [Outcome(f"r{i}", arm, v, float(n)) for n, (i, arm, v) in enumerate(rows)])


def expected(sent: dict[str, tuple[Arm, float]]) -> dict[str, Moments]:
    out = {}
    for arm in Arm:
        v = [value for a, value in sent.values() if a is arm]
        out[arm.value] = Moments(float(len(v)), math.fsum(v), math.fsum(x * x for x in v))
    return out


@settings(max_examples=200)
@given(ledgers=st.dictionaries(st.sampled_from(["a", "b", "c"]), records, max_size=3))
def test_each_request_counts_once_whatever_replicas_saw_it(ledgers) -> None:
    merged = moments(ledgers)
    first = unique(ledgers)
    assert merged == expected({r: (o.arm, o.value) for r, o in first.items()})
    assert sum(m.n for m in merged.values()) == len(
        {o.request for rs in ledgers.values() for o in rs}
    )
    # The same ledgers read in another order merge to the same numbers, to the last bit.
    shuffled = {k: ledgers[k] for k in random.sample(list(ledgers), len(ledgers))}
    assert moments(shuffled) == merged


def test_the_earliest_accepted_record_of_a_request_wins() -> None:
    ledgers = {
        "b": [Outcome("x", Arm.CANDIDATE, 1.0, at=10.0)],
        "a": [Outcome("x", Arm.CANDIDATE, 5.0, at=11.0), Outcome("y", Arm.STABLE, 2.0, at=1.0)],
    }
    assert unique(ledgers)["x"].value == 1.0
    assert moments(ledgers) == {"stable": Moments(1, 2, 4), "candidate": Moments(1, 1, 1)}
    assert moments({}) == {"stable": Moments(), "candidate": Moments()}


def test_sums_are_exact_in_any_order() -> None:
    """fsum: 0.1 added ten thousand times in any order is exactly what the clients sent."""
    sent = [Outcome(f"r{i}", Arm.STABLE, 0.1 * (i % 7) + 1e-9 * i, float(i)) for i in range(10_000)]
    one = moments({"a": sent})
    split = moments({"a": sent[::2], "b": sent[1::2][::-1]})
    assert one == split
    assert one["stable"].sum == math.fsum(o.value for o in sent)


def test_an_experiment_is_the_model_its_candidate_and_salt() -> None:
    ids = {
        experiment_id(model=m, candidate=c, salt=s)
        for m in ("fraud", "digits")
        for c in ("v2", "v3")
        for s in ("", "fraud/v2/1")
    }
    assert len(ids) == 8
    assert all(len(i) == 16 for i in ids)


def test_lines_cut_short_or_garbled_are_not_records() -> None:
    good = ab_ledger.dumps([Outcome("r1", Arm.STABLE, 1.0, 5.0)])
    data = good + b"not json\n" + b'{"r": "r2", "a": "nope", "o": 1, "t": 1}\n' + good[:-5]
    assert ab_ledger.loads(data) == [Outcome("r1", Arm.STABLE, 1.0, 5.0)]


def test_the_directory_store_appends_reads_and_survives_a_torn_write(tmp_path: Path) -> None:
    store = DirectoryLedger(tmp_path)
    a1 = [Outcome("r1", Arm.STABLE, 1.0, 1.0), Outcome("r2", Arm.CANDIDATE, 0.0, 2.0)]
    store.append(model="fraud", experiment="x", replica="pod-a", records=a1)
    store.append(model="fraud", experiment="x", replica="pod/b", records=a1[:1])
    assert store.read(model="fraud", experiment="x") == {"pod-a": a1, "pod/b": a1[:1]}
    assert store.read(model="fraud", experiment="other") == {}

    # A crash mid-write leaves half a line: the readers skip it, and a replica reopening its
    # ledger cuts it off before appending (else the next record would be glued to it).
    store.close()
    path = tmp_path / "fraud" / "x" / "pod-a.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"r": "torn", "a": "stab')
    reader = DirectoryLedger(tmp_path)
    assert reader.read(model="fraud", experiment="x")["pod-a"] == a1
    again = DirectoryLedger(tmp_path)
    a2 = [Outcome("r3", Arm.STABLE, 3.0, 3.0)]
    again.append(model="fraud", experiment="x", replica="pod-a", records=a2)
    assert reader.read(model="fraud", experiment="x")["pod-a"] == a1 + a2  # incremental read
    assert DirectoryLedger(tmp_path).read(model="fraud", experiment="x")["pod-a"] == a1 + a2
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_names_become_safe_path_parts() -> None:
    assert path_part("fraud") == "fraud"
    assert path_part("..") == "%2E%2E"
    assert path_part("a/b") == "a%2Fb"
    assert path_part("") == "%"


def test_the_controller_takes_ab_outcomes_from_the_ledger_only() -> None:
    class Provider:
        def observe(self, query: MetricsQuery) -> Metrics:
            return Metrics(ab={"stable": Moments(99, 99, 99)})  # e.g. an old gauge: ignored

    ledger = MemoryLedger()
    ledger.append(
        model="fraud",
        experiment="x",
        replica="a",
        records=[Outcome("r", Arm.CANDIDATE, 2.0, 0.0)],
    )
    query = MetricsQuery("fraud", "v1", "v2", "candidate", 60, experiment="x")
    found = observe(WithLedger(Provider(), ledger), query, endpoints={})
    assert found.metrics is not None
    assert found.metrics.ab == {"stable": Moments(), "candidate": Moments(1, 2, 4)}


def _status(phase: Phase, candidate: str | None = None, salt: str = "s1") -> ModelDeploymentStatus:
    routing = Routing(
        stable=Target(version="v1", url="http://v1"),
        candidate=WeightedTarget(version=candidate, url="http://c", weight=50)
        if candidate
        else None,
        salt=salt,
    )
    return ModelDeploymentStatus(phase=phase, routing=routing)


def test_an_experiment_starts_when_a_pass_begins_collecting_outcomes() -> None:
    idle, running = _status(Phase.IDLE), _status(Phase.EXPERIMENTING, "v2")
    started = ab_ledger.started("fraud", idle, running)
    assert started == experiment_id(model="fraud", candidate="v2", salt="s1")
    assert ab_ledger.started("fraud", running, running) is None  # under way: nothing new
    assert ab_ledger.started("fraud", running, _status(Phase.PROMOTED)) is None  # ended: kept
    assert ab_ledger.started("fraud", idle, _status(Phase.PROGRESSING, "v2")) is None  # canary


def test_a_new_experiment_removes_the_models_finished_ledgers_only(tmp_path: Path) -> None:
    one = [Outcome("r1", Arm.STABLE, 1.0, 0.0)]
    for store in (DirectoryLedger(tmp_path), MemoryLedger()):
        for model, experiment in (("fraud", "old"), ("fraud", "older"), ("fraud", "new"),
                                  ("digits", "old")):  # fmt: skip
            store.append(model=model, experiment=experiment, replica="a", records=one)
        assert sorted(store.forget(model="fraud", keep="new")) == ["old", "older"]
        assert store.read(model="fraud", experiment="old") == {}
        assert store.read(model="fraud", experiment="new") == {"a": one}
        assert store.read(model="digits", experiment="old") == {"a": one}  # another model's
        assert store.forget(model="fraud", keep="new") == []
