"""The sentinel modes of ``decide()`` on simulated rounds with known truth.

Every round is drawn from a flip model per suite: an item goes right→wrong with probability
``pb``, wrong→right with ``pc`` (true accuracy drop ``pb − pc``), and otherwise keeps one
answer. Rounds are judged by ``decide()`` itself on plain dict records, with no target
items (``require_target_gain=False``) so only the sentinels decide. Seeded, so every rate is
a fixed number; the bounds leave two Monte-Carlo standard errors (the brief's rule for the
size checks) so an anti-conservative gate fails them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from selfimprove.gate import (
    GateConfig,
    decide,
    gate_power,
    gate_warnings,
    min_noninferiority_n,
    noninferiority_binary,
    noninferiority_binary_power,
    noninferiority_binary_size,
)

ALPHA = 0.05
REPS = 500
#: only the sentinels decide: no target items, no other skills
ONLY = {"require_target_gain": False, "collateral": "off"}

Suite = tuple[str, int, float, float]  # name, items, P(right→wrong), P(wrong→right)


def suites(n: int, k: int, *, flips: float, loss: Sequence[float] = ()) -> list[Suite]:
    """``k`` suites of ``n`` items, ``flips`` of them flipping evenly; suite i loses loss[i]."""
    drops = list(loss) + [0.0] * (k - len(loss))
    return [(f"s{i}", n, flips / 2 + d, flips / 2) for i, d in enumerate(drops)]


def _commons(spec: Sequence[Suite]) -> list[list[dict[str, Any]]]:
    """The fields of each item's records but ``correct``, per suite."""
    return [
        [
            {
                "suite": name,
                "sample_id": str(i),
                "category": "c",
                "mode": "generate",
                "format_ok": True,
                "input_hash": f"{name}-{i}",
            }
            for i in range(n)
        ]
        for name, n, _pb, _pc in spec
    ]


