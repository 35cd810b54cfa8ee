"""Statistics of selfimprove.interp on synthetic data with known truth, nulls included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from selfimprove.interp.activations import ridge_cv_accuracy
from selfimprove.interp.lora import effective_rank
from selfimprove.interp.stats import bh, paired_effect, permutation_pvalue
from selfimprove.stats import benjamini_hochberg


def test_paired_t_matches_scipy_and_ci_covers() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, 50)
    t = paired_effect(d, method="t")
    assert t.p == pytest.approx(st.ttest_1samp(d, 0).pvalue, rel=1e-12)
    ci = st.t.interval(0.95, 49, loc=d.mean(), scale=st.sem(d))
    assert (t.ci_low, t.ci_high) == pytest.approx(ci, rel=1e-9)
    assert t.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    assert t.fraction_positive == pytest.approx((d > 0).mean())


def test_signflip_exact_small_n() -> None:
    # all 4 positive: exactly 2 of 16 sign patterns reach |mean| -> p = 1/8
    t = paired_effect([1.0, 2.0, 3.0, 4.0], method="signflip")
    assert t.p == pytest.approx(2 / 16)
    assert paired_effect([1.0, -1.0, 2.0, -2.0], method="signflip").p == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["t", "signflip", "wilcoxon"])
def test_null_calibration_and_power(method: str) -> None:
    rng = np.random.default_rng(1)
    null_p = [
        paired_effect(rng.normal(0, 1, 15), method=method, n_perm=500, seed=i).p for i in range(300)
    ]
    rate = np.mean(np.array(null_p) <= 0.05)
    assert 0.01 <= rate <= 0.10  # nominal 5%, allowing Monte-Carlo error
    alt_p = [
        paired_effect(rng.normal(1.0, 1, 15), method=method, n_perm=500, seed=i).p
        for i in range(50)
    ]
    assert np.mean(np.array(alt_p) <= 0.05) > 0.8


def test_bh_equals_statsmodels_and_finds_the_true_effects() -> None:
    rng = np.random.default_rng(2)
    tests = [paired_effect(rng.normal(0.0, 1, 40), name=f"null{i}") for i in range(20)]
    tests += [paired_effect(rng.normal(1.0, 1, 40), name=f"real{i}") for i in range(5)]
    out = bh(tests, family="f")
    ref = multipletests([t.p for t in tests], method="fdr_bh")[1]
    assert [t.p_adj for t in out] == pytest.approx(list(ref))
    assert {t.name for t in out if t.significant} == {f"real{i}" for i in range(5)}
    assert all(t.family == "f" for t in out)
    assert benjamini_hochberg([]) == ([], [])


def test_permutation_pvalue_never_zero() -> None:
    assert permutation_pvalue(10.0, np.zeros(99)) == pytest.approx(0.01)
    assert permutation_pvalue(0.0, np.zeros(99)) == pytest.approx(1.0)


def test_degenerate_inputs() -> None:
    assert paired_effect([0.0, 0.0, 0.0]).p == 1.0
    assert paired_effect([]).n == 0
    assert paired_effect([0.5] * 30, method="t").p == 0.0


def test_probe_detects_a_planted_direction_and_not_noise() -> None:
    rng = np.random.default_rng(3)
    n, d = 60, 200
    y = np.repeat([0, 1, 2], n // 3)
    noise = rng.normal(size=(n, d))
    acc0, null0 = ridge_cv_accuracy(noise, y, n_perm=200, seed=0)
    assert permutation_pvalue(acc0, null0) > 0.05  # null: noise features
    assert abs(null0.mean() - 1 / 3) < 0.08
    X = noise.copy()
    pattern = rng.choice([-1.0, 1.0], size=(3, 30))  # class means differ in 30 of 200 dims
    X[:, :30] += 0.8 * pattern[y]
    acc1, null1 = ridge_cv_accuracy(X, y, n_perm=200, seed=0)
    assert acc1 > 0.8 and permutation_pvalue(acc1, null1) < 0.01


def test_effective_rank() -> None:
    assert effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1.0)
    assert effective_rank(np.ones(4)) == pytest.approx(4.0)
