"""A/B statistics: fixed-horizon tests agree with scipy, and the mSPRT survives peeking."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from turnout.core import stats

ALPHA = 0.05
IntArray = npt.NDArray[np.int64]


def bernoulli(n: float, successes: float) -> stats.Moments:
    return stats.Moments(n=n, sum=successes, sumsq=successes)


def moments_of(values: npt.ArrayLike) -> stats.Moments:
    x = np.asarray(values, dtype=float)
    return stats.Moments(n=x.size, sum=float(x.sum()), sumsq=float((x**2).sum()))


def with_mean_and_variance(n: int, mean: float, variance: float) -> stats.Moments:
    return stats.Moments(n=n, sum=n * mean, sumsq=(n - 1) * variance + n * mean**2)


def mixture_lambda(difference: float, *, v: float, tau2: float) -> float:
    """Λ by numerical integration of the likelihood ratio over the N(0, τ²) mixture."""

    def integrand(theta: float) -> float:
        log_ratio = (2 * difference * theta - theta**2) / (2 * v)
        return math.exp(log_ratio) * sps.norm.pdf(theta, scale=math.sqrt(tau2))

    sd = math.sqrt(tau2)
    value, _ = integrate.quad(integrand, -12 * sd, 12 * sd, points=[difference], limit=200)
    return float(value)


# --- Fixed-horizon tests -------------------------------------------------------------------


def test_z_test_matches_the_chi_square_test_of_the_two_by_two_table() -> None:
    result = stats.two_proportion_z_test(successes_a=120, n_a=1000, successes_b=150, n_b=1000)
    table = [[120, 880], [150, 850]]
    chi2, p_value, _, _ = sps.chi2_contingency(table, correction=False)
    assert result.difference == pytest.approx(0.03)
    assert result.statistic > 0  # b converts better than a
    assert result.statistic**2 == pytest.approx(chi2)
    assert result.p_value == pytest.approx(p_value)
    # Wald interval, by hand: 0.03 ± 1.96·sqrt(.12·.88/1000 + .15·.85/1000).
    assert result.ci == pytest.approx((0.000075, 0.059925), abs=2e-6)


def test_z_test_interval_widens_with_confidence() -> None:
    kw = {"successes_a": 120, "n_a": 1000, "successes_b": 150, "n_b": 1000}
    narrow = stats.two_proportion_z_test(**kw, alpha=0.10).ci
    wide = stats.two_proportion_z_test(**kw, alpha=0.01).ci
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("successes_a", "n_a", "successes_b", "n_b"),
    [(0, 0, 5, 10), (0, 100, 0, 100), (100, 100, 100, 100)],
    ids=["empty arm", "no successes anywhere", "all successes"],
)
def test_z_test_without_evidence_does_not_reject(
    successes_a: int, n_a: int, successes_b: int, n_b: int
) -> None:
    result = stats.two_proportion_z_test(
        successes_a=successes_a, n_a=n_a, successes_b=successes_b, n_b=n_b
    )
    assert result.p_value == 1.0
    assert result.ci == (-math.inf, math.inf)


def test_welch_matches_scipy_on_raw_samples() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(10.0, 1.0, 80)
    b = rng.normal(10.5, 3.0, 40)  # unequal variances and sizes: where Welch matters
    result = stats.welch_t_test(moments_of(a), moments_of(b))
    reference = sps.ttest_ind(b, a, equal_var=False)
    assert result.difference == pytest.approx(b.mean() - a.mean())
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(confidence_level=0.95)
    assert result.ci == pytest.approx((ci.low, ci.high))


def test_welch_on_constant_arms_knows_the_difference_exactly() -> None:
    result = stats.welch_t_test(moments_of([1.0] * 5), moments_of([2.0] * 5))
    assert (result.difference, result.ci, result.p_value) == (1.0, (1.0, 1.0), 0.0)
    too_few = stats.welch_t_test(moments_of([1.0]), moments_of([2.0, 3.0]))
    assert (too_few.p_value, too_few.ci) == (1.0, (-math.inf, math.inf))


def test_sample_size_matches_the_textbook_formula() -> None:
    # 2·(1.95996 + 0.84162)² / 0.2² = 392.4 → 393 per arm.
    assert stats.sample_size_per_arm(sd=1.0, mde=0.2) == 393
    assert stats.sample_size_per_arm(sd=1.0, mde=-0.2) == 393
    # Halving the effect quadruples the sample; more power costs more.
    assert stats.sample_size_per_arm(sd=1.0, mde=0.1) == pytest.approx(4 * 393, abs=4)
    assert stats.sample_size_per_arm(sd=1.0, mde=0.2, power=0.9) > 393


def test_planned_sample_gives_the_planned_power_to_the_z_test() -> None:
    n = stats.sample_size_per_arm(sd=stats.proportion_sd(0.10), mde=0.02)
    rng = np.random.default_rng(11)
    runs = 2000
    a, b = rng.binomial(n, 0.10, runs), rng.binomial(n, 0.12, runs)
    rejected = [
        stats.two_proportion_z_test(successes_a=x, n_a=n, successes_b=y, n_b=n).p_value < ALPHA
        for x, y in zip(a, b, strict=True)
    ]
    power = float(np.mean(rejected))
    assert power == pytest.approx(0.8, abs=3 * math.sqrt(0.8 * 0.2 / runs)), power


@pytest.mark.parametrize("kwargs", [{"sd": 0.0, "mde": 0.1}, {"sd": 1.0, "mde": 0.0}])
def test_sample_size_rejects_a_plan_that_cannot_be_met(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        stats.sample_size_per_arm(**kwargs)


# --- mSPRT: the formula ----------------------------------------------------------------------


def test_msprt_p_value_is_one_over_the_mixture_likelihood_ratio() -> None:
    stable = with_mean_and_variance(400, 1.0, 4.0)
    candidate = with_mean_and_variance(400, 1.6, 4.0)
    v, tau2 = 4.0 / 400 + 4.0 / 400, 0.05
    result = stats.msprt(stable, candidate, alpha=ALPHA, tau2=tau2)
    lam = mixture_lambda(0.6, v=v, tau2=tau2)
    assert lam > 1 / ALPHA
    assert result.difference == pytest.approx(0.6)
    assert result.p_value == pytest.approx(1 / lam, rel=1e-6)
    assert result.reject
    # The interval ends are where the statistic on Δ − δ reaches 1/α.
    for end in result.ci:
        assert mixture_lambda(0.6 - end, v=v, tau2=tau2) == pytest.approx(1 / ALPHA, rel=1e-6)


def test_msprt_reject_and_interval_agree() -> None:
    stable = with_mean_and_variance(400, 1.0, 4.0)
    weak = stats.msprt(stable, with_mean_and_variance(400, 1.2, 4.0), alpha=ALPHA, tau2=0.05)
    assert not weak.reject
    assert weak.ci[0] < 0 < weak.ci[1]
    strong = stats.msprt(stable, with_mean_and_variance(400, 0.4, 4.0), alpha=ALPHA, tau2=0.05)
    assert strong.reject
    assert strong.ci[1] < 0  # the candidate is worse


@pytest.mark.parametrize(
    ("stable", "candidate"),
    [
        (stats.Moments(), stats.Moments()),
        (bernoulli(1, 1), bernoulli(50, 10)),
        (bernoulli(100, 0), bernoulli(100, 0)),
    ],
    ids=["no traffic", "one outcome", "zero variance"],
)
def test_msprt_without_evidence_keeps_what_it_knew(
    stable: stats.Moments, candidate: stats.Moments
) -> None:
    fresh = stats.msprt(stable, candidate, alpha=ALPHA, tau2=0.01)
    assert (fresh.p_value, fresh.ci, fresh.reject) == (1.0, (-math.inf, math.inf), False)
    before = stats.SequentialResult(difference=0.1, ci=(0.01, 0.2), p_value=0.03, reject=True)
    kept = stats.msprt(stable, candidate, alpha=ALPHA, tau2=0.01, previous=before)
    assert (kept.p_value, kept.ci, kept.reject) == (0.03, (0.01, 0.2), True)


def test_mixture_tau2_makes_the_interval_tightest_at_the_planned_sample() -> None:
    sigma2, planned_n = 0.09, 3000
    tau2 = stats.mixture_tau2(sigma2=sigma2, planned_n=planned_n, alpha=ALPHA)
    arm = with_mean_and_variance(planned_n, 0.1, sigma2)

    def width(t2: float) -> float:
        lo, hi = stats.msprt(arm, arm, alpha=ALPHA, tau2=t2).ci
        return hi - lo

    assert width(tau2) < width(tau2 * 1.5)
    assert width(tau2) < width(tau2 / 1.5)
    # ≈ 3.03 standard errors each side at α = 0.05, against 1.96 for a single look.
    assert width(tau2) / 2 / math.sqrt(2 * sigma2 / planned_n) == pytest.approx(3.03, abs=0.01)


# --- mSPRT under continuous monitoring (simulation) ----------------------------------------


@dataclass(frozen=True)
class Monitoring:
    msprt_rejected: float  # share of experiments the mSPRT rejected at some look
    naive_rejected: float  # share a z-test read at every look rejected at some look
    covered: float  # share whose confidence sequence held the truth at every look
    widened: int  # looks at which an interval grew (must be none)
    disagreed: int  # looks where reject and "0 outside the interval" differ (must be none)


def monitor(
    stable: IntArray, candidate: IntArray, *, step: int, tau2: float, truth: float
) -> Monitoring:
    """Run the mSPRT and a naive z-test at every look of every experiment.

    ``stable`` and ``candidate`` hold cumulative successes, one row per experiment, one column
    per look, ``step`` new outcomes per arm between looks.
    """
    experiments, looks = stable.shape
    msprt_hits = naive_hits = covered = widened = disagreed = 0
    for row in range(experiments):
        result: stats.SequentialResult | None = None
        naive, holds = False, True
        for look in range(looks):
            n = step * (look + 1)
            s, c = int(stable[row, look]), int(candidate[row, look])
            before = result
            result = stats.msprt(
                bernoulli(n, s), bernoulli(n, c), alpha=ALPHA, tau2=tau2, previous=before
            )
            lo, hi = result.ci
            holds = holds and lo <= truth <= hi
            if before is not None and (lo < before.ci[0] or hi > before.ci[1]):
                widened += 1
            disagreed += result.reject != (not lo <= 0 <= hi)
            z = stats.two_proportion_z_test(successes_a=s, n_a=n, successes_b=c, n_b=n)
            naive = naive or z.p_value < ALPHA
        assert result is not None
        msprt_hits += result.reject
        naive_hits += naive
        covered += holds
    return Monitoring(
        msprt_rejected=msprt_hits / experiments,
        naive_rejected=naive_hits / experiments,
        covered=covered / experiments,
        widened=widened,
        disagreed=disagreed,
    )


def cumulative_successes(
    rng: np.random.Generator, *, p: float, experiments: int, looks: int, step: int
) -> IntArray:
    return rng.binomial(step, p, size=(experiments, looks)).cumsum(axis=1)


def monte_carlo_slack(rate: float, runs: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / runs)


def test_a_a_under_continuous_peeking_keeps_false_positives_below_alpha() -> None:
    """Why the controller uses a sequential test: it reads the test at every look, and that
    must not inflate false positives (a z-test peeked at daily reaches ~29% at alpha 0.05)."""
    experiments, looks, step, p = 2000, 30, 100, 0.10  # a look every 100 per arm, to 3,000
    rng = np.random.default_rng(2024)
    tau2 = stats.mixture_tau2(sigma2=p * (1 - p), planned_n=looks * step, alpha=ALPHA)
    stable = cumulative_successes(rng, p=p, experiments=experiments, looks=looks, step=step)
    candidate = cumulative_successes(rng, p=p, experiments=experiments, looks=looks, step=step)
    seen = monitor(stable, candidate, step=step, tau2=tau2, truth=0.0)
    bound = ALPHA + monte_carlo_slack(ALPHA, experiments)
    report = f"mSPRT FPR {seen.msprt_rejected:.4f}, naive z-test FPR {seen.naive_rejected:.4f}"
    assert seen.msprt_rejected <= bound, report
    # The same peeking with a fixed-horizon test: several times the nominal 5%.
    assert seen.naive_rejected > 3 * ALPHA, report
    assert seen.widened == 0
    assert seen.disagreed == 0


def test_msprt_has_planned_power_at_the_recommended_maximum_sample() -> None:
    p, mde, experiments, looks = 0.10, 0.02, 1000, 20
    planned_n = stats.sample_size_per_arm(sd=stats.proportion_sd(p), mde=mde)
    max_n = math.ceil(stats.MSPRT_MAX_SAMPLE_FACTOR * planned_n)
    step = math.ceil(max_n / looks)
    tau2 = stats.mixture_tau2(sigma2=p * (1 - p), planned_n=planned_n, alpha=ALPHA)
    rng = np.random.default_rng(99)
    stable = cumulative_successes(rng, p=p, experiments=experiments, looks=looks, step=step)
    candidate = cumulative_successes(
        rng, p=p + mde, experiments=experiments, looks=looks, step=step
    )
    seen = monitor(stable, candidate, step=step, tau2=tau2, truth=mde)
    assert seen.msprt_rejected >= 0.8, f"mSPRT power {seen.msprt_rejected:.3f}"


def test_confidence_sequence_covers_the_true_lift_at_every_look() -> None:
    p, lift, experiments, looks, step = 0.10, 0.02, 1000, 20, 100
    tau2 = stats.mixture_tau2(sigma2=p * (1 - p), planned_n=looks * step, alpha=ALPHA)
    rng = np.random.default_rng(5)
    stable = cumulative_successes(rng, p=p, experiments=experiments, looks=looks, step=step)
    candidate = cumulative_successes(
        rng, p=p + lift, experiments=experiments, looks=looks, step=step
    )
    seen = monitor(stable, candidate, step=step, tau2=tau2, truth=lift)
    assert seen.covered >= 1 - ALPHA - monte_carlo_slack(ALPHA, experiments), seen.covered
    assert seen.widened == 0
    assert seen.disagreed == 0


# --- mSPRT properties -----------------------------------------------------------------------

batch = st.lists(st.floats(min_value=-100, max_value=100), max_size=15)


@settings(max_examples=200, deadline=None)
@given(
    looks=st.lists(st.tuples(batch, batch), min_size=1, max_size=8),
    tau2=st.floats(min_value=1e-4, max_value=1e3),
)
def test_msprt_p_value_never_rises_and_interval_never_widens(
    looks: list[tuple[list[float], list[float]]], tau2: float
) -> None:
    stable_values: list[float] = []
    candidate_values: list[float] = []
    result: stats.SequentialResult | None = None
    for new_stable, new_candidate in looks:
        stable_values += new_stable
        candidate_values += new_candidate
        stable, candidate = moments_of(stable_values), moments_of(candidate_values)
        before = result
        result = stats.msprt(stable, candidate, alpha=ALPHA, tau2=tau2, previous=before)
        assert 0.0 <= result.p_value <= 1.0
        assert result.reject == (result.p_value <= ALPHA)
        lo, hi = result.ci
        assert lo <= hi
        if before is not None:
            assert result.p_value <= before.p_value
            assert before.ci[0] <= lo and hi <= before.ci[1]
        # A single look's interval is centred on the observed difference.
        alone = stats.msprt(stable, candidate, alpha=ALPHA, tau2=tau2)
        if math.isfinite(alone.difference):
            assert alone.ci[0] <= alone.difference <= alone.ci[1]


# --- Sample-ratio mismatch -----------------------------------------------------------------


def test_srm_flags_a_55_45_split_of_a_50_50_assignment() -> None:
    result = stats.srm([5500, 4500], [0.5, 0.5])
    assert result.statistic == pytest.approx(100.0)
    assert result.p_value < 1e-6


def test_srm_accepts_a_fair_split() -> None:
    rng = np.random.default_rng(3)
    first = int(rng.binomial(10_000, 0.5))
    assert stats.srm([first, 10_000 - first], [0.5, 0.5]).p_value > 0.001
    # Shares are normalised: weights 90/10 mean the same as 0.9/0.1.
    assert stats.srm([9010, 990], [90, 10]).p_value > 0.001


def test_srm_flags_traffic_in_an_arm_configured_for_none() -> None:
    assert stats.srm([1000, 1000, 3], [0.5, 0.5, 0.0]).p_value == 0.0
    assert stats.srm([1000, 1000, 0], [0.5, 0.5, 0.0]).p_value > 0.001
    assert stats.srm([0, 0], [0.5, 0.5]).p_value == 1.0
