"""Seeded, unlimited sample generators with difficulty knobs, one factory per family.

Each factory (``arithmetic``, ``counting``, ``word_sort``, ``letters``, ``dates``, ``units``,
``tracking``, ``logic``, ``format_following``) returns a :class:`~selfimprove.tasks.base.Task`
in generator mode: a function ``(rng, index) -> Sample`` plus its validator, a category name
and the knobs it was built with (``Task.params``). Gold answers are computed from the
generated structure, never parsed back from text. Every sample records ``category``,
``source``, ``license``, ``family``, ``difficulty`` (the knobs), ``validator`` (a name for
:func:`~selfimprove.tasks.validators.validator_from_name`), ``numeric`` for numeric answers,
and the family's raw ingredients (operands, words, dates...) so answers can be re-checked.

Prompts end with ``"\\n" + ANSWER_INSTRUCTION`` (except ``format_following``, whose
instructions are themselves the format under test). This module does not choose which
categories form a suite; see ``suites.py``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import string
from collections.abc import Callable
from fractions import Fraction
from math import gcd
from random import Random
from typing import Any, Literal

from selfimprove.errors import TaskError
from selfimprove.tasks.base import ANSWER_INSTRUCTION, Sample, SampleGenerator, Task
from selfimprove.tasks.validators import format_number, validator_from_name

__all__ = [
    "NAMES",
    "WEEKDAYS",
    "WORDS",
    "arithmetic",
    "counting",
    "dates",
    "format_following",
    "letters",
    "logic",
    "tracking",
    "units",
    "word_sort",
]

SOURCE = "selfimprove"
LICENSE = "Apache-2.0"

_WORD_TEXT = """
    apple arm baby bag ball banana bank basket bath bed bee bell bird blanket boat body bone
    book boot bottle bowl box boy bread brick bridge brush bucket butter button cake camera
    candle car card carpet carrot cart castle cat chair cheese chicken church circle clock
    cloud coat coin comb cow cup curtain desk dog doll door dress drum duck eagle egg
    engine eye face farm feather fence field finger fish flag floor flower fork fox frog
    garden gate girl glass glove goat grape grass guitar hammer hand hat heart hill horse
    house island jacket jar jelly kettle key king kite kitchen knee knife ladder lake lamp
    leaf lemon letter library lion lock map market mirror monkey moon mountain mouse mouth
    nail neck needle nest net nose notebook ocean onion orange owl paint pan paper park
    pear pen pencil pepper piano picture pig pillow pipe plane plate pocket potato queen
    rabbit rain river road robot rock roof rope rose salt sand school sea seed sheep shelf
    shirt shoe shop sister sky snake snow sock sofa spoon square star station stone storm
    street sugar sun table teacher tent tiger toe tomato tooth towel tower town toy train
    tree truck umbrella valley village violin wagon wall watch water wheel window wing
    winter wolf wood yard zebra
