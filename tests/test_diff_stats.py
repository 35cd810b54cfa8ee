"""Statistics of the behavior-change detector on synthetic data with known truth.

* BH equals statsmodels' ``fdr_bh`` (decisions and adjusted values).
* SAFFRON from ``online-fdr`` equals a from-the-paper implementation on a golden vector.
* ≥200 simulated null-heavy families: the detector's region p-values (Bonferroni within a
  region, BH across) keep the FDR ≤ q within Monte-Carlo error; a planted effect has power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import zeta
from statsmodels.stats.multitest import multipletests

from selfimprove.diff.allocate import allocate_budget
from selfimprove.diff.stats import (
    binary_test,
    combine_bonferroni,
    divergence_test,
    length_test,
    mcnemar_power,
    pairs_for_power,
    saffron,
)
from selfimprove.stats import benjamini_hochberg


@pytest.mark.parametrize("seed", range(5))
def test_bh_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10)])
    p[3] = p[4]  # ties
    for q in (0.05, 0.1, 0.2):
        rej, adj = benjamini_hochberg(list(p), q)
        rej_sm, adj_sm, _, _ = multipletests(p, alpha=q, method="fdr_bh")
        assert rej == [bool(x) for x in rej_sm]
        np.testing.assert_allclose(adj, adj_sm, rtol=0, atol=1e-12)


def test_bh_rejects_nothing_when_all_p_are_one() -> None:
    rej, adj = benjamini_hochberg([1.0] * 10, 0.1)
    assert not any(rej) and adj == [1.0] * 10


def _saffron_reference(p: list[float], alpha: float, w0: float, lam: float) -> list[bool]:
    """SAFFRON, Algorithm 1 of Ramdas et al. (2018), written from the paper.

    α_t = min{λ, (1−λ)(W0·γ_{t−C_{0+}} + (α−W0)·γ_{t−τ_1−C_{1+}} + α·Σ_{j≥2} γ_{t−τ_j−C_{j+}})}
    with C_{j+} = #candidates (p_i ≤ λ) among τ_j < i < t, γ_j ∝ j^{-1.6} summing to 1.
    """
    z = float(zeta(1.6))
    gamma = lambda j: (j**-1.6) / z  # noqa: E731
    cand: list[bool] = []
    rej_times: list[int] = []
    out = []
    for t, pt in enumerate(p, start=1):
        c0 = sum(cand)
        s = w0 * gamma(t - c0)
        for j, tau in enumerate(rej_times):
            cj = sum(cand[tau:])  # candidates at times tau+1 .. t-1 (cand is 0-indexed)
            s += (alpha - w0 if j == 0 else alpha) * gamma(t - tau - cj)
        a_t = min(lam, (1 - lam) * s)
        cand.append(pt <= lam)
        r = pt <= a_t
        if r:
            rej_times.append(t)
        out.append(r)
    return out


GOLDEN_P = [
    1e-5, 0.3, 0.002, 0.8, 0.004, 0.01, 0.6, 0.0005, 0.2, 0.03,
    0.9, 0.001, 0.45, 0.015, 0.7, 0.0001, 0.05, 0.35, 0.003, 0.95,
]  # fmt: skip
# From the formula above (α = 0.1, W0 = 0.05, λ = 0.5), frozen. Hand check of the first
# thresholds: α_1 = (1−λ)·W0·γ_1 = 0.5·0.05·0.43749 = 0.010937 (rejects 1e-5);
# α_2 = 0.5·(W0·γ_{2−1} + (α−W0)·γ_{2−1−0}) = 0.5·0.1·0.43749 = 0.021875 (0.3 is kept).
GOLDEN_REJECT = [0, 2, 4, 5, 7, 9, 11, 13, 15, 16, 18]


def test_saffron_golden_vector() -> None:
    assert 0.5 * 0.05 / float(zeta(1.6)) == pytest.approx(0.0109372, abs=1e-6)
    assert saffron([0.0109], 0.1, wealth=0.05) == [True]
    assert saffron([0.0110], 0.1, wealth=0.05) == [False]
    assert saffron([1e-5, 0.3, 0.0218], 0.1, wealth=0.05) == [True, False, True]
    assert saffron([1e-5, 0.3, 0.0220], 0.1, wealth=0.05) == [True, False, False]
    ref = _saffron_reference(GOLDEN_P, 0.1, 0.05, 0.5)
    assert [i for i, r in enumerate(ref) if r] == GOLDEN_REJECT
    pkg = saffron(GOLDEN_P, 0.1, wealth=0.05, lambda_=0.5)
    assert pkg == ref


def test_saffron_matches_reference_on_random_streams() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = list(
            np.where(rng.uniform(size=60) < 0.3, rng.uniform(0, 0.005, 60), rng.uniform(size=60))
        )
        assert saffron(p, 0.1, wealth=0.05, lambda_=0.5) == _saffron_reference(p, 0.1, 0.05, 0.5)


def _simulate_family(
    rng: np.random.Generator, n_regions: int, n_pairs: int, planted: dict[int, float]
) -> list[float]:
    """Region p-values of paired binary + length statistics, Bonferroni within regions."""
    pvals = []
    for r in range(n_regions):
        base = rng.uniform(0.1, 0.6)
        a = rng.uniform(size=n_pairs) < base
        b = rng.uniform(size=n_pairs) < base + planted.get(r, 0.0)
        la = rng.poisson(20, n_pairs)
        lb = rng.poisson(20, n_pairs)
        tests = [binary_test("refusal", list(a), list(b)), length_test(list(la), list(lb))]
        pvals.append(combine_bonferroni([t.p_value for t in tests]))
    return pvals


def test_simulated_null_families_control_fdr() -> None:
    """300 families of 20 regions, 2 non-null; FDR ≤ q + 3 Monte-Carlo s.e."""
    rng = np.random.default_rng(0)
    q, n_fam = 0.1, 300
    fdps, any_null_flag, power = [], 0, []
    for _ in range(n_fam):
        planted = {0: 0.45, 1: 0.45}
        p = _simulate_family(rng, 20, 40, planted)
        rej, _ = benjamini_hochberg(p, q)
        n_rej = sum(rej)
        false = sum(r for i, r in enumerate(rej) if i not in planted)
        fdps.append(false / max(1, n_rej))
        any_null_flag += false > 0
        power.append(sum(rej[i] for i in planted) / len(planted))
    fdr = float(np.mean(fdps))
    se = float(np.std(fdps, ddof=1) / math.sqrt(n_fam))
    assert fdr <= q + 3 * se, (fdr, se)
    assert np.mean(power) > 0.8  # the planted effect is found
    # Global null: BH at q controls the family-wise rate at q.
    flags = 0
    for _ in range(n_fam):
        rej, _ = benjamini_hochberg(_simulate_family(rng, 20, 30, {}), q)
        flags += any(rej)
    assert flags / n_fam <= q + 3 * math.sqrt(q * (1 - q) / n_fam)


def test_fdr_fails_without_correction() -> None:
    """The simulation can fail: uncorrected p ≤ q floods a null family with flags."""
    rng = np.random.default_rng(2)
    flags = 0
    for _ in range(200):
        rng_p = rng.uniform(size=20)
        flags += bool(np.any(rng_p <= 0.1))
    assert flags / 200 > 0.5


def test_divergence_test_identical_models_give_p_one() -> None:
    t = divergence_test([0.0] * 12, margin=0.05)
    assert t.p_value == 1.0 and t.effect == 0.0
    t = divergence_test([0.5 + 0.01 * i for i in range(12)], margin=0.05)
    assert t.p_value < 1e-6
    t = divergence_test([0.02 + 0.01 * (i % 3) for i in range(12)], margin=0.05)
    assert t.p_value > 0.5  # a real but sub-margin divergence is not a change


def test_binary_and_length_tests_basic() -> None:
    t = binary_test("refusal", [False] * 16, [True] * 16)
    assert t.effect == 1.0 and t.p_value == pytest.approx(2 * 0.5**16)
    assert length_test([5] * 8, [5] * 8).p_value == 1.0


def test_power_calculation() -> None:
    # 0 -> 90% refusal: a handful of pairs reach 80% power even at a strict level
    n = pairs_for_power(0.9, 0.0, 0.1 / 30 / 5, 0.8)
    assert n is not None and 10 <= n <= 20
    assert mcnemar_power(n, 0.9, 0.0, 0.1 / 150) >= 0.8
    assert mcnemar_power(n - 3, 0.9, 0.0, 0.1 / 150) < 0.8
    # anchor: a 5% -> 15% change needs far more pairs
    big = pairs_for_power(0.1, 0.0, 0.1 / 100, 0.8)
    assert big is not None and big > 100


def test_allocation_respects_budget_and_capacity() -> None:
    scores = {"a": 2.0, "b": 0.5, "c": 0.0, "d": 0.01}
    cap = {"a": 10, "b": 10, "c": 10, "d": 10}
    alloc = allocate_budget(scores, cap, 16, min_test=6)
    assert sum(alloc.values()) <= 16
    assert alloc["a"] == 10 and alloc["c"] == 0
    assert all(v == 0 or v >= 6 for v in alloc.values())
    alloc = allocate_budget(scores, cap, 40, min_per_region=3)
    assert all(v >= 3 for v in alloc.values()) and sum(alloc.values()) <= 40
