"""Core task data model: ``Sample``, ``Score``, ``Validator`` and ``Task``.

The data model follows inspect_ai's ``Sample`` (id, input as text or chat messages, target,
choices, metadata) so suites serialise to JSONL and can be exported to inspect_ai / lm-eval.
A ``Task`` is one *category*: a seeded, unlimited sample generator (or a fixed dataset) plus
a validator and an evaluation mode. This module defines types only; generators live in
``generators.py``, validators in ``validators.py``, suites in ``suites.py``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

EvalMode = Literal["generate", "choices", "nll"]

#: Instruction appended to every generated-answer prompt. The strict format (``format_ok``)
#: is: the reply's last non-empty line is exactly ``Answer: <answer>``.
ANSWER_INSTRUCTION = "Finish your reply with a final line of the form 'Answer: <answer>'."


class ChatMessage(BaseModel):
    """One chat turn (``role`` is ``system``, ``user`` or ``assistant``)."""

    model_config = ConfigDict(frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str


class Sample(BaseModel):
    """One evaluation or training item (inspect_ai-compatible fields).

    Attributes:
        id: Stable id, unique within a suite (e.g. ``"arith-add-1d/17"``).
        input: The prompt: plain text (sent as one user turn) or a list of chat messages.
        target: The canonical gold answer as a string (``"12"``, ``"apple banana"``).
        choices: Answer options for ``choices`` mode, else ``None``.
        metadata: ``category``, ``source``, ``license`` plus family-specific fields
            (e.g. ``numeric``: the numeric value of the target, ``difficulty``).
    """

    model_config = ConfigDict(frozen=True)
    id: str
    input: str | list[ChatMessage]
    target: str
    choices: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def category(self) -> str:
        return str(self.metadata.get("category", "uncategorized"))

    def messages(self) -> list[ChatMessage]:
        """The input as chat messages (plain text becomes one user turn)."""
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        return list(self.input)

    def input_text(self) -> str:
        """The input flattened to text (for hashing and display)."""
        if isinstance(self.input, str):
            return self.input
        return "\n".join(f"{m.role}: {m.content}" for m in self.input)

    def input_hash(self) -> str:
        """SHA-256 of the normalised input text: the never-train registry key."""
        return hash_text(self.input_text())


def hash_text(text: str) -> str:
    """SHA-256 hex digest of whitespace-normalised, lower-cased text."""
    norm = " ".join(text.split()).lower()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Score:
    """A validator's verdict on one model output.

    Attributes:
        correct: The answer, extracted anywhere sensible in the output, equals the target.
        format_ok: The output follows the strict format (last line ``Answer: <answer>``)
            with a parseable answer — regardless of whether it is correct.
        extracted: The extracted answer string, or ``None`` if none was found.
    """

    correct: bool
    format_ok: bool
    extracted: str | None


class Validator(Protocol):
    """Scores a model output against a sample. Must be pure and deterministic."""

    def __call__(self, output: str, sample: Sample) -> Score: ...


#: A generator draws one sample from a seeded RNG; ``index`` makes the id.
SampleGenerator = Callable[[random.Random, int], Sample]


@dataclass
class Task:
    """One category of a suite: where samples come from and how they are scored.

    Exactly one of ``generator`` (seeded, unlimited) or ``dataset`` (fixed list) is set.
    ``samples(n, seed)`` is deterministic in ``(name, n, seed)``.
    """

    name: str
    category: str
    mode: EvalMode = "generate"
    validator: Validator | None = None
    generator: SampleGenerator | None = None
    dataset: Sequence[Sample] | None = None
    description: str = ""
    #: Difficulty knobs the generator was built with (for provenance / reports).
    params: dict[str, Any] = field(default_factory=dict)
    #: Generation length cap for this task's items (``None``: the run's ``max_new_tokens``;
    #: the smaller of the two wins). For tasks judged on the reply's opening.
    max_new_tokens: int | None = None
    #: Extra stop strings for this task's replies (cut *before* them): a free-form
    #: instruction's reply ends where a base model starts an ``Answer:`` line or a new block.
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.generator is None) == (self.dataset is None):
            raise ValueError(f"Task {self.name!r}: set exactly one of generator or dataset")
        if self.mode == "generate" and self.validator is None:
            raise ValueError(f"Task {self.name!r}: generate mode needs a validator")

    def samples(self, n: int | None, seed: int = 0) -> list[Sample]:
        """``n`` samples (all of a dataset if ``n`` is None), deterministic under ``seed``.

        Generators draw from ``random.Random(f"{name}:{seed}")`` so two tasks with the same
        seed do not share a stream; duplicate inputs are skipped (bounded retries).
        """
        if self.dataset is not None:
            items = list(self.dataset)
            if n is None or n >= len(items):
                return items
            rng = random.Random(f"{self.name}:{seed}")
            return rng.sample(items, n)
        assert self.generator is not None
        if n is None:
            raise ValueError(f"Task {self.name!r} is a generator: give n")
        rng = random.Random(f"{self.name}:{seed}")
        out: list[Sample] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n and attempts < n * 20:
            s = self.generator(rng, len(out))
            attempts += 1
            h = s.input_hash()
            if h in seen:
                continue
            seen.add(h)
            out.append(s)
        return out

    def reference(self, sample: Sample) -> str:
        """The reference completion whose NLL measures uncertainty (``nll`` mode too).

        ``Answer: <target>`` when the prompt asked for that form; otherwise the target itself
        (format, refusal and imported items whose target is the whole reply).
        """
        if self.mode == "generate" and ANSWER_INSTRUCTION in sample.input_text():
            return f"Answer: {sample.target}"
        return sample.target

    def score(self, output: str, sample: Sample) -> Score:
        if self.validator is None:
            raise ValueError(f"Task {self.name!r} has no validator")
        return self.validator(output, sample)


def dump_jsonl(samples: Sequence[Sample]) -> str:
    """Serialise samples as JSONL (one object per line)."""
    return "".join(
        json.dumps(s.model_dump(mode="json"), ensure_ascii=False) + "\n" for s in samples
    )
