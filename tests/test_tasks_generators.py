"""Generators: determinism, metadata, and gold answers re-derived independently from the prompt.

The recomputations below parse the *prompt text* (not the generator's metadata) and use
their own tables (unit factors, weekday names via ``strftime``, Python's own evaluation of
boolean expressions), so a wrong gold answer or a prompt that does not say what the gold
assumes makes them fail.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from fractions import Fraction

import pytest

from selfimprove.errors import TaskError
from selfimprove.tasks import ANSWER_INSTRUCTION, Sample, Task
from selfimprove.tasks.generators import (
    WORDS,
    arithmetic,
    counting,
    dates,
    format_following,
    letters,
    logic,
    tracking,
    units,
    word_sort,
)

N = 200

FACTORIES: dict[str, Callable[[], Task]] = {
    "add_1d": lambda: arithmetic("add", 1),
    "sub_2d_neg": lambda: arithmetic("sub", 2, allow_negative=True),
    "mul_3d": lambda: arithmetic("mul", 3),
    "div_2d": lambda: arithmetic("div", 2),
    "count_words": lambda: counting((5, 10)),
    "count_letters": lambda: counting((5, 10), kind="letter"),
    "word_sort": lambda: word_sort((3, 8)),
    "reverse": lambda: letters("reverse"),
    "kth_letter": lambda: letters("kth_letter"),
    "first_letters": lambda: letters("first_letters"),
    "length": lambda: letters("length"),
    "add_days": lambda: dates("add_days"),
    "sub_days": lambda: dates("sub_days"),
    "add_weeks": lambda: dates("add_weeks"),
    "weekday": lambda: dates("weekday"),
    "units_length": lambda: units("length"),
    "units_mass": lambda: units("mass"),
    "units_time": lambda: units("time"),
    "tracking_3": lambda: tracking(3, (3, 5)),
    "tracking_5": lambda: tracking(5, (5, 7)),
    "boolean": lambda: logic("boolean", size=3),
    "comparison": lambda: logic("comparison", size=4),
    "syllogism": lambda: logic("syllogism", size=3),
    "format_json": lambda: format_following("json_answer"),
}


def _question(sample: Sample) -> str:
    """The prompt without the trailing answer instruction."""
    assert isinstance(sample.input, str)
    suffix = "\n" + ANSWER_INSTRUCTION
    assert sample.input.endswith(suffix), sample.input
    return sample.input[: -len(suffix)]


# --------------------------------------------------------------------------------------
# Determinism, ids, metadata
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_same_seed_same_samples_different_seed_different(key: str) -> None:
    a = [s.model_dump() for s in FACTORIES[key]().samples(20, seed=1)]
    b = [s.model_dump() for s in FACTORIES[key]().samples(20, seed=1)]
    c = [s.model_dump() for s in FACTORIES[key]().samples(20, seed=2)]
    assert a == b
    assert a != c


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_ids_unique_inputs_unique_and_metadata(key: str) -> None:
    task = FACTORIES[key]()
    samples = task.samples(50, seed=0)
    assert len(samples) == 50
    assert len({s.id for s in samples}) == 50
    assert len({s.input_hash() for s in samples}) == 50
    for s in samples:
        assert s.id.startswith(f"{task.name}/")
        meta = s.metadata
        assert meta["category"] == task.category == s.category
        assert meta["source"] == "selfimprove" and meta["license"] == "Apache-2.0"
        assert isinstance(meta["difficulty"], dict) and meta["difficulty"]
        assert meta["validator"]
        if meta["validator"] == "numeric":
            assert float(meta["numeric"]) == float(s.target)
        if meta["family"] != "format":
            assert s.input.endswith("\n" + ANSWER_INSTRUCTION)  # type: ignore[union-attr]
    assert task.params["family"] == samples[0].metadata["family"]


def test_categories_and_bad_arguments() -> None:
    assert arithmetic("add", 1).category == "add_1d"
    assert arithmetic("div", 3).category == "div_3d"
    assert word_sort(5).category == "word_sort_5"
    assert tracking(5).category == "tracking_5"
    assert letters("length").category == "word_length"
    assert arithmetic("mul", 2, name="x.mul").name == "x.mul"
    for bad in (
        lambda: arithmetic("pow", 1),  # type: ignore[arg-type]
        lambda: arithmetic("add", 4),
        lambda: counting((10, 5)),
        lambda: word_sort(1),
        lambda: tracking(9),
        lambda: logic("modal"),  # type: ignore[arg-type]
        lambda: dates("add_days", max_offset=0),
        lambda: units("volume"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TaskError):
            bad()


# --------------------------------------------------------------------------------------
# Independent recomputation of gold answers
# --------------------------------------------------------------------------------------

_ARITH_RE = re.compile(
    r"^(?:What is|Calculate) (\d+) (\+|-|\*|/|plus|minus|times|divided by) (\d+)[?.]$"
)


@pytest.mark.parametrize(
    ("op", "digits", "allow_negative"),
    [
        ("add", 1, False),
        ("add", 3, False),
        ("sub", 2, False),
        ("sub", 2, True),
        ("mul", 2, False),
        ("div", 1, False),
        ("div", 2, False),
        ("div", 3, False),
    ],
)
def test_arithmetic_gold(op: str, digits: int, allow_negative: bool) -> None:
    samples = arithmetic(op, digits, allow_negative=allow_negative).samples(N, seed=7)  # type: ignore[arg-type]
    assert len(samples) >= (100 if digits == 1 and op != "div" else 80)
    negatives = 0
    for s in samples:
        m = _ARITH_RE.match(_question(s))
        assert m, s.input
        a, sym, b = int(m.group(1)), m.group(2), int(m.group(3))
        if op == "div":
            assert a % b == 0
            expected = a // b
            assert len(str(b)) == digits and len(str(expected)) == digits
        else:
            assert len(str(a)) == digits and len(str(b)) == digits
            expected = {"+": a + b, "plus": a + b, "-": a - b, "minus": a - b}.get(sym, a * b)
        assert sym in {"add": ("+", "plus"), "sub": ("-", "minus"), "mul": ("*", "times")}.get(
            op, ("/", "divided by")
        )
        assert int(s.target) == expected
        negatives += expected < 0
    assert (negatives > 0) == allow_negative


def test_counting_gold() -> None:
    word_re = re.compile(r"the word '(\w+)' appear in the following list\? (.+)$")
    letter_re = re.compile(r"the letter '(\w)' appear in this sequence: (.+)\?$")
    counts = set()
    for s in counting((5, 10)).samples(N, seed=1):
        m = word_re.search(_question(s))
        assert m, s.input
        items = m.group(2).split(", ")
        assert 5 <= len(items) <= 10
        counts.add(int(s.target))
        assert int(s.target) == items.count(m.group(1))
    for s in counting((5, 10), kind="letter").samples(N, seed=1):
        m = letter_re.search(_question(s))
        assert m, s.input
        assert int(s.target) == m.group(2).split().count(m.group(1))
    assert len(counts) >= 4  # answers vary, zero included eventually
    assert 0 in counts


def test_word_sort_gold() -> None:
    for n in (3, 5, 8):
        for s in word_sort(n).samples(N, seed=2):
            m = re.search(r"alphabetically: (.+)\. Give", _question(s))
            assert m, s.input
            words = m.group(1).split(", ")
            assert len(words) == n == len(set(words))
            assert s.target.split() == sorted(words)


def test_letters_gold() -> None:
    for s in letters("reverse").samples(N, seed=3):
        word = re.search(r"word '(\w+)' backwards", _question(s)).group(1)  # type: ignore[union-attr]
        assert s.target == "".join(reversed(word)) and word in WORDS
    for s in letters("kth_letter").samples(N, seed=3):
        m = re.search(r"the (\d+)(?:st|nd|rd|th) letter of the word '(\w+)'", _question(s))
        assert m, s.input
        k, word = int(m.group(1)), m.group(2)
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(k, "th")
        assert f"{k}{suffix} letter" in s.input  # ordinals are spelled right (k <= 8 here)
        assert s.target == word[k - 1]
    for s in letters("first_letters").samples(N, seed=3):
        words = _question(s).split(": ", 1)[1].split()
        assert 3 <= len(words) <= 5
        assert s.target == "".join(w[0] for w in words)
    for s in letters("length").samples(N, seed=3):
        word = re.search(r"word '(\w+)'", _question(s)).group(1)  # type: ignore[union-attr]
        assert int(s.target) == len(word)


def _parse_date(text: str) -> dt.date:
    for fmt in ("%Y-%m-%d", "%B %d, %Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise AssertionError(f"unparseable date {text!r}")


def test_dates_gold() -> None:
    offset_re = re.compile(r"What date is (\d+) (day|week)s? (after|before) (.+)\? Give the date")
    formats = set()
    for kind in ("add_days", "sub_days", "add_weeks"):
        for s in dates(kind, max_offset=30).samples(N, seed=4):  # type: ignore[arg-type]
            m = offset_re.search(_question(s))
            assert m, s.input
            n, unit, direction = int(m.group(1)), m.group(2), m.group(3)
            start = _parse_date(m.group(4))
            formats.add("-" in m.group(4))
            delta = dt.timedelta(days=n) if unit == "day" else dt.timedelta(weeks=n)
            expected = start + delta if direction == "after" else start - delta
            assert 1 <= n <= 30
            assert s.target == expected.isoformat()
    assert formats == {True, False}  # both ISO and long dates appear in prompts
    weekdays = set()
    for s in dates("weekday").samples(N, seed=4):
        shown = re.search(r"What day of the week is (.+)\?$", _question(s)).group(1)  # type: ignore[union-attr]
        day = _parse_date(shown)
        assert s.target == day.strftime("%A")
        assert s.choices is not None and s.target in s.choices
        weekdays.add(s.target)
    assert len(weekdays) == 7


# Independent factor table (SI / exact customary definitions), in base units.
_UNIT_SIZE = {
    "millimeter": Fraction(1, 1000),
    "centimeter": Fraction(1, 100),
    "meter": Fraction(1),
    "kilometer": Fraction(1000),
    "inch": Fraction(254, 10000),
    "foot": Fraction(3048, 10000),
    "yard": Fraction(9144, 10000),
    "milligram": Fraction(1, 1000),
    "gram": Fraction(1),
    "kilogram": Fraction(1000),
    "tonne": Fraction(1_000_000),
    "ounce": Fraction(28349523125, 10**9),
    "pound": Fraction(45359237, 10**5),
    "second": Fraction(1),
    "minute": Fraction(60),
    "hour": Fraction(3600),
    "day": Fraction(86400),
    "week": Fraction(604800),
}
_PLURALS = {"inches": "inch", "feet": "foot"}


def _unit(word: str) -> Fraction:
    word = _PLURALS.get(word, word.removesuffix("s"))
    return _UNIT_SIZE[word]


def test_units_gold() -> None:
    convert_re = re.compile(r"^Convert (\d+) (\w+) to (\w+)\.$")
    how_many_re = re.compile(r"^How many (\w+) are in (\d+) (\w+)\?$")
    for kind in ("length", "mass", "time"):
        seen_pairs = set()
        for s in units(kind, max_value=100).samples(N, seed=5):  # type: ignore[arg-type]
            q = _question(s)
            if m := convert_re.match(q):
                value, src, dst = int(m.group(1)), m.group(2), m.group(3)
            else:
                m = how_many_re.match(q)
                assert m, s.input
                dst, value, src = m.group(1), int(m.group(2)), m.group(3)
            expected = value * _unit(src) / _unit(dst)
            assert expected * 100 == int(expected * 100), (q, expected)  # <= 2 decimals
            assert float(s.target) == pytest.approx(float(expected), rel=1e-12)
            seen_pairs.add((src, dst))
        assert len(seen_pairs) >= 6


def test_tracking_gold() -> None:
    for n_people, swaps in ((3, (3, 5)), (5, (5, 7))):
        for s in tracking(n_people, swaps).samples(N, seed=6):
            q = _question(s)
            holder = {c: p for p, c in re.findall(r"(\w+) has an? (\w+) ball", q)}
            assert len(holder) == n_people
            swap_list = re.findall(r"(\w+) and (\w+) swap their balls", q)
            assert swaps[0] <= len(swap_list) <= swaps[1]
            for x, y in swap_list:
                holds = {p: c for c, p in holder.items()}
                holder[holds[x]], holder[holds[y]] = y, x
            color = re.search(r"who has the (\w+) ball\?$", q).group(1)  # type: ignore[union-attr]
            assert s.target == holder[color]
            assert sorted(s.choices or []) == sorted(holder.values())


def test_logic_boolean_gold() -> None:
    answers = []
    for s in logic("boolean", size=3).samples(N, seed=8):
        expr = _question(s).split("True or False? ", 1)[1]
        assert re.fullmatch(r"(?:True|False|and|or|not|\(|\)| )+", expr), expr
        value = eval(expr, {"__builtins__": {}}, {})  # only True/False/and/or/not/parens
        assert s.target == str(value)
        answers.append(value)
    assert 0.2 < sum(answers) / len(answers) < 0.8


def _closure(edges: list[tuple[str, str]]) -> set[tuple[str, str]]:
    reach = set(edges)
    changed = True
    while changed:
        new = {(a, d) for a, b in reach for c, d in reach if b == c} - reach
        reach |= new
        changed = bool(new)
    return reach


def test_logic_comparison_gold() -> None:
    opposites = {"taller": "shorter", "older": "younger", "faster": "slower"}
    inverse = {v: k for k, v in opposites.items()}
    yes = 0
    for s in logic("comparison", size=4).samples(N, seed=9):
        q = _question(s)
        edges = []  # (a, b): a is "more" than b
        for a, rel, b in re.findall(r"(\w+) is (\w+) than (\w+)\.", q):
            edges.append((a, b) if rel in opposites else (b, a))
        assert len(edges) == 3
        x, rel, y = re.search(r"Is (\w+) (\w+) than (\w+)\?", q).groups()  # type: ignore[union-attr]
        reach = _closure(edges)
        expected = (x, y) in reach if rel in opposites else (y, x) in reach
        assert rel in opposites or rel in inverse
        assert s.target == ("yes" if expected else "no")
        yes += expected
    assert 0.25 < yes / N < 0.75


def test_logic_syllogism_gold() -> None:
    yes = 0
    for s in logic("syllogism", size=3).samples(N, seed=10):
        q = _question(s)
        edges = re.findall(r"All (\w+)s are (\w+)s\.", q)
        assert len(edges) == 3
        x, y = re.search(r"Does it follow that all (\w+)s are (\w+)s\?", q).groups()  # type: ignore[union-attr]
        expected = (x, y) in _closure(edges)
        assert s.target == ("yes" if expected else "no")
        yes += expected
    assert 0.25 < yes / N < 0.75


def test_format_following_samples() -> None:
    kinds = ("uppercase_word", "json_answer", "n_items", "lowercase", "n_words", "bullets")
    for kind in (*kinds, "number_only"):
        task = format_following(kind)  # type: ignore[arg-type]
        for s in task.samples(30, seed=0):
            assert ANSWER_INSTRUCTION not in s.input
            assert s.metadata["format"] == kind
            assert task.score(s.target, s).format_ok
            if kind in ("n_words", "bullets"):
                n = s.metadata["format_params"]["n"]
                assert ["two", "three", "four", "five"][n - 2] in s.input
