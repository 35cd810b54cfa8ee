"""Gradient saliency per module, head and category: |θ·∇θ| and the diagonal (empirical) Fisher.

Method. For each example ``i`` the loss is the mean NLL of its reference completion; one
backward pass gives ``g_i = ∇θ loss_i`` (batch 1, so the per-example quantities are exact).
Per module (a weight matrix or vector) we accumulate, averaged over a category's examples:

* ``taylor``: ``Σ_j |θ_j · g_ij|`` — the first-order estimate of how much the loss would
  move if each weight were removed (Molchanov et al.), absolute per element and example.
* ``fisher``: ``Σ_j g_ij²`` — the diagonal of the *empirical* Fisher (gold labels, not
  labels sampled from the model; say so when comparing with the true Fisher).

Per attention head ``h`` the same sums are taken over the head's columns of the output
projection (``[h·D:(h+1)·D]`` of its input side) plus the head's rows of ``q_proj`` (Llama
family); k/v rows are shared by several query heads under GQA and are reported per module
only. **Tied embeddings** (``lm_head.weight is embed_tokens.weight``) are one parameter:
``named_parameters`` yields it once, and the row says ``(tied with lm_head)``.
Adapter (LoRA) parameters are skipped; base weights are analysed even when frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from selfimprove.interp.common import InterpItem, batch_losses, forward, label_of, make_batch
from selfimprove.interp.hooks import layout_for, unwrap


@contextlib.contextmanager
def _grads_on(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Temporarily let frozen parameters receive gradients; restore the flags after."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def analyze_saliency(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
) -> dict[str, Any]:
    """``{"modules": rows, "heads": {label: {"taylor": (L,H), "fisher": (L,H)}}, "summary"}``."""
    layout = layout_for(model)
    base = unwrap(model)
    named = [
        (n, p) for n, p in base.named_parameters() if "lora_" not in n and p.dtype.is_floating_point
    ]
    names = [n for n, _ in named]
    params = [p for _, p in named]
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    labels = [label_of(it, label_by) for it in items]
    cats = sorted(set(labels))
    L, H, D = layout.n_layers, layout.n_heads, layout.d_head
    per_mod = {c: np.zeros((2, len(params))) for c in cats}
    per_head = {c: np.zeros((2, L, H)) for c in cats}
    counts = dict.fromkeys(cats, 0)
    oproj = {
        f"{layout.layers_path}.{ly}.{layout.attn_name}.{layout.out_proj_name}.weight": ly
        for ly in range(L)
    }
    oproj.update({k.replace(".weight", ".base_layer.weight"): v for k, v in oproj.items()})
    qproj = {f"{layout.layers_path}.{ly}.{layout.attn_name}.q_proj.weight": ly for ly in range(L)}
    qproj.update({k.replace(".weight", ".base_layer.weight"): v for k, v in qproj.items()})
    model.eval()
    with _grads_on(params), torch.enable_grad():
        for it, c in zip(items, labels, strict=True):
            b = make_batch([it], pad_id)
            loss = batch_losses(forward(model, b), b).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            counts[c] += 1
            for k, (n, p, g) in enumerate(zip(names, params, grads, strict=True)):
                if g is None:
                    continue
                tg = (p.detach() * g).abs()
                g2 = g.pow(2)
                per_mod[c][0, k] += float(tg.sum())
                per_mod[c][1, k] += float(g2.sum())
                if n in oproj:
                    ly = oproj[n]
                    W_in = tg.T if layout.family == "gpt2" else tg  # (out, H*D)
                    G_in = g2.T if layout.family == "gpt2" else g2
                    per_head[c][0, ly] += (
                        W_in.view(W_in.shape[0], H, D).sum((0, 2)).double().numpy()
                    )
                    per_head[c][1, ly] += (
                        G_in.view(G_in.shape[0], H, D).sum((0, 2)).double().numpy()
                    )
                elif n in qproj:
                    ly = qproj[n]
                    per_head[c][0, ly] += tg.view(H, D, -1).sum((1, 2)).double().numpy()
                    per_head[c][1, ly] += g2.view(H, D, -1).sum((1, 2)).double().numpy()
    rows: list[dict[str, Any]] = []
    for c in cats:
        k = max(1, counts[c])
        for j, n in enumerate(names):
            label = n
            if tied and n.endswith(layout.embed_path + ".weight"):
                label = n + " (tied with lm_head)"
            rows.append(
                {
                    "label": c,
                    "module": label,
                    "taylor": float(per_mod[c][0, j] / k),
                    "fisher": float(per_mod[c][1, j] / k),
                    "n": counts[c],
                }
            )
    heads = {
        c: {
            "taylor": (per_head[c][0] / max(1, counts[c])).tolist(),
            "fisher": (per_head[c][1] / max(1, counts[c])).tolist(),
        }
        for c in cats
    }
    top = {
        c: [
            r["module"]
            for r in sorted((r for r in rows if r["label"] == c), key=lambda r: -r["taylor"])[:5]
        ]
        for c in cats
    }
    return {"modules": rows, "heads": heads, "summary": {"labels": cats, "top_modules": top}}
