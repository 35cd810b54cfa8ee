"""Statistics shared by the gate, the detector, evaluation and interp.

One home for the pieces every stage uses, so that "BH", "Wilson" or "McNemar" mean the same
thing in a diff table, an interp family, an evaluation table and the loop's report:

* **Multiple testing.** Both wrap ``statsmodels`` (``multipletests``): Benjamini–Hochberg
  (``fdr_bh``: ``q_(i) = min_{j ≥ i} m·p_(j)/j``, capped at 1) for false-discovery-rate
  families, Holm (step-down, family-wise) for the gate's per-category report.
* **Wilson score interval** for one binomial proportion (good at 0% and 100%, where the
  Wald interval collapses): the CIs of evaluation metrics and weak-area error rates.
* **Exact McNemar test** on paired binary outcomes (the same items before and after, or
  under model A and model B): under H0 a discordant pair is equally likely to be
  wrong→right (``c``) or right→wrong (``b``), so ``c | b+c ~ Binomial(b+c, 1/2)``; with
  Newcombe's paired interval (method 10) for the difference in rates. The gate uses it one-
  sided (target gain, harm), the behavior-change detector two-sided.

Tests specific to one stage stay with it (Tango non-inferiority and the paired bootstrap in
:mod:`selfimprove.gate`, region statistics in :mod:`selfimprove.diff.stats`, sign-flip
effects in :mod:`selfimprove.interp.stats`). Nothing here touches models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

Alternative = Literal["two-sided", "greater", "less"]

#: Two-sided 95% normal quantile, Φ⁻¹(0.975).
Z_975 = 1.959963984540054


# ---------------------------------------------------------------------------------------------
# Multiple testing
# ---------------------------------------------------------------------------------------------


def _checked(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be finite and lie in [0, 1]")
    return p


def benjamini_hochberg(p_values: Sequence[float], q: float = 0.1) -> tuple[list[bool], list[float]]:
    """Benjamini–Hochberg step-up at level ``q``: (rejected, adjusted p-values).

    Hypothesis i is rejected iff its adjusted value is ≤ ``q`` (statsmodels ``fdr_bh``).
    """
    from statsmodels.stats.multitest import multipletests

    p = _checked(p_values)
    if p.size == 0:
        return [], []
    _rej, adj, _a, _b = multipletests(p, alpha=q, method="fdr_bh")
    return [bool(x <= q) for x in adj], [float(x) for x in adj]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (statsmodels ``holm``)."""
    from statsmodels.stats.multitest import multipletests

    p = _checked(p_values)
    if p.size == 0:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]


# ---------------------------------------------------------------------------------------------
# Proportions
# ---------------------------------------------------------------------------------------------


