"""Statistics for A/B decisions: does the candidate's outcome differ from stable's, and can
the split itself be trusted (sample-ratio mismatch). Pure: no I/O, no clock, no randomness.

Two kinds of test live here. The fixed-horizon ones (two-proportion z-test, Welch's t-test,
and the sample-size formula that plans them) are only valid if they are read once, at the
planned sample size. A rollout controller looks at its metrics on every reconcile, so its
decisions use the always-valid normal-mixture mSPRT (Johari, Pekelis & Walsh, "Always valid
inference", 2017): its p-value and confidence sequence may be read after every observation
without inflating the false-positive rate, at the price of needing a larger sample than a
fixed-horizon test for the same power (2.5 times, see ``mixture_tau2``).

Conventions: differences are always "new minus old" (arm b − arm a; candidate − stable), and
degenerate input (too few outcomes, zero variance) yields "no evidence" rather than an
exception, because the controller calls these on whatever traffic has arrived so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from scipy import special
from scipy import stats as sps

_NORMAL = NormalDist()

#: maxSamplesPerArm over the fixed-horizon ``sample_size_per_arm`` that keeps the mSPRT at
#: about 90% power for the planned effect (≈ 81% at 2×); see ``mixture_tau2``.
MSPRT_MAX_SAMPLE_FACTOR = 2.5


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


@dataclass(frozen=True)
class TestResult:
    """A fixed-horizon comparison of arm b against arm a."""

    __test__ = False  # not a pytest test class, despite the name

    difference: float  # mean b − mean a
    ci: tuple[float, float]  # (1 − alpha) confidence interval for the difference
    statistic: float  # z or t
    p_value: float  # two-sided


@dataclass(frozen=True)
class SequentialResult:
    """One look of the mSPRT; pass it back as ``previous`` at the next look."""

    difference: float  # candidate mean − stable mean
    ci: tuple[float, float]  # always-valid confidence sequence, intersected with previous
    p_value: float  # always-valid, never increases across looks
    reject: bool  # p_value <= alpha


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch: do the arm counts fit the configured split?"""

    statistic: float  # chi-square
    p_value: float


_NO_INTERVAL = (-math.inf, math.inf)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _normal_result(difference: float, *, se: float, z: float, alpha: float) -> TestResult:
    half = _NORMAL.inv_cdf(1 - alpha / 2) * se
    p_value = math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else 0.0
    return TestResult(difference, (difference - half, difference + half), z, p_value)


def _no_evidence(difference: float) -> TestResult:
    return TestResult(difference, _NO_INTERVAL, 0.0, 1.0)


def two_proportion_z_test(
    *, successes_a: float, n_a: float, successes_b: float, n_b: float, alpha: float = 0.05
) -> TestResult:
    """Fixed-horizon test of two conversion rates.

    The statistic uses the pooled rate (the null says the rates are equal, so this matches
    the chi-square test of the 2x2 table); the interval uses each arm's own rate.
    """
    _check_alpha(alpha)
    if n_a <= 0 or n_b <= 0:
        return _no_evidence(math.nan)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    difference = p_b - p_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se_null == 0.0:  # both arms all-success or all-failure: identical, nothing to test
        return _no_evidence(difference)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return _normal_result(difference, se=se, z=difference / se_null, alpha=alpha)


def welch_t_test(a: Moments, b: Moments, *, alpha: float = 0.05) -> TestResult:
    """Fixed-horizon test of two means without assuming equal variances."""
    _check_alpha(alpha)
    difference = b.mean - a.mean
    if a.n < 2 or b.n < 2:
        return _no_evidence(difference)
    va, vb = a.variance / a.n, b.variance / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # both arms constant: the difference is known exactly
        if difference == 0.0:
            return _no_evidence(difference)
        return TestResult(
            difference, (difference, difference), math.copysign(math.inf, difference), 0.0
        )
    result = sps.ttest_ind_from_stats(
        mean1=b.mean,
        std1=math.sqrt(b.variance),
        nobs1=b.n,
        mean2=a.mean,
        std2=math.sqrt(a.variance),
        nobs2=a.n,
        equal_var=False,
    )
    # Welch–Satterthwaite degrees of freedom, as scipy uses internally for the p-value.
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    return TestResult(
        difference,
        (difference - half, difference + half),
        float(result.statistic),
        float(result.pvalue),
    )


