"""Attention-head importance: gradient screening, ablation confirmation, a pruning plan.

Method (Michel et al. 2019, "Are sixteen heads really better than one?").

1. **Screen.** A gate ``g[l, h] = 1`` multiplies each head's slice of the input of the
   attention output projection (:func:`selfimprove.interp.hooks.head_gates`). The
   importance of a head for an example is ``|∂ loss_i / ∂ g[l, h]|`` at ``g = 1`` — the
   absolute value is taken *per example* and then averaged over the category (averaging
   signed gradients first would let opposite effects cancel). One backward pass gives
   per-example gradients because every example has its own gate row.
2. **Confirm.** The top-``k`` heads of a category (the shortlist) are ablated one at a time
   on *held-out* prompts of that category (prompts not used for screening). The effect is
   the paired per-prompt change in reference NLL (ablated − clean); each is an
   :class:`EffectTest`, and the family — the shortlist plus ``n_random`` heads drawn at
   random from the rest, the baseline a gradient screen must beat — is corrected with BH.
3. **Prune.** Greedily remove the least important remaining heads, re-scoring importance
   with the already-removed heads ablated after every step, while the mean loss increase on
   the validation prompts stays within ``max_loss_increase`` (nats).

Ablation is ``mean`` by default (the head's mean output over the screening prompts), which
keeps the downstream activations on-distribution; ``zero`` and ``resample`` are available.
Gradient importance is a first-order screen, not evidence: only step 2 is a test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from selfimprove.interp.common import (
    InterpItem,
    batch_losses,
    chunks,
    forward,
    losses,
    make_batch,
)
from selfimprove.interp.hooks import (
    AblationMode,
    Head,
    ablate_heads,
    capture,
    head_gates,
    layout_for,
)
from selfimprove.interp.stats import EffectTest, bh, paired_effect

log = logging.getLogger(__name__)


def head_importance(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    batch_size: int = 8,
    ablated: Sequence[Head] = (),
) -> np.ndarray:
    """Per-example gradient importance ``|∂loss_i/∂gate|``: ``(N, n_layers, n_heads)``.

    ``ablated`` heads get gate 0 (pruning re-scores with them removed); their importance is 0.
    """
    layout = layout_for(model)
    L, H = layout.n_layers, layout.n_heads
    out: list[np.ndarray] = []
    model.eval()
    for ch in chunks(items, batch_size):
        b = make_batch(ch, pad_id)
        init = torch.ones(len(ch), L, H)
        for ly, hd in ablated:
            init[:, ly, hd] = 0.0
        gates = init.requires_grad_(True)  # (B, L, H)
        with torch.enable_grad(), head_gates(model, gates):
            loss = batch_losses(forward(model, b), b)  # (B,)
            (grad,) = torch.autograd.grad(loss.sum(), gates)
        imp = grad.abs()
        for ly, hd in ablated:
            imp[:, ly, hd] = 0.0
        out.append(imp.double().numpy())
    return np.concatenate(out) if out else np.zeros((0, L, H))


def head_means(
    model: Any, items: Sequence[InterpItem], pad_id: int, *, batch_size: int = 16
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Each head's mean output ``{layer: (H, D)}`` and a pool of outputs ``{layer: (N, H, D)}``.

    Averaged over real (non-padding) prompt *and* completion positions of ``items``; the
    pool keeps up to 512 positions per layer (for resample ablation).
    """
    layout = layout_for(model)
    H, D = layout.n_heads, layout.d_head
    sums: dict[int, torch.Tensor] = {
        ly: torch.zeros(H, D, dtype=torch.float64) for ly in range(layout.n_layers)
    }
    pools: dict[int, list[torch.Tensor]] = {ly: [] for ly in range(layout.n_layers)}
    count = 0
    with torch.inference_mode():
        for ch in chunks(items, batch_size):
            b = make_batch(ch, pad_id)
            with capture(model, resid=False, z=None) as acts:
                forward(model, b)
            m = b.attention_mask.bool()  # (B, T)
            count += int(m.sum())
            for ly in range(layout.n_layers):
                zz = acts[f"z.{ly}"][m].view(-1, H, D)  # (n_tok, H, D)
                sums[ly] += zz.double().sum(0)
                pools[ly].append(zz[:: max(1, zz.shape[0] // 64)])
    means = {ly: (s / max(1, count)).float() for ly, s in sums.items()}
    pool = {ly: torch.cat(p)[:512] for ly, p in pools.items()}
    return means, pool


@dataclass
class HeadAblation:
    """One confirmed (or not) head: its screening score and its ablation test."""

    category: str
    layer: int
    head: int
    group: str  # "shortlist" or "random"
    importance: float
    test: EffectTest

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "layer": self.layer,
            "head": self.head,
            "group": self.group,
            "importance": self.importance,
            **self.test.to_dict(),
        }


def confirm_heads(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    category: str,
    shortlist: Sequence[Head],
    random_heads: Sequence[Head],
    importance: np.ndarray,
    mode: AblationMode = "mean",
    means: dict[int, torch.Tensor] | None = None,
    pool: dict[int, torch.Tensor] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    batch_size: int = 16,
) -> list[HeadAblation]:
    """Ablate each head alone on held-out ``items``; paired tests, BH over the whole family."""
    base = losses(model, items, pad_id, batch_size=batch_size)
    raw: list[tuple[Head, str, EffectTest]] = []
    for group, heads in (("shortlist", shortlist), ("random", random_heads)):
        for ly, hd in heads:
            abl = losses(
                model,
                items,
                pad_id,
                batch_size=batch_size,
                context=partial(
                    ablate_heads, model, [(ly, hd)], mode=mode, means=means, pool=pool, seed=seed
                ),
            )
            t = paired_effect(abl - base, name=f"L{ly}.H{hd}", seed=seed)
            raw.append(((ly, hd), group, t))
    tests = bh([r[2] for r in raw], alpha=alpha, family=f"heads:{category}")
    return [
        HeadAblation(category, h[0], h[1], g, float(importance[h[0], h[1]]), t)
        for (h, g, _), t in zip(raw, tests, strict=True)
    ]


@dataclass
class PruneStep:
    step: int
    removed: list[Head]
    mean_loss: float
    loss_increase: float
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "removed": [list(h) for h in self.removed],
            "n_removed": len(self.removed),
            "mean_loss": self.mean_loss,
            "loss_increase": self.loss_increase,
            "accepted": self.accepted,
        }


def prune_plan(
    model: Any,
    score_items: Sequence[InterpItem],
    val_items: Sequence[InterpItem],
    pad_id: int,
    *,
    max_loss_increase: float = 0.05,
    heads_per_step: int = 1,
    max_steps: int = 10,
    mode: AblationMode = "mean",
    means: dict[int, torch.Tensor] | None = None,
    batch_size: int = 8,
) -> list[PruneStep]:
    """Greedy pruning: remove the least important heads while the loss increase stays in bound.

    Importance is re-scored on ``score_items`` with the removed heads ablated before every
    step; the loss increase is measured on ``val_items``. The last step is the first that
    broke the bound (``accepted=False``) or the step limit.
    """
    layout = layout_for(model)
    if mode != "zero" and means is None:
        means, _pool = head_means(model, score_items, pad_id)
    base = float(losses(model, val_items, pad_id, batch_size=batch_size).mean())
    removed: list[Head] = []
    steps: list[PruneStep] = []
    for step in range(1, max_steps + 1):
        imp = head_importance(model, score_items, pad_id, batch_size=batch_size, ablated=removed)
        score = imp.mean(0)  # (L, H)
        for ly, hd in removed:
            score[ly, hd] = np.inf
        order = np.argsort(score, axis=None)
        cand = [(int(i // layout.n_heads), int(i % layout.n_heads)) for i in order[:heads_per_step]]
        trial = removed + cand
        zero_or_mean: AblationMode = "zero" if mode == "resample" else mode
        val = losses(
            model,
            val_items,
            pad_id,
            batch_size=batch_size,
            context=partial(ablate_heads, model, trial, mode=zero_or_mean, means=means),
        )
        inc = float(val.mean()) - base
        ok = inc <= max_loss_increase
        steps.append(PruneStep(step, list(trial), float(val.mean()), inc, ok))
        if not ok:
            break
        removed = trial
        if len(removed) >= layout.n_layers * layout.n_heads:
            break
    return steps


@dataclass
class HeadsResult:
    """Everything the heads analysis found."""

    importance: dict[str, list[list[float]]]  # category -> (L, H) mean |grad|
    ablations: list[HeadAblation]
    prune: list[PruneStep] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def analyze_heads(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
    top_k: int = 5,
    n_random: int = 5,
    mode: AblationMode = "mean",
    max_categories: int = 2,
    prune: bool = True,
    max_loss_increase: float = 0.05,
    prune_steps: int = 6,
    alpha: float = 0.05,
    seed: int = 0,
    batch_size: int = 8,
) -> HeadsResult:
    """Screen heads by gradient per category, confirm the shortlist by ablation, plan pruning.

    Items of each label are split in half: screening (gradients, mean activations) and
    held-out confirmation. Confirmation runs on the ``max_categories`` largest labels.
    """
    from selfimprove.interp.common import label_of, split_half

    layout = layout_for(model)
    rng = np.random.default_rng(seed)
    screen, held = split_half(items, seed)
    imp_all = head_importance(model, screen, pad_id, batch_size=batch_size)  # (N, L, H)
    labels = [label_of(it, label_by) for it in screen]
    cats = sorted(set(labels))
    importance = {
        c: imp_all[[i for i, x in enumerate(labels) if x == c]].mean(0).tolist() for c in cats
    }
    means, pool = head_means(model, screen, pad_id)
    held_by: dict[str, list[InterpItem]] = {}
    for it in held:
        held_by.setdefault(label_of(it, label_by), []).append(it)
    chosen = sorted(held_by, key=lambda c: (-len(held_by[c]), c))[:max_categories]
    ablations: list[HeadAblation] = []
    all_heads = [(ly, hd) for ly in range(layout.n_layers) for hd in range(layout.n_heads)]
    for c in chosen:
        imp = np.asarray(importance[c])  # (L, H)
        order = np.argsort(-imp, axis=None)
        short = [(int(i // layout.n_heads), int(i % layout.n_heads)) for i in order[:top_k]]
        rest = [h for h in all_heads if h not in short]
        pick = rng.choice(len(rest), size=min(n_random, len(rest)), replace=False)
        rand = [rest[int(i)] for i in pick]
        ablations += confirm_heads(
            model,
            held_by[c],
            pad_id,
            category=c,
            shortlist=short,
            random_heads=rand,
            importance=imp,
            mode=mode,
            means=means,
            pool=pool,
            alpha=alpha,
            seed=seed,
        )
    steps: list[PruneStep] = []
    if prune:
        steps = prune_plan(
            model,
            screen,
            held,
            pad_id,
            max_loss_increase=max_loss_increase,
            max_steps=prune_steps,
            mode=mode,
            means=means,
            batch_size=batch_size,
        )
    summary: dict[str, Any] = {}
    for c in chosen:
        for g in ("shortlist", "random"):
            xs = [a for a in ablations if a.category == c and a.group == g]
            summary[f"{c}/{g}"] = {
                "n_heads": len(xs),
                "n_significant": sum(a.test.significant for a in xs),
                "mean_effect": float(np.mean([a.test.mean for a in xs])) if xs else None,
            }
    accepted = [s for s in steps if s.accepted]
    summary["prunable_heads"] = len(accepted[-1].removed) if accepted else 0
    return HeadsResult(importance, ablations, steps, summary)
