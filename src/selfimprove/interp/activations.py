"""Residual-stream activations: per-category statistics and held-out linear probes.

Method.

* **Capture.** The residual stream at every point ``resid.l`` (l = 0: embeddings; l = i + 1:
  after decoder layer i) on the *prompt* tokens, via :func:`selfimprove.interp.hooks.capture`.
* **Statistics** per (label, layer), over real prompt positions *excluding the first
  ``n_sink`` positions* (position 0 is the BOS / chat-start token that soaks up attention and
  carries huge-norm "massive activations"; including it would dominate every statistic):
  mean and std of the elements, mean token L2 norm, and sparsity = the share of elements with
  ``|x| < 0.05 · RMS(token)``.
* **Probes.** One linear probe per layer predicts the label (suite or category) from the
  last prompt token's residual (``pool="last"``) or the mean over non-sink prompt positions
  (``pool="mean"``). The probe is a ridge classifier on standardised features, solved in
  its dual form (``n ≪ d_model``): ``W = Xᵀ (X Xᵀ + λI)⁻¹ Y``. Accuracy is measured with
  2-fold stratified cross-validation, so every prediction is on a held-out prompt.
* **Permutation control.** The same procedure is repeated with permuted labels
  (``n_perm`` times; the dual solve is shared, so this is cheap). The layer's p-value is
  ``(1 + #{perm acc ≥ acc}) / (1 + n_perm)``; BH runs across layers. A layer "distinguishes
  the categories" when its adjusted p is ≤ alpha — accuracy above chance alone is not
  evidence (a d_model-dimensional probe on 30 prompts can fit noise).

With ``pool="last"`` and a chat template, layer 0 sees the same final token
(``assistant\\n``) for every prompt, so its probe must sit at chance: a built-in null.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from selfimprove.interp.common import InterpItem, chunks, forward, label_of, make_batch
from selfimprove.interp.hooks import capture, layout_for
from selfimprove.interp.stats import permutation_pvalue
from selfimprove.stats import benjamini_hochberg

log = logging.getLogger(__name__)

Pool = Literal["last", "mean"]


def collect_residuals(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    n_sink: int = 1,
    pool: Pool = "last",
    batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pooled features ``(N, L+1, d_model)`` and per-example token statistics.

    Returns:
        feats: pooled residual per example and point.
        tokstats: ``mean``, ``std``, ``norm``, ``sparsity`` each ``(N, L+1)``: per-example
            statistics over its non-sink prompt tokens.
    """
    layout = layout_for(model)
    P = layout.n_layers + 1
    feats: list[np.ndarray] = []
    stats: dict[str, list[np.ndarray]] = {k: [] for k in ("mean", "std", "norm", "sparsity")}
    with torch.inference_mode():
        for ch in chunks(items, batch_size):
            b = make_batch(ch, pad_id, completion=False)
            with capture(model, resid=None) as acts:
                forward(model, b)
            hs = torch.stack([acts[f"resid.{p}"].float() for p in range(P)], 1)  # (B, P, T, d)
            m = b.prompt_mask.clone()  # (B, T)
            m[:, :n_sink] = False
            mf = m.float()[:, None, :, None]  # (B, 1, T, 1)
            cnt = mf.sum(2).clamp(min=1)  # (B, 1, 1)
            n_el = cnt * hs.shape[-1]
            mean = (hs * mf).sum((2, 3)) / n_el[..., 0]  # (B, P)
            var = (((hs - mean[..., None, None]) ** 2) * mf).sum((2, 3)) / n_el[..., 0]
            norm = (hs.norm(dim=-1) * mf[..., 0]).sum(2) / cnt[..., 0]  # (B, P)
            rms = hs.pow(2).mean(-1, keepdim=True).sqrt()  # (B, P, T, 1)
            small = (hs.abs() < 0.05 * rms).float()
            spars = (small * mf).sum((2, 3)) / n_el[..., 0]
            if pool == "last":
                idx = b.last_prompt.view(-1, 1, 1, 1).expand(-1, P, 1, hs.shape[-1])
                f = hs.gather(2, idx).squeeze(2)  # (B, P, d)
            else:
                f = (hs * mf).sum(2) / cnt  # (B, P, d)
            feats.append(f.numpy())
            stats["mean"].append(mean.numpy())
            stats["std"].append(var.sqrt().numpy())
            stats["norm"].append(norm.numpy())
            stats["sparsity"].append(spars.numpy())
    return np.concatenate(feats), {k: np.concatenate(v) for k, v in stats.items()}


