"""Attention patterns: per-head descriptive statistics per category (description, not importance).

Method. With eager attention (:func:`selfimprove.interp.hooks.eager_attention`; sdpa cannot
return weights) the patterns ``A[l] : (B, H, T, T)`` of the prompt tokens are summarised per
head, averaged over query positions ``t ≥ 1`` that are real prompt tokens:

* ``entropy``: ``-Σ_k A[t, k] log A[t, k]`` (nats) — diffuse (high) or focused (low).
* ``first_token_mass``: ``A[t, 0]`` — attention parked on the first token (the "sink").
* ``prev_token``: ``A[t, t-1]`` — previous-token heads score near 1.

These describe where a head looks; they say nothing about whether the head matters for a
behaviour (attention is not explanation). Importance comes from the ``heads`` analysis,
which intervenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from selfimprove.interp.common import InterpItem, chunks, label_of, make_batch
from selfimprove.interp.hooks import eager_attention, layout_for

METRICS = ("entropy", "first_token_mass", "prev_token")


def attention_stats(
    model: Any, items: Sequence[InterpItem], pad_id: int, *, batch_size: int = 8
) -> dict[str, np.ndarray]:
    """Per-example head statistics: ``{metric: (N, n_layers, n_heads)}``."""
    layout = layout_for(model)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    with eager_attention(model), torch.inference_mode():
        for ch in chunks(items, batch_size):
            b = make_batch(ch, pad_id, completion=False)
            res = model(
                input_ids=b.input_ids, attention_mask=b.attention_mask, output_attentions=True
            )
            A = torch.stack([a.float() for a in res.attentions], 1)  # (B, L, H, T, T)
            q = b.prompt_mask.clone()
            q[:, 0] = False  # query t = 0 can only attend to itself
            qm = q.float()[:, None, None, :]  # (B, 1, 1, T)
            cnt = qm.sum(-1).clamp(min=1)  # (B, 1, 1)
            ent = -(A * (A.clamp(min=1e-12)).log()).sum(-1)  # (B, L, H, T)
            first = A[..., 0]  # (B, L, H, T)
            prev = torch.zeros_like(first)
            prev[..., 1:] = torch.diagonal(A, offset=-1, dim1=-2, dim2=-1)  # A[t, t-1]
            for name, v in (("entropy", ent), ("first_token_mass", first), ("prev_token", prev)):
                out[name].append(((v * qm).sum(-1) / cnt).numpy())
    L, H = layout.n_layers, layout.n_heads
    return {k: (np.concatenate(v) if v else np.zeros((0, L, H))) for k, v in out.items()}


def analyze_attention(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
    batch_size: int = 8,
) -> dict[str, Any]:
    """``{"maps": {label: {metric: (L, H) list}}, "rows": [...], "summary": {...}}``."""
    stats = attention_stats(model, items, pad_id, batch_size=batch_size)
    labels = [label_of(it, label_by) for it in items]
    names = sorted(set(labels))
    maps: dict[str, dict[str, list[list[float]]]] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        sel = np.array([x == name for x in labels])
        maps[name] = {m: stats[m][sel].mean(0).tolist() for m in METRICS}
        for m in METRICS:
            grid = stats[m][sel].mean(0)  # (L, H)
            top = np.argsort(-grid, axis=None)[:3]
            H = grid.shape[1]
            rows.append(
                {
                    "label": name,
                    "metric": m,
                    "mean": float(grid.mean()),
                    "top_heads": [f"L{i // H}.H{i % H}={grid.flat[i]:.2f}" for i in top],
                }
            )
    allm = {m: stats[m].mean(0) for m in METRICS}
    H = allm["prev_token"].shape[1]
    prev_heads = [f"L{i // H}.H{i % H}" for i in np.flatnonzero(allm["prev_token"].ravel() > 0.5)]
    summary = {
        "labels": names,
        "previous_token_heads": prev_heads,
        "mean_first_token_mass": float(allm["first_token_mass"].mean()),
    }
    return {"maps": maps, "rows": rows, "summary": summary}
