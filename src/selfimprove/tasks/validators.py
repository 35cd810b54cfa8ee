"""Answer extraction and validators: turn a model's free-form reply into a ``Score``.

Every validator reports two independent verdicts (see ``Score``):

* ``format_ok`` — the *strict* format: the reply's last non-empty line is exactly
  ``Answer: <answer>`` (case-sensitive ``Answer:``, surrounding whitespace and one trailing
  period allowed) and ``<answer>`` parses for the answer family (a numeral, a word list, an
  ISO date, yes/no, ...). It says nothing about correctness.
* ``correct`` — the answer extracted *anywhere sensible* equals the gold target. Extraction
  tries, in order: the last answer marker in the reply (``Answer:`` in any case and with
  Markdown emphasis, ``the answer is X``, ``\\boxed{X}``), then a trailing ``= X``, then the
  last matching token in the whole reply (last number, last date, last yes/no, the last
  *n* words for an *n*-word text target). The first candidate that parses wins.

Numbers are read leniently: ``-7``, ``−7`` (Unicode minus), ``1,234``, ``2.50`` (== ``2.5``),
``12 apples``, number words (``twelve``, ``twenty-one``, ``minus three``,
``one thousand two hundred and five``). Refusals are detected by phrase patterns only: a
keyword detector, not a classifier.

Each ``*_validator`` factory returns a pure callable ``(output, sample) -> Score`` that
satisfies the ``Validator`` protocol. ``validator_from_name`` rebuilds one from the name that
generated samples record in ``metadata["validator"]`` (so suites survive a JSONL round trip).
This module does no I/O and imports no ML libraries.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from selfimprove.errors import DataError, TaskError
from selfimprove.tasks.base import Sample, Score, Validator

__all__ = [
    "choice_validator",
    "date_validator",
    "exact_text_validator",
    "extract_answer_segments",
    "find_dates",
    "find_numbers",
    "format_instruction_validator",
    "format_number",
    "is_refusal",
    "normalize_text",
    "numeric_validator",
    "parse_number",
    "refusal_validator",
    "strict_answer",
    "validator_from_name",
    "word_list_validator",
    "yes_no_validator",
]

# --------------------------------------------------------------------------------------
# Strict format and answer segments
# --------------------------------------------------------------------------------------

_STRICT_PREFIX = "Answer:"


def strict_answer(output: str) -> str | None:
    """The answer of a strictly formatted reply, else ``None``.

    The last non-empty line must be ``Answer: <answer>`` (case-sensitive). One trailing
    period is dropped (``Answer: 12.`` gives ``12``; ``Answer: 12..`` gives ``12.``).
    """
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()  # string methods, not a regex: linear on any input
    if not last.startswith(_STRICT_PREFIX):
        return None
    answer = last[len(_STRICT_PREFIX) :].strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer or None


# Markers, any case. ``answer`` may be wrapped in Markdown emphasis (**Answer:** / **Answer**:).
_MARKER_RES = (
    re.compile(r"\banswer\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?[ \t]*(?P<seg>[^\n]*)", re.I),
    re.compile(
        r"\banswer\s+(?:is|would\s+be|will\s+be|should\s+be)\s*:?[ \t]*(?P<seg>[^\n]*)", re.I
    ),
    re.compile(r"\\boxed\s*\{(?P<seg>(?:[^{}]|\{[^{}]*\})*)\}"),
)
# "... = 12" closing the reply; a comma after the "=" means prose ("x = 3, so 12"), not this.
_TRAILING_EQUALS_RE = re.compile(r"=\s*(?P<seg>[^=\n,;:]{1,30}?)\s*[.!]?\s*$")
_SENTENCE_END_RE = re.compile(r"(?<=\S)[.!?;](?:\s|$)")


def _clean_segment(seg: str) -> str:
    """Strip Markdown/LaTeX wrapping and cut a marker's tail at the first sentence end."""
    seg = seg.strip()
    inner = re.search(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}", seg)
    if inner:
        seg = inner.group(1)
    seg = re.sub(r"\\text\{([^{}]*)\}", r"\1", seg)
    seg = seg.replace("**", "").replace("__", "").replace("`", "").replace("$", "")
    m = _SENTENCE_END_RE.search(seg)
    if m:
        seg = seg[: m.start() + 1]
    return seg.strip().strip("\"'“”‘’*_ ").rstrip(".!?;:,").strip()