def proportion_sd(p: float) -> float:
    """Per-outcome standard deviation of a conversion rate p, for ``sample_size_per_arm``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion must lie in [0, 1], got {p}")
    return math.sqrt(p * (1 - p))


def sample_size_per_arm(*, sd: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Outcomes per arm for a two-sided fixed-horizon test of two equal arms.

    Normal approximation: n = 2·sd²·(z_{1−α/2} + z_power)² / mde². The mSPRT needs more; see
    ``mixture_tau2``.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    if sd <= 0 or mde == 0:
        raise ValueError("sd must be positive and mde non-zero")
    z = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    return math.ceil(2 * sd**2 * z**2 / mde**2)


def mixture_tau2(*, sigma2: float, planned_n: int, alpha: float) -> float:
    """Mixing variance τ² that makes the mSPRT tightest at the planned sample size.

    ``sigma2`` is the per-outcome variance of one arm, so at the planned size the variance
    of the difference is V0 = 2·sigma2/planned_n. Writing x = τ²/V, the confidence-sequence
    half-width is sqrt(V·(1 + 1/x)·(2·log(1/α) + log(1 + x))); it is smallest where
    x = 2·log(1/α) + log(1 + x), the boundary-minimising choice of Howard et al. (2021,
    confidence sequences). The root is x = −W₋₁(−exp(−1 − 2·log(1/α))) − 1, with W₋₁ the
    lower Lambert-W branch.

    For α = 0.05, x ≈ 8.2 and the half-width at planned_n is ≈ 3.03·sqrt(V0) against 1.96
    for a single fixed-horizon look. Simulated at the planned effect, a maximum of 2 × the
    fixed-horizon ``sample_size_per_arm`` gives only ≈ 81% power with 20 looks and 2.5 ×
    gives ≈ 90%: plan maxSamplesPerArm at ``MSPRT_MAX_SAMPLE_FACTOR`` × and pass the
    fixed-horizon size as planned_n (power barely depends on which of the two is passed).
    """
    _check_alpha(alpha)
    if sigma2 <= 0 or planned_n <= 0:
        raise ValueError("sigma2 and planned_n must be positive")
    two_log = 2 * math.log(1 / alpha)
    x = -float(special.lambertw(-math.exp(-1 - two_log), k=-1).real) - 1
    return x * 2 * sigma2 / planned_n


def msprt(
    stable: Moments,
    candidate: Moments,
    *,
    alpha: float,
    tau2: float,
    previous: SequentialResult | None = None,
) -> SequentialResult:
    """One look of the normal-mixture mSPRT on candidate mean − stable mean.

    Λ = sqrt(V/(V+τ²))·exp(τ²Δ²/(2V(V+τ²))) with V the plug-in variance of Δ. The p-value
    is the running minimum of 1/Λ and the interval the running intersection of
    {δ : Λ(Δ − δ) < 1/α}, which is what keeps both valid under continuous peeking.
    """
    _check_alpha(alpha)
    if tau2 <= 0:
        raise ValueError(f"tau2 must be positive, got {tau2}")
    difference = candidate.mean - stable.mean
    p_before = previous.p_value if previous is not None else 1.0
    ci_before = previous.ci if previous is not None else _NO_INTERVAL
    v = (
        stable.variance / stable.n + candidate.variance / candidate.n
        if stable.n >= 2 and candidate.n >= 2
        else math.nan
    )
    if not (math.isfinite(v) and v > 0 and math.isfinite(difference)):
        # Too little traffic, or constant outcomes: this look carries no evidence.
        return SequentialResult(difference, ci_before, p_before, p_before <= alpha)

    log_ratio = math.log1p(tau2 / v)  # log((V+τ²)/V)
    log_lambda = -0.5 * log_ratio + tau2 * difference**2 / (2 * v * (v + tau2))
    p_value = min(p_before, math.exp(-log_lambda)) if log_lambda > 0 else p_before
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + log_ratio))
    return SequentialResult(
        difference,
        _intersect(ci_before, difference - half, difference + half),
        p_value,
        p_value <= alpha,
    )


def _intersect(before: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    """Narrow ``before`` to [lo, hi].

    The two can be disjoint (probability at most alpha); the interval then shrinks to the
    edge of ``before`` nearest the new evidence instead of becoming empty.
    """
    new_lo, new_hi = max(before[0], lo), min(before[1], hi)
    if new_lo <= new_hi:
        return (new_lo, new_hi)
    edge = before[1] if lo > before[1] else before[0]
    return (edge, edge)


def srm(observed: Sequence[float], expected_share: Sequence[float]) -> SrmResult:
    """Chi-square of the observed arm counts against the configured split.

    A small p-value means assignment or logging is broken, which invalidates any A/B result
    on the same traffic. Shares need not sum to one; they are normalised.
    """
    if len(observed) != len(expected_share) or len(observed) < 2:
        raise ValueError("srm needs one expected share per arm and at least two arms")
    if any(s < 0 for s in expected_share) or sum(expected_share) <= 0:
        raise ValueError("expected shares must be non-negative with a positive total")
    total = float(sum(observed))
    if total <= 0:
        return SrmResult(0.0, 1.0)
    weight = sum(expected_share)
    arms = [(o, total * s / weight) for o, s in zip(observed, expected_share, strict=True)]
    if any(e == 0 and o > 0 for o, e in arms):  # traffic in an arm configured to get none
        return SrmResult(math.inf, 0.0)
    live = [(o, e) for o, e in arms if e > 0]
    if len(live) < 2:
        return SrmResult(0.0, 1.0)
    result = sps.chisquare(f_obs=[o for o, _ in live], f_exp=[e for _, e in live])
    return SrmResult(float(result.statistic), float(result.pvalue))
