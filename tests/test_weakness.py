"""Weak-area ranking and failure classification on synthetic records with known truth."""

from __future__ import annotations

import math

from selfimprove.evaluate import EvalRecord
from selfimprove.weakness import WeaknessConfig, classify_failure, rank_weak_areas


def _rec(suite, cat, i, correct, format_ok, extracted="5", ref_nll=1.0):
    return EvalRecord(
        suite=suite,
        task=cat,
        category=cat,
        sample_id=f"{cat}/{i}",
        input_hash=f"{cat}{i}",
        mode="generate",
        target="5",
        output="x",
        extracted=extracted,
        correct=correct,
        format_ok=format_ok,
        ref_nll=ref_nll,
    )


def _records():
    rs = []
    rs += [_rec("s", "hard", i, False, True, ref_nll=3.0) for i in range(20)]  # 100% wrong
    rs += [_rec("s", "mid", i, i < 10, True) for i in range(20)]  # 50% wrong
    rs += [_rec("s", "easy", i, i != 0, True) for i in range(20)]  # 5% wrong
    rs += [_rec("s", "fmt", i, True, False) for i in range(20)]  # right answer, bad format
    rs += [_rec("s", "tiny", i, False, True) for i in range(3)]  # too few items
    rs += [_rec("sentinel_math", "hard2", i, False, True) for i in range(20)]
    return rs


def test_classify_failure_types():
    assert classify_failure(_rec("s", "c", 0, True, True)) is None
    assert classify_failure(_rec("s", "c", 0, True, False)) == "format_error"
    assert classify_failure(_rec("s", "c", 0, True, False), "correct") is None
    assert classify_failure(_rec("s", "c", 0, False, False, extracted=None)) == "no_answer"
    assert classify_failure(_rec("s", "c", 0, False, True, extracted="7")) == "wrong_answer"


def test_ranking_selects_weakest_with_threshold_top_k_and_min_items():
    areas = rank_weak_areas(
        _records(),
        WeaknessConfig(metric="strict", error_threshold=0.3, top_k=2, min_items=5, rank_by="error"),
        exclude_suites=["sentinel_math"],
    )
    names = [a.category for a in areas]
    assert "hard2" not in names  # sentinels are never targets
    sel = [a.category for a in areas if a.selected]
    assert set(sel) == {"hard", "fmt"}  # both 100% wrong under strict; mid beyond top_k
    mid = next(a for a in areas if a.category == "mid")
    assert not mid.selected and "top_k" in mid.reason
    tiny = next(a for a in areas if a.category == "tiny")
    assert not tiny.selected and "3 items" in tiny.reason
    hard = next(a for a in areas if a.category == "hard")
    assert hard.failure_types == {"wrong_answer": 20} and hard.error_ci[0] > 0.8
    assert math.isclose(hard.ref_perplexity, math.exp(3.0))
    fmt = next(a for a in areas if a.category == "fmt")
    assert fmt.failure_types == {"format_error": 20}


def test_correct_metric_ignores_format_and_perplexity_threshold_adds_areas():
    areas = rank_weak_areas(
        _records(),
        WeaknessConfig(
            metric="correct",
            error_threshold=0.9,
            top_k=4,
            perplexity_threshold=None,
            min_items=5,
            rank_by="error",
        ),
    )
    assert {a.category for a in areas if a.selected} == {"hard", "hard2"}
    fmt = next(a for a in areas if a.category == "fmt")
    assert fmt.error_rate == 0.0 and not fmt.selected
    areas = rank_weak_areas(
        _records(),
        WeaknessConfig(
            metric="correct", error_threshold=1.0, perplexity_threshold=3.0, min_items=5
        ),
        exclude_suites=["sentinel_math"],
    )
    assert {a.category for a in areas if a.selected} == {"hard"}  # e^3 > 3 > e^1
    areas = rank_weak_areas(
        _records(),
        WeaknessConfig(
            metric="correct", error_threshold=1.0, perplexity_threshold=2.0, min_items=5
        ),
        exclude_suites=["sentinel_math"],
    )
    assert {a.category for a in areas if a.selected} == {"hard", "mid", "easy", "fmt"}


