"""Shared plumbing of the interp analyses: items, batches and per-example losses.

An :class:`InterpItem` is one prompt, formatted exactly as the evaluation engine formats it
(chat template, system prompt), plus the tokens of its reference completion
(``task.reference(sample)``, e.g. ``Answer: 12``). The analyses measure behaviour as the
per-example mean NLL of that reference (teacher forcing): lower is better, and a paired
difference of NLLs is the effect of an intervention.

Why not the engine's scoring calls: interp needs gradients, hooks and stable positions. So
batches here are *right*-padded (position ``t`` is token ``t`` of every row, position 0 is
the first token, the attention sink) and run through the model directly; prompt formatting
still comes from :class:`selfimprove.engine.Engine`, so the text is the same text the
evaluation scores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from selfimprove.models import LoadedModel
from selfimprove.tasks.base import Sample, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InterpItem:
    """One prompt with its reference completion, tokenized.

    Attributes:
        id: sample id.
        suite, category: where it came from (the analyses group by ``label``).
        prompt_ids: formatted prompt tokens (chat template applied).
        completion_ids: reference completion tokens (no special tokens).
        target: the gold answer string.
    """

    id: str
    suite: str
    category: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    target: str = ""

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.completion_ids


@dataclass
class Batch:
    """A right-padded batch.

    Attributes:
        input_ids, attention_mask: ``(B, T)``.
        loss_mask: ``(B, T-1)`` float, 1 where ``logits[:, t]`` predicts a completion token.
        last_prompt: ``(B,)`` index of each row's last prompt token.
        prompt_mask: ``(B, T)`` bool, real prompt tokens (completion and padding excluded).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    last_prompt: torch.Tensor
    prompt_mask: torch.Tensor


def items_from_pairs(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, Task, Sample]],
    *,
    system_prompt: str | None = None,
    max_prompt_tokens: int = 256,
) -> list[InterpItem]:
    """``(suite, task, sample)`` triples -> tokenized items (chat template as in evaluation)."""
    from selfimprove.engine import Engine
    from selfimprove.runtime import Runtime

    eng = Engine(
        loaded,
        runtime=Runtime(threads=torch.get_num_threads(), dtype="fp32"),
        system_prompt=system_prompt,
    )
    prompts = [s.messages() for _su, _t, s in pairs]
    p_ids = eng.encode_prompts(prompts)
    out = []
    for (suite, task, sample), ids in zip(pairs, p_ids, strict=True):
        comp = list(loaded.tokenizer(task.reference(sample), add_special_tokens=False)["input_ids"])
        out.append(
            InterpItem(
                id=sample.id,
                suite=suite,
                category=sample.category,
                prompt_ids=tuple(ids[-max_prompt_tokens:]),
                completion_ids=tuple(comp),
                target=sample.target,
            )
        )
    return out


def make_batch(items: Sequence[InterpItem], pad_id: int, *, completion: bool = True) -> Batch:
    """Right-pad ``items`` (with or without their completions) into one batch."""
    rows = [list(it.ids if completion else it.prompt_ids) for it in items]
    width = max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    loss_mask = torch.zeros((B, max(1, width - 1)), dtype=torch.float32)
    prompt_mask = torch.zeros((B, width), dtype=torch.bool)
    last = torch.zeros(B, dtype=torch.long)
    for r, (row, it) in enumerate(zip(rows, items, strict=True)):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[r, : len(row)] = 1
        P = len(it.prompt_ids)
        prompt_mask[r, :P] = True
        last[r] = P - 1
        if completion and it.completion_ids:
            # logits at t predict token t + 1: completion tokens P..P+C-1 <- logits P-1..P+C-2
            loss_mask[r, P - 1 : P - 1 + len(it.completion_ids)] = 1.0
    return Batch(ids, attn, loss_mask, last, prompt_mask)


def batch_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-example mean NLL of the completion tokens: ``(B,)`` (differentiable)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    tgt = batch.input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    nll = -lp.gather(-1, tgt).squeeze(-1)  # (B, T-1)
    m = batch.loss_mask[:, : nll.shape[1]]
    return (nll * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def forward(model: Any, batch: Batch) -> torch.Tensor:
    """Logits ``(B, T, V)`` of a right-padded batch."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # type: ignore[no-any-return]


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i : i + size]


def losses(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    batch_size: int = 16,
    context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> np.ndarray:
    """Per-example reference NLL ``(N,)`` under an optional intervention ``context()``."""
    out: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for ch in chunks(items, batch_size):
            b = make_batch(ch, pad_id)
            with context() if context is not None else contextlib.nullcontext():
                logits = forward(model, b)
            out.append(batch_losses(logits, b).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pad_id_of(loaded: LoadedModel) -> int:
    tok = loaded.tokenizer
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pid)


def label_of(item: InterpItem, by: str) -> str:
    return item.suite if by == "suite" else item.category


def split_half(items: Sequence[InterpItem], seed: int) -> tuple[list[InterpItem], list[InterpItem]]:
    """Split into two disjoint halves, stratified by category, seeded."""
    rng = np.random.default_rng(seed)
    a: list[InterpItem] = []
    b: list[InterpItem] = []
    cats: dict[str, list[InterpItem]] = {}
    for it in items:
        cats.setdefault(it.category, []).append(it)
    for c in sorted(cats):
        xs = cats[c]
        perm = rng.permutation(len(xs))
        half = (len(xs) + 1) // 2
        a += [xs[i] for i in perm[:half]]
        b += [xs[i] for i in perm[half:]]
    return a, b