def simulate(
    rng: np.random.Generator,
    spec: Sequence[Suite],
    commons: list[list[dict[str, Any]]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Before/after records of one round."""
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for (_name, n, pb, pc), common in zip(spec, commons or _commons(spec), strict=True):
        u = rng.random(n)
        kept = rng.random(n) < 0.6
        x = np.where(u < pb, True, np.where(u < pb + pc, False, kept)).tolist()
        y = np.where(u < pb, False, np.where(u < pb + pc, True, kept)).tolist()
        before += [{**c, "correct": v} for c, v in zip(common, x, strict=True)]
        after += [{**c, "correct": v} for c, v in zip(common, y, strict=True)]
    return before, after


def accept_rates(
    spec: Sequence[Suite], configs: Sequence[GateConfig], *, seed: int, reps: int = REPS
) -> list[float]:
    """Share of ``reps`` simulated rounds each config accepts (the same rounds for all)."""
    rng = np.random.default_rng(seed)
    names = [s[0] for s in spec]
    commons = _commons(spec)
    hits = [0] * len(configs)
    for _ in range(reps):
        before, after = simulate(rng, spec, commons)
        for j, cfg in enumerate(configs):
            d = decide(before, after, target_categories=[], sentinel_suites=names, config=cfg)
            hits[j] += d.accepted
    return [h / reps for h in hits]


def size_bound(reps: int = REPS) -> float:
    """α + 2 Monte-Carlo standard errors."""
    return ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


DEFAULT = GateConfig(**ONLY)
OLD = GateConfig(sentinel_mode="pooled", **ONLY)


# ----------------------------------------------------------------------------- guarantees


@pytest.mark.parametrize("n, flips", [(32, 0.10), (48, 0.20)])
def test_one_of_five_suites_losing_the_suite_margin_is_accepted_at_most_alpha(n, flips):
    """The loop's sentinels (five binary suites): s0 truly loses exactly suite_margin."""
    m = DEFAULT.suite_margin
    (rate,) = accept_rates(suites(n, 5, flips=flips, loss=[m]), [DEFAULT], seed=11 + n)
    print(f"5 suites × {n}, {flips:.0%} flips, s0 −{m:g}: default accepts {rate:.3f}")
    assert rate <= size_bound()


@pytest.mark.parametrize("n, flips", [(32, 0.10), (48, 0.20)])
def test_suite_test_size_at_the_suite_margin_is_at_most_alpha(n, flips):
    """s0 loses exactly suite_margin; the only other suite is large, unchanged and stable
    (5% flips), so the pooled test and that suite almost always pass and the accept rate is
    the size of s0's own test — the check a too-liberal test fails, as a gate whose suite
    margin (0.30) is wider than the true loss does here."""
    m = DEFAULT.suite_margin
    spec = [("s0", n, flips / 2 + m, flips / 2), ("s1", 300, 0.025, 0.025)]
    loose_cfg = GateConfig(suite_margin=0.30, **ONLY)
    rate, loose = accept_rates(spec, [DEFAULT, loose_cfg], seed=n)
    print(f"s0 {n} items −{m:g}, {flips:.0%} flips + s1: default {rate:.3f}, 0.30 {loose:.3f}")
    assert rate <= size_bound() < loose
    # not vacuous: s0's test decides, and the rate is that test's exact size at this truth
    exact = noninferiority_binary_power(n, m, discordance=flips + m, delta=-m)
    assert abs(rate - exact) < 3 * math.sqrt(exact * (1 - exact) / REPS)


def test_pooled_drop_at_the_margin_is_accepted_at_most_alpha():
    """Every suite loses sentinel_margin (pooled drop = the margin), none loses suite_margin.

    With a non-binding suite_margin (0.45) the pooled test alone decides: its size. The
    default suite_margin only adds rejections.
    """
    spec = suites(32, 5, flips=0.10, loss=[DEFAULT.sentinel_margin] * 5)
    wide = GateConfig(suite_margin=0.45, **ONLY)
    rate_wide, rate_default = accept_rates(spec, [wide, DEFAULT], seed=5)
    print(
        f"pooled drop 0.10 over 5×32: suite_margin 0.45 {rate_wide:.3f}, default {rate_default:.3f}"
    )
    assert rate_wide <= size_bound() and rate_default <= rate_wide
    assert rate_wide > 0.01  # the pooled test is the binding one


def test_old_pooled_mode_passes_a_15_point_loss_in_one_suite():
    """The flaw of the old default: five 32-item suites, one truly loses 15 points."""
    spec = suites(32, 5, flips=0.10, loss=[0.15])
    old, default = accept_rates(spec, [OLD, DEFAULT], seed=7)
    print(f"one suite −0.15 of 5×32: old pooled accepts {old:.3f}, default {default:.3f}")
    assert old > 0.2  # documented flaw: no per-suite guarantee
    assert default < old / 3


@pytest.mark.parametrize(
    "n, flips, floor", [(32, 0.10, 0.45), (32, 0.20, 0.10), (48, 0.10, 0.85), (48, 0.20, 0.50)]
)
def test_default_mode_accepts_unchanged_rounds(n, flips, floor):
    """Power under the null (symmetric flips only) at the loop's sizes: 5 binary suites of
    ``sentinel_n`` items (32 now; 48 proposed). Floors sit > 3 SE below the measured rates."""
    (rate,) = accept_rates(suites(n, 5, flips=flips), [DEFAULT], seed=100 + n + int(100 * flips))
    print(f"unchanged 5×{n}, {flips:.0%} flips: default accepts {rate:.3f}")
    assert rate >= floor
    # no better than its weakest test (exact): the simulation and gate_power agree
    power = gate_power({f"s{k}": n for k in range(5)}, DEFAULT, discordance=(flips,))
    assert rate <= min(power.values()) + 3 * math.sqrt(0.25 / REPS)


# ----------------------------------------------------------------------------- power helpers


def test_small_gate_can_pass_when_sentinel_answers_improve():
    """The old claim "below min_noninferiority_n it can never accept" was false."""
    margin = 0.05
    assert min_noninferiority_n(margin) == 52 > 47
    before = [False] * 3 + [True] * 44
    t = noninferiority_binary(before, [True] * 47, margin)  # 3 wrong→right, 0 right→wrong
    assert (t.b, t.c, t.n) == (0, 3, 47)
    assert t.non_inferior and t.p_value == pytest.approx(0.0088, abs=5e-4)
    # unchanged, the same 47 items fail: that is all the bound says
    assert not noninferiority_binary(before, before, margin).non_inferior
    # and decide() accepts the improving round
    recs = [
        {"suite": "s", "sample_id": str(i), "category": "c", "mode": "generate", "format_ok": True}
        for i in range(47)
    ]
    b = [{**r, "correct": x} for r, x in zip(recs, before, strict=True)]
    a = [{**r, "correct": True} for r in recs]
    cfg = GateConfig(sentinel_margin=margin, **ONLY)
    assert decide(b, a, target_categories=[], sentinel_suites=["s"], config=cfg).accepted


def test_gate_power_does_not_raise_and_covers_every_test():
    n_by = {"a": 24, "b": 24}
    small = GateConfig(sentinel_mode="per_suite", sentinel_margin=0.05)
    p = gate_power(n_by, small)  # 24 < 52 items: passes only when more flip up than down
    assert set(p) == {f"{t} @ {q}% discordant" for t in "ab" for q in (10, 20)}
    assert p["a @ 10% discordant"] == pytest.approx(
        noninferiority_binary_power(24, 0.05, discordance=0.1)
    )
    assert all(0.0 < v < 0.2 for v in p.values())
    p = gate_power(n_by, GateConfig())
    assert set(p) == {f"{t} @ {q}% discordant" for t in ("pooled: a+b", "a", "b") for q in (10, 20)}
    assert p["a @ 10% discordant"] == pytest.approx(
        noninferiority_binary_power(24, 0.20, discordance=0.1)
    )
    assert p["pooled: a+b @ 20% discordant"] == pytest.approx(
        noninferiority_binary_power(48, 0.10, discordance=0.2)
    )
    old = gate_power(n_by, GateConfig(sentinel_mode="pooled"), discordance=(0.2,))
    assert set(old) == {
        "pooled: a+b @ 20% discordant",
        "a (no harm) @ 20% discordant",
        "b (no harm) @ 20% discordant",
    }
    assert 0.95 <= old["a (no harm) @ 20% discordant"] <= 1.0  # exact McNemar: level α
    # one binary suite: a single test, at sentinel_margin
    one = gate_power({"a": 40}, GateConfig(), discordance=(0.1,))
    assert one == {"a @ 10% discordant": noninferiority_binary_power(40, 0.10, discordance=0.1)}


def test_suite_margin_is_never_tighter_than_sentinel_margin():
    """A loose pooled margin (the tests' small loops: 4 items at 0.5) stays loose per suite."""
    loose = GateConfig(sentinel_margin=0.5, **ONLY)
    p = gate_power({"a": 4, "b": 4}, loose, discordance=(0.2,))
    assert p["a @ 20% discordant"] == pytest.approx(
        noninferiority_binary_power(4, 0.5, discordance=0.2)
    )
    assert gate_warnings({"a": 4}, loose) == [] == gate_warnings({"a": 4, "b": 4}, loose)
    recs = [{"suite": k, "sample_id": str(i), "mode": "generate"} for k in "ab" for i in range(4)]
    same = [{**r, "correct": True} for r in recs]
    d = decide(same, same, target_categories=[], sentinel_suites=["a", "b"], config=loose)
    assert d.accepted and [s.test.margin for s in d.sentinels if s.test] == [0.5, 0.5, 0.5]


def test_no_harm_power_matches_simulation():
    """The exact pass rate of the pooled mode's McNemar harm test, against decide()."""
    n, psi = 32, 0.2
    power = gate_power({"s0": n, "s1": 200}, OLD, discordance=(psi,))[
        "s0 (no harm) @ 20% discordant"
    ]
    rng = np.random.default_rng(2)
    passed = 0
    for _ in range(REPS):
        b, a = simulate(rng, [("s0", n, psi / 2, psi / 2), ("s1", 200, 0.0, 0.0)])
        d = decide(b, a, target_categories=[], sentinel_suites=["s0", "s1"], config=OLD)
        passed += next(s.passed for s in d.sentinels if s.suite == "s0")
    assert abs(passed / REPS - power) < 3 * math.sqrt(power * (1 - power) / REPS) + 1e-3


def test_gate_warnings_name_the_tests_too_small_to_pass_unchanged():
    n_by = {"a": 24, "b": 60}
    lines = gate_warnings(n_by, GateConfig(sentinel_mode="per_suite", sentinel_margin=0.05))
    assert lines == [
        "sentinel test a (non-inferiority at margin 0.05, alpha 0.05) has 24 items: below 52 "
        "it cannot pass unless sentinel answers improve (with no change it always fails)"
    ]
    assert gate_warnings(n_by, GateConfig()) == []  # pooled 84 ≥ 25; suites ≥ 11 at 0.20
    tight = GateConfig(sentinel_margin=0.02, suite_margin=0.05)
    assert [w.split(" (")[0] for w in gate_warnings(n_by, tight)] == [
        "sentinel test pooled: a+b",
        "sentinel test a",
    ]
    # the boundary itself: min_noninferiority_n items is enough
    need = min_noninferiority_n(0.20)
    assert gate_warnings({"a": need, "b": need}, GateConfig(sentinel_margin=0.2)) == []
    assert len(gate_warnings({"a": need - 1, "b": 100}, GateConfig(sentinel_margin=0.2))) == 1


def test_noninferiority_binary_size_is_the_worst_boundary_power():
    """Exact size = max over the flip rate of the power at δ = −margin; the docstring's
    numbers (Tango is slightly liberal at some n, which the guarantee sentence states)."""
    for n, m in [(32, 0.2), (48, 0.2)]:
        size = noninferiority_binary_size(n, m)
        grid = [noninferiority_binary_power(n, m, discordance=p, delta=-m) for p in (m, 0.3, 0.6)]
        assert max(grid) <= size + 1e-12
    sizes = [round(noninferiority_binary_size(n, 0.2), 3) for n in (32, 48, 64)]
    assert sizes == [0.052, 0.062, 0.054]
    assert round(noninferiority_binary_size(160, 0.1), 3) == 0.051


def test_default_mode_reasons_name_every_test():
    spec = suites(32, 3, flips=0.0, loss=[])
    b, a = simulate(np.random.default_rng(0), spec)
    d = decide(b, a, target_categories=[], sentinel_suites=["s0", "s1", "s2"], config=DEFAULT)
    assert d.accepted
    assert [s.suite for s in d.sentinels] == ["pooled: s0+s1+s2", "s0", "s1", "s2"]
    lines = [r for r in d.reasons if r.startswith("ok: non-inferior, sentinel")]
    assert (
        len(lines) == 4 and "margin 0.1 accuracy" in lines[0] and "margin 0.2 accuracy" in lines[1]
    )


def test_a_significant_loss_within_the_margin_is_a_warning_not_a_rejection():
    """One suite of 200 items loses 8 points (16 right→wrong, 0 back): non-inferior at 0.20
    and pooled (4 points) at 0.10, but both significantly worse, which the reasons say."""
    recs = []
    for k, n in (("s0", 200), ("s1", 200)):
        recs += [
            {"suite": k, "sample_id": str(i), "mode": "generate", "format_ok": True}
            for i in range(n)
        ]
    before = [{**r, "correct": True} for r in recs]
    after = [{**r, "correct": not (r["suite"] == "s0" and int(r["sample_id"]) < 16)} for r in recs]
    d = decide(before, after, target_categories=[], sentinel_suites=["s0", "s1"], config=DEFAULT)
    assert d.accepted
    warn = [r for r in d.reasons if r.startswith("warning")]
    assert [w.split(" (correct)")[0].split("sentinel ")[1] for w in warn] == ["pooled: s0+s1", "s0"]
    assert all("significantly worse" in w for w in warn)