def test_learnable_ranking_prefers_failures_whose_gold_answer_is_likely() -> None:
    rs = []
    rs += [_rec("s", "far", i, False, True, ref_nll=4.0) for i in range(20)]  # ppl ~55
    rs += [_rec("s", "near", i, False, True, ref_nll=1.0) for i in range(20)]  # ppl ~2.7
    rs += [_rec("s", "half", i, i < 10, True, ref_nll=1.0) for i in range(20)]
    rs += [_rec("s", "solved", i, True, True, ref_nll=0.1) for i in range(20)]
    cfg = WeaknessConfig(error_threshold=0.3, top_k=2, min_items=5)
    assert cfg.rank_by == "learnable"  # the default
    areas = rank_weak_areas(rs, cfg)
    assert [a.category for a in areas if a.selected] == ["near", "half"]
    far = next(a for a in areas if a.category == "far")
    assert not far.selected and "top_k" in far.reason
    lo = far.error_ci[0]
    assert math.isclose(far.score, lo * math.exp(-4.0))
    # the error ranking picks the far one first (100% error, ties to the higher perplexity)
    areas = rank_weak_areas(rs, cfg.model_copy(update={"rank_by": "error"}))
    assert [a.category for a in areas if a.selected] == ["far", "near"]


def test_retired_areas_are_never_selected_and_say_why() -> None:
    rs = [_rec("s", "near", i, False, True, ref_nll=1.0) for i in range(20)]
    rs += [_rec("s", "far", i, False, True, ref_nll=4.0) for i in range(20)]
    areas = rank_weak_areas(
        rs,
        WeaknessConfig(top_k=1, min_items=5),
        retired={("s", "near"): "round 1: no gain after training on it (0/20 -> 0/20)"},
    )
    assert [a.category for a in areas if a.selected] == ["far"]
    near = next(a for a in areas if a.category == "near")
    assert near.reason.startswith("retired: round 1")


def test_stalled_targets_counts_solved_items_on_the_same_items() -> None:
    from selfimprove.weakness import stalled_targets

    before = [_rec("s", "a", i, i < 2, True) for i in range(10)]
    before += [_rec("s", "b", i, i < 2, True) for i in range(10)]
    before += [_rec("s", "c", i, False, True) for i in range(10)]
    after = [_rec("s", "a", i, i < 3, True) for i in range(10)]  # +1: progress
    after += [_rec("s", "b", i, 2 <= i < 4, True) for i in range(10)]  # 2 -> 2, other items
    after += [_rec("s", "c", i, False, True) for i in range(10)]
    out = stalled_targets(before, after, [("s", "a"), ("s", "b"), ("s", "c"), ("s", "z")])
    assert set(out) == {("s", "b"), ("s", "c")}  # z has no items: no evidence, not retired
    assert out[("s", "b")] == "no gain after training on it (2/10 -> 2/10)"
    # strict metric: a right answer in the wrong format is not solved
    after_fmt = [_rec("s", "c", i, True, False) for i in range(10)]
    assert ("s", "c") in stalled_targets(before, after_fmt, [("s", "c")], "strict")
    assert stalled_targets(before, after_fmt, [("s", "c")], "correct") == {}
    assert stalled_targets(before, after_fmt, [("s", "c")]) == {}  # default: correct


def test_weakness_config_metric_reads_the_old_spelling_extracted() -> None:
    """Stored run configs from before the rename say weakness.metric: extracted."""
    assert WeaknessConfig().metric == "correct"
    assert WeaknessConfig.model_validate({"metric": "extracted"}).metric == "correct"
    assert WeaknessConfig(metric="strict").metric == "strict"
    rs = _records()
    old = rank_weak_areas(rs, WeaknessConfig.model_validate({"metric": "extracted"}))
    assert old == rank_weak_areas(rs, WeaknessConfig(metric="correct"))