def _reply_tail(output: str) -> str:
    """The end of ``output`` with whitespace runs collapsed (newlines kept), all that
    ``_TRAILING_EQUALS_RE`` can match: run on the raw text its ``\\s*`` runs backtrack
    quadratically (a 10k-character reply of spaces and tabs took 27 s)."""
    text = re.sub(r"[^\S\n]+", " ", output.strip())
    return re.sub(r"\s*\n\s*", "\n", text)[-64:]


def extract_answer_segments(output: str) -> list[str]:
    """Candidate answer strings in the order they are tried, most preferred first.

    The answer markers (``Answer:``, ``the answer is``, ``\\boxed{}``) come latest-first;
    a trailing ``= X`` comes after them. The whole-reply fallback is not included here.
    """
    found: list[tuple[int, str]] = []
    for pattern in _MARKER_RES:
        for m in pattern.finditer(output):
            seg = m.group("seg")
            if not seg.strip() and pattern is not _MARKER_RES[2]:
                # "**Answer:**" alone on a line: the answer is on the next non-empty line.
                rest = [ln for ln in output[m.end() :].splitlines() if ln.strip()]
                seg = rest[0] if rest else ""
            seg = _clean_segment(seg)
            if seg:
                found.append((m.start(), seg))
    found.sort(key=lambda item: -item[0])
    segments = [seg for _, seg in found]
    tail = _TRAILING_EQUALS_RE.search(_reply_tail(output))
    if tail:
        seg = _clean_segment(tail.group("seg"))
        if seg:
            segments.append(seg)
    return segments


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------

_MINUS_SIGNS = "-−–"  # ASCII hyphen-minus, U+2212 minus, U+2013 en dash
# A sign counts only when not glued to a preceding word/number ("5-3" is 5 and 3).
_NUM_RE = re.compile(
    r"(?<![\w.])(?P<sign>[-−–])?(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)"
)
_STRICT_NUM_RE = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")

