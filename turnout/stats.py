"""Statistics for A/B decisions (DESIGN §7). Pure: no I/O, no clock."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm's outcomes: count, sum and sum of squares."""

    n: float = 0.0
    sum: float = 0.0
    sumsq: float = 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance (nan below two outcomes)."""
        if self.n < 2:
            return math.nan
        return max(self.sumsq - self.n * self.mean**2, 0.0) / (self.n - 1)
