"""Causal interventions: activation patching and steering vectors, each effect tested.

**Activation patching** (symmetric token replacement; Zhang & Nanda 2024). Clean and
corrupted prompts are *pairs of real items of the same category* whose prompts have the same
token length and differ in at most ``max_diff`` positions (e.g. "7 + 1" vs "7 + 3"), and
whose reference completions share a prefix and then differ at one token (the answer). The
metric is the logit difference ``LD = logit[answer_clean] − logit[answer_corrupt]`` at the
position that predicts it. For each residual point ``l`` and position set (``diff``: the
replaced tokens; ``last``: the final position), the corrupted run is re-run with the clean
residual written in; the per-pair effect is ``LD_patched − LD_corrupt``. Positive means
that site carries information that restores the clean answer.

**Steering** (contrastive mean difference; Turner et al., Rimsky et al.). With two labels
A and B, ``v = mean(resid_l | A) − mean(resid_l | B)`` at the last prompt token on one half
of the items. On the held-out B prompts, paired with held-out A reference completions, the
effect of adding ``α·v`` at every position is ``NLL_unsteered − NLL_steered`` (positive:
moved toward A's answers). Dose-response over ``alphas``; control: a random direction with
the same norm. Each dose gives three :class:`EffectTest` s — steer, random, steer − random —
and BH runs across the whole family (patching and steering families separately).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from selfimprove.interp.common import InterpItem, chunks, label_of, losses, split_half
from selfimprove.interp.hooks import capture, layout_for, patch_residual, steer
from selfimprove.interp.stats import EffectTest, bh, paired_effect

log = logging.getLogger(__name__)


def corrupted_pairs(
    items: Sequence[InterpItem], *, max_diff: int = 3, max_pairs: int = 64
) -> list[tuple[InterpItem, InterpItem, int]]:
    """``(clean, corrupt, k)`` pairs: same category and prompt length, ≤ ``max_diff`` differing
    prompt tokens, completions equal before token ``k`` and different at ``k``."""
    groups: dict[tuple[str, int], list[InterpItem]] = {}
    for it in items:
        groups.setdefault((it.category, len(it.prompt_ids)), []).append(it)
    out: list[tuple[InterpItem, InterpItem, int]] = []
    for key in sorted(groups):
        xs = groups[key]
        for i, a in enumerate(xs):
            for b in xs[i + 1 :]:
                nd = sum(x != y for x, y in zip(a.prompt_ids, b.prompt_ids, strict=True))
                if not 0 < nd <= max_diff:
                    continue
                k = next(
                    (
                        t
                        for t, (x, y) in enumerate(
                            zip(a.completion_ids, b.completion_ids, strict=False)
                        )
                        if x != y
                    ),
                    None,
                )
                if k is None:
                    continue
                out.append((a, b, k))
                break
            if len(out) >= max_pairs:
                return out
    return out


def _logit_diff(logits: torch.Tensor, a: int, b: int) -> float:
    return float(logits[-1, a] - logits[-1, b])


def activation_patching(
    model: Any,
    pairs: Sequence[tuple[InterpItem, InterpItem, int]],
    *,
    layers: Sequence[int] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Patch clean residuals into corrupted runs per (layer, position set); BH over the family."""
    layout = layout_for(model)
    pts = list(range(1, layout.n_layers + 1)) if layers is None else [int(x) for x in layers]
    effects: dict[tuple[int, str], list[float]] = {
        (p, s): [] for p in pts for s in ("diff", "last")
    }
    base_ld: list[tuple[float, float]] = []
    with torch.inference_mode():
        for clean, corrupt, k in pairs:
            ci = torch.tensor([list(clean.prompt_ids) + list(clean.completion_ids[:k])])  # (1, T)
            xi = torch.tensor([list(corrupt.prompt_ids) + list(corrupt.completion_ids[:k])])
            a_tok, b_tok = clean.completion_ids[k], corrupt.completion_ids[k]
            with capture(model, resid=pts) as acts:
                ld_clean = _logit_diff(model(input_ids=ci).logits[0], a_tok, b_tok)
            ld_corrupt = _logit_diff(model(input_ids=xi).logits[0], a_tok, b_tok)
            base_ld.append((ld_clean, ld_corrupt))
            T = ci.shape[1]
            diff = ci != xi  # (1, T)
            last = torch.zeros((1, T), dtype=torch.bool)
            last[0, -1] = True
            for p in pts:
                for name, mask in (("diff", diff), ("last", last)):
                    with patch_residual(model, p, acts[f"resid.{p}"], mask):
                        ld = _logit_diff(model(input_ids=xi).logits[0], a_tok, b_tok)
                    effects[(p, name)].append(ld - ld_corrupt)
    tests = [
        paired_effect(v, name=f"patch resid.{p} @{s}", seed=seed) for (p, s), v in effects.items()
    ]
    tests = bh(tests, alpha=alpha, family="patching")
    gap = float(np.mean([c - x for c, x in base_ld])) if base_ld else float("nan")
    rows = []
    for ((p, s), _v), t in zip(effects.items(), tests, strict=True):
        rows.append(
            {
                "kind": "patch",
                "layer": p,
                "position": s,
                "recovery": t.mean / gap if gap else None,
                **t.to_dict(),
            }
        )
    return rows


