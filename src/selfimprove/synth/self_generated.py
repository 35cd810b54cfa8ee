"""Model-generated training data, every piece checked by a verifier before it is kept.

Three sources, all on fresh (never-evaluated) items of the weak categories:

* **STaR** (Zelikman et al. 2022): sample ``k`` replies per item; keep one the task's
  validator marks correct *and* well-formatted. For items with no correct sample,
  *rationalize*: show the gold answer as a hint, sample again, and keep a reply that reaches
  it — trained with the *original* prompt (the hint is never part of the training input).
* **Self-critique**: for a wrong reply, the model critiques it against a short list of
  principles and writes a revision; the revision is kept only when the verifier prefers it
  (revised correct, original not). Kept revisions become SFT examples and chosen/rejected
  preference pairs (``pairs``) for later preference training.
* **Model-written variations**: the model is shown a failed item and asked for a new question
  of the same kind; a family parser re-reads the question and the family's solver computes
  the gold answer (:func:`parse_variation`). Questions no parser understands are dropped.

Filters after generation: a perplexity band on model-written replies (reference NLL under
the pre-round model; drops degenerate text above ``ppl_max``), near-duplicate removal
(:func:`near_duplicate_key`), and the never-train registry. The counts of every stage go into a
:class:`~selfimprove.synth.templated.Funnel`-like dict.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.engine import Engine
from selfimprove.evaluate import ANSWER_LINE_STOP, is_solved
from selfimprove.tasks.base import Sample, Task
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.train import TrainExample

PRINCIPLES = (
    "1. Work step by step and check each step.",
    "2. Make sure the final answer answers exactly the question asked.",
    "3. End with a final line of the form 'Answer: <answer>'.",
)


class SelfDataConfig(BaseModel):
    """How much model-generated data a round makes (the ``loop.self_data`` section)."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of the targeted budget to fill with verified model-generated "
        "examples (STaR, critique, variations); templated gold items fill the rest.",
    )
    star_k: int = Field(2, ge=1, description="Samples per item for STaR.")
    rationalize: bool = Field(True, description="STaR with the gold answer as a hint.")
    critique: bool = Field(True, description="Self-critique and revision of wrong replies.")
    variations: bool = Field(True, description="Model-written variations of failed items.")
    temperature: float = Field(0.8, gt=0.0, description="Sampling temperature.")
    max_new_tokens: int = Field(64, ge=4, description="Length cap of generated replies.")
    ppl_max: float = Field(
        60.0, gt=1.0, description="Drop model-written replies above this reference perplexity."
    )


def near_duplicate_key(text: str) -> str:
    """The near-duplicate key of a training row: lower-cased, every run of characters that
    are not letters or digits (Unicode ``[\\W_]``: punctuation, symbols such as "×" or "°",
    whitespace) replaced by one space, stripped. ``"Add 2+3!"`` -> ``"add 2 3"``.

    Coarser than :func:`selfimprove.tasks.validators.normalize_text`, which compares answers
    and keeps symbols outside ASCII and typographic punctuation ("5 °C" stays apart from
    "5 C" there, not here): rows that differ only in symbols count as one example.
    """
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _ok(task: Task, output: str, sample: Sample) -> bool:
    """The verifier: the reply is solved under the ``strict`` metric (right and well-formatted)."""
    return is_solved(task.score(output, sample), "strict")


def _hint_prompt(sample: Sample, answer: str) -> list[dict[str, str]]:
    msgs = [m.model_dump() for m in sample.messages()]
    msgs[-1]["content"] += (
        f"\n(Hint: the correct answer is {answer}. Explain briefly how to get it, then finish "
        f"with the line 'Answer: {answer}'.)"
    )
    return msgs


def _critique_prompt(sample: Sample, reply: str) -> list[dict[str, str]]:
    q = sample.messages()[-1].content
    return [
        {
            "role": "user",
            "content": f"Question: {q}\n\nA reply to check:\n{reply.strip()}\n\n"
            "Principles:\n" + "\n".join(PRINCIPLES) + "\n\nPoint out any mistake in the "
            "reply in one sentence, then write a corrected reply that ends with the line "
            "'Answer: <answer>'.",
        }
    ]


