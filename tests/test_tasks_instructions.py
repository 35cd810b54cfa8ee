"""The explicit-instruction suite (curriculum stage 1): checks that can fail, held-out topics."""

from __future__ import annotations

import pytest

from selfimprove.errors import TaskError
from selfimprove.evaluate import resolve_suites
from selfimprove.tasks.instructions import (
    INSTRUCTION_KINDS,
    LIST_TOPICS,
    SUBJECTS,
    instruction_following,
    instruction_tasks,
    topic_split,
)
from selfimprove.tasks.suites import get_suite


def _samples(n: int = 20):
    return get_suite("instructions").samples(n, seed=3)


def test_every_reference_reply_passes_and_trivial_replies_do_not() -> None:
    pairs = _samples()
    assert {s.metadata["format"] for _t, s in pairs} == {f"if_{k}" for k in INSTRUCTION_KINDS}
    for task, s in pairs:
        assert task.validator(s.target, s).correct, (s.input, s.target)
    for trivial in ("", "a", "Yes.", "ok", "I don't know"):
        passed = [s.input for t, s in pairs if t.validator(trivial, s).correct]
        assert not passed, (trivial, passed[:3])
    # a fixed multi-word reply satisfies only the constraints it happens to meet
    fixed = "A B C D E"
    rate = sum(t.validator(fixed, s).correct for t, s in pairs) / len(pairs)
    assert rate <= 0.15


@pytest.mark.parametrize(
    ("kind", "params", "good", "bad"),
    [
        (
            "n_words",
            {"n": 3},
            "apple pear plum",
            ["apple pear", "apple, pear, plum", "a b c d", "plum plum plum", "I don't know"],
        ),
        (
            "n_items",
            {"n": 3},
            "red, blue, green",
            ["red, blue", "red blue green", "a,\nb, c", "red, red, red"],
        ),
        (
            "bullets",
            {"n": 2},
            "- oak\n- elm",
            ["- oak", "oak\nelm", "- oak\n- elm\n- ash", "- oak\n- oak"],
        ),
        (
            "json_list",
            {"n": 2},
            '["oak", "elm"]',
            ['["a"]', '{"a": 1}', "[1, 2]", "a, b", '["x", "x"]'],
        ),
        ("uppercase", {}, "THE SEA IS WIDE.", ["The sea is wide.", "SEA", "THE SEA\nIS WIDE"]),
        ("lowercase", {}, "the sea is wide.", ["The sea is wide.", "sea", ""]),
        ("start_word", {"word": "Today"}, "Today the sun is out.", ["The sun is out today."]),
        ("end_word", {"word": "blue"}, "The sky is very blue.", ["Blue is the sky here."]),
        ("include_word", {"word": "old"}, "The old map is torn.", ["The map is torn, bold."]),
        ("quoted", {}, '"The moon is bright."', ["The moon is bright.", '"moon"', '"a" and "b"']),
        (
            "n_sentences",
            {"n": 2},
            "Rain is wet. It falls down.",
            ["Rain is wet.", "Rain. Wet. Yes."],
        ),
    ],
)
def test_each_check_accepts_the_form_and_refuses_near_misses(kind, params, good, bad) -> None:
    task = instruction_following(kind)
    sample = task.samples(1, seed=0)[0]
    sample = sample.model_copy(update={"metadata": {**sample.metadata, "format_params": params}})
    assert task.validator(good, sample).correct
    for b in bad:
        assert not task.validator(b, sample).correct, b


def test_topic_split_holds_out_whole_topics() -> None:
    train, held = topic_split()
    assert set(train).isdisjoint(held)
    assert set(train) | set(held) == set(LIST_TOPICS) | set(SUBJECTS)
    assert min(len(train), len(held)) >= 20
    pool = [x for t in instruction_tasks(train, "pool.") for x in t.samples(30, seed=1)]
    heldout = [x for t in instruction_tasks(held, "heldout.") for x in t.samples(30, seed=1)]
    assert {x.metadata["topic"] for x in pool} <= set(train)
    assert {x.metadata["topic"] for x in heldout} <= set(held)
    assert not {x.input_hash() for x in pool} & {x.input_hash() for x in heldout}


def test_curriculum_suites_are_named_only_and_bad_kinds_are_errors() -> None:
    assert "instructions" not in {s.name for s in resolve_suites(["all"])}
    assert [s.name for s in resolve_suites(["instructions"])] == ["instructions"]
    with pytest.raises(TaskError, match="unknown"):
        instruction_following("haiku")
    with pytest.raises(TaskError, match="none it can use"):
        instruction_following("n_words", topics=["the ocean"])
