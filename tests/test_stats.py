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

from selfimprove.stats import (
    RatioConfidenceSet,
    holm,
    mcnemar_exact,
    newcombe_paired_ci,
    ratio_confidence_set,
    wilson_ci,
)

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
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 40):
        for _ in range(50):
            p = rng.uniform(0, 1, m) ** rng.uniform(0.2, 3)
            if m > 2:
                p[rng.integers(0, m)] = p[0]  # ties
            assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)


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


# ----------------------------------------------------------------------------- Fieller ratio


def _t(confidence: float, n: int) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def test_fieller_matches_hand_computed_quadratic():
    # x = [1, 0, 1, 1], y = [1, 1, 1, 0]: x̄ = ȳ = 3/4, S_xx = S_yy = 1/4, S_xy = -1/12,
    # so V_xx = V_yy = 1/16, V_xy = -1/48 and the set is a·ρ² + B·ρ + C ≤ 0 with
    # a = C = 9/16 - c²/16, B = -2·(9/16 + c²/48).
    x, y = [1, 0, 1, 1], [1, 1, 1, 0]
    for conf in (0.5, 0.8):
        c2 = _t(conf, 4) ** 2
        a, b, cc = 9 / 16 - c2 / 16, -2 * (9 / 16 + c2 / 48), 9 / 16 - c2 / 16
        assert a > 0  # denominator significant at this level
        lo, hi = sorted(np.roots([a, b, cc]).real)
        res = ratio_confidence_set(x, y, confidence=conf)
        assert res.kind == "interval" and res.bounded and res.gap is None
        assert (res.lo, res.hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
        assert res.estimate == 1.0 and res.lo < 1 < res.hi
        assert res.critical_value == pytest.approx(math.sqrt(c2))
        assert res.denominator_ci == pytest.approx(
            (0.75 - math.sqrt(c2 / 16), 0.75 + math.sqrt(c2 / 16))
        )
    # At 95% (c = t_3 = 3.18) a < 0 < B² - 4aC: neither mean is significant, yet the
    # negative covariance excludes an interval of negative ratios (two rays).
    res = ratio_confidence_set(x, y)
    c2 = _t(0.95, 4) ** 2
    a, b, cc = 9 / 16 - c2 / 16, -2 * (9 / 16 + c2 / 48), 9 / 16 - c2 / 16
    assert a < 0 < b * b - 4 * a * cc
    g0, g1 = sorted(np.roots([a, b, cc]).real)
    assert res.kind == "two_rays" and (res.lo, res.hi) == (-math.inf, math.inf)
    assert res.gap == (pytest.approx(g0, rel=1e-12), pytest.approx(g1, rel=1e-12))
    # x = [1, -1, 0, 0, 1], y = [1, -1, 1, 0, 0]: x̄ = ȳ = 1/5, S_xx = S_yy = 0.7,
    # S_xy = 0.45, so V_xx = V_yy = 0.14, V_xy = 0.09: a = C = 0.04 - 0.14c²,
    # B = -2·(0.04 - 0.09c²), B² - 4aC < 0 at 95%: the whole line.
    c2 = _t(0.95, 5) ** 2
    a, b, cc = 0.04 - 0.14 * c2, -2 * (0.04 - 0.09 * c2), 0.04 - 0.14 * c2
    assert a < 0 and b * b - 4 * a * cc < 0
    res = ratio_confidence_set([1, -1, 0, 0, 1], [1, -1, 1, 0, 0])
    assert res.kind == "whole_line" and (res.lo, res.hi) == (-math.inf, math.inf)
    assert res.gap is None and res.estimate == pytest.approx(1.0) and res.contains(1e12)


def test_fieller_two_rays_hand_computed():
    # Numerator strongly significant, denominator not: the complement of an interval.
    x = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    y = [1.0, -1.0, 1.0, 0.0, 0.0, 0.0]
    n, xb, yb = 6, 5 / 6, 1 / 6
    vxx = np.var(x, ddof=1) / n
    vyy = np.var(y, ddof=1) / n
    vxy = np.cov(x, y, ddof=1)[0, 1] / n
    c2 = _t(0.95, n) ** 2
    coeffs = [yb**2 - c2 * vyy, -2 * (xb * yb - c2 * vxy), xb**2 - c2 * vxx]
    assert coeffs[0] < 0 and coeffs[1] ** 2 - 4 * coeffs[0] * coeffs[2] > 0
    g0, g1 = sorted(np.roots(coeffs).real)
    res = ratio_confidence_set(x, y)
    assert res.kind == "two_rays" and not res.bounded
    assert (res.lo, res.hi) == (-math.inf, math.inf)
    assert res.gap == (pytest.approx(g0, rel=1e-12), pytest.approx(g1, rel=1e-12))
    assert res.estimate == pytest.approx(5.0) and res.contains(5.0)
    assert res.contains(-1e9) and res.contains(1e9) and not res.contains((g0 + g1) / 2)
    # The end points solve the defining equality.
    for r in res.gap:
        lhs = (xb - r * yb) ** 2
        assert lhs == pytest.approx(c2 * (vxx - 2 * r * vxy + r * r * vyy), rel=1e-9)
    # JSON keeps the infinite bounds.
    back = RatioConfidenceSet.model_validate_json(res.model_dump_json())
    assert back == res


def test_fieller_unbounded_exactly_when_denominator_ci_contains_zero():
    rng = np.random.default_rng(3)
    seen = {"interval": 0, "two_rays": 0, "whole_line": 0}
    for _ in range(600):
        n = int(rng.integers(5, 60))
        base = rng.random(n) < 0.5
        x = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(float) - base
        y = (rng.random(n) < rng.uniform(0.3, 0.7)).astype(float) - base
        conf = float(rng.choice([0.8, 0.9, 0.95]))
        res = ratio_confidence_set(x, y, confidence=conf)
        seen[res.kind] += 1
        half = _t(conf, n) * np.std(y, ddof=1) / math.sqrt(n)
        lo, hi = y.mean() - half, y.mean() + half
        assert res.denominator_ci == pytest.approx((lo, hi))
        assert res.bounded == (not lo <= 0 <= hi)
        assert res.bounded == (res.kind == "interval")
        if res.kind == "whole_line":  # needs the numerator's CI to contain 0 as well
            assert abs(x.mean()) <= _t(conf, n) * np.std(x, ddof=1) / math.sqrt(n)
        if res.estimate is not None:
            assert res.contains(res.estimate)
    assert all(v > 20 for v in seen.values()), seen


def test_fieller_degenerate_inputs():
    inf = math.inf
    for x, y in [([], []), ([1.0], [1.0])]:
        res = ratio_confidence_set(x, y)
        assert res.kind == "whole_line" and (res.lo, res.hi) == (-inf, inf)
        assert res.denominator_ci == (-inf, inf) and res.note
    assert ratio_confidence_set([], []).estimate is None
    assert ratio_confidence_set([2.0], [1.0]).estimate == 2.0
    # Denominator identically 0: no information on E[y], whole line, no estimate.
    res = ratio_confidence_set([1, 1, 1, 0, 1], [0, 0, 0, 0, 0])
    assert res.kind == "whole_line" and res.estimate is None and res.note
    # Both constant and non-zero: a zero-width interval at the ratio.
    res = ratio_confidence_set([1, 1, 1], [-1, -1, -1])
    assert res.kind == "interval" and res.lo == res.hi == -1.0
    # Numerator identically 0, denominator significant: the point 0, flagged.
    res = ratio_confidence_set([0] * 30, [1] * 20 + [0] * 10)
    assert res.kind == "interval" and res.lo == res.hi == 0.0 and res.note
    # Denominator constant non-zero: x̄/ȳ ± c·se(x̄)/|ȳ|.
    x = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    res = ratio_confidence_set(x, [0.5] * 6)
    half = _t(0.95, 6) * np.std(x, ddof=1) / math.sqrt(6) / 0.5
    assert (res.lo, res.hi) == (pytest.approx(4 / 3 - half), pytest.approx(4 / 3 + half))
    with pytest.raises(ValueError, match="length"):
        ratio_confidence_set([1, 0], [1])
    with pytest.raises(ValueError, match="finite"):
        ratio_confidence_set([1, math.nan], [1, 0])
    with pytest.raises(ValueError, match="confidence"):
        ratio_confidence_set([1, 0], [1, 0], confidence=1.0)


def _paired_gains(
    rng: np.random.Generator,
    reps: int,
    n: int,
    g_t: float,
    g_r: float,
    *,
    p0: float = 0.5,
    harm: float = 0.05,
    shared: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item gains (targeted − base, random − base), shape (reps, n), like the loop's.

    The base model is right with probability ``p0``; each arm breaks a right item with
    probability ``harm`` and fixes a wrong one with the rate giving mean gain ``g``. With
    ``shared`` > 0 the two arms tend to fix and break the same items (a common uniform on
    that fraction of the items), which correlates their gains beyond the shared base.
    """
    base = rng.random((reps, n)) < p0
    common_u = rng.random((reps, n))
    use_common = rng.random((reps, n)) < shared

    def arm(g: float) -> np.ndarray:
        fix = (g + p0 * harm) / (1 - p0)
        assert 0 <= fix <= 1
        u = np.where(use_common, common_u, rng.random((reps, n)))
        return np.where(base, u >= harm, u < fix)

    b = base.astype(float)
    return arm(g_t) - b, arm(g_r) - b


# (n, g_t, g_r, shared): ratios 15 (random gain near 0), 1, 2, 0.5.
FIELLER_SETTINGS = [
    (40, 0.15, 0.01, 0.0),
    (40, 0.10, 0.10, 0.0),
    (40, 0.20, 0.10, 0.0),
    (40, 0.05, 0.10, 0.0),
    (40, 0.20, 0.10, 0.5),
    (100, 0.15, 0.01, 0.0),
    (100, 0.10, 0.10, 0.0),
    (100, 0.20, 0.10, 0.0),
    (100, 0.05, 0.10, 0.0),
    (100, 0.05, 0.10, 0.5),
]


@pytest.mark.parametrize(("n", "g_t", "g_r", "shared"), FIELLER_SETTINGS)
def test_fieller_coverage_on_paired_binary_gains(n, g_t, g_r, shared):
    rng = np.random.default_rng(4)
    reps = 1000
    rho = g_t / g_r
    xs, ys = _paired_gains(rng, reps, n, g_t, g_r, shared=shared)
    sets = [ratio_confidence_set(x, y) for x, y in zip(xs, ys, strict=True)]
    cov = np.mean([s.contains(rho) for s in sets])
    unbounded = np.mean([not s.bounded for s in sets])
    print(
        f"Fieller 95% n={n} g_t={g_t} g_r={g_r} (ratio {rho:g}) shared={shared}: "
        f"coverage {cov:.3f}, unbounded {unbounded:.2f}"
    )
    assert cov >= 0.93
    if g_r <= 0.01:  # the random arm's gain is indistinguishable from 0
        assert unbounded >= 0.9


def _old_positive_resample_ratio_ci(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int = 1000
) -> tuple[float, float] | None:
    """The loop's former ratio CI: 2.5/97.5% percentiles of the bootstrap ratios over the
    resamples with a positive random-arm gain (None when those are at most half)."""
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    bt, br = x[idx].mean(1), y[idx].mean(1)
    pos = br > 0
    if pos.mean() <= 0.5:
        return None
    r = bt[pos] / br[pos]
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def test_old_positive_resample_ratio_ci_undercovers_near_zero_denominator():
    """Documents issue 18 (item 3): a finite interval when the random gain may be 0."""
    rng = np.random.default_rng(5)
    reps, n, g_t, g_r = 1000, 40, 0.15, 0.01
    rho = g_t / g_r
    xs, ys = _paired_gains(rng, reps, n, g_t, g_r)
    hits = 0
    for x, y in zip(xs, ys, strict=True):
        ci = _old_positive_resample_ratio_ci(x, y, rng)
        hits += ci is None or ci[0] <= rho <= ci[1]  # no interval counts as covering
    cov = hits / reps
    print(f"old positive-resample ratio CI, n={n} ratio {rho:g}: coverage {cov:.3f}")
    assert cov < 0.9