def _revision(text: str) -> str:
    """The corrected reply: everything after a 'corrected reply' marker, else the whole text."""
    m = re.search(r"(?is)corrected reply\s*:?\s*(.*)$", text)
    return (m.group(1) if m else text).strip()


def _variation_prompt(sample: Sample) -> list[dict[str, str]]:
    q = sample.messages()[-1].content.split("\n")[0]
    return [
        {
            "role": "user",
            "content": "Write one new question of the same kind as this one, with different "
            f"numbers or words. Write only the question.\n\nQuestion: {q}",
        }
    ]


# --------------------------------------------------------------------------- variations

_ARITH = re.compile(r"(?i)what\s+is\s+(-?\d{1,4})\s*([+\-*x×/÷])\s*(-?\d{1,4})\s*\?")
_LETTERS = re.compile(
    r"(?i)how many times does the letter\s+['\"]?([a-z])['\"]?\s+appear in\s+(?:the word\s+)?['\"]?([a-z]+)['\"]?"
)
_REVERSE = re.compile(r"(?i)spell the word\s+['\"]?([a-z]+)['\"]?\s+backwards")
_SORT = re.compile(r"(?i)sort the following words alphabetically:\s*([a-z ,]+?)\.")


def parse_variation(task: Task, source: Sample, question: str, rng: random.Random) -> Sample | None:
    """Turn a model-written question into a verified :class:`Sample` of ``source``'s family.

    The question is re-read by a family-specific parser; the gold answer comes from our own
    solver, never from the model. Returns ``None`` when no parser understands the question
    or it is not of ``task``'s family. Gold references are re-checked by the validator.
    """
    fam = source.metadata.get("family")
    instr = "\nFinish your reply with a final line of the form 'Answer: <answer>'."
    target: str | None = None
    text: str | None = None
    meta: dict[str, Any] = {}
    if fam == "arithmetic" and (m := _ARITH.search(question)):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        sym = {"x": "*", "×": "*", "÷": "/"}.get(op, op)
        if sym == "/":
            if b == 0 or a % b:
                return None
            val = a // b
        else:
            val = {"+": a + b, "-": a - b, "*": a * b}[sym]
        text, target = f"What is {a} {op} {b}?", str(val)
        meta = {"validator": "numeric", "numeric": val}
    elif fam == "counting" and (m := _LETTERS.search(question)):
        letter, word = m.group(1).lower(), m.group(2).lower()
        val = word.count(letter)
        text, target = f"How many times does the letter '{letter}' appear in '{word}'?", str(val)
        meta = {"validator": "numeric", "numeric": val}
    elif fam == "letters" and (m := _REVERSE.search(question)):
        w = m.group(1).lower()
        text, target = f"Spell the word '{w}' backwards.", w[::-1]
        meta = {"validator": "exact_text", "word": w}
    elif fam == "word_sort" and (m := _SORT.search(question)):
        words = [w.strip().lower() for w in m.group(1).split(",") if w.strip()]
        if len(words) < 2 or any(" " in w for w in words):
            return None
        text = (
            f"Sort the following words alphabetically: {', '.join(words)}. "
            "Give the sorted words separated by spaces."
        )
        target = " ".join(sorted(words))
        meta = {"validator": "word_list", "words": words}
    if text is None or target is None:
        return None
    keep = {"category", "license", "family", "difficulty", "validator", "validator_args"}
    base_meta = {k: v for k, v in source.metadata.items() if k in keep}
    s = Sample(
        id=f"{task.name}/variation-{rng.randrange(10**9)}",
        input=text + instr,
        target=target,
        metadata={**base_meta, **meta, "source": "model-written"},
    )
    return s if _ok(task, task.reference(s), s) else None


# --------------------------------------------------------------------------- the pipeline


