"""Which arm serves a request: deterministic for a sticky key, uniform otherwise.

``bucket = hash(salt, key) mod 10000``; the candidate serves iff ``bucket < weight * 100``.
Canary weights and A/B splits use the same function, so a user on the canary stays on it as
the weight grows (raising the weight only adds buckets), and feedback can recompute the arm
from the key alone — the router stores nothing per request.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

BUCKETS = 10_000


class Arm(StrEnum):
    STABLE = "stable"  # the version serving most traffic
    CANDIDATE = "candidate"  # the version being rolled out or tested


def bucket(salt: str, key: str) -> int:
    """Stable bucket 0..9999 of a key: a keyed BLAKE2b digest, not Python's randomised hash."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def arm_for_bucket(b: int, weight: float) -> Arm:
    return Arm.CANDIDATE if b < round(weight * 100) else Arm.STABLE


def assign(*, weight: float, salt: str, key: str | None, uniform: float) -> Arm:
    """Arm for a request: from ``key`` when present, else from ``uniform`` in [0, 1)."""
    if key:
        return arm_for_bucket(bucket(salt, key), weight)
    return arm_for_bucket(int(uniform * BUCKETS), weight)
