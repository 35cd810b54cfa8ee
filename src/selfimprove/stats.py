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
* **Fieller confidence set** for the ratio of two paired means (the loop's targeted-vs-random
  efficiency ratio): bounded only when the denominator's mean is significantly ≠ 0.

Tests specific to one stage stay with it (Tango non-inferiority and the paired bootstrap in
:mod:`selfimprove.gate`, region statistics in :mod:`selfimprove.diff.stats`, sign-flip
effects in :mod:`selfimprove.interp.stats`). Nothing here touches models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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
    """Holm step-down adjusted p-values, in input order (equal to statsmodels ``holm``).

    Sorted ascending, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))``. Written out
    rather than calling ``multipletests(method="holm")``, which runs ``gc.collect()`` on
    every call (60 ms per gate decision in a process holding many records).
    """
    p = _checked(p_values)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="mergesort")
    m = p.size
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    adj = np.empty(m)
    adj[order] = adj_sorted
    return [float(x) for x in adj]


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


# ---------------------------------------------------------------------------------------------
# Ratio of two paired means (Fieller)
# ---------------------------------------------------------------------------------------------

RatioSetKind = Literal["interval", "two_rays", "ray", "whole_line"]


class RatioConfidenceSet(BaseModel):
    """Fieller confidence set for ρ = E[x] / E[y] from paired data (see
    :func:`ratio_confidence_set`).

    The set is one of (``kind``):

    * ``"interval"``: ``[lo, hi]``, both finite (the denominator's mean is significantly
      ≠ 0, i.e. its own CI excludes 0);
    * ``"two_rays"``: ``(-inf, gap[0]] ∪ [gap[1], +inf)``; ``lo = -inf``, ``hi = +inf`` and
      the open interval ``gap`` is excluded. The data bound the ratio away from the values
      in ``gap`` but cannot tell a large positive ratio from a large negative one;
    * ``"ray"``: ``[lo, +inf)`` or ``(-inf, hi]`` (the boundary case ``ȳ² = c²·V_yy``);
    * ``"whole_line"``: every ρ is compatible with the data (``lo = -inf``, ``hi = +inf``).

    Only ``"interval"`` is bounded; the other three happen exactly when the denominator's
    interval ``denominator_ci`` (same critical value) contains 0. Infinite bounds are
    written to JSON as ``Infinity`` / ``-Infinity``, which :mod:`json` and pydantic read
    back.
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    kind: RatioSetKind
    lo: float = Field(description="lower end of the set's hull (-inf when unbounded below)")
    hi: float = Field(description="upper end of the set's hull (+inf when unbounded above)")
    gap: tuple[float, float] | None = Field(
        default=None, description='open interval excluded from the set (kind "two_rays" only)'
    )
    estimate: float | None = Field(description="x̄ / ȳ; None when ȳ = 0 (or no items)")
    n: int
    numerator_mean: float | None
    denominator_mean: float | None
    denominator_ci: tuple[float, float] = Field(
        description="ȳ ± c·se(ȳ): the set is bounded iff this excludes 0"
    )
    confidence: float
    critical_value: float = Field(description="c = t quantile, n − 1 df (inf when n < 2)")
    method: str = "Fieller (1954), paired means, t(n−1) critical value"
    note: str | None = None

    @property
    def bounded(self) -> bool:
        """Whether the set is a finite interval."""
        return self.kind == "interval"

    def contains(self, rho: float) -> bool:
        """Whether ``rho`` lies in the set (end points included)."""
        if self.kind == "two_rays":
            assert self.gap is not None
            return not (self.gap[0] < rho < self.gap[1])
        return self.lo <= rho <= self.hi


def _finite_1d(xs: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(xs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _mean_covariances(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(V_xx, V_yy, V_xy)``: (co)variances of the two means (ddof 1, divided by n)."""
    n = len(x)
    # Centre exactly: a constant column has variance exactly 0 (no rounding residue).
    dx = x - x.mean() if np.ptp(x) > 0 else np.zeros(n)
    dy = y - y.mean() if np.ptp(y) > 0 else np.zeros(n)
    return tuple(float(u @ v) / (n - 1) / n for u, v in ((dx, dx), (dy, dy), (dx, dy)))  # type: ignore[return-value]


