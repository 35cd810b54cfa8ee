"""The loop's own target choice and gate on simulated rounds whose training changes nothing.

Known truth: no item gets easier, so every significant target gain is a false positive and
the mean reported gain is 0 (:mod:`selfimprove.loop.validity`). Before the selection /
confirmation split the loop chose and judged targets on the same items, and regression to
the mean made nothing look like a gain; the last test keeps that flaw on record.
"""

from __future__ import annotations

import pytest

from selfimprove.loop.config import LoopConfig
from selfimprove.loop.run import evaluation_plan
from selfimprove.loop.validity import simulate_noop_rounds


@pytest.fixture(scope="module")
def skill_items():
    skills, _sentinels, plan = evaluation_plan(LoopConfig())  # the loop's default item plan
    names = {s.name for s in skills}
    return [(su.name, t, x) for su, t, xs in plan for x in xs if su.name in names]


@pytest.mark.parametrize("rank_by", ["learnable", "error"])
def test_split_keeps_the_target_test_at_its_level_and_the_gain_unbiased(skill_items, rank_by):
    r = simulate_noop_rounds(skill_items, n_runs=200, rounds=3, rank_by=rank_by, seed=11)
    assert r.n_rounds == 600
    assert r.false_positive_rate <= 0.06, r
    assert abs(r.mean_reported_gain) <= 1.0, r


def test_choosing_and_judging_on_the_same_items_reports_a_gain_from_nothing(skill_items):
    """The loop before the split: the same simulation, biased upward (fails the bar above)."""
    r = simulate_noop_rounds(skill_items, n_runs=200, rounds=3, split=False, seed=11)
    assert r.mean_reported_gain > 1.0, r
    assert r.mean_reported_gain > 3 * r.gain_se, r