@dataclass
class _Writer:
    """What every stage of :func:`self_generated_data` shares."""

    engine: Engine
    pool: Sequence[tuple[str, Task, Sample]]
    cfg: SelfDataConfig
    seed: int
    rnd: int
    gen_kw: dict[str, Any]

    def plain(self, i: int) -> str | list[dict[str, str]]:
        s = self.pool[i][2]
        return s.input if isinstance(s.input, str) else [m.model_dump() for m in s.messages()]

    def row(self, i: int, completion: str, source: str, **kw: Any) -> TrainExample:
        su, t, s = self.pool[i]
        return TrainExample(
            id=s.id,
            suite=su,
            category=t.category,
            input_hash=s.input_hash(),
            prompt=self.plain(i),
            completion=completion.strip(),
            source=source,
            round=self.rnd,
            **kw,
        )


def _star(w: _Writer, funnel: dict[str, int]) -> tuple[list[TrainExample], dict[int, str]]:
    """STaR: ``star_k`` samples per item, keep a verified one; the rest are "wrong"."""
    k = w.cfg.star_k
    outs = w.engine.generate(
        [w.plain(i) for i in range(len(w.pool)) for _ in range(k)],
        temperature=w.cfg.temperature,
        seed=w.seed,
        **w.gen_kw,
    )
    star: list[TrainExample] = []
    wrong: dict[int, str] = {}
    for i, (_su, t, s) in enumerate(w.pool):
        replies = [g.text for g in outs[i * k : (i + 1) * k]]
        good = [r for r in replies if _ok(t, r, s)]
        if good:
            star.append(w.row(i, good[0], "star"))
        else:
            wrong[i] = replies[0]
    funnel["star_sampled"] = len(outs)
    funnel["star_verified"] = len(star)
    return star, wrong


def _rationalize(w: _Writer, failed: list[int], funnel: dict[str, int]) -> list[TrainExample]:
    """Rationalization: a hint (the gold answer) for failed items; trained without the hint."""
    k = w.cfg.star_k
    outs = w.engine.generate(
        [_hint_prompt(w.pool[i][2], w.pool[i][2].target) for i in failed for _ in range(k)],
        temperature=w.cfg.temperature,
        seed=w.seed + 1,
        **w.gen_kw,
    )
    rows = []
    for j, i in enumerate(failed):
        _su, t, s = w.pool[i]
        good = [
            g.text
            for g in outs[j * k : (j + 1) * k]
            if _ok(t, g.text, s) and "hint" not in g.text.lower()
        ]
        if good:  # trained with the original prompt, never the hint
            rows.append(w.row(i, good[0], "rationalized"))
    funnel["rationalize_sampled"] = len(outs)
    funnel["rationalize_verified"] = len(rows)
    return rows


def _critique(
    w: _Writer, failed: list[int], wrong: dict[int, str], funnel: dict[str, int]
) -> list[TrainExample]:
    """Critique -> revision of a wrong reply; kept only when the verifier prefers it."""
    outs = w.engine.generate(
        [_critique_prompt(w.pool[i][2], wrong[i]) for i in failed],
        temperature=0.0,
        **{**w.gen_kw, "max_new_tokens": w.cfg.max_new_tokens + 32},
    )
    rows = []
    for g, i in zip(outs, failed, strict=True):
        _su, t, s = w.pool[i]
        rev = _revision(g.text)
        if _ok(t, rev, s) and not _ok(t, wrong[i], s):  # the verifier prefers the revision
            rows.append(w.row(i, rev, "critique", rejected=wrong[i]))
    funnel["critique_written"] = len(outs)
    funnel["critique_verified"] = len(rows)
    return rows


