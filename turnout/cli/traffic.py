"""Synthetic users calling the stable endpoint, for `turnout up`, the demo and benchmarks.

Each request carries a sticky user id and one transaction from the synthetic generator. With
an ``outcome`` function, every answered request of a split is followed by A/B feedback (the
business outcome of that user, e.g. a conversion drawn with a rate that depends on the version
that served them), posted with the reply's assignment token, which is how the A/B test gets
its data.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from turnout.core.tokens import HEADER as ASSIGNMENT

#: The business outcome of one served request: f(variant, version, rng) -> number.
Outcome = Callable[[str, str, random.Random], float]
#: One request body and what the caller knows about it (e.g. the true label), or None.
Sample = tuple[bytes, Any]
#: Feedback judged from the reply itself: f(reply body, what the caller knew) -> number.
Judge = Callable[[bytes, Any], float]


@dataclass
class Counts:
    #: (variant, version, status) -> requests
    replies: collections.Counter[tuple[str, str, int]] = field(default_factory=collections.Counter)
    errors: int = 0
    #: Outcomes the router accepted (counted).
    feedback: int = 0

    def served_by(self, version: str) -> int:
        return sum(n for (_, v, s), n in self.replies.items() if v == version and s == 200)


class Traffic:
    """``rate`` requests per second from ``threads`` threads until ``stop()``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        rate: float = 20.0,
        threads: int = 2,
        users: int = 100_000,
        outcome: Outcome | None = None,
        seed: int = 0,
        samples: Sequence[Sample] | None = None,
        api_key: str | None = None,
    ) -> None:
        """``samples``: the requests to send (default: synthetic fraud transactions);
        ``api_key``: sent as ``Authorization: Bearer`` with every request."""
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._samples = list(samples) if samples is not None else fraud_samples(seed)
        self.url = f"{base_url}/v2/models/{model}/infer"
        self.feedback_url = f"{base_url}/v2/models/{model}/feedback"
        self.rate = rate
        self.threads = threads
        self.users = users
        self.outcome = outcome
        self.judge: Judge | None = None
        self.seed = seed
        self.counts = Counts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def set_outcome(self, outcome: Outcome | None) -> None:
        self.outcome = outcome

    def set_judge(self, judge: Judge | None) -> None:
        """Send feedback judged from each reply (e.g. 1 when the predicted class was right)."""
        self.judge = judge

    def start(self) -> Traffic:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"traffic-{i}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=5)

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        period = self.threads / self.rate
        next_at = time.monotonic()
        with httpx.Client(timeout=5, headers=self._auth) as client:
            while not self._stop.is_set():
                next_at += period
                self._one(client, rng)
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()  # behind schedule: do not burst to catch up

    def _one(self, client: httpx.Client, rng: random.Random) -> None:
        user = f"user-{rng.randrange(self.users)}"
        body, known = self._samples[rng.randrange(len(self._samples))]
        headers = {"content-type": "application/json", "x-user-id": user}
        try:
            resp = client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError:
            with self._lock:
                self.counts.errors += 1
            return
        variant = resp.headers.get("x-turnout-variant", "")
        version = resp.headers.get("x-turnout-model-version", "")
        with self._lock:
            self.counts.replies[(variant, version, resp.status_code)] += 1
        outcome, judge = self.outcome, self.judge
        token = resp.headers.get(ASSIGNMENT)
        if resp.status_code != 200 or token is None:  # no token: no split, nothing to judge
            return
        if judge is not None:
            value = judge(resp.content, known)
        elif outcome is not None:
            value = outcome(variant, version, rng)
        else:
            return
        try:
            counted = client.post(self.feedback_url, json={"token": token, "outcome": value})
        except httpx.HTTPError:
            return
        if counted.status_code == 200:
            with self._lock:
                self.counts.feedback += 1


def conversion(rates: dict[str, float], default: float) -> Outcome:
    """Bernoulli conversions with a rate per version (others convert at ``default``)."""

    def outcome(variant: str, version: str, rng: random.Random) -> float:
        return 1.0 if rng.random() < rates.get(version, default) else 0.0

    return outcome


def fraud_samples(seed: int = 0, n: int = 2000) -> list[Sample]:
    """One-row v2 requests of synthetic card transactions."""
    from training.data import FRAUD_SCHEMA, generate

    rows = generate(n, seed=seed)[FRAUD_SCHEMA.names].to_numpy(dtype="float32")
    return [(_v2("features", [1, len(r)], [float(v) for v in r]), None) for r in rows]


def digits_samples() -> list[Sample]:
    """One-image v2 requests from scikit-learn's bundled digits, each with its true class."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return [
        (_v2("image", [1, 1, 8, 8], [float(v) for v in image.ravel()]), int(label))
        for image, label in zip(data.images, data.target, strict=True)
    ]


def top_class_right(reply: bytes, label: Any) -> float:
    """1 when the reply's most probable class is the true one, else 0."""
    scores = orjson.loads(reply)["outputs"][0]["data"]
    return 1.0 if max(range(len(scores)), key=scores.__getitem__) == label else 0.0


def _v2(name: str, shape: list[int], data: list[float]) -> bytes:
    tensor = {"name": name, "shape": shape, "datatype": "FP32", "data": data}
    return orjson.dumps({"inputs": [tensor]})
