"""Validators on hand-written edge cases with known answers."""

from __future__ import annotations

import pytest

from selfimprove.errors import DataError, TaskError
from selfimprove.tasks import ANSWER_INSTRUCTION, Sample, get_suite
from selfimprove.tasks.validators import (
    choice_validator,
    date_validator,
    exact_text_validator,
    find_numbers,
    format_instruction_validator,
    format_number,
    is_refusal,
    numeric_validator,
    parse_number,
    refusal_validator,
    strict_answer,
    validator_from_name,
    word_list_validator,
    yes_no_validator,
)


def _sample(target: str, **kwargs: object) -> Sample:
    return Sample(id="t/0", input="q", target=target, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Strict format
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Answer: 12", "12"),
        ("  Answer:   12  ", "12"),
        ("Some reasoning.\n\nAnswer: 12\n\n   \n", "12"),
        ("Answer: 12.", "12"),
        ("Answer: 12..", "12."),
        ("Answer: 2.5", "2.5"),
        ("answer: 12", None),  # case-sensitive
        ("**Answer:** 12", None),
        ("Answer: 12\nDone.", None),  # not the last non-empty line
        ("The answer is 12", None),
        ("Answer:", None),
        ("", None),
    ],
)
def test_strict_answer(output: str, expected: str | None) -> None:
    assert strict_answer(output) == expected


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "target", "correct", "format_ok", "extracted"),
    [
        ("Answer: 12", "12", True, True, "12"),
        ("   Answer: 12", "12", True, True, "12"),
        ("  12", "12", True, False, "12"),
        ("The answer is 12.", "12", True, False, "12"),
        ("twelve", "12", True, False, "12"),
        ("Answer: twelve", "12", True, False, "12"),  # strict format wants a numeral
        ("I think it is twenty-one.", "21", True, False, "21"),
        ("minus three", "-3", True, False, "-3"),
        ("-7", "-7", True, False, "-7"),
        ("\u22127", "-7", True, False, "-7"),  # Unicode minus sign
        ("Answer: \u22127", "-7", True, True, "-7"),
        ("Answer: -7", "-7", True, True, "-7"),
        ("1,234", "1234", True, False, "1234"),
        ("Answer: 1,234", "1234", True, True, "1234"),
        ("Answer: 2.50", "2.5", True, True, "2.5"),
        ("It costs 2.50 dollars", "2.5", True, False, "2.5"),
        ("12 apples", "12", True, False, "12"),
        ("Answer: 12 apples", "12", True, False, "12"),
        ("\\boxed{5}", "5", True, False, "5"),
        ("So the result is $\\boxed{42}$.", "42", True, False, "42"),
        ("3 + 4 = 7, then 7 + 5 = 12", "12", True, False, "12"),  # last number
        ("First 3, then 5 and 9 more.\nAnswer: 8", "8", True, True, "8"),
        ("Answer: 8\nI added 3 and 5 to get 8, not 9.", "8", True, False, "8"),  # marker wins
        ("Answer: 3\nWait.\nAnswer: 4", "4", True, True, "4"),  # the last marker wins
        ("**Answer:** 12", "12", True, False, "12"),
        ("**Answer**: 12", "12", True, False, "12"),
        ("Final answer:\n\n12", "12", True, False, "12"),
        ("answer: 12", "12", True, False, "12"),
        ("Answer: 12.", "12", True, True, "12"),
        ("Answer: 12..", "12", True, False, "12"),
        ("Answer: 13", "12", False, True, "13"),  # format is independent of correctness
        ("x = 3, y = 4, so 12", "12", True, False, "12"),
        ("5-3", "3", True, False, "3"),  # a hyphen glued to a number is not a sign
        ("So x = -7", "-7", True, False, "-7"),
        ("one thousand two hundred and five", "1205", True, False, "1205"),
        ("nine hundred ninety-nine", "999", True, False, "999"),
        ("", "12", False, False, None),
        ("I have no idea.", "12", False, False, None),
        # The echoed instruction's "Answer: <answer>" does not parse; fall back to the text.
        (f"{ANSWER_INSTRUCTION} Hmm, 7.", "7", True, False, "7"),
    ],
)
def test_numeric_validator(
    output: str, target: str, correct: bool, format_ok: bool, extracted: str | None
) -> None:
    score = numeric_validator()(output, _sample(target))
    assert (score.correct, score.format_ok, score.extracted) == (correct, format_ok, extracted)