"""
#: Common English nouns (lower-case, letters only, distinct) used by several families.
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

#: First names used by the tracking and comparison families.
NAMES: tuple[str, ...] = (
    "Alice",
    "Bob",
    "Claire",
    "Dave",
    "Eve",
    "Fred",
    "Gertrude",
    "Hannah",
    "Ivan",
    "Julia",
    "Karl",
    "Lena",
)

WEEKDAYS: tuple[str, ...] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)

_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white")
_MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _as_range(value: int | tuple[int, int], what: str, *, minimum: int = 0) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else value
    if lo > hi or lo < minimum:
        raise TaskError(
            f"{what}={value!r} is not a valid range: give an int or (low, high) with "
            f"{minimum} <= low <= high"
        )
    return lo, hi


def _range_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}_{hi}"


def _make_task(
    *,
    name: str,
    category: str,
    family: str,
    validator_name: str,
    validator_args: dict[str, Any] | None,
    difficulty: dict[str, Any],
    build: Callable[[Random], tuple[str, str, dict[str, Any]]],
    description: str,
    answer_instruction: bool = True,
) -> Task:
    """Wrap ``build(rng) -> (prompt, target, extra_metadata)`` into a generator Task.

    ``extra_metadata`` may hold ``numeric`` and ``choices`` (moved to ``Sample.choices``).
    """
    validator = validator_from_name(validator_name, **(validator_args or {}))

    def generate(rng: Random, index: int) -> Sample:
        prompt, target, extra = build(rng)
        extra = dict(extra)
        choices = extra.pop("choices", None)
        if answer_instruction:
            prompt = f"{prompt}\n{ANSWER_INSTRUCTION}"
        metadata: dict[str, Any] = {
            "category": category,
            "source": SOURCE,
            "license": LICENSE,
            "family": family,
            "difficulty": dict(difficulty),
            "validator": validator_name,
        }
        if validator_args:
            metadata["validator_args"] = dict(validator_args)
        metadata.update(extra)
        return Sample(
            id=f"{name}/{index}",
            input=prompt,
            target=target,
            choices=list(choices) if choices is not None else None,
            metadata=metadata,
        )

    gen: SampleGenerator = generate
    return Task(
        name=name,
        category=category,
        mode="generate",
        validator=validator,
        generator=gen,
        description=description,
        params={"family": family, **difficulty},
    )


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _join_names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _long_date(d: dt.date) -> str:
    return f"{_MONTH_NAMES[d.month - 1]} {d.day}, {d.year}"


# --------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------

ArithOp = Literal["add", "sub", "mul", "div"]
_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_OP_WORDS = {"add": "plus", "sub": "minus", "mul": "times", "div": "divided by"}
_ARITH_TEMPLATES = ("What is {a} {sym} {b}?", "What is {a} {word} {b}?", "Calculate {a} {sym} {b}.")


def arithmetic(
    op: ArithOp = "add",
    digits: int = 1,
    *,
    allow_negative: bool = False,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Two-operand arithmetic with ``digits``-digit operands (category ``add_1d`` ...).

    Args:
        op: ``add``, ``sub``, ``mul`` or ``div``. Division is exact: the dividend is
            generated as quotient × divisor, both with ``digits`` digits (no zero).
        digits: Operand size, 1–3 (1-digit operands include 0 except for division).
        allow_negative: For ``sub``, allow negative results; otherwise the larger operand
            comes first.
        name: Task name (default: the category); sample ids are ``{name}/{index}``.
        category: Category name (default ``{op}_{digits}d``).
    """
    if op not in _OP_SYMBOL:
        raise TaskError(f"arithmetic op {op!r} is unknown; use one of {sorted(_OP_SYMBOL)}")
    if digits not in (1, 2, 3):
        raise TaskError(f"arithmetic digits={digits!r} is unsupported; use 1, 2 or 3")
    cat = category or f"{op}_{digits}d"
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    hi = 10**digits - 1

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        if op == "div":
            b = rng.randint(max(lo, 1), hi)
            quotient = rng.randint(max(lo, 1), hi)
            a, answer = quotient * b, quotient
        else:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if op == "sub" and not allow_negative and a < b:
                a, b = b, a
            answer = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        template = rng.choice(_ARITH_TEMPLATES)
        prompt = template.format(a=a, b=b, sym=_OP_SYMBOL[op], word=_OP_WORDS[op])
        return prompt, str(answer), {"numeric": answer, "a": a, "b": b, "op": op}

    return _make_task(
        name=name or cat,
        category=cat,
        family="arithmetic",
        validator_name="numeric",
        validator_args=None,
        difficulty={"op": op, "digits": digits, "allow_negative": allow_negative},
        build=build,
        description=f"{_OP_WORDS[op]} with {digits}-digit operands",
    )


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------


