"""The reported confidence interval (anil.evaluation.mean_ci95), and the exact tail bounds the
statistical tests of this suite use (imported by test_sampler.py).

No scipy: the chi-square survival function and binomial tails are written out from their closed
forms below and checked against published table values, so every "fails with probability ≈ p"
in the suite is computed, not guessed.
"""

import math

import numpy as np
import pytest

from anil.evaluation import mean_ci95


# ------------------------------------------------------------------------- tail probabilities


def chi2_sf(x: float, dof: int) -> float:
    """P(χ²_dof > x), from the regularised upper incomplete gamma Q(dof/2, x/2):
    Q(1, y) = e^(−y) and Q(1/2, y) = erfc(√y), then Q(s + 1, y) = Q(s, y) + y^s e^(−y) / Γ(s + 1)."""
    if x <= 0:
        return 1.0
    y = x / 2
    s, q = (1.0, math.exp(-y)) if dof % 2 == 0 else (0.5, math.erfc(math.sqrt(y)))
    while s < dof / 2:
        q += math.exp(s * math.log(y) - y - math.lgamma(s + 1))
        s += 1
    return q


def chi2_statistic(counts, expected) -> float:
    """Pearson's Σ (observed − expected)² / expected."""
    counts, expected = np.asarray(counts, float), np.broadcast_to(np.asarray(expected, float), np.shape(counts))
    return float(((counts - expected) ** 2 / expected).sum())


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """(lo, hi) with P(X < lo) ≤ α/2 and P(X > hi) ≤ α/2 for X ~ Binomial(n, p), from the exact
    probability mass function: a count outside [lo, hi] happens with probability ≤ α."""
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
               + k * math.log(p) + (n - k) * math.log1p(-p) for k in range(n + 1)]
    pmf = [math.exp(v) for v in log_pmf]
    lo, below = 0, 0.0
    while below + pmf[lo] <= alpha / 2:  # P(X < lo + 1) still within budget
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] <= alpha / 2:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def t_central_probability(c: float, dof: int, intervals: int = 20000) -> float:
    """P(|T| ≤ c) for Student's t with ``dof`` degrees of freedom (Simpson's rule on its density)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    density = lambda t: math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))
    h = c / intervals
    inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    return 2 * h / 3 * (density(0) + inner + density(c))


@pytest.mark.parametrize("x,dof,p", [
    (3.841459, 1, 0.05), (6.634897, 1, 0.01), (5.991465, 2, 0.05), (7.814728, 3, 0.05),
    (11.070498, 5, 0.05), (16.811894, 6, 0.01), (18.307038, 10, 0.05), (35.172462, 23, 0.05),
])
def test_chi2_sf_matches_the_tables(x, dof, p):
    assert chi2_sf(x, dof) == pytest.approx(p, rel=1e-5)


def test_binomial_bounds_are_the_exact_tails():
    """Binomial(10, 1/2): P(X = 0) = 1/1024 ≤ 0.01 < P(X ≤ 1) = 11/1024, so for α = 0.02 the
    bounds are [1, 9]; for α = 0.0015, α/2 < 1/1024 and only P(X < 0) = 0 fits, so [0, 10]."""
    assert binomial_bounds(10, 0.5, 0.02) == (1, 9)
    assert binomial_bounds(10, 0.5, 0.0015) == (0, 10)
    lo, hi = binomial_bounds(3500, 1 / 7, 1e-6)
    assert lo < 500 < hi and hi - lo < 2 * 5.5 * math.sqrt(3500 / 7 * 6 / 7)  # about ±5 sd


def test_t_central_probability_matches_closed_forms():
    assert t_central_probability(1.0, 1) == pytest.approx(0.5, abs=1e-9)  # Cauchy: arctan(1)·2/π
    assert t_central_probability(2.0, 2) == pytest.approx(2 / math.sqrt(6), abs=1e-9)  # c/√(c²+2)
    assert t_central_probability(1.96, 10 ** 6) == pytest.approx(0.9500042, abs=1e-6)  # ≈ normal


# -------------------------------------------------------------------------------- mean_ci95


def test_ci95_is_1_96_sample_std_over_root_n_hand_worked_for_n_4():
    """[0, 1, 0, 1]: mean 1/2; Σ(x − 1/2)² = 1, so s² = 1/(n − 1) = 1/3 and the half-width is
    1.96 · √(1/3) / √4 = 0.5658. (Population std would give 1.96 · 0.5 / 2 = 0.49; dropping √n,
    1.96 · √(1/3) = 1.1316.)"""
    mean, half = mean_ci95([0, 1, 0, 1])
    assert mean == 0.5
    assert half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2, rel=1e-12)


@pytest.mark.parametrize("values,mean,half", [
    # Σ(x − 5)² = 9 + 1 + 1 + 1 + 0 + 0 + 4 + 16 = 32: s² = 32/7, half = 1.96 √(32/7) / √8 = 3.92/√7
    ([2, 4, 4, 4, 5, 5, 7, 9], 5.0, 3.92 / math.sqrt(7)),
    # Σ(x − 3)² = 4 + 1 + 9 = 14: s² = 7, half = 1.96 √7 / √3
    ([1, 2, 6], 3.0, 1.96 * math.sqrt(7 / 3)),
])
def test_ci95_hand_worked_for_other_sizes(values, mean, half):
    """n ≠ 4, so the ddof = 1 standard deviation and the √n are pinned separately."""
    got_mean, got_half = mean_ci95(np.array(values, dtype=np.float32))
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert got_half == pytest.approx(half, rel=1e-12)
    assert isinstance(got_mean, float) and isinstance(got_half, float)


def test_ci95_with_fewer_than_two_values():
    mean, half = mean_ci95([0.75])
    assert mean == 0.75 and math.isnan(half)  # one value: a mean, but no spread to estimate
    mean, half = mean_ci95([])
    assert math.isnan(mean) and math.isnan(half)


def test_ci95_covers_the_true_mean_95_percent_of_the_time():
    """Normal samples of n = 200: (mean − μ)/(s/√n) is Student-t with 199 dof, so mean ± 1.96 s/√n
    covers μ with probability p = P(|T_199| ≤ 1.96) ≈ 0.9486. Over R = 2000 seeded samples the
    count of covering intervals is Binomial(R, p); outside the exact bounds with probability ≤ 1e-6."""
    rng = np.random.default_rng(0)
    mu, sigma, n, repeats = 0.3, 2.0, 200, 2000
    covered = 0
    for _ in range(repeats):
        mean, half = mean_ci95(rng.normal(mu, sigma, n))
        covered += abs(mean - mu) <= half
    lo, hi = binomial_bounds(repeats, t_central_probability(1.96, n - 1), 1e-6)
    assert lo <= covered <= hi, (covered, lo, hi)