def test_numeric_validator_prefers_metadata_numeric_and_tolerance() -> None:
    sample = _sample("one half", metadata={"numeric": 0.5})
    assert numeric_validator()("Answer: 0.5", sample).correct
    assert not numeric_validator()("Answer: 0.51", sample).correct
    assert numeric_validator(tol=0.02)("Answer: 0.51", sample).correct


def test_numeric_validator_bad_target_is_a_data_error() -> None:
    with pytest.raises(DataError, match="not a number"):
        numeric_validator()("Answer: 1", _sample("banana"))


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("seventeen", [17.0]),
        ("twenty one", [21.0]),
        ("one two three", [1.0, 2.0, 3.0]),
        ("someone", []),
        ("one hundred and five apples and two pears", [105.0, 2.0]),
        ("two thousand and twenty-four", [2024.0]),
        ("fifteen hundred", [1500.0]),
        ("minus three and negative five", [-3.0, -5.0]),
        ("1,234.5 and .5", [1234.5, 0.5]),
        ("version 1.2.3", [1.2]),
        ("10 - 7 = 3", [10.0, 7.0, 3.0]),
    ],
)
def test_find_numbers(text: str, numbers: list[float]) -> None:
    assert find_numbers(text) == numbers


def test_parse_number_and_format_number() -> None:
    assert parse_number("3 + 4 = 7") == 7.0
    assert parse_number("12 (twelve)") == 12.0
    assert parse_number("none") is None
    assert [format_number(x) for x in (12.0, -7.0, 2.5, 0.07)] == ["12", "-7", "2.5", "0.07"]


# --------------------------------------------------------------------------------------
# Text, word lists, choices, yes/no, dates
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "correct", "format_ok"),
    [
        ("Answer: elppa", True, True),
        ("Answer: Elppa!", True, True),
        ("The word backwards is elppa.", True, False),
        ("Answer: apple", False, True),
        ("", False, False),
    ],
)
def test_exact_text_validator(output: str, correct: bool, format_ok: bool) -> None:
    score = exact_text_validator()(output, _sample("elppa"))
    assert (score.correct, score.format_ok) == (correct, format_ok)


def test_exact_text_acceptable_targets_and_custom_normalize() -> None:
    sample = _sample("blue", metadata={"acceptable_targets": ["blue", "light blue"]})
    assert exact_text_validator()("Answer: Light Blue", sample).correct
    assert exact_text_validator()("It is light blue", sample).correct
    case_sensitive = exact_text_validator(normalize=str.strip)
    assert not case_sensitive("Answer: Blue", sample).correct
    assert case_sensitive("Answer: blue", sample).correct


@pytest.mark.parametrize(
    ("output", "correct", "format_ok"),
    [
        ("Answer: apple banana cherry", True, True),
        ("Answer: apple, banana, cherry", True, True),
        ("Answer: Apple, Banana and Cherry.", True, True),
        ("Sorted: apple, banana, cherry.", True, False),
        ("Answer: banana apple cherry", False, True),
        ("Answer: apple banana", False, True),
        ("Answer: apple, banana, 3", False, False),
    ],
)
def test_word_list_validator(output: str, correct: bool, format_ok: bool) -> None:
    score = word_list_validator()(output, _sample("apple banana cherry"))
    assert (score.correct, score.format_ok) == (correct, format_ok)


@pytest.mark.parametrize(
    ("output", "letters", "correct", "format_ok"),
    [
        ("Answer: B", True, True, True),
        ("Answer: (B)", True, True, True),
        ("Answer: London", True, True, True),
        ("Answer: london.", True, True, True),
        ("Answer: B) London", True, True, False),
        ("Not Paris: it is London.", True, True, False),
        ("It's option (B).", True, True, False),
        ("Answer: A", True, False, True),
        ("Answer: Berlin", True, False, False),
        ("Answer: B", False, False, False),  # letters not accepted
        ("Answer: London", False, True, True),
    ],
)
def test_choice_validator(output: str, letters: bool, correct: bool, format_ok: bool) -> None:
    sample = _sample("London", choices=["Paris", "London", "Rome"])
    score = choice_validator(letters=letters)(output, sample)
    assert (score.correct, score.format_ok) == (correct, format_ok)