def ratio_confidence_set(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    confidence: float = 0.95,
) -> RatioConfidenceSet:
    """Fieller (1954) confidence set for the ratio ρ = E[x] / E[y] of two paired means.

    Method. The set inverts, for every ρ, the t test of H0: E[x − ρ·y] = 0 on the per-item
    differences ``d_i = x_i − ρ·y_i``. With the means x̄, ȳ and the (co)variances of the
    means ``V_xx, V_yy, V_xy`` (sample covariances, ddof = 1, divided by n), ρ is in the set
    iff

        (x̄ − ρ·ȳ)² ≤ c² · (V_xx − 2ρ·V_xy + ρ²·V_yy),

    i.e. iff ``a·ρ² − 2h·ρ + k ≤ 0`` with ``a = ȳ² − c²V_yy``, ``h = x̄ȳ − c²V_xy``,
    ``k = x̄² − c²V_xx``; the quadratic is solved exactly. ``c`` is the two-sided t quantile
    with n − 1 degrees of freedom: on simulated paired binary gains (n = 40 and 100) it
    kept coverage at or above nominal where the normal quantile fell to 0.93–0.94.

    Why the set can be unbounded. ``a > 0`` is exactly "the denominator's own CI
    ``ȳ ± c·√V_yy`` excludes 0"; then the set is a finite interval around x̄/ȳ. When that CI
    contains 0 the data cannot rule out E[y] ≈ 0, so arbitrarily large ratios of either
    sign stay compatible: the set is two rays (the complement of an interval) or, when the
    numerator's CI contains 0 as well and the two are not jointly informative, the whole
    line. Any finite interval in that case (e.g. percentiles of bootstrap ratios over the
    resamples with ȳ* > 0) under-covers. The set is exact for normal data; for other data
    it is a large-sample test inversion like the t interval it generalises (ρ = 0 gives the
    t test of E[x] = 0).

    Degenerate inputs. With n < 2 no variance can be estimated: the whole line. When the
    denominator is identically 0 (ȳ = 0, V_yy = 0) the inequality gives the whole line
    or, if x̄ is significant, the empty set; the data say nothing about E[y] then, so the
    whole line is returned (with a ``note``). A constant non-zero denominator with a
    constant numerator gives a zero-width interval at x̄/ȳ. A numerator that is
    identically 0 with a significant denominator gives the single point 0 (the usual
    zero-variance degeneracy of Wald-type intervals; see ``note``).

    Args:
        numerator: Per-item x (e.g. the targeted arm's gain, candidate − base).
        denominator: Per-item y on the same items, same order (e.g. the random arm's gain).
        confidence: Coverage level in (0, 1).

    Returns:
        The set (kind, hull ``lo``/``hi``, excluded ``gap``), the point estimate x̄/ȳ, the
        denominator's CI and the critical value used.

    Raises:
        ValueError: Different lengths, non-finite values, or ``confidence`` not in (0, 1).

    References:
        Fieller, E. C. (1954). Some problems in interval estimation. JRSS B 16(2), 175–185.
    """
    from scipy import stats as sps

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    x, y = _finite_1d(numerator, "numerator"), _finite_1d(denominator, "denominator")
    if len(x) != len(y):
        raise ValueError(f"numerator and denominator differ in length ({len(x)} vs {len(y)})")
    n = len(x)
    inf = math.inf
    xm = float(x.mean()) if n else None
    ym = float(y.mean()) if n else None
    estimate = xm / ym if xm is not None and ym else None
    common: dict[str, Any] = dict(
        estimate=estimate, n=n, numerator_mean=xm, denominator_mean=ym, confidence=confidence
    )
    if n < 2:
        return RatioConfidenceSet(
            kind="whole_line",
            lo=-inf,
            hi=inf,
            denominator_ci=(-inf, inf),
            critical_value=inf,
            note="fewer than 2 items: no variance estimate",
            **common,
        )
    assert xm is not None and ym is not None
    c = float(sps.t.ppf(0.5 + confidence / 2, n - 1))
    c2 = c * c
    vxx, vyy, vxy = _mean_covariances(x, y)
    half = c * math.sqrt(vyy)
    common.update(denominator_ci=(ym - half, ym + half), critical_value=c)

    a = ym * ym - c2 * vyy
    h = xm * ym - c2 * vxy
    k = xm * xm - c2 * vxx
    disc = h * h - a * k

    if a > 0:
        # Contains x̄/ȳ, so disc ≥ 0 up to rounding. Stable roots: q/a and k/q.
        s = math.sqrt(max(disc, 0.0))
        q = h + math.copysign(s, h)
        r1, r2 = (q / a, k / q) if q != 0 else (0.0, 0.0)
        lo, hi = min(r1, r2), max(r1, r2)
        note = None
        if vxx == 0 and xm == 0:
            note = "numerator identically 0: zero-variance (Wald-type) degeneracy"
        return RatioConfidenceSet(kind="interval", lo=lo, hi=hi, note=note, **common)
    if a < 0:
        if disc <= 0:
            return RatioConfidenceSet(kind="whole_line", lo=-inf, hi=inf, **common)
        s = math.sqrt(disc)
        q = h + math.copysign(s, h)
        r1, r2 = q / a, k / q  # q ≠ 0 since disc > 0
        gap = (min(r1, r2), max(r1, r2))
        return RatioConfidenceSet(kind="two_rays", lo=-inf, hi=inf, gap=gap, **common)
    # a == 0: the inequality is linear, −2h·ρ + k ≤ 0.
    if h > 0:
        return RatioConfidenceSet(kind="ray", lo=k / (2 * h), hi=inf, **common)
    if h < 0:
        return RatioConfidenceSet(kind="ray", lo=-inf, hi=k / (2 * h), **common)
    # h == 0 too: whole line if k ≤ 0 (always, by Cauchy–Schwarz, unless V_yy = 0); the
    # remaining case is a denominator identically 0, where the data say nothing about E[y].
    note = "denominator identically 0: no information on its mean" if vyy == 0 else None
    return RatioConfidenceSet(kind="whole_line", lo=-inf, hi=inf, note=note, **common)
