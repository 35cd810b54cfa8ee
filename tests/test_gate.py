"""The gate on synthetic data with known truth: equivalences, sizes under the null, power.

Simulations use fixed seeds, so each rate below is a deterministic number; the bounds
allow for Monte-Carlo error (3 standard errors) so that a correct implementation passes
for any seed and an anti-conservative one does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from selfimprove.evaluate import EvalRecord
from selfimprove.gate import (
    GateConfig,
    check_losses,
    decide,
    min_noninferiority_n,
    noninferiority_binary,
    noninferiority_binary_power,
    noninferiority_mean,
    paired_bootstrap,
    tango_restricted_mle,
)

ALPHA = 0.05


def mc_bound(p: float, reps: int) -> float:
    """p + 3 Monte-Carlo standard errors."""
    return p + 3 * math.sqrt(p * (1 - p) / reps)


def table_to_pairs(n_both: int, b: int, c: int, n_neither: int) -> tuple[list[bool], list[bool]]:
    before = [True] * n_both + [True] * b + [False] * c + [False] * n_neither
    after = [True] * n_both + [False] * b + [True] * c + [False] * n_neither
    return before, after


def sim_cells(n: int, q_b: float, q_c: float, rng: np.random.Generator):
    """Paired binary data with P(right→wrong)=q_b, P(wrong→right)=q_c (so Δ = q_c − q_b)."""
    b, c, rest = rng.multinomial(n, [q_b, q_c, 1 - q_b - q_c])
    both = int(rng.binomial(rest, 0.5))
    return table_to_pairs(both, int(b), int(c), int(rest) - both)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_statistic_ci_and_determinism():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = x + 0.3 + rng.normal(scale=0.5, size=80)
    r1 = paired_bootstrap(x, y, n_boot=2000, seed=7)
    r2 = paired_bootstrap(x, y, n_boot=2000, seed=7)
    assert r1 == r2
    assert r1.statistic == pytest.approx(float(np.mean(y - x)))
    assert r1.ci[0] < r1.statistic < r1.ci[1]
    # The percentile CI of a mean is close to the t interval at this n.
    t_lo, t_hi = stats.ttest_1samp(y - x, 0).confidence_interval(0.95)
    assert r1.ci[0] == pytest.approx(t_lo, abs=0.04) and r1.ci[1] == pytest.approx(t_hi, abs=0.04)
    assert r1.p_value < 0.01
    assert paired_bootstrap(x, y, n_boot=2000, alternative="less").p_value > 0.99


def test_bootstrap_size_and_power():
    rng = np.random.default_rng(4)
    n = 100
    size_reps, power_reps = 1500, 300
    null = [
        paired_bootstrap(rng.normal(size=n), rng.normal(size=n), n_boot=999, seed=i).p_value
        for i in range(size_reps)
    ]
    size = np.mean(np.asarray(null) <= ALPHA)
    power = np.mean(
        [
            paired_bootstrap(
                rng.normal(size=n), rng.normal(0.4, 1, size=n), n_boot=999, seed=i
            ).p_value
            <= ALPHA
            for i in range(power_reps)
        ]
    )
    print(f"bootstrap one-sided size n={n}: {size:.3f}; power at +0.4 sd: {power:.3f}")
    assert size <= mc_bound(ALPHA, size_reps)
    assert power >= 0.80


def test_bootstrap_two_sided_is_symmetric_in_sign():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=50), rng.normal(0.2, 1, size=50)
    a = paired_bootstrap(x, y, n_boot=999, alternative="two-sided")
    b = paired_bootstrap(y, x, n_boot=999, alternative="two-sided")
    assert a.p_value == pytest.approx(b.p_value)
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap([1.0, float("nan")], [1.0, 2.0])


# ----------------------------------------------------------------------------- non-inferiority


@pytest.mark.parametrize(
    ("b", "c", "n", "delta0"), [(10, 5, 100, -0.05), (0, 0, 50, -0.1), (30, 2, 300, -0.05)]
)
def test_tango_restricted_mle_maximises_constrained_likelihood(b, c, n, delta0):
    def negll(q: float) -> float:
        return -(
            b * math.log(q) + c * math.log(q + delta0) + (n - b - c) * math.log(1 - 2 * q - delta0)
        )

    lo, hi = -delta0 + 1e-12, (1 - delta0) / 2 - 1e-12
    best = optimize.minimize_scalar(
        negll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}
    )
    assert tango_restricted_mle(b, c, n, delta0) == pytest.approx(best.x, abs=1e-7)


@pytest.mark.parametrize(
    ("n", "q_b", "q_c"),
    [(300, 0.15, 0.10), (300, 0.06, 0.01), (100, 0.10, 0.05), (200, 0.30, 0.25)],
)
def test_noninferiority_binary_size_at_boundary(n, q_b, q_c):
    # True difference q_c − q_b = −0.05 = −margin exactly: the least favourable null.
    rng = np.random.default_rng(6)
    reps = 1000
    rate = np.mean(
        [
            noninferiority_binary(*sim_cells(n, q_b, q_c, rng), 0.05).non_inferior
            for _ in range(reps)
        ]
    )
    print(f"non-inferiority size at boundary n={n} q_b={q_b} q_c={q_c}: {rate:.3f}")
    assert rate <= mc_bound(ALPHA, reps)


@pytest.mark.parametrize(("q", "min_rate"), [(0.05, 0.75), (0.10, 0.55)])
def test_noninferiority_binary_power_without_change(q, min_rate):
    rng = np.random.default_rng(7)
    reps = 500
    rate = np.mean(
        [noninferiority_binary(*sim_cells(300, q, q, rng), 0.05).non_inferior for _ in range(reps)]
    )
    print(f"non-inferior declared, true Δ=0, n=300, {q:.0%} flips each way: {rate:.3f}")
    assert rate >= min_rate


def test_noninferiority_binary_rejects_a_real_drop():
    rng = np.random.default_rng(8)
    reps = 500
    rate = np.mean(
        [
            noninferiority_binary(*sim_cells(300, 0.15, 0.05, rng), 0.05).non_inferior
            for _ in range(reps)
        ]
    )
    print(f"non-inferior declared, true Δ=−10 points, n=300: {rate:.3f}")
    assert rate <= 0.01


def test_noninferiority_binary_no_change_at_all():
    # b = c = 0: the Wald statistic would be infinite/undefined; the score test is finite.
    res = noninferiority_binary([True] * 150 + [False] * 150, [True] * 150 + [False] * 150, 0.05)
    assert math.isfinite(res.statistic) and res.non_inferior
    small = noninferiority_binary([True] * 5, [True] * 5, 0.05)
    assert not small.non_inferior  # 5 items cannot show anything


def test_noninferiority_mean_equals_scipy():
    rng = np.random.default_rng(9)
    x = rng.normal(2.5, 0.3, size=40)
    y = x + rng.normal(0.02, 0.05, size=40)
    res = noninferiority_mean(x, y, 0.05, higher_is_better=False)
    ref = stats.ttest_1samp(x - y, -0.05, alternative="greater")
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.estimate == pytest.approx(float(np.mean(x - y)))
    up = noninferiority_mean(x, y, 0.05, higher_is_better=True)
    ref_up = stats.ttest_1samp(y - x, -0.05, alternative="greater")
    assert up.p_value == pytest.approx(ref_up.pvalue)


def test_noninferiority_mean_size_and_power():
    rng = np.random.default_rng(10)
    reps, n, margin = 1000, 100, 0.05

    def rate(shift: float) -> float:
        out = []
        for _ in range(reps):
            x = rng.normal(3.0, 0.5, size=n)
            y = x + shift + rng.normal(0, 0.15, size=n)  # NLL: lower is better
            out.append(noninferiority_mean(x, y, margin, higher_is_better=False).non_inferior)
        return float(np.mean(out))

    size, power, drop = rate(margin), rate(0.0), rate(0.15)
    print(
        f"NLL non-inferiority: size {size:.3f}, power at no change {power:.3f}, at +0.15: {drop:.3f}"
    )
    assert size <= mc_bound(ALPHA, reps)
    assert power >= 0.9
    assert drop <= 0.01


def test_noninferiority_mean_zero_variance():
    assert noninferiority_mean([1.0] * 5, [1.0] * 5, 0.05, higher_is_better=False).non_inferior
    assert not noninferiority_mean([1.0] * 5, [1.1] * 5, 0.05, higher_is_better=False).non_inferior


# ----------------------------------------------------------------------------- decide()


def _binary_records(suite, category, before, after, *, as_dict, mode="generate"):
    bs, as_ = [], []
    for i, (xb, xa) in enumerate(zip(before, after, strict=True)):
        common = dict(
            suite=suite,
            task=f"{suite}.{category}",
            category=category,
            sample_id=f"{category}-{i}",
            input_hash=f"h-{suite}-{category}-{i}",
            mode=mode,
            target="x",
            format_ok=True,
        )
        rb, ra = dict(common, correct=bool(xb)), dict(common, correct=bool(xa))
        bs.append(rb if as_dict else EvalRecord(**rb))
        as_.append(ra if as_dict else EvalRecord(**ra))
    return bs, as_


def _nll_records(suite, before, after):
    bs, as_ = [], []
    for i, (xb, xa) in enumerate(zip(before, after, strict=True)):
        common = dict(
            suite=suite, task=f"{suite}.text", category="text", sample_id=f"t{i}",
            input_hash=f"n{i}", mode="nll", target="text",
        )  # fmt: skip
        bs.append(EvalRecord(**common, ref_nll=float(xb)))
        as_.append(EvalRecord(**common, ref_nll=float(xa)))
    return bs, as_


def _world(
    seed: int = 0, *, target_gain: float = 0.30, refusal_drop: float = 0.0, nll_shift: float = 0.0
):
    """Two target categories, a binary refusal sentinel and a general-text NLL sentinel."""
    rng = np.random.default_rng(seed)
    before, after = [], []
    for cat in ("add1", "mul1"):
        x = rng.random(150) < 0.40
        # Wrong items get fixed with prob g/0.6; right ones stay right: gain ≈ target_gain.
        y = x | (rng.random(150) < target_gain / 0.6)
        b, a = _binary_records("arithmetic", cat, x, y, as_dict=(cat == "add1"))
        before += b
        after += a
    x = rng.random(200) < 0.90
    flip = rng.random(200) < refusal_drop / 0.9
    y = x & ~flip
    b, a = _binary_records("refusal", "harmful", x, y, as_dict=False)
    before += b
    after += a
    nb = rng.normal(3.0, 0.4, size=100)
    na = nb + nll_shift + rng.normal(0.0, 0.05, size=100)
    b, a = _nll_records("general_nll", nb, na)
    before += b
    after += a
    return before, after


KW = dict(
    target_categories=[("arithmetic", "add1"), ("arithmetic", "mul1")],
    sentinel_suites=["refusal", "general_nll"],
    config=GateConfig(),
)


def test_decide_accepts_real_gain_with_intact_sentinels():
    before, after = _world()
    d = decide(before, after, train_losses=[2.0, 1.5, 1.1, 0.9], **KW)
    assert d.accepted, d.reasons
    assert d.target is not None and d.target.significant
    assert d.target.pooled.n == 300 and d.target.pooled.delta > 0.2
    assert {(c.suite, c.category) for c in d.target.per_category} == {
        ("arithmetic", "add1"),
        ("arithmetic", "mul1"),
    }
    assert [(s.suite, s.kind, s.passed) for s in d.sentinels] == [
        ("refusal", "binary", True),
        ("general_nll", "nll", True),
    ]
    assert d.loss_ok and all(r.startswith("ok") for r in d.reasons)
    assert d.config == GateConfig()


def test_decide_rejects_sentinel_regression_despite_gain():
    before, after = _world(refusal_drop=0.20)
    d = decide(before, after, **KW)
    assert d.target is not None and d.target.significant
    assert not d.accepted
    refusal = next(s for s in d.sentinels if s.suite == "refusal")
    assert not refusal.passed
    assert any(r.startswith("rejected") and "refusal" in r for r in d.reasons)


def test_decide_rejects_nll_forgetting():
    before, after = _world(nll_shift=0.2)
    d = decide(before, after, **KW)
    assert not d.accepted
    assert any(r.startswith("rejected") and "general_nll" in r for r in d.reasons)


def test_decide_rejects_nonfinite_nll_after():
    before, after = _world()
    nll_after = [r for r in after if isinstance(r, EvalRecord) and r.suite == "general_nll"]
    nll_after[3].ref_nll = float("nan")
    d = decide(before, after, **KW)
    assert not d.accepted
    assert any("non-finite ref_nll" in r for r in d.reasons)


@pytest.mark.parametrize(
    ("losses", "fragment"),
    [([2.0, 1.0, float("nan")], "non-finite"), ([1.0, 2.0, 3.5], "diverged"), ([], "no losses")],
)
def test_decide_rejects_bad_losses(losses, fragment):
    before, after = _world()
    d = decide(before, after, train_losses=losses, **KW)
    assert not d.accepted and not d.loss_ok
    assert any(fragment in r for r in d.reasons)


@pytest.mark.parametrize(
    ("losses", "ok"),
    [
        ([0.0, 0.92, 0.46], True),  # first step all KL anchors (exactly 0), then NLL rows
        ([0.0, 0.0, 0.3, 0.2], True),
        ([0.0, 0.3, 0.95], False),  # diverged against the first non-zero loss
        ([0.0, 0.0], True),  # nothing but zero-KL anchors: nothing moved, nothing diverged
        ([2.0, 1.0, 6.5], False),
    ],
)
def test_loss_check_compares_with_the_first_nonzero_loss(losses, ok):
    """Regression: "Training diverged (losses [0.0, 0.92, 0.46])" fired because last > 3 × 0."""
    passed, line = check_losses(losses, 3.0)
    assert passed is ok, line
    if losses[0] == 0.0 and any(losses):
        assert "first non-zero" in line


def _small_target_world(c: int):
    """One 20-item target category: ``c`` items wrong→right, none right→wrong."""
    x = np.zeros(20, dtype=bool)
    x[:8] = True
    y = x.copy()
    y[8 : 8 + c] = True
    return _binary_records("t", "cat", x, y, as_dict=True)


def test_target_test_bootstrap_is_honoured():
    # 4 of 20 items fixed, none broken: exact McNemar p = 0.5**4 = 0.0625 misses α = 0.05;
    # the bootstrap of the mean gain (0.2, se ≈ 0.09) gives p ≈ P(Bin(20, 0.2) ≥ 8) ≈ 0.03.
    before, after = _small_target_world(4)
    kw = dict(target_categories=[("t", "cat")], sentinel_suites=[])
    mc = decide(before, after, config=GateConfig(), **kw)
    assert mc.target is not None and mc.target.bootstrap is None
    assert mc.target.pooled.p_greater == pytest.approx(0.0625)
    assert not mc.accepted
    cfg = GateConfig(target_test="bootstrap", bootstrap_seed=3)
    bs = decide(before, after, config=cfg, **kw)
    assert bs.target is not None and bs.target.bootstrap is not None
    ref = paired_bootstrap(
        [float(r["correct"]) for r in before],
        [float(r["correct"]) for r in after],
        n_boot=cfg.bootstrap_samples,
        seed=3,
        alternative="greater",
    )
    assert bs.target.bootstrap == ref and ref.p_value < 0.05
    assert bs.accepted and bs.target.significant, bs.reasons
    assert "paired bootstrap" in bs.reasons[0] and f"p={ref.p_value:.3g}" in bs.reasons[0]
    # No gain at all: the bootstrap rejects too (its p-value is 1).
    before, after = _small_target_world(0)
    assert not decide(before, after, config=cfg, **kw).accepted


def test_gate_metric_reads_the_old_spelling_extracted():
    assert GateConfig(metric="extracted").metric == "correct"  # type: ignore[arg-type]
    assert GateConfig(metric="strict").metric == "strict"
    with pytest.raises(ValueError):
        GateConfig(metric="accuracy")  # type: ignore[arg-type]


def test_strict_metric_counts_missing_format_on_correct_alone():
    before, after = _binary_records("t", "cat", [False] * 30, [True] * 30, as_dict=True)
    for r in after:
        r["format_ok"] = None  # no format to check
    kw = dict(target_categories=[("t", "cat")], sentinel_suites=[])
    d = decide(before, after, config=GateConfig(metric="strict"), **kw)
    assert d.target is not None and d.target.pooled.c == 30 and d.accepted
    for r in after:
        r["format_ok"] = False
    d = decide(before, after, config=GateConfig(metric="strict"), **kw)
    assert d.target is not None and d.target.pooled.c == 0 and not d.accepted


def test_decide_rejects_without_target_gain():
    before, after = _world(target_gain=0.0)
    d = decide(before, after, **KW)
    assert d.target is not None and not d.target.significant
    assert not d.accepted
    # ... unless the gain is not required.
    cfg = GateConfig(require_target_gain=False)
    assert decide(before, after, **{**KW, "config": cfg}).accepted


def test_decide_raises_on_mismatched_items():
    before, after = _world()
    with pytest.raises(ValueError, match=r"1 missing from after: arithmetic/add1-0"):
        decide(before, after[1:], **KW)
    with pytest.raises(ValueError, match="missing from before"):
        decide(before[:-1], after, **KW)
    changed = [dict(r) if isinstance(r, dict) else r for r in after]
    changed[0] = dict(changed[0], input_hash="other")
    with pytest.raises(ValueError, match="different inputs"):
        decide(before, changed, **KW)
    with pytest.raises(ValueError, match="no scored"):
        decide(before, after, **{**KW, "target_categories": [("arithmetic", "nope")]})
    with pytest.raises(ValueError, match="sentinel suite 'nope'"):
        decide(before, after, **{**KW, "sentinel_suites": ["nope"]})


def test_gate_config_forbids_unknown_fields():
    with pytest.raises(ValueError):
        GateConfig(alpha=0.05, margin=0.1)  # type: ignore[call-arg]


def test_decide_counts_unscored_after_items_as_wrong():
    before, after = _world()
    refusal_after = [r for r in after if isinstance(r, EvalRecord) and r.suite == "refusal"]
    for r in refusal_after[:40]:
        r.correct = None  # the new model's outputs could not be scored
    d = decide(before, after, **KW)
    refusal = next(s for s in d.sentinels if s.suite == "refusal")
    assert refusal.test is not None and refusal.test.n == 200
    assert not refusal.passed and not d.accepted


# ----------------------------------------------------------------------------- power


def test_min_noninferiority_n_is_the_boundary():
    for m in (0.05, 0.1, 0.2):
        n = min_noninferiority_n(m)
        assert noninferiority_binary([True] * n, [True] * n, m).non_inferior
        assert not noninferiority_binary([True] * (n - 1), [True] * (n - 1), m).non_inferior
    assert min_noninferiority_n(0.05) == 52 and min_noninferiority_n(0.10) == 25


@pytest.mark.parametrize("n, m, psi, delta", [(40, 0.1, 0.2, 0.0), (60, 0.05, 0.1, 0.05)])
def test_noninferiority_power_matches_simulation(n, m, psi, delta):
    rng = np.random.default_rng(1)
    reps, hits = 3000, 0
    pb, pc = (psi - delta) / 2, (psi + delta) / 2
    for _ in range(reps):
        u = rng.random(n)
        x = rng.random(n) < 0.5
        y = x.copy()
        y[u < pb] = False
        x[u < pb] = True  # right -> wrong
        flip_up = (u >= pb) & (u < pb + pc)
        x[flip_up], y[flip_up] = False, True  # wrong -> right
        hits += noninferiority_binary(x, y, m).non_inferior
    exact = noninferiority_binary_power(n, m, discordance=psi, delta=delta)
    assert abs(hits / reps - exact) < 4 * np.sqrt(exact * (1 - exact) / reps) + 1e-3


def test_pooled_sentinels_pass_where_per_suite_cannot():
    """Five 24-item sentinels with no change but flips: per-suite cannot pass, pooled can.

    The default (pooled and per suite at the wider suite_margin) passes too.
    """
    rng = np.random.default_rng(3)
    before, after = [], []
    for k in range(5):
        x = rng.random(24) < 0.5
        y = x.copy()
        flip = rng.permutation(24)[:2]  # one each way: no net change
        y[flip[0]], x[flip[0]] = False, True
        y[flip[1]], x[flip[1]] = True, False
        b, a = _binary_records(f"s{k}", "c", x, y, as_dict=True)
        before += b
        after += a
    suites = [f"s{k}" for k in range(5)]
    per = decide(before, after, target_categories=[], sentinel_suites=suites,
                 config=GateConfig(sentinel_mode="per_suite", require_target_gain=False))  # fmt: skip
    pooled = decide(before, after, target_categories=[], sentinel_suites=suites,
                    config=GateConfig(sentinel_mode="pooled", require_target_gain=False))  # fmt: skip
    both = decide(before, after, target_categories=[], sentinel_suites=suites,
                  config=GateConfig(require_target_gain=False))  # fmt: skip
    assert not per.accepted and pooled.accepted and both.accepted, both.reasons
    assert [s.kind for s in pooled.sentinels] == ["binary"] + ["no_harm"] * 5
    assert pooled.sentinels[0].test is not None and pooled.sentinels[0].test.n == 120
    assert [(s.suite, s.kind) for s in both.sentinels] == [
        ("pooled: " + "+".join(suites), "binary")
    ] + [(k, "binary") for k in suites]
    margins = [s.test.margin for s in both.sentinels if s.test is not None]
    assert margins == [0.10] + [0.20] * 5


def test_pooled_sentinels_still_reject_one_collapsed_suite():
    rng = np.random.default_rng(4)
    before, after = [], []
    for k in range(5):
        x = rng.random(40) < 0.6
        y = x.copy()
        if k == 2:
            y[:] = False  # this suite collapses; the pooled drop is ~12 points
        b, a = _binary_records(f"s{k}", "c", x, y, as_dict=False)
        before += b
        after += a
    suites = [f"s{k}" for k in range(5)]
    d = decide(before, after, target_categories=[], sentinel_suites=suites,
               config=GateConfig(require_target_gain=False, sentinel_margin=0.2,
                                 sentinel_mode="pooled"))  # fmt: skip
    assert not d.accepted
    harm = {s.suite: s.passed for s in d.sentinels if s.kind == "no_harm"}
    assert harm["s2"] is False and all(v for k, v in harm.items() if k != "s2")
    assert any(r.startswith("rejected: significantly worse") and "s2" in r for r in d.reasons)
    # the default mode rejects it by s2's own non-inferiority test, and only by that
    d = decide(before, after, target_categories=[], sentinel_suites=suites,
               config=GateConfig(require_target_gain=False, sentinel_margin=0.2))  # fmt: skip
    assert not d.accepted
    own = {s.suite: s.passed for s in d.sentinels if s.suite in suites}
    assert own["s2"] is False and all(v for k, v in own.items() if k != "s2")
    assert d.sentinels[0].suite.startswith("pooled: ") and d.sentinels[0].passed


def _with_other_skill(drop: float, seed: int = 1):
    """_world() plus a non-target skill category that loses ``drop`` accuracy."""
    before, after = _world()
    rng = np.random.default_rng(seed)
    x = rng.random(120) < 0.6
    y = x & ~(rng.random(120) < drop / 0.6)
    b, a = _binary_records("tracking", "track3", x, y, as_dict=False)
    return before + b, after + a


def test_collateral_harm_on_non_target_skills_is_reported_or_rejects():
    before, after = _with_other_skill(drop=0.25)
    d = decide(before, after, train_losses=[2.0, 1.0], **KW)
    c = d.collateral
    assert c is not None and c.n == 120 and c.b > 15 and c.c == 0 and c.p_less < 1e-4
    assert d.accepted  # default 'report': shown, not gating
    line = next(r for r in d.reasons if "non-target skills" in r)
    assert line.startswith("warning (reported, not gating)")
    cfg = GateConfig(collateral="reject")
    d = decide(before, after, train_losses=[2.0, 1.0], **{**KW, "config": cfg})
    assert not d.accepted
    assert any(r.startswith("rejected: significantly worse, non-target skills") for r in d.reasons)
    # null: the same category unchanged passes, in both modes
    before, after = _with_other_skill(drop=0.0)
    for mode in ("report", "reject"):
        d = decide(
            before, after, train_losses=[2.0, 1.0], **{**KW, "config": GateConfig(collateral=mode)}
        )
        assert d.accepted and d.collateral is not None and d.collateral.b == 0
        assert any(r.startswith("ok (") and "non-target skills" in r for r in d.reasons)
    d = decide(before, after, **{**KW, "config": GateConfig(collateral="off")})
    assert d.collateral is None and not any("non-target" in r for r in d.reasons)
