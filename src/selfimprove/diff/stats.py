"""Paired tests and false-discovery-rate control for the behavior-change detector.

Method:

* Every region gets paired behavior statistics on the *same* prompts sent to both models
  (one sampled output per model per prompt):

  - binary statistics (validator accuracy, refusal, format compliance): exact McNemar
    test on the discordant pairs (two-sided; :func:`selfimprove.stats.mcnemar_exact`, the
    gate's test too), effect = rate(B) − rate(A) with Newcombe's paired interval;
  - length (generated tokens): Wilcoxon signed-rank test on the paired differences
    (two-sided), effect = mean difference with a t interval;
  - log-probability under the other model: per prompt
    ``D_i = [log p_A(y_A) − log p_B(y_A)] + [log p_B(y_B) − log p_A(y_B)]`` divided by the
    tokens scored. For samples drawn at temperature 1, ``E[D_i]`` is a symmetric KL
    (per token) that is 0 iff the models agree on the prompt; identical models give
    ``D_i = 0`` exactly. Any weight change makes it positive, so the null is a *margin*:
    ``H0: E[D] ≤ δ`` (``kl_margin`` nats/token), tested one-sided with a t test. A
    constant sample (all ``D_i`` equal) gets ``p = 1`` when its mean is ≤ δ.

* Within a region the statistics are combined by Bonferroni (``p_region = min(1,
  m·min_s p_s)``), valid under any dependence between statistics. Across regions the
  prompts are disjoint and sampling is independent, so Benjamini–Hochberg over the fixed
  family of regions controls the FDR at ``q``. A region that was given no samples gets
  ``p = 1`` (it can never be rejected, which keeps BH valid).

* For hypotheses that arrive one at a time (e.g. a loop testing candidate adapters),
  SAFFRON and ADDIS from the ``online-fdr`` package control the FDR online.

This module has no model code; it works on plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from selfimprove.stats import mcnemar_exact

StatName = Literal["accuracy", "refusal", "format", "length", "logprob"]
BINARY_STATS: tuple[StatName, ...] = ("accuracy", "refusal", "format")


class StatTest(BaseModel):
    """One paired test of one behavior statistic in one region.

    Attributes:
        stat: which statistic (``accuracy``, ``refusal``, ``format``, ``length``, ``logprob``).
        n: paired prompts tested.
        a_value, b_value: the statistic's mean under model A and model B (for ``logprob``:
            0 and the mean per-token divergence).
        effect: B − A (rates for binary statistics, tokens for length, nats/token for
            ``logprob``).
        ci: 95% interval of ``effect``.
        p_value: p-value of the test (1.0 when untested).
        test: the test's name.
    """

    stat: str
    n: int
    a_value: float
    b_value: float
    effect: float
    ci: tuple[float, float]
    p_value: float = Field(ge=0.0, le=1.0)
    test: str


def binary_test(stat: str, a: Sequence[bool], b: Sequence[bool]) -> StatTest:
    """Exact two-sided McNemar test of paired binary outcomes (``b`` is model B)."""
    if len(a) == 0:
        return untested(stat)
    t = mcnemar_exact(list(a), list(b), alternative="two-sided")
    return StatTest(
        stat=stat,
        n=t.n,
        a_value=t.before_rate,
        b_value=t.after_rate,
        effect=t.delta,
        ci=(float(t.delta_ci[0]), float(t.delta_ci[1])),
        p_value=min(1.0, float(t.p_two_sided)),
        test="mcnemar-exact",
    )


def _t_ci(d: np.ndarray) -> tuple[float, float]:
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return (mean, mean)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    h = float(stats.t.ppf(0.975, n - 1)) * se
    return (mean - h, mean + h)


def length_test(a: Sequence[float], b: Sequence[float]) -> StatTest:
    """Wilcoxon signed-rank test (two-sided) on paired lengths; effect = mean(B − A)."""
    if len(a) == 0:
        return untested("length")
    x, y = np.asarray(a, float), np.asarray(b, float)
    d = y - x
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(y, x, zero_method="wilcox", alternative="two-sided").pvalue)
    return StatTest(
        stat="length",
        n=len(d),
        a_value=float(x.mean()),
        b_value=float(y.mean()),
        effect=float(d.mean()),
        ci=_t_ci(d),
        p_value=min(1.0, p) if math.isfinite(p) else 1.0,
        test="wilcoxon-signed-rank",
    )


def divergence_test(per_prompt: Sequence[float], margin: float) -> StatTest:
    """One-sided t test of ``H0: E[D] ≤ margin`` on per-prompt symmetric divergences ``D``."""
    if len(per_prompt) == 0:
        return untested("logprob")
    d = np.asarray(per_prompt, float)
    mean = float(d.mean())
    if len(d) < 2 or float(d.std(ddof=1)) == 0.0:
        # No spread: all prompts agree; decide by the mean alone, conservatively.
        p = 1.0 if mean <= margin else 0.5
    else:
        p = float(stats.ttest_1samp(d, margin, alternative="greater").pvalue)
    return StatTest(
        stat="logprob",
        n=len(d),
        a_value=0.0,
        b_value=mean,
        effect=mean,
        ci=_t_ci(d),
        p_value=min(1.0, max(0.0, p)) if math.isfinite(p) else 1.0,
        test=f"one-sided t, margin {margin:g} nats/token",
    )


def untested(stat: str) -> StatTest:
    """A placeholder for a statistic that got no samples: ``p = 1``."""
    return StatTest(
        stat=stat,
        n=0,
        a_value=float("nan"),
        b_value=float("nan"),
        effect=0.0,
        ci=(0.0, 0.0),
        p_value=1.0,
        test="untested",
    )


def combine_bonferroni(p_values: Sequence[float]) -> float:
    """Region p-value from its statistics' p-values: ``min(1, m · min p)``."""
    if not p_values:
        return 1.0
    return min(1.0, len(p_values) * min(p_values))


