"""Prompt formats: how a task's messages become the text a model reads.

What it does:
  * ``chat``: the tokenizer's chat template (instruct models; the engine applies it).
  * ``plain``: the messages' text joined by newlines (what a template-less model got before).
  * ``cue``: a format cue for base models, ``Instruction: <text>\\nResponse:`` (the prompt
    under which the source project's base model already followed 300/300 instructions).
  * ``urial``: URIAL-style in-context alignment (Lin et al., 2023): a short preamble and
    three fixed demonstrations in ``# Query:`` / ``# Answer:`` blocks, then the query. The
    demonstrations are generic (a capital city, a plural, a short poem) and touch none of
    the built-in suites' categories, so the baseline teaches the format, not the skills.
  * ``urial_if``: URIAL with demonstrations of explicit instructions (two answer-line ones
    and three constraints on free content: two words, a lower-case sentence, a comma list),
    the curriculum's writer and in-context baseline (a base model's best prompt for them).

  Base formats come with stop strings (the start of the next demonstration block), so a base
  model that writes a second query is cut where a reply should end.

What it does not do: tokenise or decide which format a model gets (that is
:class:`selfimprove.engine.Engine`; ``auto`` = ``chat`` when the tokenizer has a template,
else ``plain``). A base model never gets ``chat`` (see :mod:`selfimprove.models`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

PromptFormat = Literal["auto", "chat", "plain", "cue", "urial", "urial_if"]
PROMPT_FORMATS: tuple[str, ...] = ("auto", "chat", "plain", "cue", "urial", "urial_if")
#: formats that need no chat template (the in-context baselines of a base model)
BASE_FORMATS: tuple[str, ...] = ("plain", "cue", "urial", "urial_if")

URIAL_PREAMBLE = (
    "# Instructions\n\n"
    "Below are conversations between a user and a helpful, honest assistant. The assistant "
    "answers each query directly and follows the format the query asks for.\n\n"
)
#: (query, answer) demonstrations; none overlaps a built-in suite's category
URIAL_DEMOS: tuple[tuple[str, str], ...] = (
    (
        "What is the capital city of Italy?\n"
        "Finish your reply with a final line of the form 'Answer: <answer>'.",
        "The capital city of Italy is Rome.\nAnswer: Rome",
    ),
    (
        "What is the plural of the English word 'mouse'?\n"
        "Finish your reply with a final line of the form 'Answer: <answer>'.",
        "The plural of 'mouse' is 'mice'.\nAnswer: mice",
    ),
    (
        "Write a two-line poem about rain.",
        "Soft rain taps the window glass,\nand the grey afternoon slowly lets it pass.",
    ),
)

#: ``urial_if``: the two answer-line demonstrations and three that follow a constraint on
#: free content (topics outside every suite's), so a base model sees that a reply obeys the
#: form the query asks for and stops (the generic poem demonstration taught it line breaks)
URIAL_IF_DEMOS: tuple[tuple[str, str], ...] = (
    *URIAL_DEMOS[:2],
    (
        "Name exactly two seasons, one word each, separated by spaces, and nothing else.",
        "summer winter",
    ),
    (
        "Write one sentence about a lamp using only lowercase letters.",
        "a lamp lights up the dark room.",
    ),
    (
        "List exactly three board games as comma-separated items and nothing else.",
        "chess, checkers, go",
    ),
)

_STOPS: dict[str, tuple[str, ...]] = {
    "cue": ("\nInstruction:", "\n\n\n"),
    "urial": ("\n# Query", "\n\n\n"),
    "urial_if": ("\n# Query", "\n\n\n"),
}


def _text(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def urial_prefix(demos: Sequence[tuple[str, str]] = URIAL_DEMOS) -> str:
    """The URIAL preamble and demonstrations, ready for a query to be appended."""
    blocks = [f"# Query:\n{q}\n\n# Answer:\n{a}\n\n" for q, a in demos]
    return URIAL_PREAMBLE + "".join(blocks)


def render(fmt: str, messages: Sequence[dict[str, str]]) -> str:
    """The text a base-format prompt gives (``plain``, ``cue`` or ``urial``)."""
    text = _text(messages)
    if fmt == "plain":
        return text + "\n"
    if fmt == "cue":
        return f"Instruction: {text}\nResponse:"
    if fmt == "urial":
        return f"{urial_prefix()}# Query:\n{text}\n\n# Answer:\n"
    if fmt == "urial_if":
        return f"{urial_prefix(URIAL_IF_DEMOS)}# Query:\n{text}\n\n# Answer:\n"
    raise ValueError(f"unknown base prompt format {fmt!r}; choose one of {BASE_FORMATS}")


def stops(fmt: str) -> tuple[str, ...]:
    """Stop strings that end a reply in format ``fmt`` (empty for ``chat`` and ``plain``)."""
    return _STOPS.get(fmt, ())
