"""Shared statistics on synthetic data with known truth: equivalences with statsmodels and
scipy, sizes under the null, power and interval coverage.

Simulations use fixed seeds; bounds allow 3 Monte-Carlo standard errors, so a correct
implementation passes for any seed and an anti-conservative one does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from selfimprove.stats import holm, mcnemar_exact, newcombe_paired_ci, wilson_ci

ALPHA = 0.05


def test_old_import_paths_still_work():
    """Wilson and McNemar moved here; the modules that used to define them re-export them."""
    from selfimprove import evaluate, gate
    from selfimprove import stats as shared
    from selfimprove.diff import stats as diff_stats

    assert evaluate.wilson_ci is shared.wilson_ci
    assert gate.mcnemar_exact is shared.mcnemar_exact is diff_stats.mcnemar_exact
    assert gate.PairedBinaryTest is shared.PairedBinaryTest
    assert gate.newcombe_paired_ci is shared.newcombe_paired_ci


# ----------------------------------------------------------------------------- Wilson


def test_wilson_matches_statsmodels():
    for k, n in [(0, 10), (3, 10), (10, 10), (37, 300), (1, 1)]:
        lo, hi = wilson_ci(k, n)
        slo, shi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert lo == pytest.approx(slo, abs=1e-9) and hi == pytest.approx(shi, abs=1e-9)
    lo, hi = wilson_ci(3, 10, z=float(stats.norm.ppf(0.95)))  # 90%
    slo, shi = proportion_confint(3, 10, alpha=0.10, method="wilson")
    assert lo == pytest.approx(slo, abs=1e-9) and hi == pytest.approx(shi, abs=1e-9)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


# ----------------------------------------------------------------------------- Holm


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.001, 0.04]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


# ----------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    "table",
    [(50, 10, 20, 40), (30, 0, 7, 10), (12, 9, 9, 3), (5, 25, 3, 70), (100, 1, 0, 0), (8, 0, 0, 2)],
)
def test_mcnemar_matches_statsmodels_and_binomtest(table):
    n_both, b, c, n_neither = table
    # cells in the order (right→right, right→wrong, wrong→right, wrong→wrong)
    before = np.repeat([True, True, False, False], table)
    after = np.repeat([True, False, True, False], table)
    res = mcnemar_exact(before, after, alternative="greater")
    sm = sm_mcnemar([[n_both, b], [c, n_neither]], exact=True)
    assert res.b == b and res.c == c and res.n == sum(table)
    assert res.p_two_sided == pytest.approx(sm.pvalue, rel=1e-12, abs=1e-15)
    if b + c:
        assert res.p_greater == pytest.approx(stats.binomtest(c, b + c, 0.5, "greater").pvalue)
        assert res.p_less == pytest.approx(stats.binomtest(c, b + c, 0.5, "less").pvalue)
    else:
        assert res.p_greater == res.p_two_sided == 1.0
    assert res.p_value == res.p_greater
    assert res.delta == pytest.approx((c - b) / sum(table))
    assert res.delta_ci[0] <= res.delta <= res.delta_ci[1]


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="no paired"):
        mcnemar_exact([], [])


def _null_pair(n: int, rng: np.random.Generator):
    # Items differ in difficulty; before and after are exchangeable (no effect).
    p = rng.beta(2, 3, size=n)
    return rng.random(n) < p, rng.random(n) < p


def test_mcnemar_size_under_null():
    rng = np.random.default_rng(0)
    reps = 1000
    rate = np.mean([mcnemar_exact(*_null_pair(200, rng)).p_greater <= ALPHA for _ in range(reps)])
    print(f"McNemar one-sided size, n=200, {reps} null sets: {rate:.3f}")
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)  # 3 Monte-Carlo SEs


def test_mcnemar_power_for_15_point_gain():
    rng = np.random.default_rng(1)
    reps = 500
    # Hardest case for a paired test: before and after independent (most discordance).
    rate = np.mean(
        [
            mcnemar_exact(rng.random(200) < 0.40, rng.random(200) < 0.55).p_greater <= ALPHA
            for _ in range(reps)
        ]
    )
    print(f"McNemar power, 40%→55% on 200 items (independent): {rate:.3f}")
    assert rate >= 0.80


@pytest.mark.parametrize(
    ("n", "p_before", "p_after", "rho"),
    [(200, 0.4, 0.55, 0.0), (200, 0.4, 0.4, 0.5), (100, 0.1, 0.05, 0.3), (60, 0.9, 0.95, 0.2)],
)
def test_newcombe_ci_coverage(n, p_before, p_after, rho):
    rng = np.random.default_rng(2)
    reps = 800
    zb, za = stats.norm.ppf(p_before), stats.norm.ppf(p_after)
    hits = 0
    for _ in range(reps):
        z = rng.standard_normal((n, 2))
        z[:, 1] = rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]
        lo, hi = mcnemar_exact(z[:, 0] < zb, z[:, 1] < za).delta_ci
        hits += lo <= p_after - p_before <= hi
    cov = hits / reps
    print(f"Newcombe 95% coverage n={n} {p_before}→{p_after} rho={rho}: {cov:.3f}")
    assert cov >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / reps)


def test_newcombe_degenerate_tables_are_finite_and_ordered():
    for table in [(0, 0, 0, 10), (10, 0, 0, 0), (0, 5, 0, 0), (0, 0, 5, 0)]:
        lo, hi = newcombe_paired_ci(*table)
        assert -1 <= lo <= hi <= 1
