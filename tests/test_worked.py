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


def test_families_without_derivation_fall_back_to_reference() -> None:
    for suite in ("dates", "logic", "refusal"):
        for task in get_suite(suite).tasks:
            s = task.samples(1, seed=0)[0]
            assert training_completion(task, s) == task.reference(s)
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