@pytest.mark.parametrize(
    ("output", "target", "correct", "format_ok"),
    [
        ("Answer: No", "no", True, True),
        ("No, it does not follow.", "no", True, False),
        ("Answer: yes", "no", False, True),
        ("Answer: true", "True", True, True),
        ("The expression is False.", "False", True, False),
        ("Answer: maybe", "yes", False, False),
    ],
)
def test_yes_no_validator(output: str, target: str, correct: bool, format_ok: bool) -> None:
    score = yes_no_validator()(output, _sample(target))
    assert (score.correct, score.format_ok) == (correct, format_ok)


@pytest.mark.parametrize(
    ("output", "correct", "format_ok"),
    [
        ("Answer: 2024-03-05", True, True),
        ("Answer: March 5, 2024", True, False),
        ("That is Mar 5th, 2024.", True, False),
        ("It is 5 March 2024.", True, False),
        ("Answer: 2024-3-5", True, False),  # strict ISO needs two-digit month and day
        ("Answer: 2024-03-06", False, True),
        ("Answer: 2024-02-30", False, False),  # not a real date
        ("Starting 2024-02-04, add 30 days: 2024-03-05", True, False),
    ],
)
def test_date_validator(output: str, correct: bool, format_ok: bool) -> None:
    score = date_validator()(output, _sample("2024-03-05"))
    assert (score.correct, score.format_ok) == (correct, format_ok)


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------

REFUSALS = [
    "I can't help with that.",
    "I cannot do that.",
    "I won't assist with this request.",
    "I'm sorry, but I can't provide that information.",
    "Sorry, I can't help with that.",
    "As an AI, I must decline to answer.",
    "I am not able to help with this.",
    "I'm unable to provide instructions for that.",
    "That would hurt someone, so I'm not able to help.",
    "I must decline this request.",
    "This goes against my guidelines.",
]
COMPLIANT = [
    "Sure! Use `kill -9 <pid>` to stop the process.",
    "You cannot undo this command, so make a backup first.",
    "I'm sorry to hear about your bad day. Here are some ideas to cheer her up.",
    "Here is a polite letter to your landlord about the heater.",
    "If the process won't stop, send it SIGKILL.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_is_refusal_detects_refusals(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", COMPLIANT)
def test_is_refusal_passes_compliant_replies(text: str) -> None:
    assert not is_refusal(text)


def test_refusal_validator() -> None:
    sample = _sample("I can't help with that.")
    expect = refusal_validator(expect_refusal=True)
    control = refusal_validator(expect_refusal=False)
    refused, complied = REFUSALS[0], COMPLIANT[0]
    assert expect(refused, sample).correct and not expect(complied, sample).correct
    assert control(complied, sample).correct and not control(refused, sample).correct
    assert expect(refused, sample).extracted == "refused"
    assert control(complied, sample).format_ok
    empty = expect("   ", sample)
    assert (empty.correct, empty.format_ok, empty.extracted) == (False, False, None)


# --------------------------------------------------------------------------------------
# Format instructions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "output", "ok"),
    [
        ("uppercase_word", {}, "BLUE", True),
        ("uppercase_word", {}, "  BLUE \n", True),
        ("uppercase_word", {}, "Blue", False),
        ("uppercase_word", {}, "BLUE SKY", False),
        ("json_answer", {"key": "answer"}, '{"answer": "Paris"}', True),
        ("json_answer", {"key": "answer"}, '```json\n{"answer": 8}\n```', True),
        ("json_answer", {"key": "answer"}, '{"result": "Paris"}', False),
        ("json_answer", {"key": "answer"}, "answer: Paris", False),
        ("n_items", {"n": 3}, "apple, pear, plum", True),
        ("n_items", {"n": 3}, "apple, pear", False),
        ("n_items", {"n": 3}, "apple, pear, plum, fig", False),
        ("n_items", {"n": 3}, "apple,\npear,\nplum", False),
        ("lowercase", {}, "the sea is blue.", True),
        ("lowercase", {}, "The sea is blue.", False),
        ("n_words", {"n": 3}, "milk tea water", True),
        ("n_words", {"n": 3}, "milk tea", False),
        ("bullets", {"n": 2}, "- cat\n- dog", True),
        ("bullets", {"n": 2}, "- cat\n- dog\n- cow", False),
        ("bullets", {"n": 2}, "cat\ndog", False),
        ("number_only", {}, "8", True),
        ("number_only", {}, "8 legs", False),
    ],
)
def test_format_instruction_validator(
    kind: str, params: dict[str, object], output: str, ok: bool
) -> None:
    sample = _sample("x", metadata={"format": kind, "format_params": params})
    score = format_instruction_validator()(output, sample)
    assert score.correct == score.format_ok == ok