def saffron(
    p_values: Sequence[float],
    alpha: float = 0.1,
    *,
    wealth: float | None = None,
    lambda_: float = 0.5,
) -> list[bool]:
    """SAFFRON (Ramdas et al. 2018) decisions for p-values arriving in this order.

    Thin wrapper over ``online_fdr.p_values.Saffron`` (default γ_j ∝ j^-1.6, normalised).
    ``wealth`` defaults to ``alpha / 2``.
    """
    from online_fdr.p_values import Saffron

    test = Saffron(alpha=alpha, wealth=alpha / 2 if wealth is None else wealth, lambda_=lambda_)
    return [bool(test.test_one(float(p))) for p in p_values]


def addis(
    p_values: Sequence[float],
    alpha: float = 0.1,
    *,
    wealth: float | None = None,
    lambda_: float = 0.25,
    tau: float = 0.5,
) -> list[bool]:
    """ADDIS (Tian & Ramdas 2019) decisions for p-values arriving in this order.

    Prefer it over SAFFRON when many nulls are conservative (p-values piling up near 1,
    as discrete tests and untested hypotheses produce).
    """
    from online_fdr.p_values import Addis

    test = Addis(
        alpha=alpha, wealth=alpha / 2 if wealth is None else wealth, lambda_=lambda_, tau=tau
    )
    return [bool(test.test_one(float(p))) for p in p_values]


def mcnemar_power(n: int, p_b_only: float, p_a_only: float, level: float) -> float:
    """Exact power of the two-sided exact McNemar test at ``level`` with ``n`` pairs.

    ``p_b_only`` / ``p_a_only``: probability that a pair is positive under B only / A only.
    Computed exactly by summing over the number of discordant pairs and their split.
    """
    if n <= 0:
        return 0.0
    pd = p_b_only + p_a_only
    if pd <= 0:
        return 0.0
    share = p_b_only / pd
    power = 0.0
    for m in range(1, n + 1):
        pm = float(stats.binom.pmf(m, n, pd))
        if pm < 1e-15:
            continue
        c = np.arange(m + 1)
        # exact two-sided binomial p-value at 1/2 (symmetric): 2·P(X ≤ min(c, m − c))
        pv = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(c, m - c), m, 0.5))
        rej = pv <= level
        if rej.any():
            power += pm * float(stats.binom.pmf(c[rej], m, share).sum())
    return power


def pairs_for_power(
    p_b_only: float, p_a_only: float, level: float, power: float, *, max_n: int = 2000
) -> int | None:
    """Smallest ``n`` with :func:`mcnemar_power` ≥ ``power`` (``None`` if above ``max_n``)."""
    lo = 1
    if mcnemar_power(max_n, p_b_only, p_a_only, level) < power:
        return None
    hi = max_n
    # exact-test power is not exactly monotone in n; bisection gives a close upper value
    while lo < hi:
        mid = (lo + hi) // 2
        if mcnemar_power(mid, p_b_only, p_a_only, level) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
