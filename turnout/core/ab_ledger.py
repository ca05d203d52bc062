"""A/B outcomes as a ledger: one record per accepted outcome, merged exactly over replicas.

Why a ledger and not the router's gauges: a gauge lives in one process, so a router restart
zeroes it and a replica scaled away takes its sums along; Prometheus counters survive neither
a lost scrape at the end nor a repeated POST (they cannot tell two posts of one request apart),
and a counter cannot carry a negative sum. So every router replica appends one record per
accepted outcome, ``(request id, arm, outcome, when)``, to its own ledger for (model,
experiment), and answers 200 only once the record is durable (turnout.io.ab_store). The
controller reads every replica's ledger of the running experiment and merges them here:

- the union of all records, one per request id: a request counts once even when two replicas
  each accepted it (each knows only what it has seen), or a restarted replica, under a new id,
  accepted it again. The earliest accepted record wins, ties broken by replica id and position,
  so the merge is a function of the ledgers' contents, not of the order they were read in;
- summed per arm with ``math.fsum``: n, the sum and the sum of squares are exact (correctly
  rounded), whatever the order, so they equal what the clients sent.

Pure: records in, ``{arm: Moments}`` out; the storage is turnout.io.ab_store's.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from turnout.core.assign import Arm
from turnout.core.spec import ModelDeploymentStatus, ModelRoute, Phase
from turnout.core.stats import Moments


@dataclass(frozen=True)
class Outcome:
    """One accepted outcome: which request (the token's id), its arm and value, and when it
    was accepted (unix seconds)."""

    request: str
    arm: Arm
    value: float
    at: float


class LedgerUnavailable(RuntimeError):
    """The ledger could not be read (storage down, no permission); the analysis waits."""


class LedgerReader(Protocol):
    """Every replica's ledger of one experiment: ``{replica id: records in order}``."""

    def read(self, *, model: str, experiment: str) -> Mapping[str, Sequence[Outcome]]: ...


class LedgerKeeper(Protocol):
    """Removes ledgers no one reads any more (the controller's side of the store)."""

    def forget(self, *, model: str, keep: str) -> list[str]:
        """Remove every ledger of ``model`` but experiment ``keep``'s; what was removed."""
        ...


def started(model: str, before: ModelDeploymentStatus, after: ModelDeploymentStatus) -> str | None:
    """The experiment a pass started (an A/B split began taking traffic), else None.

    That is when the model's older ledgers can go: the finished experiments' numbers are in
    status and events, and the last one's ledger was kept for an audit until this one began."""
    running = _running(model, after)
    return running if running is not None and running != _running(model, before) else None


def _running(model: str, status: ModelDeploymentStatus) -> str | None:
    candidate = status.routing.candidate
    if status.phase is not Phase.EXPERIMENTING or candidate is None:
        return None
    return experiment_id(model=model, candidate=candidate.version, salt=status.routing.salt)


def experiment_id(*, model: str, candidate: str, salt: str) -> str:
    """The experiment of a model's candidate under a salt: 16 base64url characters. A new
    candidate or a new salt (each rollout gets one) is a new experiment, counted afresh."""
    text = f"{model}\0{candidate}\0{salt}".encode()
    return base64.urlsafe_b64encode(hashlib.blake2b(text, digest_size=12).digest()).decode()


def route_experiment(model: str, route: ModelRoute) -> str | None:
    """The experiment a route runs; None when no candidate is routed."""
    if route.candidate is None:
        return None
    return experiment_id(model=model, candidate=route.candidate.version, salt=route.salt)


# --- records on the wire and on disk -----------------------------------------------------------


def dumps(outcomes: Iterable[Outcome]) -> bytes:
    """JSON lines, one record each, newline-terminated."""
    return b"".join(
        orjson.dumps({"r": o.request, "a": o.arm.value, "o": o.value, "t": o.at}) + b"\n"
        for o in outcomes
    )


def loads(data: bytes) -> list[Outcome]:
    """The records in JSON lines. A line without its newline is a write that was cut short (a
    crash mid-append, or one still under way): it was never acknowledged, so it is not read;
    neither is a line that does not parse."""
    lines = data.split(b"\n")
    out = []
    for line in lines[:-1]:  # the last piece has no newline: unfinished, or empty
        record = _record(line)
        if record is not None:
            out.append(record)
    return out


def _record(line: bytes) -> Outcome | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    request, arm, value, at = doc.get("r"), doc.get("a"), doc.get("o"), doc.get("t")
    if not isinstance(request, str) or arm not in (Arm.STABLE.value, Arm.CANDIDATE.value):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, at)):
        return None
    assert isinstance(value, int | float) and isinstance(at, int | float)
    if not math.isfinite(value):
        return None
    return Outcome(request=request, arm=Arm(arm), value=float(value), at=float(at))


# --- the merge ----------------------------------------------------------------------------------


def unique(ledgers: Mapping[str, Sequence[Outcome]]) -> dict[str, Outcome]:
    """One record per request id over every replica's ledger: the earliest accepted (ties: the
    smaller replica id, then the earlier position)."""
    best: dict[str, tuple[tuple[float, str, int], Outcome]] = {}
    for replica, records in ledgers.items():
        for i, record in enumerate(records):
            rank = (record.at, replica, i)
            found = best.get(record.request)
            if found is None or rank < found[0]:
                best[record.request] = (rank, record)
    return {request: record for request, (_, record) in best.items()}


def moments(ledgers: Mapping[str, Sequence[Outcome]]) -> dict[str, Moments]:
    """``{arm: Moments}``, each request counted once; both arms present (zero when empty)."""
    values: dict[Arm, list[float]] = {Arm.STABLE: [], Arm.CANDIDATE: []}
    for record in unique(ledgers).values():
        values[record.arm].append(record.value)
    return {
        arm.value: Moments(n=float(len(v)), sum=math.fsum(v), sumsq=math.fsum(x * x for x in v))
        for arm, v in values.items()
    }