def wilson_ci(k: int, n: int, z: float = Z_975) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (``(nan, nan)`` if n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def _as_bools(xs: Sequence[Any], name: str) -> np.ndarray:
    arr = np.asarray(xs)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _paired_bools(before: Sequence[Any], after: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``before`` and ``after`` as equal-length, non-empty boolean arrays (else ValueError)."""
    x, y = _as_bools(before, "before"), _as_bools(after, "after")
    if len(x) != len(y):
        raise ValueError(f"before and after differ in length ({len(x)} vs {len(y)})")
    if len(x) == 0:
        raise ValueError("no paired items")
    return x, y


def paired_table(before: Sequence[Any], after: Sequence[Any]) -> tuple[int, int, int, int]:
    """The 2×2 table of paired binary outcomes: ``(n_both, b, c, n_neither)`` = right→right,
    right→wrong, wrong→right, wrong→wrong (validated as in :func:`_paired_bools`)."""
    x, y = _paired_bools(before, after)
    n_both = int(np.sum(x & y))
    b = int(np.sum(x & ~y))
    c = int(np.sum(~x & y))
    return n_both, b, c, len(x) - n_both - b - c


def newcombe_paired_ci(
    n_both: int, b: int, c: int, n_neither: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for p_after − p_before on paired binary data.

    Combines the Wilson intervals of the two marginal rates with their correlation φ
    (of the before/after indicators), which is what makes it a *paired* interval. Good
    coverage near 0 and 1 and with few discordant pairs, where the Wald interval fails.
    """
    from scipy import stats as sps

    n = n_both + b + c + n_neither
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    k_after, k_before = n_both + c, n_both + b
    p2, p1 = k_after / n, k_before / n
    l2, u2 = wilson_ci(k_after, n, z)
    l1, u1 = wilson_ci(k_before, n, z)
    # φ between the indicators; 0 when a margin is constant (no correlation defined).
    den = (n_both + b) * (c + n_neither) * (n_both + c) * (b + n_neither)
    phi = (n_both * n_neither - b * c) / math.sqrt(den) if den > 0 else 0.0
    d = p2 - p1
    lo = d - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    hi = d + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return max(-1.0, lo), min(1.0, hi)


class PairedBinaryTest(BaseModel):
    """Exact McNemar test on paired binary outcomes (same items before and after).

    Cells: ``n_both`` right→right, ``b`` right→wrong, ``c`` wrong→right, ``n_neither``
    wrong→wrong. ``statistic`` is ``c``, the number of wrong→right pairs among the
    ``b + c`` discordant ones.
    """

    test: str = "McNemar exact (binomial on discordant pairs)"
    null: str
    alternative: Alternative
    n: int
    n_both: int
    b: int = Field(description="right before, wrong after")
    c: int = Field(description="wrong before, right after")
    n_neither: int
    before_rate: float
    after_rate: float
    delta: float = Field(description="after_rate − before_rate = (c − b) / n")
    delta_ci: tuple[float, float]
    confidence: float
    ci_method: str = "Newcombe hybrid score interval for paired proportions (method 10)"
    statistic: float
    p_value: float = Field(description="p-value for `alternative`")
    p_two_sided: float
    p_greater: float = Field(description="one-sided, H1: after better")
    p_less: float = Field(description="one-sided, H1: after worse")


def mcnemar_exact(
    before: Sequence[bool],
    after: Sequence[bool],
    *,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
) -> PairedBinaryTest:
    """Exact McNemar test of paired binary outcomes on the same items.

    Args:
        before: Outcome per item before the round (True = correct).
        after: Outcome per item after, same order.
        alternative: Which p-value goes in ``p_value``: ``"greater"`` = after better.
            All three are always reported.
        confidence: Level of the Newcombe interval for the difference in rates.

    Returns:
        The counts, the difference ``after − before`` with its Newcombe interval, and
        exact binomial p-values on the ``b + c`` discordant pairs. With no discordant
        pairs every p-value is 1.
    """
    from scipy import stats as sps

    n_both, b, c, n_neither = paired_table(before, after)
    n = n_both + b + c + n_neither
    m = b + c
    if m == 0:
        p2s = pg = pl = 1.0
    else:
        p2s = float(sps.binomtest(c, m, 0.5, alternative="two-sided").pvalue)
        pg = float(sps.binomtest(c, m, 0.5, alternative="greater").pvalue)
        pl = float(sps.binomtest(c, m, 0.5, alternative="less").pvalue)
    p = {"two-sided": p2s, "greater": pg, "less": pl}[alternative]
    null = {
        "two-sided": "P(wrong→right) = P(right→wrong), i.e. p_after = p_before",
        "greater": "P(wrong→right) ≤ P(right→wrong), i.e. p_after ≤ p_before",
        "less": "P(wrong→right) ≥ P(right→wrong), i.e. p_after ≥ p_before",
    }[alternative]
    return PairedBinaryTest(
        null=null,
        alternative=alternative,
        n=n,
        n_both=n_both,
        b=b,
        c=c,
        n_neither=n_neither,
        before_rate=(n_both + b) / n,
        after_rate=(n_both + c) / n,
        delta=(c - b) / n,
        delta_ci=newcombe_paired_ci(n_both, b, c, n_neither, confidence=confidence),
        confidence=confidence,
        statistic=float(c),
        p_value=p,
        p_two_sided=p2s,
        p_greater=pg,
        p_less=pl,
    )