def _variations(w: _Writer, failed: list[int], funnel: dict[str, int]) -> list[TrainExample]:
    """Model-written variations of failed items, re-solved by our own solvers."""
    outs = w.engine.generate(
        [_variation_prompt(w.pool[i][2]) for i in failed],
        temperature=w.cfg.temperature,
        seed=w.seed + 2,
        **{**w.gen_kw, "stop": ["\n\n"], "max_new_tokens": 48},
    )
    rng = random.Random(f"variation:{w.seed}")
    rows = []
    for g, i in zip(outs, failed, strict=True):
        su, t, s = w.pool[i]
        v = parse_variation(t, s, g.text, rng)
        if v is not None:
            rows.append(
                TrainExample(
                    id=v.id,
                    suite=su,
                    category=t.category,
                    input_hash=v.input_hash(),
                    prompt=v.input_text(),
                    completion=t.reference(v),
                    source="variation",
                    round=w.rnd,
                )
            )
    funnel["variation_written"] = len(outs)
    funnel["variation_parsed_verified"] = len(rows)
    return rows


def _filter(
    w: _Writer,
    cands: list[TrainExample],
    n_max: int,
    *,
    registry: NeverTrainRegistry,
    seen: set[str],
    batch_size: int,
    funnel: dict[str, int],
) -> list[TrainExample]:
    """Perplexity band (model-written replies), never-train, near-duplicates, at most n_max."""
    written = [c for c in cands if c.source != "variation"]
    too_high: set[int] = set()
    if written:
        nll = w.engine.continuation_nll(
            [c.prompt for c in written], [c.completion for c in written], batch_size=batch_size
        )
        too_high = {
            id(c)
            for c, sc in zip(written, nll, strict=True)
            if not math.isfinite(sc.mean) or math.exp(sc.mean) > w.cfg.ppl_max
        }
    kept: list[TrainExample] = []
    drops = {"dropped_perplexity": 0, "dropped_eval_overlap": 0, "dropped_duplicate": 0}
    for c in cands:
        if id(c) in too_high:
            drops["dropped_perplexity"] += 1
            continue
        prompt_text = c.prompt if isinstance(c.prompt, str) else c.prompt[-1].content
        if prompt_text in registry:
            drops["dropped_eval_overlap"] += 1
            continue
        key = near_duplicate_key(prompt_text + " " + c.completion)
        if key in seen:
            drops["dropped_duplicate"] += 1
            continue
        if len(kept) >= n_max:
            break
        seen.add(key)
        kept.append(c)
    funnel.update(drops)
    funnel["kept"] = len(kept)
    return kept


def self_generated_data(
    engine: Engine,
    pool: Sequence[tuple[str, Task, Sample]],
    n_max: int,
    cfg: SelfDataConfig,
    *,
    seed: int,
    registry: NeverTrainRegistry,
    seen: set[str],
    batch_size: int = 32,
    rnd: int = 0,
) -> tuple[list[TrainExample], dict[str, int]]:
    """Verified model-generated examples for the fresh items in ``pool`` (at most ``n_max``).

    ``engine`` is the arm's current model (it writes the data and scores its perplexity).
    ``seen`` holds normalized texts already in the training set; kept examples are added.
    Returns the rows (critique revisions first, then rationalized, variations, STaR; their
    ``source`` says which, ``round`` is ``rnd``; a critique row's ``rejected`` is the original
    wrong reply) and the funnel counts of every stage.
    """
    funnel: dict[str, int] = {"pool": len(pool)}
    if not pool or n_max <= 0:
        return [], funnel
    gen_kw: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "stop": [ANSWER_LINE_STOP],
        "batch_size": batch_size,
    }
    w = _Writer(engine, pool, cfg, seed, rnd, gen_kw)
    star, wrong = _star(w, funnel)
    failed = sorted(wrong)
    rational = _rationalize(w, failed, funnel) if cfg.rationalize and failed else []
    critiques = _critique(w, failed, wrong, funnel) if cfg.critique and failed else []
    variations = _variations(w, failed, funnel) if cfg.variations and failed else []
    kept = _filter(
        w,
        critiques + rational + variations + star,
        n_max,
        registry=registry,
        seen=seen,
        batch_size=batch_size,
        funnel=funnel,
    )
    return kept, funnel