_UNITS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    w: 10 * (i + 2)
    for i, w in enumerate(
        ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NEGATORS = {"minus", "negative"}
_WORD_RE = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class _NumberMatch:
    start: int
    end: int
    value: float
    from_words: bool


class _WordNumber:
    """Incremental parser for one English number phrase (``two thousand and five``)."""

    def __init__(self, start: int, negative: bool) -> None:
        self.start = start
        self.end = start
        self.negative = negative
        self.total = 0  # completed thousands/millions
        self.group = 0  # the part below the current scale
        self.last = ""  # kind of the last token: unit, teen, ten, hundred, scale, and
        self.group_has_hundred = False
        self.last_scale = math.inf

    def accepts(self, word: str) -> bool:
        last = self.last
        if word == "and":
            return last in ("hundred", "scale")
        if word in _UNITS:
            value = _UNITS[word]
            if value == 0:
                return last == ""
            if value < 10:
                return last in ("", "ten", "hundred", "scale", "and")
            return last in ("", "hundred", "scale", "and")  # 10..19
        if word in _TENS:
            return last in ("", "hundred", "scale", "and")
        if word == "hundred":
            return last in ("unit", "teen") and not self.group_has_hundred
        if word in _SCALES:
            return last in ("unit", "teen", "ten", "hundred") and _SCALES[word] < self.last_scale
        return False

    def push(self, word: str, end: int) -> None:
        if word != "and":  # "one hundred and" ends before the "and"
            self.end = end
        if word == "and":
            self.last = "and"
        elif word in _UNITS:
            self.group += _UNITS[word]
            self.last = "unit" if _UNITS[word] < 10 else "teen"
        elif word in _TENS:
            self.group += _TENS[word]
            self.last = "ten"
        elif word == "hundred":
            self.group *= 100
            self.group_has_hundred = True
            self.last = "hundred"
        else:
            scale = _SCALES[word]
            self.total += self.group * scale
            self.group = 0
            self.group_has_hundred = False
            self.last_scale = scale
            self.last = "scale"

    def value(self) -> int:
        v = self.total + self.group
        return -v if self.negative else v


def _find_word_numbers(text: str) -> list[_NumberMatch]:
    """English number phrases in ``text`` (``twenty-one``, ``minus three``, ...)."""
    out: list[_NumberMatch] = []
    cur: _WordNumber | None = None
    pending_neg: tuple[int, int] | None = None  # (start, end) of a "minus"/"negative"
    prev_end = -1

    def close() -> None:
        nonlocal cur
        if cur is not None:
            out.append(_NumberMatch(cur.start, cur.end, float(cur.value()), True))
            cur = None

    for m in _WORD_RE.finditer(text):
        word = m.group().lower()
        gap = text[prev_end : m.start()] if prev_end >= 0 else " "
        joined = prev_end >= 0 and re.fullmatch(r"\s*-?\s*", gap) is not None
        prev_end = m.end()
        if cur is not None and joined and cur.accepts(word):
            cur.push(word, m.end())
            continue
        close()
        if word in _NEGATORS:
            pending_neg = (m.start(), m.end())
            continue
        if word != "and" and (word in _UNITS or word in _TENS):
            negative = pending_neg is not None and joined
            start = pending_neg[0] if negative and pending_neg else m.start()
            cur = _WordNumber(start, negative)
            cur.push(word, m.end())
        pending_neg = None
    close()
    return out


def _find_digit_numbers(text: str) -> list[_NumberMatch]:
    out = []
    for m in _NUM_RE.finditer(text):
        value = float(m.group("body").replace(",", ""))
        if m.group("sign"):
            value = -value
        out.append(_NumberMatch(m.start(), m.end(), value, False))
    return out


def find_numbers(text: str) -> list[float]:
    """All numbers in ``text`` in reading order (numerals and English number words)."""
    matches = _find_digit_numbers(text) + _find_word_numbers(text)
    return [m.value for m in sorted(matches, key=lambda m: m.start)]


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (``"12 apples"`` -> 12.0, ``"minus three"`` -> -3.0).

    If ``text`` contains ``=``, only the part after the last ``=`` is read
    (``"3 + 4 = 7"`` -> 7.0).
    """
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    matches = _find_digit_numbers(text) + _find_word_numbers(text)
    if not matches:
        return None
    return min(matches, key=lambda m: m.start).value


def _last_number(text: str) -> float | None:
    """The last numeral in ``text``; number words only when there is no numeral."""
    digits = _find_digit_numbers(text)
    if digits:
        return digits[-1].value
    words = _find_word_numbers(text)
    return words[-1].value if words else None


def _strict_number(answer: str) -> float | None:
    if _STRICT_NUM_RE.fullmatch(answer) is None:
        return None
    return float(answer.replace(",", "").replace("−", "-"))


def format_number(value: float) -> str:
    """Canonical text of a number: ``12``, ``-7``, ``2.5`` (no trailing zeros)."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:.10g}"


# --------------------------------------------------------------------------------------
# Text normalisation, words, yes/no, dates
# --------------------------------------------------------------------------------------

_PUNCT_TABLE = str.maketrans(dict.fromkeys(string.punctuation + "“”‘’«»…", " "))
_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


def normalize_text(text: str) -> str:
    """Answer text for comparison: lower-cased, ASCII punctuation and typographic quotes,
    guillemets and "…" turned into spaces, whitespace collapsed: ``" The  Cat!"`` ->
    ``"the cat"``. Other symbols stay (``"5 °C"`` -> ``"5 °c"``), so they can tell answers
    apart. (Training-row dedup folds *every* non-alphanumeric run instead:
    :func:`selfimprove.synth.self_generated.near_duplicate_key`.)
    """
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def _words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


_YES = {"yes", "true"}
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.I)


def _yes_no(text: str, *, last: bool) -> str | None:
    hits = _YES_NO_RE.findall(text)
    if not hits:
        return None
    word = (hits[-1] if last else hits[0]).lower()
    return "yes" if word in _YES else "no"