def steering_vector(
    model: Any, a: Sequence[InterpItem], b: Sequence[InterpItem], pad_id: int, layer: int
) -> torch.Tensor:
    """``mean(resid_layer | a) − mean(resid_layer | b)`` at the last prompt token: ``(d_model,)``."""
    from selfimprove.interp.common import forward, make_batch

    def mean_last(xs: Sequence[InterpItem]) -> torch.Tensor:
        tot = None
        with torch.inference_mode():
            for ch in chunks(xs, 16):
                bt = make_batch(ch, pad_id, completion=False)
                with capture(model, resid=[layer]) as acts:
                    forward(model, bt)
                h = acts[f"resid.{layer}"]  # (B, T, d)
                last = h[torch.arange(h.shape[0]), bt.last_prompt].double().sum(0)
                tot = last if tot is None else tot + last
        assert tot is not None
        return (tot / len(xs)).float()

    return mean_last(a) - mean_last(b)


def steering_dose_response(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
    layer: int | None = None,
    alphas: Sequence[float] = (0.5, 1.0, 2.0),
    alpha_fdr: float = 0.05,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Steer held-out B prompts toward label A; dose-response with a matched-norm random control."""
    layout = layout_for(model)
    ly = layer if layer is not None else max(1, layout.n_layers // 2)
    labels = sorted({label_of(it, label_by) for it in items})
    if len(labels) < 2:
        return []
    la, lb = labels[0], labels[1]
    fit, held = split_half(items, seed)
    A_fit = [x for x in fit if label_of(x, label_by) == la]
    B_fit = [x for x in fit if label_of(x, label_by) == lb]
    A_held = [x for x in held if label_of(x, label_by) == la]
    B_held = [x for x in held if label_of(x, label_by) == lb]
    if not (A_fit and B_fit and A_held and B_held):
        return []
    v = steering_vector(model, A_fit, B_fit, pad_id, ly)
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(v.shape, generator=g)
    r = r * (v.norm() / r.norm())  # matched norm
    probe = [
        replace(x, completion_ids=A_held[i % len(A_held)].completion_ids)
        for i, x in enumerate(B_held)
    ]
    base = losses(model, probe, pad_id)
    raw: list[tuple[float, str, EffectTest]] = []
    for al in alphas:
        s = losses(model, probe, pad_id, context=partial(steer, model, ly, v, alpha=al))
        rr = losses(model, probe, pad_id, context=partial(steer, model, ly, r, alpha=al))
        eff_s, eff_r = base - s, base - rr
        raw.append((al, "steer", paired_effect(eff_s, name=f"steer α={al}", seed=seed)))
        raw.append((al, "random", paired_effect(eff_r, name=f"random α={al}", seed=seed)))
        raw.append(
            (
                al,
                "steer−random",
                paired_effect(eff_s - eff_r, name=f"steer−random α={al}", seed=seed),
            )
        )
    tests = bh([t for _a, _k, t in raw], alpha=alpha_fdr, family="steering")
    return [
        {
            "kind": f"steer:{k}",
            "layer": ly,
            "alpha": al,
            "toward": la,
            "from": lb,
            "vector_norm": float(v.norm()),
            **t.to_dict(),
        }
        for (al, k, _), t in zip(raw, tests, strict=True)
    ]


def analyze_causal(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
    layers: Sequence[int] | None = None,
    steer_layer: int | None = None,
    alphas: Sequence[float] = (0.5, 1.0, 2.0),
    max_pairs: int = 24,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Activation patching over layers and a steering dose-response with its random control."""
    pairs = corrupted_pairs(items, max_pairs=max_pairs)
    rows = activation_patching(model, pairs, layers=layers, alpha=alpha, seed=seed) if pairs else []
    rows += steering_dose_response(
        model,
        items,
        pad_id,
        label_by=label_by,
        layer=steer_layer,
        alphas=alphas,
        alpha_fdr=alpha,
        seed=seed,
    )
    patch = [r for r in rows if r["kind"] == "patch"]
    summary = {
        "n_pairs": len(pairs),
        "patch_significant": [r["name"] for r in patch if r["significant"] and r["mean"] > 0],
        "steer_significant": [
            r["name"] for r in rows if r["kind"].startswith("steer") and r["significant"]
        ],
    }
    return {"rows": rows, "summary": summary}
