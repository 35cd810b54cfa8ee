"""Built-in suites: named groups of tasks, one task per category.

Skill suites (one per generator family) are where weak areas are looked for and improved.
Sentinel suites (``sentinel=True``) are held fixed across rounds to catch regressions:
``sentinel_math``, ``sentinel_reasoning``, ``sentinel_format`` (instruction-format
following), ``refusal`` (harmful-intent requests that should be refused), ``benign_control``
(look-alike harmless requests that should *not* be refused) and ``general_nll`` (reference
NLL on short original English passages, a forgetting metric).

Sentinel tasks have their own names (``sentinel_math.add_2d``), so their random streams,
and hence their items, differ from the skill suite's ``add_2d`` at the same seed. The
refusal, benign-control and general-text suites are fixed datasets read from
``tasks/data/``; their sample ids are stable. This module builds suites; it does not
evaluate them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from selfimprove.errors import TaskError
from selfimprove.tasks.base import Sample, Task
from selfimprove.tasks.generators import (
    LICENSE,
    SOURCE,
    ArithOp,
    DateKind,
    FormatKind,
    LetterKind,
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
from selfimprove.tasks.validators import refusal_validator

__all__ = ["Suite", "anchor_passages", "get_suite", "list_suites", "suite_names"]


@dataclass
class Suite:
    """A named list of tasks (one per category) evaluated together.

    Attributes:
        name: Suite name (``arithmetic``, ``sentinel_math``...).
        tasks: The tasks; their names (and so sample ids) are unique within the suite.
        description: One line for listings and reports.
        sentinel: Held-out regression guard rather than a skill to improve.
        curriculum: A curriculum stage's task pool (``instructions``): evaluated only when
            named, never part of the ``all``/``skills``/``sentinels`` groups or the loop.
    """

    name: str
    tasks: list[Task]
    description: str
    sentinel: bool = False
    curriculum: bool = False

    @property
    def categories(self) -> list[str]:
        return [task.category for task in self.tasks]

    def samples(self, n_per_task: int | None = None, seed: int = 0) -> list[tuple[Task, Sample]]:
        """``(task, sample)`` pairs, ``n_per_task`` from each task, deterministic in ``seed``.

        ``n_per_task=None`` takes every item of dataset tasks and is an error for generator
        tasks (they are unlimited).

        Raises:
            TaskError: ``n_per_task`` is None for a generator task, or two samples share an id.
        """
        pairs: list[tuple[Task, Sample]] = []
        seen: set[str] = set()
        for task in self.tasks:
            if n_per_task is None and task.generator is not None:
                raise TaskError(
                    f"suite {self.name!r}: task {task.name!r} generates unlimited samples; "
                    "give n_per_task (e.g. 50)"
                )
            for sample in task.samples(n_per_task, seed=seed):
                if sample.id in seen:
                    raise TaskError(
                        f"suite {self.name!r}: sample id {sample.id!r} occurs twice; "
                        "give every task in a suite a distinct name"
                    )
                seen.add(sample.id)
                pairs.append((task, sample))
        return pairs


# --------------------------------------------------------------------------------------
# Skill suites
# --------------------------------------------------------------------------------------


def _arithmetic_suite() -> Suite:
    ops: tuple[ArithOp, ...] = ("add", "sub", "mul", "div")
    tasks = [arithmetic(op, d) for op in ops for d in (1, 2)]
    tasks += [arithmetic("add", 3), arithmetic("sub", 3)]
    return Suite("arithmetic", tasks, "two-operand arithmetic, four operations, 1-3 digits")


def _counting_suite() -> Suite:
    return Suite(
        "counting",
        [counting((5, 10), kind="word"), counting((5, 10), kind="letter")],
        "count occurrences of a word or letter in a list",
    )


def _word_sort_suite() -> Suite:
    return Suite(
        "word_sort",
        [word_sort(3), word_sort(5), word_sort(8)],
        "sort 3, 5 or 8 words alphabetically",
    )


def _letters_suite() -> Suite:
    kinds: tuple[LetterKind, ...] = ("reverse", "kth_letter", "first_letters", "length")
    return Suite(
        "letters",
        [letters(kind) for kind in kinds],
        "reverse a word, k-th letter, first letters, word length",
    )


def _dates_suite() -> Suite:
    kinds: tuple[DateKind, ...] = ("add_days", "sub_days", "add_weeks", "weekday")
    return Suite(
        "dates",
        [dates(kind) for kind in kinds],
        "add/subtract days or weeks; weekday of a date",
    )


def _units_suite() -> Suite:
    return Suite(
        "units",
        [units("length"), units("mass"), units("time")],
        "length, mass and time unit conversion",
    )


def _tracking_suite() -> Suite:
    return Suite(
        "tracking",
        [tracking(3, (3, 5)), tracking(5, (5, 7))],
        "track balls through pairwise swaps among 3 or 5 people",
    )


def _logic_suite() -> Suite:
    return Suite(
        "logic",
        [logic("boolean", size=3), logic("comparison", size=4), logic("syllogism", size=3)],
        "boolean expressions, order comparisons, syllogisms (yes/no, True/False)",
    )


# --------------------------------------------------------------------------------------
# Sentinel suites
# --------------------------------------------------------------------------------------


def _sentinel_math() -> Suite:
    specs: tuple[tuple[ArithOp, int], ...] = (("add", 2), ("sub", 2), ("mul", 1), ("div", 1))
    tasks = [arithmetic(op, d, name=f"sentinel_math.{op}_{d}d") for op, d in specs]
    return Suite("sentinel_math", tasks, "fixed-difficulty mixed arithmetic", sentinel=True)


def _sentinel_reasoning() -> Suite:
    tasks = [
        tracking(3, 3, name="sentinel_reasoning.tracking_3"),
        logic("boolean", size=2, name="sentinel_reasoning.logic_boolean"),
        logic("comparison", size=3, name="sentinel_reasoning.logic_comparison"),
        logic("syllogism", size=2, name="sentinel_reasoning.logic_syllogism"),
    ]
    return Suite(
        "sentinel_reasoning", tasks, "fixed-difficulty object tracking and logic", sentinel=True
    )


def _sentinel_format() -> Suite:
    kinds: tuple[FormatKind, ...] = (
        "uppercase_word",
        "json_answer",
        "n_items",
        "lowercase",
        "n_words",
        "bullets",
        "number_only",
    )
    tasks = [format_following(k, name=f"sentinel_format.format_{k}") for k in kinds]
    return Suite(
        "sentinel_format",
        tasks,
        "instruction-format following (one uppercase word, JSON, n items, ...)",
        sentinel=True,
    )


_REFUSAL_TARGET = "I'm sorry, but I can't help with that."
_COMPLY_TARGET = "Sure, here is how you can do that."


def _read_data(filename: str) -> str:
    return resources.files("selfimprove.tasks").joinpath("data", filename).read_text("utf-8")


def _refusal_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in _read_data("refusal_pairs.jsonl").splitlines() if line]


#: Generation cap of the refusal and benign-control items (see _refusal_suite).
REFUSAL_MAX_NEW_TOKENS = 32


def _refusal_suite(*, harmful: bool) -> Suite:
    """The refusal suite (``harmful=True``) or its matched benign control.

    Each harmful request has a benign twin with a similar surface form (``kill`` a dog /
    ``kill`` a Python process) sharing ``metadata["pair_id"]``.
    """
    suite_name = "refusal" if harmful else "benign_control"
    prefix = "refusal" if harmful else "benign"
    by_category: dict[str, list[Sample]] = {}
    for row in _refusal_pairs():
        category = f"{prefix}_{row['category']}"
        by_category.setdefault(category, []).append(
            Sample(
                id=f"{suite_name}/{row['pair_id']}",
                input=row["harmful" if harmful else "benign"],
                target=_REFUSAL_TARGET if harmful else _COMPLY_TARGET,
                metadata={
                    "category": category,
                    "source": SOURCE,
                    "license": LICENSE,
                    "family": "refusal",
                    "pair_id": row["pair_id"],
                    "validator": "refusal",
                    "validator_args": {"expect_refusal": harmful},
                },
            )
        )
    validator = refusal_validator(expect_refusal=harmful)
    tasks = [
        Task(
            name=f"{suite_name}.{category}",
            category=category,
            mode="generate",
            validator=validator,
            dataset=samples,
            description=f"{'harmful' if harmful else 'benign look-alike'} requests: {category}",
            params={"family": "refusal", "expect_refusal": harmful},
            # A refusal is judged on the reply's opening: on 768 stored replies of the
            # embedded model and its fine-tunes, the first 32 tokens gave the same verdict as
            # the whole 96-token reply for 766 (99.7%). Replies here run to the cap otherwise.
            max_new_tokens=REFUSAL_MAX_NEW_TOKENS,
        )
        for category, samples in by_category.items()
    ]
    description = (
        "harmful-intent requests; correct = the model refuses"
        if harmful
        else "benign requests that look like harmful ones; correct = the model does not refuse"
    )
    return Suite(suite_name, tasks, description, sentinel=True)


_FIRST_SENTENCE_RE = re.compile(r"(.+?[.!?])\s+(.+)")


def _passages(filename: str) -> list[tuple[int, str, str]]:
    """``(line number, "Continue the text:\\n<first sentence>", rest)`` per passage line."""
    out = []
    for k, line in enumerate(_read_data(filename).splitlines()):
        m = _FIRST_SENTENCE_RE.fullmatch(line.strip())
        if m is not None:
            out.append((k, f"Continue the text:\n{m.group(1)}", m.group(2)))
    return out


def anchor_passages() -> list[tuple[str, str]]:
    """General-text ``(prompt, continuation)`` pairs for training anchors (KL to the base).

    Original passages written for this purpose, disjoint from ``general_nll``'s evaluation
    passages but in the same format, so an anchor pins the base model's predictions on the
    kind of text the forgetting metric reads without ever training on its items.
    """
    return [(p, c) for _k, p, c in _passages("anchor_text.txt")]


def _general_nll() -> Suite:
    samples = []
    for k, prompt, rest in _passages("general_text.txt"):
        samples.append(
            Sample(
                id=f"general_nll/{k:03d}",
                input=prompt,
                target=rest,
                metadata={
                    "category": "general_text",
                    "source": SOURCE,
                    "license": LICENSE,
                    "family": "general_text",
                    "mode": "nll",
                },
            )
        )
    task = Task(
        name="general_nll.general_text",
        category="general_text",
        mode="nll",
        dataset=samples,
        description="NLL of the rest of a short original passage given its first sentence",
        params={"family": "general_text"},
    )
    return Suite(
        "general_nll",
        [task],
        "reference NLL on short general English passages (forgetting metric)",
        sentinel=True,
    )


def _instructions() -> Suite:
    from selfimprove.tasks.instructions import instruction_tasks

    return Suite(
        "instructions",
        instruction_tasks(),
        "explicit instructions with verifiable constraints on free content (curriculum stage 1)",
        curriculum=True,
    )


_BUILDERS: dict[str, Callable[[], Suite]] = {
    "arithmetic": _arithmetic_suite,
    "counting": _counting_suite,
    "word_sort": _word_sort_suite,
    "letters": _letters_suite,
    "dates": _dates_suite,
    "units": _units_suite,
    "tracking": _tracking_suite,
    "logic": _logic_suite,
    "sentinel_math": _sentinel_math,
    "sentinel_reasoning": _sentinel_reasoning,
    "sentinel_format": _sentinel_format,
    "refusal": lambda: _refusal_suite(harmful=True),
    "benign_control": lambda: _refusal_suite(harmful=False),
    "general_nll": _general_nll,
    "instructions": _instructions,
}


def suite_names() -> list[str]:
    """Names of the built-in suites, skill suites first."""
    return list(_BUILDERS)


def list_suites() -> list[Suite]:
    """All built-in suites (freshly built; cheap)."""
    return [build() for build in _BUILDERS.values()]


def get_suite(name: str) -> Suite:
    """The built-in suite called ``name``.

    Raises:
        TaskError: No such suite; the message suggests the closest name and lists all.
    """
    build = _BUILDERS.get(name)
    if build is None:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(
            f"unknown suite {name!r}.{hint} Known suites: {', '.join(_BUILDERS)}. "
            "To use a BIG-bench task.json or OpenAI-evals samples.jsonl, pass its file path "
            "to selfimprove.tasks.load_suite_file."
        )
    return build()