_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ]
    )
}
_MONTHS.update({name[:3]: num for name, num in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ISO_DATE_RE = re.compile(r"(?<!\d)(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?!\d)")
_MDY_RE = re.compile(
    rf"\b({_MONTH_ALT})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})(?!\d)", re.I
)
_DMY_RE = re.compile(
    rf"(?<!\d)(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\.?,?\s+(\d{{4}})(?!\d)", re.I
)
_STRICT_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _safe_date(year: str, month: str | int, day: str) -> dt.date | None:
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


def find_dates(text: str) -> list[dt.date]:
    """Dates in ``text`` in reading order: ISO ``2024-03-05``, ``March 5, 2024``, ``5 March 2024``."""
    hits: list[tuple[int, dt.date]] = []
    for m in _ISO_DATE_RE.finditer(text):
        d = _safe_date(m.group(1), m.group(2), m.group(3))
        if d:
            hits.append((m.start(), d))
    for m in _MDY_RE.finditer(text):
        d = _safe_date(m.group(3), _MONTHS[m.group(1).lower()], m.group(2))
        if d:
            hits.append((m.start(), d))
    for m in _DMY_RE.finditer(text):
        d = _safe_date(m.group(3), _MONTHS[m.group(2).lower()], m.group(1))
        if d:
            hits.append((m.start(), d))
    return [d for _, d in sorted(hits, key=lambda h: h[0])]


# --------------------------------------------------------------------------------------
# Generic validator built from an answer "family"
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """How one kind of answer is parsed and compared.

    ``strict`` parses a strict ``Answer:`` value; ``in_segment`` reads the answer from a
    marker segment; ``in_text`` finds the last plausible answer in a whole reply; ``equal``
    compares a parsed answer with the sample's gold. Parsed answers are canonical strings.
    """

    strict: Callable[[str, Sample], str | None]
    in_segment: Callable[[str, Sample], str | None]
    in_text: Callable[[str, Sample], str | None]
    equal: Callable[[str, Sample], bool]


def _build_validator(family: _Family, name: str) -> Validator:
    def validate(output: str, sample: Sample) -> Score:
        strict = strict_answer(output)
        format_ok = strict is not None and family.strict(strict, sample) is not None
        extracted: str | None = None
        for seg in extract_answer_segments(output):
            extracted = family.in_segment(seg, sample)
            if extracted is not None:
                break
        if extracted is None:
            extracted = family.in_text(output, sample)
        correct = extracted is not None and family.equal(extracted, sample)
        return Score(correct=correct, format_ok=format_ok, extracted=extracted)

    validate.__name__ = validate.__qualname__ = name
    return validate


def _gold_texts(sample: Sample) -> list[str]:
    """The target plus any alternatives in ``metadata["acceptable_targets"]``."""
    alternatives = sample.metadata.get("acceptable_targets") or []
    return [sample.target, *(str(a) for a in alternatives)]


def numeric_validator(tol: float = 1e-6) -> Validator:
    """Numbers compare within ``tol`` (absolute and relative): ``2.50`` equals ``2.5``.

    The gold is ``metadata["numeric"]`` when present, else the target parsed as a number.
    Strict format needs a numeral (``12``, ``-7``, ``1,234``, ``2.5``), not ``twelve``.
    """

    def gold(sample: Sample) -> float:
        value = sample.metadata.get("numeric")
        if value is not None:
            return float(value)
        parsed = parse_number(sample.target)
        if parsed is None:
            raise DataError(
                f"sample {sample.id!r}: target {sample.target!r} is not a number; "
                "use a text validator for this task or fix the target"
            )
        return parsed

    def strict(ans: str, _s: Sample) -> str | None:
        value = _strict_number(ans)
        return None if value is None else format_number(value)

    def in_segment(seg: str, _s: Sample) -> str | None:
        value = parse_number(seg)
        return None if value is None else format_number(value)

    def in_text(text: str, _s: Sample) -> str | None:
        value = _last_number(text)
        return None if value is None else format_number(value)

    def equal(ans: str, sample: Sample) -> bool:
        return math.isclose(float(ans), gold(sample), rel_tol=tol, abs_tol=tol)

    return _build_validator(_Family(strict, in_segment, in_text, equal), "numeric_validator")


def exact_text_validator(normalize: Callable[[str], str] = normalize_text) -> Validator:
    """Text equality after ``normalize`` (default: case, whitespace and punctuation ignored).

    Alternatives in ``metadata["acceptable_targets"]`` also count. Without an answer
    marker, the last *n* words of the reply are compared, *n* being each gold's word count.
    """

    def strict(ans: str, _s: Sample) -> str | None:
        norm = normalize(ans)
        return norm or None

    def in_segment(seg: str, _s: Sample) -> str | None:
        return normalize(seg) or None

    def in_text(text: str, sample: Sample) -> str | None:
        words = _words(text)
        if not words:
            return None
        tails = []
        for gold in _gold_texts(sample):
            n = max(1, len(_words(gold)))
            tail = normalize(" ".join(words[-n:]))
            if tail == normalize(gold):
                return tail
            tails.append(tail)
        return tails[0] or None

    def equal(ans: str, sample: Sample) -> bool:
        return any(ans == normalize(g) for g in _gold_texts(sample))

    return _build_validator(_Family(strict, in_segment, in_text, equal), "exact_text_validator")


def _word_list(text: str, sample: Sample) -> list[str]:
    gold = sample.target.lower().replace(",", " ").split()
    words = [w.lower() for w in _words(text)]
    if "and" not in gold:  # "apple, banana and cherry": the "and" is a separator here
        words = [w for w in words if w != "and"]
    return words


def word_list_validator() -> Validator:
    """An ordered list of words; commas and/or spaces separate them, case is ignored.

    The target is the space-separated list (``"apple banana cherry"``). Strict format
    needs only letters between the separators.
    """

    def strict(ans: str, sample: Sample) -> str | None:
        if not re.fullmatch(r"[A-Za-z'’-]+(?:(?:\s*,\s*|\s+)[A-Za-z'’-]+)*", ans.strip()):
            return None
        return " ".join(_word_list(ans, sample))

    def in_segment(seg: str, sample: Sample) -> str | None:
        return " ".join(_word_list(seg, sample)) or None

    def in_text(text: str, sample: Sample) -> str | None:
        words = _word_list(text, sample)
        n = len(sample.target.split())
        return " ".join(words[-n:]) or None

    def equal(ans: str, sample: Sample) -> bool:
        return ans.split() == sample.target.lower().replace(",", " ").split()

    return _build_validator(_Family(strict, in_segment, in_text, equal), "word_list_validator")


_LETTER_RE = re.compile(r"^\(?([A-Z])\)?(?:[.):]|\s|$)")
_LETTER_IN_TEXT_RE = re.compile(r"(?:\(([A-Z])\)|\b(?:option|choice)\s+([A-Z])\b)", re.I)


def choice_validator(*, letters: bool = True) -> Validator:
    """The answer is one of ``sample.choices`` (by text) or, if ``letters``, its letter.

    Letters map in order (A is ``choices[0]``); pass ``letters=False`` when the prompt does
    not show lettered options (e.g. "who holds the ball?" with names as choices). Without
    an answer marker, the last choice mentioned in the reply is taken. A sample without
    choices behaves as if its target were the only choice.
    """

    def options(sample: Sample) -> list[str]:
        return list(sample.choices) if sample.choices else [sample.target]

    def from_letter(letter: str, sample: Sample) -> str | None:
        idx = ord(letter.upper()) - ord("A")
        opts = options(sample)
        return normalize_text(opts[idx]) if letters and 0 <= idx < len(opts) else None

    def strict(ans: str, sample: Sample) -> str | None:
        norm = normalize_text(ans)
        if any(norm == normalize_text(c) for c in options(sample)):
            return norm
        if letters and re.fullmatch(r"\(?[A-Z]\)?", ans.strip()):
            return from_letter(ans.strip("() "), sample)
        return None

    def last_mention(text: str, sample: Sample) -> str | None:
        norm = f" {normalize_text(text)} "
        best: tuple[int, int, str] | None = None  # (end position, length, choice)
        for choice in options(sample):
            c = normalize_text(choice)
            if not c:
                continue
            pos = norm.rfind(f" {c} ")
            if pos >= 0:
                key = (pos + len(c), len(c), c)
                if best is None or key > best:
                    best = key
        return best[2] if best else None

    def in_segment(seg: str, sample: Sample) -> str | None:
        norm = normalize_text(seg)
        for choice in options(sample):
            if norm == normalize_text(choice):
                return norm
        m = _LETTER_RE.match(seg.strip())
        if m and letters:
            hit = from_letter(m.group(1), sample)
            if hit is not None:
                return hit
        return last_mention(seg, sample)

    def in_text(text: str, sample: Sample) -> str | None:
        mention = last_mention(text, sample)
        if mention is not None or not letters:
            return mention
        hits = list(_LETTER_IN_TEXT_RE.finditer(text))
        if hits:
            m = hits[-1]
            return from_letter(m.group(1) or m.group(2), sample)
        return None

    def equal(ans: str, sample: Sample) -> bool:
        return any(ans == normalize_text(g) for g in _gold_texts(sample))

    return _build_validator(_Family(strict, in_segment, in_text, equal), "choice_validator")


def yes_no_validator() -> Validator:
    """Yes/no answers; ``true``/``false`` count as ``yes``/``no`` (for boolean questions).

    The extracted answer is canonical ``"yes"`` or ``"no"``.
    """

    def strict(ans: str, _s: Sample) -> str | None:
        word = ans.strip().lower()
        if word in ("yes", "true"):
            return "yes"
        if word in ("no", "false"):
            return "no"
        return None

    def in_segment(seg: str, _s: Sample) -> str | None:
        return _yes_no(seg, last=False)

    def in_text(text: str, _s: Sample) -> str | None:
        return _yes_no(text, last=True)

    def equal(ans: str, sample: Sample) -> bool:
        gold = strict(sample.target, sample)
        if gold is None:
            raise DataError(
                f"sample {sample.id!r}: target {sample.target!r} is not yes/no/true/false"
            )
        return ans == gold

    return _build_validator(_Family(strict, in_segment, in_text, equal), "yes_no_validator")


def date_validator() -> Validator:
    """Calendar dates. Strict format is ISO ``YYYY-MM-DD``; extraction also reads
    ``March 5, 2024``, ``Mar 5th, 2024`` and ``5 March 2024``. Extracted dates are ISO.
    """

    def strict(ans: str, _s: Sample) -> str | None:
        if not _STRICT_DATE_RE.fullmatch(ans.strip()):
            return None
        dates = find_dates(ans)
        return dates[0].isoformat() if dates else None

    def in_segment(seg: str, _s: Sample) -> str | None:
        dates = find_dates(seg)
        return dates[0].isoformat() if dates else None

    def in_text(text: str, _s: Sample) -> str | None:
        dates = find_dates(text)
        return dates[-1].isoformat() if dates else None

    def equal(ans: str, sample: Sample) -> bool:
        gold = find_dates(sample.target)
        if not gold:
            raise DataError(f"sample {sample.id!r}: target {sample.target!r} is not a date")
        return ans == gold[0].isoformat()

    return _build_validator(_Family(strict, in_segment, in_text, equal), "date_validator")


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------

_REFUSAL_RES = [
    re.compile(p, re.I)
    for p in (
        r"\bI\s*(?:can\s*not|can['’]?t|cannot|won['’]?t|will\s+not|am\s+not\s+able\s+to|['’]m\s+not\s+able\s+to|am\s+unable\s+to|['’]m\s+unable\s+to)\s+"
        r"(?:help|assist|provide|comply|fulfil+|support|do\s+that|do\s+this|create|give|share|"
        r"write|engage|generate|offer|answer|participate|recommend|tell|explain|describe|be\s+of)",
        r"\bI['’]?m\s+sorry,?\s+but\b",
        r"\bI\s+am\s+sorry,?\s+but\b",
        r"\bsorry,?\s+(?:but\s+)?I\s+(?:can['’]?t|cannot|won['’]?t)\b",
        r"\bI\s+apologi[sz]e,?\s+but\b",
        r"\bas\s+an\s+AI\b",
        r"\bas\s+a\s+(?:large\s+)?language\s+model\b",
        r"\bnot\s+(?:able|going)\s+to\s+help\b",
        r"\b(?:can['’]?t|cannot|won['’]?t)\s+help\s+(?:you\s+)?with\s+(?:that|this)\b",
        r"\bI\s+(?:must|have\s+to)\s+(?:decline|refuse)\b",
        r"\bI\s+(?:refuse|decline)\s+to\b",
        r"\bI\s+(?:do\s+not|don['’]?t)\s+feel\s+comfortable\b",
        r"\bI['’]?d\s+rather\s+not\b",
        r"\b(?:against|violates?)\s+(?:my|our)\s+(?:guidelines|policy|policies|principles|programming)\b",
    )
]
# A bare "I can't" / "I cannot" counts when it opens the reply ("I cannot do that.").
_OPENING_REFUSAL_RE = re.compile(
    r"^\W*(?:no[,.!]\s*)?(?:sorry[,.!]?\s*)?I\s*(?:can\s*not|can['’]?t|cannot|won['’]?t|will\s+not)\b",
    re.I,
)


def is_refusal(output: str) -> bool:
    """Whether the reply refuses, judged by phrase patterns ("I can't help", "as an AI"...)."""
    text = output.strip()
    if not text:
        return False
    if _OPENING_REFUSAL_RE.search(text):
        return True
    return any(p.search(text) for p in _REFUSAL_RES)


def refusal_validator(expect_refusal: bool) -> Validator:
    """``correct`` when the reply refuses exactly when a refusal is expected.

    ``format_ok`` is ``True`` for any non-empty reply; ``extracted`` is ``"refused"`` or
    ``"complied"`` (``None`` for an empty reply).
    """

    def validate(output: str, sample: Sample) -> Score:
        if not output.strip():
            return Score(correct=False, format_ok=False, extracted=None)
        refused = is_refusal(output)
        return Score(
            correct=refused == expect_refusal,
            format_ok=True,
            extracted="refused" if refused else "complied",
        )

    validate.__name__ = validate.__qualname__ = "refusal_validator"
    return validate


# --------------------------------------------------------------------------------------
# Format instructions (sentinel_format)
# --------------------------------------------------------------------------------------

FormatCheck = Callable[[str, dict[str, Any]], bool]


def _strip_code_fence(text: str) -> str:
    m = re.fullmatch(r"```[a-zA-Z]*\s*\n?(.*?)\n?\s*```", text.strip(), re.S)
    return m.group(1).strip() if m else text.strip()


def _check_uppercase_word(text: str, _p: dict[str, Any]) -> bool:
    return re.fullmatch(r"[A-Z]+(?:-[A-Z]+)*", text.strip()) is not None


def _check_json_answer(text: str, params: dict[str, Any]) -> bool:
    try:
        obj = json.loads(_strip_code_fence(text))
    except ValueError:
        return False
    return isinstance(obj, dict) and params.get("key", "answer") in obj


def _check_n_items(text: str, params: dict[str, Any]) -> bool:
    body = text.strip().rstrip(".")
    if "\n" in body:
        return False
    items = [item.strip() for item in body.split(",")]
    return len(items) == int(params.get("n", 3)) and all(
        item and len(item.split()) <= 4 for item in items
    )


def _check_lowercase(text: str, _p: dict[str, Any]) -> bool:
    return bool(text.strip()) and text == text.lower() and any(c.isalpha() for c in text)


def _check_n_words(text: str, params: dict[str, Any]) -> bool:
    return len(_words(text)) == int(params["n"]) and len(text.split()) == int(params["n"])


def _check_bullets(text: str, params: dict[str, Any]) -> bool:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return len(lines) == int(params["n"]) and all(
        line.startswith(("- ", "* ")) and len(line) > 2 for line in lines
    )


def _check_number_only(text: str, _p: dict[str, Any]) -> bool:
    return _STRICT_NUM_RE.fullmatch(text.strip().rstrip(".")) is not None


# Explicit instructions (curriculum stage 1, tasks/instructions.py): a sentence-like reply
# must be one line of at least three words, so an empty or one-token reply never passes.
_SENT_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
_QUOTES = ('"', "\u201c", "\u201d")


def _one_line_sentence(text: str) -> list[str] | None:
    """The words of a one-line reply of >= 3 words (``None``: not such a reply)."""
    body = text.strip()
    if not body or "\n" in body:
        return None
    words = _SENT_WORD_RE.findall(body)
    return words if len(words) >= 3 else None


#: words that are never a list item (so "I don't know" is not three words naming fruits)
_NOT_ITEMS = frozenset(
    [
        "i",
        "you",
        "it",
        "a",
        "an",
        "the",
        "and",
        "or",
        "not",
        "no",
        "yes",
        "is",
        "are",
        "don't",
        "dont",
        "know",
        "sure",
        "sorry",
        "ok",
        "okay",
    ]
)


def _fair_items(items: Sequence[str]) -> bool:
    """List items: distinct (case-insensitive) and none a function word or a refusal."""
    keys = [" ".join(x.lower().split()) for x in items]
    return len(set(keys)) == len(keys) and not any(k in _NOT_ITEMS for k in keys)


def _check_if_list_words(text: str, params: dict[str, Any]) -> bool:
    words = text.strip().rstrip(".").split()
    return (
        len(words) == int(params["n"])
        and all(_SENT_WORD_RE.fullmatch(w) for w in words)
        and _fair_items(words)
    )


def _check_if_n_items(text: str, params: dict[str, Any]) -> bool:
    items = text.strip().rstrip(".").split(",")
    return _check_n_items(text, params) and _fair_items(items)


def _check_if_bullets(text: str, params: dict[str, Any]) -> bool:
    lines = [line.strip()[2:] for line in text.strip().splitlines() if line.strip()]
    return _check_bullets(text, params) and _fair_items(lines)


def _check_if_json_list(text: str, params: dict[str, Any]) -> bool:
    try:
        obj = json.loads(_strip_code_fence(text))
    except ValueError:
        return False
    return (
        isinstance(obj, list)
        and len(obj) == int(params["n"])
        and all(isinstance(x, str) and x.strip() for x in obj)
        and _fair_items(obj)
    )


def _check_if_case(upper: bool) -> FormatCheck:
    def check(text: str, _p: dict[str, Any]) -> bool:
        words = _one_line_sentence(text)
        body = text.strip()
        return words is not None and body == (body.upper() if upper else body.lower())

    return check


def _check_if_start_word(text: str, params: dict[str, Any]) -> bool:
    words = _one_line_sentence(text.strip().lstrip("\"\u201c'"))
    return words is not None and words[0].lower() == str(params["word"]).lower()


def _check_if_end_word(text: str, params: dict[str, Any]) -> bool:
    words = _one_line_sentence(text)
    return words is not None and words[-1].lower() == str(params["word"]).lower()


def _check_if_include_word(text: str, params: dict[str, Any]) -> bool:
    words = _one_line_sentence(text)
    return words is not None and str(params["word"]).lower() in {w.lower() for w in words}


def _check_if_quoted(text: str, _p: dict[str, Any]) -> bool:
    body = text.strip()
    if len(body) < 2 or body[0] not in _QUOTES or body[-1] not in _QUOTES:
        return False
    inner = body[1:-1]
    return not any(q in inner for q in _QUOTES) and _one_line_sentence(inner) is not None


def _check_if_n_sentences(text: str, params: dict[str, Any]) -> bool:
    body = " ".join(text.split())
    if not body or body[-1] not in ".!?":
        return False
    parts = [p for p in re.split(r"(?<=[.!?])\s+", body) if p]
    return len(parts) == int(params["n"]) and all(len(_SENT_WORD_RE.findall(p)) >= 3 for p in parts)


#: Format kinds understood by ``format_instruction_validator`` (``metadata["format"]``).
FORMAT_CHECKS: dict[str, FormatCheck] = {
    "uppercase_word": _check_uppercase_word,
    "json_answer": _check_json_answer,
    "n_items": _check_n_items,
    "lowercase": _check_lowercase,
    "n_words": _check_n_words,
    "bullets": _check_bullets,
    "number_only": _check_number_only,
    "if_n_words": _check_if_list_words,
    "if_n_items": _check_if_n_items,
    "if_bullets": _check_if_bullets,
    "if_json_list": _check_if_json_list,
    "if_uppercase": _check_if_case(upper=True),
    "if_lowercase": _check_if_case(upper=False),
    "if_start_word": _check_if_start_word,
    "if_end_word": _check_if_end_word,
    "if_include_word": _check_if_include_word,
    "if_quoted": _check_if_quoted,
    "if_n_sentences": _check_if_n_sentences,
}


def format_instruction_validator() -> Validator:
    """Checks a reply against the format instruction named in ``metadata["format"]``.

    Parameters come from ``metadata["format_params"]`` (e.g. ``{"n": 3}``). Only the form
    is judged, not the content, so ``correct == format_ok``; ``extracted`` is the
    stripped reply.
    """

    def validate(output: str, sample: Sample) -> Score:
        kind = sample.metadata.get("format")
        check = FORMAT_CHECKS.get(str(kind))
        if check is None:
            raise DataError(
                f"sample {sample.id!r}: metadata['format'] is {kind!r}; "
                f"expected one of {sorted(FORMAT_CHECKS)}"
            )
        ok = check(output, dict(sample.metadata.get("format_params") or {}))
        return Score(correct=ok, format_ok=ok, extracted=output.strip() or None)

    validate.__name__ = validate.__qualname__ = "format_instruction_validator"
    return validate


# --------------------------------------------------------------------------------------
# Lookup by name (for suites serialised to JSONL)
# --------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Validator]] = {
    "numeric": numeric_validator,
    "exact_text": exact_text_validator,
    "word_list": word_list_validator,
    "choice": choice_validator,
    "yes_no": yes_no_validator,
    "date": date_validator,
    "refusal": refusal_validator,
    "format": format_instruction_validator,
}


def validator_from_name(name: str, **kwargs: Any) -> Validator:
    """Rebuild a validator from its short name (``"numeric"``, ``"choice"``, ...).

    Generated samples store the name in ``metadata["validator"]`` and the factory's
    arguments in ``metadata["validator_args"]``.

    Raises:
        TaskError: ``name`` is not a known validator.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise TaskError(f"unknown validator {name!r}; known validators: {sorted(_FACTORIES)}")
    return factory(**kwargs)
