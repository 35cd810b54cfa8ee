"""Statistics for interpretability effects: paired tests, permutation p-values and BH.

Method. Every intervention effect here is *paired*: the same prompt is run with and without
the intervention, so the unit of analysis is the per-prompt difference ``d_i``.
:func:`paired_effect` summarises ``d`` as an :class:`EffectTest` — n, mean, a 95% CI, a
two-sided p-value, the paired effect size ``d_z = mean / sd`` and the fraction of positive
differences — with one of three tests:

* ``t``: one-sample t-test on ``d`` (CI from the t distribution); default for n ≥ 20.
* ``signflip``: exact-in-the-limit sign-flip permutation test of the mean (valid for any
  symmetric null, no normality); the CI is still the t interval. Default for n < 20.
* ``wilcoxon``: signed-rank test (robust to heavy tails); CI is the t interval.

A family of effects (heads, layers, doses) is corrected with Benjamini–Hochberg
(:func:`bh`, via ``statsmodels.stats.multitest.multipletests``). For statistics whose null
comes from label permutations (probe accuracy) :func:`permutation_pvalue` gives the
``(1 + #{null ≥ obs}) / (1 + N)`` p-value, which is never 0.

This module does no model work and knows nothing about hooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from selfimprove.stats import benjamini_hochberg

TestMethod = Literal["auto", "t", "signflip", "wilcoxon"]


@dataclass(frozen=True)
class EffectTest:
    """One paired effect and its test.

    Attributes:
        name: what was tested (``ablate L3.H5 on add_1d``).
        n: number of paired observations.
        mean: mean difference (intervention minus baseline, in the metric's units).
        ci_low, ci_high: 95% confidence interval of the mean.
        p: two-sided p-value (uncorrected).
        d_z: paired effect size, mean / sd (0 when sd = 0 and mean = 0).
        fraction_positive: share of differences > 0.
        method: ``t``, ``signflip`` or ``wilcoxon``.
        p_adj: Benjamini–Hochberg adjusted p-value within its family (None before :func:`bh`).
        significant: ``p_adj <= alpha`` after :func:`bh` (False before).
        family: name of the family it was corrected in.
    """

    name: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float
    d_z: float
    fraction_positive: float
    method: str
    p_adj: float | None = None
    significant: bool = False
    family: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_effect(
    diffs: Sequence[float] | np.ndarray,
    *,
    name: str = "",
    method: TestMethod = "auto",
    n_perm: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> EffectTest:
    """Test whether paired differences have mean 0 (two-sided).

    Args:
        diffs: per-example differences (intervention − baseline).
        method: ``auto`` = ``signflip`` below 20 observations, else ``t``.
        n_perm: random sign flips for ``signflip`` (exact enumeration when 2^n ≤ n_perm).
        seed: seed of the sign flips.
    """
    from scipy import stats as st

    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return EffectTest(name, 0, math.nan, math.nan, math.nan, 1.0, 0.0, 0.0, "none")
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    dz = mean / sd if sd > 0 else 0.0 if mean == 0 else math.copysign(math.inf, mean)
    frac = float((d > 0).mean())
    if n > 1 and sd > 0:
        half = float(st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    else:
        half = 0.0
    lo, hi = mean - half, mean + half
    m = method if method != "auto" else ("signflip" if n < 20 else "t")
    if n < 2 or (sd == 0 and mean == 0):
        p = 1.0
    elif m == "signflip":
        p = _signflip_p(d, n_perm=n_perm, seed=seed)
    elif sd == 0:  # every difference equal and non-zero: the t statistic is infinite
        p = 0.0
    elif m == "t":
        p = float(st.ttest_1samp(d, 0.0).pvalue)
    elif m == "wilcoxon":
        p = float(st.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    else:
        raise ValueError(f"unknown method {method!r}")
    return EffectTest(name, n, mean, lo, hi, p, dz, frac, m)


def _signflip_p(d: np.ndarray, *, n_perm: int, seed: int) -> float:
    """Two-sided sign-flip permutation p-value of |mean(d)|."""
    n = d.size
    obs = abs(d.mean())
    if 2**n <= n_perm:
        # exact: all 2^n sign patterns (the observed one included)
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # (2^n, n)
        null = np.abs((signs * d).mean(axis=1))
        return float(np.mean(null >= obs - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, n))
    null = np.abs((signs * d).mean(axis=1))
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + n_perm))


def permutation_pvalue(observed: float, null: Sequence[float] | np.ndarray) -> float:
    """One-sided p-value of ``observed`` against permutation draws: (1 + #≥) / (1 + N)."""
    z = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(z >= observed - 1e-12)) / (1 + z.size))


def bh(tests: Sequence[EffectTest], *, alpha: float = 0.05, family: str = "") -> list[EffectTest]:
    """Benjamini–Hochberg across ``tests`` (one family); returns updated copies."""
    if not tests:
        return []
    _rej, ps = benjamini_hochberg([min(1.0, max(0.0, t.p)) for t in tests], alpha)
    return [
        replace(t, p_adj=float(pa), significant=bool(pa <= alpha), family=family or t.family)
        for t, pa in zip(tests, ps, strict=True)
    ]