def counting(
    n_items: int | tuple[int, int] = (5, 10),
    *,
    kind: Literal["word", "letter"] = "word",
    n_distinct: int | tuple[int, int] = (3, 5),
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Count how often one word (or letter) occurs in a list (category ``count_words``...).

    Args:
        n_items: Length of the list (a range is sampled uniformly).
        kind: ``word`` (a comma-separated list of nouns) or ``letter`` (space-separated
            letters).
        n_distinct: How many different items the list draws from (fewer = larger counts).
            The asked-for item is one of them, so the count may be 0.
    """
    lo, hi = _as_range(n_items, "n_items", minimum=1)
    d_lo, d_hi = _as_range(n_distinct, "n_distinct", minimum=2)
    if kind not in ("word", "letter"):
        raise TaskError(f"counting kind {kind!r} is unknown; use 'word' or 'letter'")
    cat = category or f"count_{kind}s"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        n = rng.randint(lo, hi)
        pool_src = WORDS if kind == "word" else tuple(string.ascii_lowercase)
        pool = rng.sample(pool_src, rng.randint(d_lo, d_hi))
        items = [rng.choice(pool) for _ in range(n)]
        item = rng.choice(pool)
        count = items.count(item)
        if kind == "word":
            prompt = (
                f"How many times does the word '{item}' appear in the following list? "
                f"{', '.join(items)}"
            )
        else:
            prompt = (
                f"How many times does the letter '{item}' appear in this sequence: "
                f"{' '.join(items)}?"
            )
        return prompt, str(count), {"numeric": count, "items": items, "item": item}

    return _make_task(
        name=name or cat,
        category=cat,
        family="counting",
        validator_name="numeric",
        validator_args=None,
        difficulty={"kind": kind, "n_items": [lo, hi], "n_distinct": [d_lo, d_hi]},
        build=build,
        description=f"count one {kind} in a list of {_range_label(lo, hi)} {kind}s",
    )


# --------------------------------------------------------------------------------------
# Word sorting
# --------------------------------------------------------------------------------------


def word_sort(
    n_words: int | tuple[int, int] = (3, 8),
    *,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Sort distinct nouns alphabetically; the answer is the space-separated sorted list.

    Category ``word_sort_{n}`` (or ``word_sort_{lo}_{hi}`` for a range).
    """
    lo, hi = _as_range(n_words, "n_words", minimum=2)
    if hi > len(WORDS):
        raise TaskError(f"word_sort n_words={n_words!r} exceeds the word list ({len(WORDS)})")
    cat = category or f"word_sort_{_range_label(lo, hi)}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        words = rng.sample(WORDS, rng.randint(lo, hi))
        prompt = (
            f"Sort the following words alphabetically: {', '.join(words)}. "
            "Give the sorted words separated by spaces."
        )
        return prompt, " ".join(sorted(words)), {"words": words}

    return _make_task(
        name=name or cat,
        category=cat,
        family="word_sort",
        validator_name="word_list",
        validator_args=None,
        difficulty={"n_words": [lo, hi]},
        build=build,
        description=f"sort {_range_label(lo, hi)} words alphabetically",
    )


# --------------------------------------------------------------------------------------
# Letters / word manipulation
# --------------------------------------------------------------------------------------

LetterKind = Literal["reverse", "kth_letter", "first_letters", "length"]
_LETTER_CATEGORIES = {
    "reverse": "reverse_word",
    "kth_letter": "kth_letter",
    "first_letters": "first_letters",
    "length": "word_length",
}


def letters(
    kind: LetterKind = "reverse",
    *,
    word_len: int | tuple[int, int] = (3, 8),
    n_words: int | tuple[int, int] = (3, 5),
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Letter and word manipulation on common nouns.

    Args:
        kind: ``reverse`` (spell a word backwards), ``kth_letter`` (the k-th letter),
            ``first_letters`` (join the first letters of several words), ``length``
            (number of letters; numeric answer).
        word_len: Lengths of the words used (longer is harder).
        n_words: Number of words for ``first_letters``.
    """
    if kind not in _LETTER_CATEGORIES:
        raise TaskError(
            f"letters kind {kind!r} is unknown; use one of {sorted(_LETTER_CATEGORIES)}"
        )
    len_lo, len_hi = _as_range(word_len, "word_len", minimum=1)
    n_lo, n_hi = _as_range(n_words, "n_words", minimum=1)
    pool = [w for w in WORDS if len_lo <= len(w) <= len_hi]
    if len(pool) < max(n_hi, 2):
        raise TaskError(f"letters word_len={word_len!r} leaves too few words; widen the range")
    cat = category or _LETTER_CATEGORIES[kind]

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        if kind == "first_letters":
            words = rng.sample(pool, rng.randint(n_lo, n_hi))
            prompt = (
                "Take the first letter of each of these words and join them into one "
                f"string: {' '.join(words)}"
            )
            return prompt, "".join(w[0] for w in words), {"words": words}
        word = rng.choice(pool)
        if kind == "reverse":
            return f"Spell the word '{word}' backwards.", word[::-1], {"word": word}
        if kind == "kth_letter":
            k = rng.randint(1, len(word))
            prompt = f"What is the {_ordinal(k)} letter of the word '{word}'?"
            return prompt, word[k - 1], {"word": word, "k": k}
        prompt = f"How many letters are in the word '{word}'?"
        return prompt, str(len(word)), {"word": word, "numeric": len(word)}

    return _make_task(
        name=name or cat,
        category=cat,
        family="letters",
        validator_name="numeric" if kind == "length" else "exact_text",
        validator_args=None,
        difficulty={"kind": kind, "word_len": [len_lo, len_hi], "n_words": [n_lo, n_hi]},
        build=build,
        description=f"letter manipulation: {kind}",
    )


# --------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------

DateKind = Literal["add_days", "sub_days", "add_weeks", "weekday"]
_DATE_CATEGORIES = {
    "add_days": "date_add_days",
    "sub_days": "date_sub_days",
    "add_weeks": "date_add_weeks",
    "weekday": "weekday",
}


def dates(
    kind: DateKind = "add_days",
    *,
    max_offset: int = 30,
    years: tuple[int, int] = (1990, 2030),
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Date arithmetic (answer an ISO date) or the weekday of a date (answer its name).

    Args:
        kind: ``add_days``, ``sub_days``, ``add_weeks`` or ``weekday``.
        max_offset: Largest offset, in the kind's unit (days or weeks).
        years: Range of years the start date is drawn from.

    Dates in prompts are written ISO (``2024-03-05``) or long (``March 5, 2024``).
    """
    if kind not in _DATE_CATEGORIES:
        raise TaskError(f"dates kind {kind!r} is unknown; use one of {sorted(_DATE_CATEGORIES)}")
    if max_offset < 1:
        raise TaskError(f"dates max_offset={max_offset} must be >= 1")
    y_lo, y_hi = _as_range(years, "years", minimum=1)
    first, last = dt.date(y_lo, 1, 1).toordinal(), dt.date(y_hi, 12, 31).toordinal()
    cat = category or _DATE_CATEGORIES[kind]

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        start = dt.date.fromordinal(rng.randint(first, last))
        shown = start.isoformat() if rng.random() < 0.5 else _long_date(start)
        if kind == "weekday":
            answer = WEEKDAYS[start.weekday()]
            prompt = f"What day of the week is {shown}?"
            return prompt, answer, {"date": start.isoformat(), "choices": list(WEEKDAYS)}
        n = rng.randint(1, max_offset)
        if kind == "add_days":
            end, phrase = start + dt.timedelta(days=n), f"{n} day{'s' * (n != 1)} after"
        elif kind == "sub_days":
            end, phrase = start - dt.timedelta(days=n), f"{n} day{'s' * (n != 1)} before"
        else:
            end, phrase = start + dt.timedelta(weeks=n), f"{n} week{'s' * (n != 1)} after"
        prompt = f"What date is {phrase} {shown}? Give the date as YYYY-MM-DD."
        return prompt, end.isoformat(), {"date": start.isoformat(), "offset": n}

    is_weekday = kind == "weekday"
    return _make_task(
        name=name or cat,
        category=cat,
        family="dates",
        validator_name="choice" if is_weekday else "date",
        validator_args={"letters": False} if is_weekday else None,
        difficulty={"kind": kind, "max_offset": max_offset, "years": [y_lo, y_hi]},
        build=build,
        description=f"date arithmetic: {kind}",
    )


# --------------------------------------------------------------------------------------
# Unit conversion
# --------------------------------------------------------------------------------------

UnitKind = Literal["length", "mass", "time"]
#: kind -> systems -> unit -> (size in the system's base unit, singular, plural).
_UNIT_SYSTEMS: dict[str, tuple[dict[str, tuple[int, str, str]], ...]] = {
    "length": (
        {
            "mm": (1, "millimeter", "millimeters"),
            "cm": (10, "centimeter", "centimeters"),
            "m": (1000, "meter", "meters"),
            "km": (1_000_000, "kilometer", "kilometers"),
        },
        {
            "in": (1, "inch", "inches"),
            "ft": (12, "foot", "feet"),
            "yd": (36, "yard", "yards"),
        },
    ),
    "mass": (
        {
            "mg": (1, "milligram", "milligrams"),
            "g": (1000, "gram", "grams"),
            "kg": (1_000_000, "kilogram", "kilograms"),
            "t": (1_000_000_000, "tonne", "tonnes"),
        },
        {"oz": (1, "ounce", "ounces"), "lb": (16, "pound", "pounds")},
    ),
    "time": (
        {
            "s": (1, "second", "seconds"),
            "min": (60, "minute", "minutes"),
            "h": (3600, "hour", "hours"),
            "d": (86400, "day", "days"),
            "wk": (604800, "week", "weeks"),
        },
    ),
}


def units(
    kind: UnitKind = "length",
    *,
    max_value: int = 100,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Convert between units of one system; answers are integers or have ≤ 2 decimals.

    Only pairs whose size ratio lies within 1:1000 are used (no seconds→weeks). The value
    converted is a whole number ≤ ``max_value``, chosen so the answer needs at most two
    decimals (``250 centimeters`` → ``2.5`` meters).
    """
    if kind not in _UNIT_SYSTEMS:
        raise TaskError(f"units kind {kind!r} is unknown; use one of {sorted(_UNIT_SYSTEMS)}")
    if max_value < 1:
        raise TaskError(f"units max_value={max_value} must be >= 1")
    pairs: list[tuple[tuple[int, str, str], tuple[int, str, str], int]] = []
    for system in _UNIT_SYSTEMS[kind]:
        for src in system.values():
            for dst in system.values():
                ratio = Fraction(src[0], dst[0])
                if src is dst or not Fraction(1, 1000) <= ratio <= 1000:
                    continue
                # value must be a multiple of `step` for value*ratio to have <= 2 decimals
                step = ratio.denominator // gcd(ratio.denominator, 100 * ratio.numerator)
                if step <= max_value:
                    pairs.append((src, dst, step))
    cat = category or f"units_{kind}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        src, dst, step = rng.choice(pairs)
        value = step * rng.randint(1, max_value // step)
        answer = Fraction(value * src[0], dst[0])
        src_name = src[1] if value == 1 else src[2]
        if rng.random() < 0.5:
            prompt = f"Convert {value} {src_name} to {dst[2]}."
        else:
            prompt = f"How many {dst[2]} are in {value} {src_name}?"
        numeric = float(answer)
        return (
            prompt,
            format_number(numeric),
            {"numeric": numeric, "value": value, "from_unit": src[2], "to_unit": dst[2]},
        )

    return _make_task(
        name=name or cat,
        category=cat,
        family="units",
        validator_name="numeric",
        validator_args=None,
        difficulty={"kind": kind, "max_value": max_value},
        build=build,
        description=f"{kind} unit conversion",
    )


# --------------------------------------------------------------------------------------
# Shuffled-object tracking
# --------------------------------------------------------------------------------------


def tracking(
    n_people: int = 3,
    n_swaps: int | tuple[int, int] = (3, 5),
    *,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """People each hold a coloured ball and swap pairwise; who holds a given ball at the end?

    The answer is a name; ``Sample.choices`` lists the people (validated without letters).
    Category ``tracking_{n_people}``.
    """
    if not 2 <= n_people <= len(_COLORS):
        raise TaskError(f"tracking n_people={n_people} must be between 2 and {len(_COLORS)}")
    s_lo, s_hi = _as_range(n_swaps, "n_swaps", minimum=1)
    cat = category or f"tracking_{n_people}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        people = rng.sample(NAMES, n_people)
        colors = rng.sample(_COLORS, n_people)
        holder = dict(zip(colors, people, strict=True))
        swaps = []
        for _ in range(rng.randint(s_lo, s_hi)):
            x, y = rng.sample(people, 2)
            swaps.append([x, y])
            holding = {p: c for c, p in holder.items()}
            holder[holding[x]], holder[holding[y]] = y, x
        color = rng.choice(colors)
        start = _join_names(
            [f"{p} has {_article(c)} {c} ball" for p, c in zip(people, colors, strict=True)]
        )
        steps = " ".join(
            f"{'First' if i == 0 else 'Then'}, {x} and {y} swap their balls."
            for i, (x, y) in enumerate(swaps)
        )
        prompt = (
            f"{_join_names(people)} are playing a game. At the start, {start}. {steps} "
            f"At the end of the game, who has the {color} ball?"
        )
        extra = {"people": people, "colors": colors, "swaps": swaps, "choices": people}
        return prompt, holder[color], extra

    return _make_task(
        name=name or cat,
        category=cat,
        family="tracking",
        validator_name="choice",
        validator_args={"letters": False},
        difficulty={"n_people": n_people, "n_swaps": [s_lo, s_hi]},
        build=build,
        description=f"track objects through swaps among {n_people} people",
    )


# --------------------------------------------------------------------------------------
# Simple logic
# --------------------------------------------------------------------------------------

LogicKind = Literal["boolean", "comparison", "syllogism"]
_RELATIONS = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"))
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: Random) -> str:
    syllables = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
    return syllables + rng.choice(_CONSONANTS)


def _bool_expr(rng: Random, n_ops: int) -> tuple[str, bool]:
    """A random expression over True/False with ``n_ops`` binary operators."""
    if n_ops == 0:
        value = rng.random() < 0.5
        text = str(value)
    else:
        left_ops = rng.randint(0, n_ops - 1)
        left, lv = _bool_expr(rng, left_ops)
        right, rv = _bool_expr(rng, n_ops - 1 - left_ops)
        op = rng.choice(("and", "or"))
        value = (lv and rv) if op == "and" else (lv or rv)
        text = f"({left} {op} {right})"
    if rng.random() < 0.25:
        return f"not {text}", not value
    return text, value


def _strip_outer_parens(expr: str) -> str:
    """``(a and (b or c))`` -> ``a and (b or c)``; ``(a) or (b)`` is left alone."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return expr
    depth = 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and i < len(expr) - 1:
            return expr
    return expr[1:-1]


def logic(
    kind: LogicKind = "boolean",
    *,
    size: int = 3,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Simple deductive reasoning with yes/no (or True/False) answers.

    Args:
        kind: ``boolean`` (evaluate an and/or/not expression; answer True/False),
            ``comparison`` (a chain "A is taller than B" ...; is X taller than Y?),
            ``syllogism`` ("All A are B" chains over nonsense words; does it follow that
            all X are Y?).
        size: Difficulty: binary operators for ``boolean``, people in the chain for
            ``comparison``, premises for ``syllogism``.
    """
    if kind not in ("boolean", "comparison", "syllogism"):
        raise TaskError(f"logic kind {kind!r} is unknown; use boolean, comparison or syllogism")
    if size < (1 if kind != "comparison" else 2) or (kind == "comparison" and size > len(NAMES)):
        raise TaskError(f"logic size={size} is out of range for kind {kind!r}")
    cat = category or f"logic_{kind}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        if kind == "boolean":
            expr, value = _bool_expr(rng, size)
            expr = _strip_outer_parens(expr)
            prompt = f"Is the following boolean expression True or False? {expr}"
            return prompt, str(value), {"expression": expr}
        if kind == "comparison":
            more, less = rng.choice(_RELATIONS)
            order = rng.sample(NAMES, size)  # order[0] is the most <more>
            facts = []
            for a, b in itertools.pairwise(order):
                facts.append(
                    f"{a} is {more} than {b}." if rng.random() < 0.5 else f"{b} is {less} than {a}."
                )
            rng.shuffle(facts)
            x, y = rng.sample(order, 2)
            word = more if rng.random() < 0.5 else less
            answer = (order.index(x) < order.index(y)) == (word == more)
            prompt = f"{' '.join(facts)} Is {x} {word} than {y}? Answer yes or no."
            return prompt, "yes" if answer else "no", {"order": order, "relation": [more, less]}
        terms: list[str] = []
        while len(terms) < size + 1:
            word = _pseudo_word(rng)
            if word not in terms:
                terms.append(word)
        premises = [f"All {a}s are {b}s." for a, b in itertools.pairwise(terms)]
        rng.shuffle(premises)
        i, j = rng.sample(range(len(terms)), 2)
        prompt = (
            f"Assume these statements are true: {' '.join(premises)} "
            f"Does it follow that all {terms[i]}s are {terms[j]}s? Answer yes or no."
        )
        return prompt, "yes" if i < j else "no", {"terms": terms}

    return _make_task(
        name=name or cat,
        category=cat,
        family="logic",
        validator_name="yes_no",
        validator_args=None,
        difficulty={"kind": kind, "size": size},
        build=build,
        description=f"simple logic: {kind}",
    )


# --------------------------------------------------------------------------------------
# Format following (sentinel_format)
# --------------------------------------------------------------------------------------

FormatKind = Literal[
    "uppercase_word", "json_answer", "n_items", "lowercase", "n_words", "bullets", "number_only"
]
_ONE_WORD_QA = (
    ("What color is the sky on a clear day?", "blue"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal says 'moo'?", "cow"),
    ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"),
    ("Which planet do we live on?", "earth"),
    ("What is the capital of France?", "paris"),
    ("What do you call a baby cat?", "kitten"),
    ("Which season comes after winter?", "spring"),
    ("What color are ripe bananas?", "yellow"),
    ("What do plants need from the sun?", "light"),
    ("What is the opposite of up?", "down"),
    ("Which fruit keeps the doctor away in the proverb?", "apple"),
    ("What do you use to write on a blackboard?", "chalk"),
    ("What is the largest ocean on Earth?", "pacific"),
    ("Which bird is a symbol of peace?", "dove"),
    ("What do cows drink?", "water"),
    ("What is the first month of the year?", "january"),
)
_NUMBER_QA = (
    ("How many legs does a spider have?", "8"),
    ("How many days are in a week?", "7"),
    ("How many months are in a year?", "12"),
    ("How many sides does a triangle have?", "3"),
    ("How many minutes are in an hour?", "60"),
    ("How many wheels does a bicycle have?", "2"),
    ("How many hours are in a day?", "24"),
    ("How many legs does a dog have?", "4"),
    ("How many sides does a hexagon have?", "6"),
    ("How many continents are there?", "7"),
    ("How many cents are in a dollar?", "100"),
    ("How many players are on a soccer team on the field?", "11"),
    ("At what temperature in Celsius does water freeze?", "0"),
    ("How many letters are in the English alphabet?", "26"),
)
_LIST_TOPICS: dict[str, tuple[str, ...]] = {
    "fruits": ("apple", "pear", "plum", "cherry", "mango", "peach", "grape", "lemon"),
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"),
    "animals": ("dog", "cat", "horse", "rabbit", "tiger", "eagle", "whale", "fox"),
    "vegetables": ("carrot", "potato", "onion", "pea", "leek", "cabbage", "bean", "spinach"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "pliers", "file", "level"),
    "instruments": ("piano", "violin", "guitar", "drum", "flute", "trumpet", "harp", "cello"),
    "drinks": ("water", "tea", "coffee", "milk", "juice", "cocoa", "lemonade", "soda"),
    "sports": ("tennis", "soccer", "golf", "rowing", "cycling", "boxing", "skiing", "hockey"),
}
_SENTENCE_TOPICS = (
    ("Describe the sea in one sentence.", "the sea is wide, blue and always moving."),
    ("Describe a forest in one sentence.", "a forest is a quiet place full of tall trees."),
    ("Say what you like about mornings.", "i like the calm light of early mornings."),
    ("Describe a city at night.", "the city glows with lights long after dark."),
    ("Explain why people drink water.", "people drink water because the body needs it."),
    ("Describe a rainy day.", "rain taps on the windows and the streets shine."),
    ("Describe your favourite season.", "autumn is my favourite season for its colours."),
    ("Say something about cats.", "cats are curious animals that love to nap."),
)
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def format_following(
    kind: FormatKind = "uppercase_word",
    *,
    name: str | None = None,
    category: str | None = None,
) -> Task:
    """Instruction-format following: the reply must have a given *form* (content is free).

    Kinds: ``uppercase_word`` (one upper-case word), ``json_answer`` (a JSON object with key
    ``answer``), ``n_items`` (exactly n comma-separated items), ``lowercase`` (no capital
    letters), ``n_words`` (exactly n words), ``bullets`` (exactly n ``- `` bullet lines),
    ``number_only`` (just a numeral). The target is one valid reply (used as reference
    text); ``format_instruction_validator`` checks ``metadata["format"]``, and
    ``correct == format_ok``. Prompts carry no ``Answer:`` instruction.
    """
    kinds = (
        "uppercase_word",
        "json_answer",
        "n_items",
        "lowercase",
        "n_words",
        "bullets",
        "number_only",
    )
    if kind not in kinds:
        raise TaskError(f"format kind {kind!r} is unknown; use one of {list(kinds)}")
    cat = category or f"format_{kind}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        params: dict[str, Any] = {}
        if kind == "uppercase_word":
            question, answer = rng.choice(_ONE_WORD_QA)
            lead = rng.choice(
                (
                    "Reply with exactly one word in uppercase letters.",
                    "Answer with a single word written in CAPITAL letters and nothing else.",
                )
            )
            prompt, target = f"{lead} {question}", answer.upper()
        elif kind == "json_answer":
            question, answer = rng.choice(_ONE_WORD_QA + _NUMBER_QA)
            params = {"key": "answer"}
            lead = rng.choice(
                (
                    'Reply with only a JSON object with the key "answer".',
                    'Respond with a JSON object of the form {"answer": ...} and nothing else.',
                )
            )
            prompt, target = f"{lead} {question}", f'{{"answer": "{answer}"}}'
        elif kind == "number_only":
            question, answer = rng.choice(_NUMBER_QA)
            lead = rng.choice(
                ("Reply with only a number and nothing else.", "Answer with just the number.")
            )
            prompt, target = f"{lead} {question}", answer
        elif kind == "lowercase":
            task, answer = rng.choice(_SENTENCE_TOPICS)
            lead = rng.choice(
                ("Reply using only lowercase letters.", "Write your whole reply in lowercase.")
            )
            prompt, target = f"{lead} {task}", answer
        else:
            topic = rng.choice(sorted(_LIST_TOPICS))
            n = 3 if kind == "n_items" else rng.randint(2, 5)
            items = rng.sample(_LIST_TOPICS[topic], n)
            params = {"n": n}
            if kind == "n_items":
                prompt = (
                    "Reply with exactly three comma-separated items and nothing else: "
                    f"name three {topic}."
                )
                target = ", ".join(items)
            elif kind == "n_words":
                prompt = (
                    f"Reply with exactly {_NUMBER_WORDS[n]} words and nothing else: "
                    f"name {_NUMBER_WORDS[n]} {topic}."
                )
                target = " ".join(items)
            else:
                prompt = (
                    f"Reply with exactly {_NUMBER_WORDS[n]} bullet points, each starting "
                    f"with '- ': name {_NUMBER_WORDS[n]} {topic}."
                )
                target = "\n".join(f"- {item}" for item in items)
        return prompt, target, {"format": kind, "format_params": params}

    return _make_task(
        name=name or cat,
        category=cat,
        family="format",
        validator_name="format",
        validator_args=None,
        difficulty={"kind": kind},
        build=build,
        description=f"format following: {kind}",
        answer_instruction=False,
    )