def _folds(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 2-fold assignment: boolean mask of fold A."""
    rng = np.random.default_rng(seed)
    a = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a[idx[: (idx.size + 1) // 2]] = True
    return a, ~a


def ridge_cv_accuracy(
    X: np.ndarray,
    y: np.ndarray,
    *,
    ridge: float = 1.0,
    n_perm: int = 200,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """2-fold held-out accuracy of a ridge classifier and its label-permutation null.

    Args:
        X: ``(N, d)`` features. y: ``(N,)`` integer labels.
        ridge: λ relative to the mean kernel diagonal.
        n_perm: permutations of ``y`` (the whole CV is redone against permuted labels).

    Returns:
        ``(accuracy, null)`` with ``null`` of shape ``(n_perm,)``.
    """
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(y)
    C = classes.size
    yi = np.searchsorted(classes, y)
    Ys = [yi] + [rng.permutation(yi) for _ in range(n_perm)]  # (1 + n_perm) label vectors
    Yall = np.stack(Ys)  # (R, N)
    correct = np.zeros(Yall.shape[0])
    fa, fb = _folds(yi, seed)
    for tr, te in ((fa, fb), (fb, fa)):
        Xtr, Xte = X[tr].astype(np.float64), X[te].astype(np.float64)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
        K = Xtr @ Xtr.T  # (n, n)
        lam = ridge * float(np.trace(K)) / max(1, K.shape[0]) + 1e-6  # > 0 on constant features
        A = np.linalg.solve(K + lam * np.eye(K.shape[0]), np.eye(K.shape[0]))  # (n, n)
        S = (Xte @ Xtr.T) @ A  # (m, n): test scores = S @ Y
        onehot = np.eye(C)[Yall[:, tr]]  # (R, n, C)
        onehot = onehot - onehot.mean(1, keepdims=True)
        scores = np.einsum("mn,rnc->rmc", S, onehot)  # (R, m, C)
        pred = scores.argmax(-1)  # (R, m)
        correct += (pred == Yall[:, te]).sum(1)
    acc = correct / y.size
    return float(acc[0]), acc[1:]


@dataclass
class ProbeRow:
    layer: int
    accuracy: float
    chance: float
    perm_mean: float
    perm_q95: float
    p: float
    p_adj: float = 1.0
    significant: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ActivationsResult:
    probes: list[ProbeRow]
    stats: list[dict[str, Any]]  # rows: label, layer, mean, std, norm, sparsity, n
    labels: list[str]
    summary: dict[str, Any] = field(default_factory=dict)


def analyze_activations(
    model: Any,
    items: Sequence[InterpItem],
    pad_id: int,
    *,
    label_by: str = "category",
    pool: Pool = "last",
    n_sink: int = 1,
    n_perm: int = 200,
    ridge: float = 1.0,
    alpha: float = 0.05,
    seed: int = 0,
    batch_size: int = 16,
) -> ActivationsResult:
    """Per-label per-layer statistics and per-layer probes with a permutation control."""
    feats, tok = collect_residuals(
        model, items, pad_id, n_sink=n_sink, pool=pool, batch_size=batch_size
    )
    labels = [label_of(it, label_by) for it in items]
    names = sorted(set(labels))
    y = np.array([names.index(x) for x in labels])
    rows: list[dict[str, Any]] = []
    for c, name in enumerate(names):
        sel = y == c
        for p in range(feats.shape[1]):
            rows.append(
                {
                    "label": name,
                    "layer": p,
                    "n": int(sel.sum()),
                    **{k: float(v[sel, p].mean()) for k, v in tok.items()},
                }
            )
    probes: list[ProbeRow] = []
    if len(names) >= 2:
        chance = float(np.bincount(y).max() / y.size)
        for p in range(feats.shape[1]):
            acc, null = ridge_cv_accuracy(feats[:, p], y, ridge=ridge, n_perm=n_perm, seed=seed)
            probes.append(
                ProbeRow(
                    p,
                    acc,
                    chance,
                    float(null.mean()),
                    float(np.quantile(null, 0.95)),
                    permutation_pvalue(acc, null),
                )
            )
        _rej, adj = benjamini_hochberg([r.p for r in probes], alpha)
        for r, a in zip(probes, adj, strict=True):
            r.p_adj, r.significant = a, a <= alpha
    sig = [r.layer for r in probes if r.significant]
    summary = {
        "n_items": len(items),
        "labels": names,
        "significant_layers": sig,
        "first_significant_layer": sig[0] if sig else None,
        "best_layer": max(probes, key=lambda r: r.accuracy).layer if probes else None,
    }
    return ActivationsResult(probes, rows, names, summary)
