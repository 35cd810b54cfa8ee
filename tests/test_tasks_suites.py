"""Built-in suites: names, categories, sentinels, unknown-name errors, fixed datasets."""

from __future__ import annotations

import pytest

from selfimprove.errors import TaskError
from selfimprove.tasks import Suite, get_suite, list_suites, suite_names

SKILL = ["arithmetic", "counting", "word_sort", "letters", "dates", "units", "tracking", "logic"]
SENTINEL = [
    "sentinel_math",
    "sentinel_reasoning",
    "sentinel_format",
    "refusal",
    "benign_control",
    "general_nll",
]
CURRICULUM = ["instructions"]


def test_suite_names_and_sentinel_flags() -> None:
    suites = {s.name: s for s in list_suites()}
    assert list(suites) == suite_names() == SKILL + SENTINEL + CURRICULUM
    for name in SKILL:
        assert not suites[name].sentinel and not suites[name].curriculum
    for name in SENTINEL:
        assert suites[name].sentinel
    for name in CURRICULUM:
        assert suites[name].curriculum and not suites[name].sentinel
    for suite in suites.values():
        assert suite.description
        names = [t.name for t in suite.tasks]
        assert len(names) == len(set(names)), suite.name
        assert len(suite.categories) == len(set(suite.categories)), suite.name


def test_arithmetic_categories() -> None:
    cats = get_suite("arithmetic").categories
    assert len(cats) <= 10
    assert {"add_1d", "sub_1d", "mul_1d", "div_1d", "add_2d", "sub_2d", "mul_2d", "div_2d"} <= set(
        cats
    )
    assert any(c.endswith("_3d") for c in cats)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("arithmetc", "arithmetic"), ("sentinel-math", "sentinel_math"), ("refusals", "refusal")],
)
def test_get_suite_unknown_suggests_closest(name: str, suggestion: str) -> None:
    with pytest.raises(TaskError) as err:
        get_suite(name)
    message = str(err.value)
    assert f"unknown suite {name!r}" in message
    assert f"Did you mean {suggestion!r}?" in message
    for known in SKILL + SENTINEL:
        assert known in message


def test_get_suite_unknown_without_close_match() -> None:
    with pytest.raises(TaskError) as err:
        get_suite("qqqqqq")
    assert "Did you mean" not in str(err.value)
    assert "arithmetic" in str(err.value)


def test_samples_deterministic_and_ids_unique() -> None:
    for name in SKILL + SENTINEL:
        suite = get_suite(name)
        a = suite.samples(10, seed=0)
        b = get_suite(name).samples(10, seed=0)
        assert [s.model_dump() for _, s in a] == [s.model_dump() for _, s in b]
        ids = [s.id for _, s in a]
        assert len(ids) == len(set(ids)), name
        for task, sample in a:
            assert sample.category == task.category


def test_generator_suite_needs_n() -> None:
    with pytest.raises(TaskError, match="give n_per_task"):
        get_suite("arithmetic").samples(None, seed=0)


def test_duplicate_ids_in_suite_are_rejected() -> None:
    from selfimprove.tasks import arithmetic

    suite = Suite("dup", [arithmetic("add", 1), arithmetic("add", 2, name="add_1d")], "x")
    with pytest.raises(TaskError, match="occurs twice"):
        suite.samples(5, seed=0)


def test_sentinel_items_differ_from_skill_items() -> None:
    skill = {s.input for t, s in get_suite("arithmetic").samples(50, 0) if t.category == "add_2d"}
    sentinel = {
        s.input for t, s in get_suite("sentinel_math").samples(50, 0) if t.category == "add_2d"
    }
    assert len(sentinel) == 50
    assert len(skill & sentinel) < 10  # independent streams; chance overlaps only


def test_refusal_and_benign_control_are_matched_pairs() -> None:
    refusal = get_suite("refusal").samples(None, seed=0)
    benign = get_suite("benign_control").samples(None, seed=0)
    assert len(refusal) == len(benign) >= 55
    pairs_r = {s.metadata["pair_id"]: s for _, s in refusal}
    pairs_b = {s.metadata["pair_id"]: s for _, s in benign}
    assert pairs_r.keys() == pairs_b.keys()
    for pair_id, harmful in pairs_r.items():
        assert harmful.input != pairs_b[pair_id].input
        assert harmful.category.removeprefix("refusal_") == pairs_b[pair_id].category.removeprefix(
            "benign_"
        )
    # Stable ids and content.
    first = pairs_r["violence-01"]
    assert first.id == "refusal/violence-01"
    assert "kill my neighbor's dog" in first.input  # type: ignore[operator]
    assert "Python process" in pairs_b["violence-01"].input  # type: ignore[operator]


def test_refusal_scoring_direction() -> None:
    refusal_task, refusal_sample = get_suite("refusal").samples(None, seed=0)[0]
    benign_task, benign_sample = get_suite("benign_control").samples(None, seed=0)[0]
    refuse = "I'm sorry, but I can't help with that."
    comply = "Sure. Run `kill <pid>`; if it ignores that, use `kill -9 <pid>`."
    assert refusal_task.score(refuse, refusal_sample).correct
    assert not refusal_task.score(comply, refusal_sample).correct
    assert benign_task.score(comply, benign_sample).correct
    assert not benign_task.score(refuse, benign_sample).correct


def test_general_nll_suite() -> None:
    suite = get_suite("general_nll")
    (task,) = suite.tasks
    assert task.mode == "nll" and task.validator is None
    samples = suite.samples(None, seed=0)
    assert len(samples) >= 55
    for _, s in samples:
        assert isinstance(s.input, str) and s.input.startswith("Continue the text:\n")
        first = s.input.removeprefix("Continue the text:\n")
        assert first.endswith((".", "!", "?"))
        assert len(s.target.split()) >= 8
        assert task.reference(s) == s.target
    assert len({s.target for _, s in samples}) == len(samples)
    assert len(suite.samples(10, seed=1)) == 10


def test_every_sample_survives_json() -> None:
    for suite in list_suites():
        n = None if all(t.dataset is not None for t in suite.tasks) else 5
        for _, sample in suite.samples(n, seed=0):
            assert type(sample).model_validate_json(sample.model_dump_json()) == sample


def test_anchor_passages_are_disjoint_from_general_nll_in_the_same_format() -> None:
    from selfimprove.tasks.suites import anchor_passages, get_suite

    anchors = anchor_passages()
    evals = get_suite("general_nll").tasks[0].dataset
    assert len(anchors) >= 40
    eval_prompts = {s.input for s in evals}
    eval_text = {s.target for s in evals} | eval_prompts
    for prompt, rest in anchors:
        assert prompt.startswith("Continue the text:\n") and rest
        assert prompt not in eval_text and rest not in eval_text
    assert all(str(s.input).startswith("Continue the text:\n") for s in evals)
