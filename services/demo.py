"""`turnout demo`: scripted rollout stories against the real local platform."""

from __future__ import annotations

from pathlib import Path


def run(*, home: Path | None, interval: str, rate: float) -> bool:
    raise NotImplementedError("the demo stories are being written")
