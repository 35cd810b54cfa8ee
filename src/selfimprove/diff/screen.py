"""Cheap screening: teacher-forced KL between the two models, no sampling.

For each screening prompt a reference continuation is fixed first: the given target
(``Answer: <target>`` for answer tasks) when there is one, else model A's greedy output
(``k`` tokens). Both models then read prompt + continuation in one teacher-forced prefill
each, and the next-token distributions over the first ``k`` continuation positions are
compared in both directions, KL(A‖B) and KL(B‖A) (:meth:`Engine.continuation_kl`).
Fine-tuning changes concentrate in the first few positions, so the per-prompt score, the
mean over those positions of the symmetric KL ``(KL_AB + KL_BA)/2``, ranks regions at a
small fraction of generation cost. Identical models give exactly 0.

The screen only decides *where to spend* the sampling budget; it is never used as test
evidence (the test runs on the held-out confirmatory prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from selfimprove.diff.regions import PromptItem
from selfimprove.engine import Engine

log = logging.getLogger(__name__)

ReferenceKind = Literal["auto", "target", "greedy"]


class RegionScreen(BaseModel):
    """Screening result of one region.

    Attributes:
        region: region name.
        n: screening prompts scored.
        score: mean over prompts of the per-prompt symmetric KL (nats/position).
        kl_ab, kl_ba: the two directions' means.
        per_position: mean symmetric KL at each of the first ``k`` positions.
        per_prompt: per-prompt scores (same order as the screening items).
    """

    region: str
    n: int
    score: float
    kl_ab: float
    kl_ba: float
    per_position: list[float]
    per_prompt: list[float]


class ScreenCost(BaseModel):
    """What screening spent: prefills per model and greedy tokens generated on A."""

    prefills_per_model: int = 0
    greedy_tokens: int = 0


def reference_continuations(
    engine_a: Engine,
    items: Sequence[PromptItem],
    *,
    k: int,
    reference: ReferenceKind = "auto",
    batch_size: int = 16,
) -> tuple[list[str], int]:
    """Reference continuation per item and the number of greedy tokens generated for them."""
    refs: list[str | None] = [None] * len(items)
    if reference in ("auto", "target"):
        refs = [it.reference() for it in items]
    need = [i for i, r in enumerate(refs) if not r]
    greedy_tokens = 0
    if need:
        gens = engine_a.generate(
            [items[i].prompt for i in need],
            max_new_tokens=k,
            temperature=0.0,
            batch_size=batch_size,
        )
        for i, g in zip(need, gens, strict=True):
            # An empty greedy output (immediate EOS) still needs one position to compare.
            refs[i] = g.text if g.text.strip() else engine_a.tokenizer.eos_token or " "
            greedy_tokens += g.n_tokens
    return [r or " " for r in refs], greedy_tokens


def screen_items(
    engine_a: Engine,
    engine_b: Engine,
    items: Sequence[PromptItem],
    *,
    k: int = 8,
    reference: ReferenceKind = "auto",
    batch_size: int = 16,
) -> tuple[list[dict[str, list[float]]], ScreenCost]:
    """Per-item, per-position KL in both directions (see module doc) and the cost."""
    if not items:
        return [], ScreenCost()
    conts, greedy_tokens = reference_continuations(
        engine_a, items, k=k, reference=reference, batch_size=batch_size
    )
    kls = engine_a.continuation_kl(
        engine_b, [it.prompt for it in items], conts, k=k, batch_size=batch_size
    )
    return kls, ScreenCost(prefills_per_model=len(items), greedy_tokens=greedy_tokens)


def summarize_screen(region: str, kls: Sequence[dict[str, list[float]]], k: int) -> RegionScreen:
    """Aggregate per-item KL lists into a :class:`RegionScreen`."""
    per_prompt, ab, ba = [], [], []
    pos_sum = np.zeros(k)
    pos_n = np.zeros(k)
    for d in kls:
        a, b = np.asarray(d["kl_ab"], float), np.asarray(d["kl_ba"], float)
        if len(a) == 0:
            continue
        sym = (a + b) / 2
        per_prompt.append(float(sym.mean()))
        ab.append(float(a.mean()))
        ba.append(float(b.mean()))
        pos_sum[: len(sym)] += sym
        pos_n[: len(sym)] += 1
    per_position = [float(s / n) if n else 0.0 for s, n in zip(pos_sum, pos_n, strict=True)]
    return RegionScreen(
        region=region,
        n=len(per_prompt),
        score=float(np.mean(per_prompt)) if per_prompt else 0.0,
        kl_ab=float(np.mean(ab)) if ab else 0.0,
        kl_ba=float(np.mean(ba)) if ba else 0.0,
        per_position=per_position,
        per_prompt=per_prompt,
    )
