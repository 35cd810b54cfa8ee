"""Per-example training weights from reference NLL (confidence weighting).

Method (the weights feed the weighted loss of :mod:`selfimprove.train.trainer`): score every
training example with the *pre-round* model (mean NLL per completion token, ``ref_nll``),
turn it into a perplexity ratio against the median example, ``r_i = ppl_i / median(ppl)``,
and temper it with an exponent ``alpha`` (≤ 1):

* ``confidence``: ``w_i ∝ r_i ** alpha``: examples the model finds hard weigh more;
* ``inverse``:    ``w_i ∝ r_i ** -alpha``: examples the model already finds easy weigh more
  (the direction of TRL's DFT loss; a useful control arm);
* ``uniform``:    ``w_i = 1``.

The weights are then clipped to ``[lo, hi]`` and renormalised to mean 1. Renormalising can push
weights back out of bounds and clipping moves the mean, so "rescale, clip, repeat" is iterated
to its fixed point: the scale ``c`` with ``mean(clip(c · w, lo, hi)) == 1``. That mean is
continuous and non-decreasing in ``c`` and runs from ``lo`` to ``hi``, so with
``lo ≤ 1 ≤ hi`` the fixed point exists, and we find it by bisection on ``log c``. The result is
exactly within bounds, has mean 1 to ~1e-12, and keeps the order of the raw weights
(clipped examples tie).

What it does not do: compute the NLLs (use :meth:`selfimprove.engine.Engine.continuation_nll`
with the pre-round model) or apply the weights (see :mod:`selfimprove.train.trainer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["WeightPolicy", "compute_weights"]

WeightPolicy = Literal["uniform", "confidence", "inverse"]

_BISECT_STEPS = 200


def _log_median_ppl(nll: Sequence[float]) -> float:
    """``log(median(exp(nll)))`` without overflow (even n: log of the mean of the middle two)."""
    s = sorted(nll)
    n = len(s)
    if n % 2:
        return s[n // 2]
    a, b = s[n // 2 - 1], s[n // 2]
    hi = max(a, b)
    return hi + math.log((math.exp(a - hi) + math.exp(b - hi)) / 2.0)


def _mean_clipped(log_w: Sequence[float], log_c: float, lo: float, hi: float) -> float:
    return sum(min(hi, max(lo, math.exp(min(700.0, lw + log_c)))) for lw in log_w) / len(log_w)


def compute_weights(
    ref_nll: Sequence[float],
    policy: WeightPolicy,
    *,
    alpha: float = 0.5,
    clip: tuple[float, float] = (0.25, 4.0),
) -> list[float]:
    """Per-example weights with mean 1 from per-example reference NLL.

    Args:
        ref_nll: mean NLL per completion token (nats) of each example under the pre-round
            model.
        policy: ``uniform`` (all 1), ``confidence`` (harder examples weigh more) or
            ``inverse`` (easier examples weigh more).
        alpha: tempering exponent on the perplexity ratio (0 gives uniform weights).
        clip: ``(lo, hi)`` bounds of the final weights; needs ``0 < lo <= 1 <= hi`` so that a
            mean of 1 is reachable.

    Returns:
        One weight per example, each within ``clip``, with mean 1 (up to ~1e-12).

    Raises:
        ValueError: a non-finite NLL, a negative or non-finite ``alpha``, bad ``clip`` bounds,
            or an unknown policy.
    """
    lo, hi = float(clip[0]), float(clip[1])
    if not (0.0 < lo <= 1.0 <= hi) or not math.isfinite(hi):
        raise ValueError(f"clip must satisfy 0 < lo <= 1 <= hi < inf, got {clip!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if policy not in ("uniform", "confidence", "inverse"):
        raise ValueError(f"unknown weight policy {policy!r}; use uniform, confidence or inverse")
    nll = [float(x) for x in ref_nll]
    bad = [i for i, x in enumerate(nll) if not math.isfinite(x)]
    if bad:
        raise ValueError(
            f"reference NLL is not finite for {len(bad)} example(s) (first: index {bad[0]}, "
            f"value {nll[bad[0]]}); drop those examples or recompute the NLL"
        )
    if not nll:
        return []
    if policy == "uniform" or alpha == 0.0:
        return [1.0] * len(nll)

    sign = 1.0 if policy == "confidence" else -1.0
    log_med = _log_median_ppl(nll)
    # log w_i = ±alpha · log(ppl_i / median_ppl); kept in log space so huge NLLs cannot overflow.
    log_w = [sign * alpha * (x - log_med) for x in nll]

    # Bisection for the scale c with mean(clip(c·w)) == 1. At log_c = log(lo) - max(log_w)
    # every weight sits at lo (mean lo ≤ 1); at log(hi) - min(log_w) every weight sits at hi.
    a = math.log(lo) - max(log_w) - 1.0
    b = math.log(hi) - min(log_w) + 1.0
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (a + b)
        if _mean_clipped(log_w, mid, lo, hi) < 1.0:
            a = mid
        else:
            b = mid
        if b - a < 1e-15:
            break
    log_c = 0.5 * (a + b)
    weights = [min(hi, max(lo, math.exp(min(700.0, lw + log_c)))) for lw in log_w]
    # Remove the last ~1e-15 of mean error from the unclipped weights (stays within bounds).
    free = [i for i, w in enumerate(weights) if lo < w < hi]
    if free:
        excess = sum(weights) - len(weights)
        adj = excess / len(free)
        for i in free:
            weights[i] = min(hi, max(lo, weights[i] - adj))
    return weights
