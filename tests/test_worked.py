"""Worked solutions: every derivation ends in the right answer and passes the task's validator."""

from __future__ import annotations

import pytest

from selfimprove.synth.worked import training_completion, worked_solution
from selfimprove.tasks import get_suite

WORKED_SUITES = ["arithmetic", "counting", "word_sort", "letters", "units", "tracking"]


@pytest.mark.parametrize("suite", [*WORKED_SUITES, "sentinel_math"])
def test_every_worked_completion_validates(suite: str) -> None:
    for task in get_suite(suite).tasks:
        for s in task.samples(40, seed=5):
            steps = worked_solution(s)
            assert steps, (task.category, s.metadata)
            text = training_completion(task, s)
            # the derivation is kept (the validator accepts it) and ends with the reference
            assert text == f"{steps}\n{task.reference(s)}", (task.category, text)
            assert task.score(text, s).correct


def test_derivations_are_right() -> None:
    arith = {t.category: t for t in get_suite("arithmetic").tasks}
    s = arith["mul_1d"].samples(1, seed=2)[0]
    a, b = s.metadata["a"], s.metadata["b"]
    assert worked_solution(s) == f"{a} * {b} = {a * b}"
    cnt = next(t for t in get_suite("counting").tasks if t.category == "count_words")
    for s in cnt.samples(20, seed=1):
        w = worked_solution(s)
        assert w is not None and f"appears {s.target} time" in w
        assert w.count("(") == int(s.target)  # every occurrence numbered, nothing else


def test_date_walk_crosses_months_and_years_correctly() -> None:
    import datetime as dt

    dates = {t.category: t for t in get_suite("dates").tasks}
    n_walk = {"date_add_days": 0, "date_sub_days": 0, "date_add_weeks": 0}
    for cat in n_walk:
        task = dates[cat]
        for s in task.samples(300, seed=4):
            w = worked_solution(s)
            if w is None:  # only long week walks fall back (generation cap)
                assert cat == "date_add_weeks" and int(s.metadata["offset"]) * 7 > 31
                continue
            n_walk[cat] += 1
            assert w.endswith(f"So the date is {s.target}.")
            text = training_completion(task, s)
            assert text == f"{w}\n{task.reference(s)}" and task.score(text, s).correct
    assert n_walk["date_add_days"] == n_walk["date_sub_days"] == 300
    assert n_walk["date_add_weeks"] >= 30
    # hand-checked cases: a leap-year February and a year boundary, both directions
    task = dates["date_add_days"]
    base = task.samples(1, seed=0)[0]

    def case(cat: str, start: str, k: int) -> str | None:
        d0 = dt.date.fromisoformat(start)
        delta = dt.timedelta(days=k * (7 if cat == "date_add_weeks" else 1))
        end = d0 - delta if cat == "date_sub_days" else d0 + delta
        s = base.model_copy(
            update={
                "target": end.isoformat(),
                "metadata": {"family": "dates", "category": cat, "date": start, "offset": k},
            }
        )
        return worked_solution(s)

    assert case("date_add_days", "2024-02-20", 10) == (
        "Day 20 + 10 = 30. February has 29 days: 30 - 29 = 1, in March. So the date is 2024-03-01."
    )
    assert case("date_sub_days", "2021-01-03", 5) == (
        "Day 3 - 5 = -2. Back into December (31 days): -2 + 31 = 29. So the date is 2020-12-29."
    )
    assert case("date_add_weeks", "1999-12-30", 1) == (
        "1 week = 1 × 7 = 7 days. Day 30 + 7 = 37. December has 31 days: 37 - 31 = 6, "
        "in January. So the date is 2000-01-06."
    )
    assert case("date_add_weeks", "1999-01-01", 20) is None  # 4 boundaries: too long


def test_families_without_derivation_fall_back_to_reference() -> None:
    for suite in ("logic", "refusal"):
        for task in get_suite(suite).tasks:
            s = task.samples(1, seed=0)[0]
            assert training_completion(task, s) == task.reference(s)
    wd = next(t for t in get_suite("dates").tasks if t.category == "weekday")
    s = wd.samples(1, seed=0)[0]
    assert training_completion(wd, s) == wd.reference(s)
    arith = get_suite("arithmetic").tasks[0]
    s = arith.samples(1, seed=0)[0]
    assert training_completion(arith, s, worked=False) == arith.reference(s)
    # a derivation that disagrees with the target is dropped, not trained on
    for suite in WORKED_SUITES:
        task = get_suite(suite).tasks[0]
        s = task.samples(1, seed=3)[0]
        bad = s.model_copy(update={"target": s.target + "x"})
        assert worked_solution(bad) is None, suite
        assert training_completion(task, bad) == task.reference(bad)