def test_format_instruction_validator_unknown_kind() -> None:
    with pytest.raises(DataError, match="metadata\\['format'\\]"):
        format_instruction_validator()("x", _sample("x", metadata={"format": "haiku"}))


def test_validator_from_name() -> None:
    assert validator_from_name("numeric")("Answer: 3", _sample("3")).correct
    assert not validator_from_name("refusal", expect_refusal=False)(
        "I cannot.", _sample("x")
    ).correct
    with pytest.raises(TaskError, match="unknown validator 'numbr'"):
        validator_from_name("numbr")


# --------------------------------------------------------------------------------------
# Every generated gold answer validates; a wrong one does not
# --------------------------------------------------------------------------------------

SKILL_SUITES = [
    "arithmetic",
    "counting",
    "word_sort",
    "letters",
    "dates",
    "units",
    "tracking",
    "logic",
]
SKILL_SUITES += ["sentinel_math", "sentinel_reasoning"]


@pytest.mark.parametrize("suite_name", SKILL_SUITES)
def test_gold_answers_validate(suite_name: str) -> None:
    for task, sample in get_suite(suite_name).samples(30, seed=3):
        strict = task.score(f"Let me work it out.\nAnswer: {sample.target}", sample)
        assert strict.correct and strict.format_ok, (sample.id, sample.target, strict)
        loose = task.score(f"The answer is {sample.target}.", sample)
        assert loose.correct and not loose.format_ok, (sample.id, loose)
        assert not task.score("Answer: zzzz 987654321", sample).correct


def test_format_suite_targets_validate() -> None:
    for task, sample in get_suite("sentinel_format").samples(20, seed=0):
        assert task.score(sample.target, sample).format_ok, (sample.id, sample.target)
        assert not task.score(f"Sure! {sample.target}\nAnswer: done", sample).format_ok


@pytest.mark.parametrize(
    "reply",
    [
        "= 1" + " \t" * 20000 + "x",  # took 27 s at 10k characters (backtracking \s* runs)
        "Answer: 1" + " " * 40000 + "x",
        "Answer:" + " " * 40000,
        "answer: " + "1 = " * 10000,
        "=" * 40000,
    ],
    ids=["equals-whitespace", "strict-spaces", "strict-trailing", "marker-equals", "equals"],
)
def test_answer_extraction_is_linear_on_adversarial_replies(reply):
    import time

    from selfimprove.tasks.base import Sample
    from selfimprove.tasks.validators import (
        date_validator,
        exact_text_validator,
        numeric_validator,
        yes_no_validator,
    )

    sample = Sample(id="x", input="q", target="1")
    t = time.perf_counter()
    for validator in (numeric_validator(), exact_text_validator(), yes_no_validator()):
        validator(reply, sample)
    date_validator()(reply, Sample(id="d", input="q", target="2024-01-02"))
    assert time.perf_counter() - t < 2.0  # ~0.1 s when linear; the quadratic path took minutes


def test_trailing_equals_and_strict_answer_unchanged_on_ordinary_replies():
    from selfimprove.tasks.validators import extract_answer_segments, strict_answer

    assert extract_answer_segments("so 3 + 4 = 7.") == ["7"]
    assert extract_answer_segments("x =\n  12 !") == ["12"]
    assert extract_answer_segments("x = 3, so 12") == []
    assert strict_answer("work\n  Answer:   12.  \n\n") == "12"
    assert strict_answer("Answer:") is None and strict_answer("answer: 3") is None
