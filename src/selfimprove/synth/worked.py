"""Worked solutions: a short, verified derivation before the final ``Answer:`` line.

Why: a templated completion ``Answer: 27`` teaches the model to answer at once. Measured on
SmolLM2-135M (loop run 20261126-0115, round 1): after training on such completions the model
stopped restating the problem (``3 * 9 = 27`` became ``Answer: 9``) and sentinel_math fell
from 28% to 9% (exact McNemar p = 0.016), although no arithmetic was trained. A derivation
written from the generator's own metadata keeps the steps the model needs and teaches the
procedure of the target family instead of its answers only.

:func:`worked_solution` writes the derivation for the families whose metadata carries the
problem (arithmetic, counting, word_sort, letters, units, tracking, date arithmetic); other
families (weekday, logic) get ``None``. :func:`training_completion` puts it before the task's reference completion and
keeps it only if the task's validator still accepts the whole completion.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from selfimprove.tasks.base import Sample, Task

_SYM = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _letters(cat: str, md: dict[str, Any], target: str) -> str | None:
    if cat == "first_letters" and "words" in md:
        return ", ".join(f"{w} → {w[0]}" for w in md["words"]) + f". Joined: {target}."
    w = md.get("word")
    if not w:
        return None
    spelled = "-".join(w)
    if cat == "reverse_word":
        return f"The letters of '{w}' are {spelled}. Backwards: {'-'.join(w[::-1])}."
    if cat == "kth_letter" and "k" in md:
        k = int(md["k"])
        pos = ", ".join(f"{i}: {c}" for i, c in enumerate(w, 1))
        return f"The letters of '{w}' by position: {pos}. The {_ordinal(k)} letter is {w[k - 1]}."
    if cat == "word_length":
        return f"'{w}' is spelled {spelled}: {len(w)} letters."
    return None


def _tracking(md: dict[str, Any], target: str) -> str | None:
    people, colors, swaps = md.get("people"), md.get("colors"), md.get("swaps")
    if not (people and colors and swaps is not None):
        return None
    has = dict(zip(people, colors, strict=True))
    lines = ["Start: " + ", ".join(f"{p} has {c}" for p, c in has.items()) + "."]
    for x, y in swaps:
        has[x], has[y] = has[y], has[x]
        lines.append(f"{x} and {y} swap: {x} has {has[x]}, {y} has {has[y]}.")
    if target not in has:
        return None
    return " ".join(lines) + f" So {target} has the {has[target]} ball."


def _month_days(y: int, m: int) -> int:
    return calendar.monthrange(y, m)[1]


def _dates(cat: str, md: dict[str, Any], target: str) -> str | None:
    """Day-of-month arithmetic with one line per month boundary crossed (date_add_days,
    date_sub_days, date_add_weeks); the last line names the date in ISO form.

    ``None`` for week offsets that cross more than one month boundary (and day offsets
    past two): a longer walk (~100+ tokens, digits tokenize one by one) would not fit the
    evaluation's 96-token generation cap, so such items are trained on their answer alone."""
    if "date" not in md or "offset" not in md:
        return None
    start, k = dt.date.fromisoformat(md["date"]), int(md["offset"])
    y, m, d = start.year, start.month, start.day
    head = ""
    if cat == "date_add_weeks":
        head, n, sign = f"{k} week{'s' * (k != 1)} = {k} × 7 = {7 * k} days. ", 7 * k, 1
    elif cat in ("date_add_days", "date_sub_days"):
        n, sign = k, (1 if cat == "date_add_days" else -1)
    else:
        return None
    name = calendar.month_name
    if sign > 0:
        t = d + n
        lines = [f"{head}Day {d} + {n} = {t}."]
        while t > _month_days(y, m):
            L = _month_days(y, m)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
            lines.append(f"{name[m - 1 or 12]} has {L} days: {t} - {L} = {t - L}, in {name[m]}.")
            t -= L
    else:
        t = d - n
        lines = [f"{head}Day {d} - {n} = {t}."]
        while t < 1:
            y, m = (y - 1, 12) if m == 1 else (y, m - 1)
            L = _month_days(y, m)
            lines.append(f"Back into {name[m]} ({L} days): {t} + {L} = {t + L}.")
            t += L
    end = dt.date(y, m, t).isoformat()
    if end != target or len(lines) > (2 if head else 3):
        return None
    return " ".join(lines) + f" So the date is {end}."


def worked_solution(sample: Sample) -> str | None:
    """A derivation of ``sample.target`` from the generator's metadata, or ``None``."""
    md = sample.metadata or {}
    fam, cat, target = md.get("family"), str(md.get("category", "")), sample.target
    if fam == "arithmetic" and {"a", "b", "op"} <= md.keys():
        a, b, op = int(md["a"]), int(md["b"]), md["op"]
        val = {"add": a + b, "sub": a - b, "mul": a * b}.get(op) if op != "div" else None
        if op == "div" and b and a % b == 0:
            val = a // b
        if val is None or str(val) != target:
            return None
        return f"{a} {_SYM[op]} {b} = {val}"
    if fam == "counting" and "items" in md and "item" in md:
        n, marked = 0, []
        for x in md["items"]:
            if x == md["item"]:
                n += 1
                marked.append(f"{x} ({n})")
            else:
                marked.append(str(x))
        if str(n) != target:
            return None
        times = "time" if n == 1 else "times"
        return f"Going through the list: {', '.join(marked)}. '{md['item']}' appears {n} {times}."
    if fam == "word_sort" and "words" in md:
        if " ".join(sorted(md["words"])) != target:
            return None
        firsts = ", ".join(f"{w} ({w[0]})" for w in md["words"])
        return f"First letters: {firsts}. In alphabetical order: {' '.join(sorted(md['words']))}."
    if fam == "letters":
        w = md.get("word") or ""
        expect = {
            "reverse_word": w[::-1],
            "word_length": str(len(w)),
            "kth_letter": w[int(md.get("k", 1)) - 1] if w else "",
            "first_letters": "".join(x[0] for x in md.get("words", [])),
        }.get(cat)
        return _letters(cat, md, target) if expect == target else None
    if fam == "units" and {"value", "from_unit", "to_unit", "numeric"} <= md.keys():
        value, ans = float(md["value"]), float(md["numeric"])
        factor = ans / value if value else 0.0
        if not value or _num(ans) != target:
            return None
        return (
            f"{md['from_unit']} to {md['to_unit']}: multiply by {_num(factor)}. "
            f"{_num(value)} × {_num(factor)} = {_num(ans)} {md['to_unit']}."
        )
    if fam == "tracking":
        return _tracking(md, target)
    if fam == "dates":
        return _dates(cat, md, target)
    return None


def training_completion(task: Task, sample: Sample, *, worked: bool = True) -> str:
    """The completion to train on: derivation + reference when it validates, else reference.

    Every derivation recomputes its result from the metadata and is dropped (``None``) when
    it disagrees with the target, so a derivation never contradicts its own answer line.
    """
    ref = task.reference(sample)
    if not worked or not ref.startswith("Answer:"):
        return ref
    steps = worked_solution(sample)
    if not steps:
        return ref
    text = f"{steps}\n{ref}"
    if task.validator is not None and not task.score(text, sample).correct:
        return ref
    return text
