"""The gate: paired statistical tests that decide whether a fine-tuning round is accepted.

Every test here works on *paired* per-item data: the same evaluation items scored before
and after a round. Pairing removes the between-item variance (item difficulty), which is
most of the variance, so a paired test on 200 items sees what an unpaired comparison of two
accuracies would need thousands of items to see. Raw deltas on small suites are noise.

Method, in the order the gate applies it:

1. **Target gain** (does the round help where it was aimed?). The items of the target
   categories are pooled and tested with the exact McNemar test, one-sided (after better):
   under H0 a discordant pair is equally likely to be wrong→right (``c``) or right→wrong
   (``b``), so ``c | b+c ~ Binomial(b+c, 1/2)`` (:func:`selfimprove.stats.mcnemar_exact`).
   ``target_test="bootstrap"`` decides by a paired bootstrap of the mean gain instead
   (:func:`paired_bootstrap`; slightly liberal below ~30 items, where McNemar is exact).
   Per-category McNemar tests are reported with Holm-adjusted p-values, for the report
   only: the decision uses the single pooled test, so the target side costs no
   multiplicity correction.
2. **Sentinels** (did it break anything else?). Sentinels must show *non-inferiority*:
   binary outcomes by Tango's score test for a paired difference of proportions
   (H0: p_after − p_before ≤ −margin); NLL suites (general text, lower is better) by a
   paired one-sided t-test on the per-item NLL (H0: mean increase ≥ ``nll_margin``), one
   test per NLL suite in every mode. A round that *fails to show* non-inferiority is
   rejected — absence of evidence of harm is not enough. ``sentinel_mode`` sets how the
   binary suites are tested; below, a suite's *drop* is its true accuracy before minus after
   (the flip probabilities right→wrong minus wrong→right of its items), and α the level:

   * ``"pooled_and_suite"`` (default): one Tango test on the binary items of all sentinel
     suites pooled at ``sentinel_margin`` (0.10) **and** one per binary suite at the wider
     ``suite_margin`` (0.20; ``max(suite_margin, sentinel_margin)`` in fact, and a single
     binary suite gets just its test at ``sentinel_margin``, which implies the other).
     **Guarantee:** for every binary sentinel suite k, P(accept | suite k's drop ≥
     suite_margin) ≤ α, and P(accept | the pooled drop ≥ sentinel_margin) ≤ α, whatever the
     other suites do — up to the accuracy of Tango's normal approximation, whose exact
     worst-case size over every flip rate (:func:`noninferiority_binary_size`) is 0.052,
     0.062, 0.054 for one suite's test with 32, 48, 64 items at margin 0.20, and 0.051 for
     the pooled test of 160 items at 0.10. Not guaranteed: anything about a suite that
     loses less than suite_margin while the pooled drop stays under sentinel_margin (one of
     five 32-item suites losing 15 points is still accepted in 8–10% of rounds). No McNemar
     harm test: a suite's own test already bounds its loss, and five harm tests would also
     reject 3–11% of unchanged rounds (five suites of 32–48 items, 10–20% of answers
     flipping). A test whose 1 − 2α interval lies below 0 (significantly worse, by less
     than its margin) gets a ``warning`` reason line instead (not gating).
   * ``"pooled"`` (the old default): the pooled test plus, per binary suite, an exact
     one-sided McNemar test that rejects a suite that got *significantly* worse at α. It
     guarantees only the pooled bound, **not** any per-suite one: the harm test needs
     evidence to reject, so with five 32-item suites a round in which one suite truly lost
     15 points is accepted in 50–60% of rounds (20 points: about 35%; 10% of answers
     flipping, bench/sentinel_gate_power.py).
   * ``"per_suite"``: one Tango test per suite at ``sentinel_margin``. It guarantees
     P(accept | any suite's drop ≥ sentinel_margin) ≤ α, but per suite the test needs
     ``n ≥ z_α²(1 − m)/m`` items just to pass when *nothing* changed (25 at m = 0.10, 52 at
     0.05), and far more when a small model's greedy answers flip in both directions
     (measured on SmolLM2-135M after one LoRA round: 10–50% of sentinel items discordant):
     five 32-item suites pass an unchanged round about 1% of the time.

   :func:`gate_power` gives each test's exact pass probability when nothing changes,
   :func:`gate_warnings` names the tests too small to pass an unchanged round (they can
   still pass one in which the sentinel answers improve), and
   ``bench/sentinel_gate_power.py`` simulates the whole gate per mode.
3. **Training health** (:func:`check_losses`): every training loss finite, and the last
   loss at most ``max_loss_ratio`` × the first non-zero one (a first logging step of only
   KL-anchor rows logs exactly 0: the policy still equals the base model).

Why no multiplicity correction across sentinels: the gate accepts only if *every* sentinel
test rejects its own null (H0_j: "the items of test j — one suite, or the pooled suites — got
worse by at least its margin"). The null we care about, "some sentinel got worse", is the
union of the H0_j, and a test that rejects a union only when each member is rejected at level
α has level α (Berger 1982, intersection–union test). Holm or BH would protect against a
different error (claiming *some* sentinel is non-inferior) and would only make good rounds
fail more often. The same argument covers the whole decision: accepting needs the target test
*and* all sentinel tests to reject, so P(accept | target gain absent or any H0_j true) ≤ α
(the ``"pooled"`` mode's harm tests are extra ways to reject, which only lower it). The price
of k sentinels is paid in power (each must individually clear its margin), which margins and
suite sizes control — not α.

This module does not run evaluations, train, or look at the behaviour-change detector's
output; it only judges per-item records. It does not import torch.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from selfimprove.evaluate import MetricField, is_solved, record_field
from selfimprove.stats import (  # mcnemar_exact & co. stay importable from here, as before
    Alternative,
    PairedBinaryTest,
    holm,
    mcnemar_exact,
    newcombe_paired_ci,
    paired_table,
)

log = logging.getLogger(__name__)

#: Default of ``GateConfig.max_loss_ratio``; also the ratio behind ``TrainResult.diverged``.
DEFAULT_MAX_LOSS_RATIO = 3.0


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


class BootstrapTest(BaseModel):
    """Paired bootstrap of the mean difference ``after − before``."""

    test: str = "paired bootstrap of the mean difference (shift-to-null p-value)"
    null: str
    alternative: Alternative
    n: int
    mean_before: float
    mean_after: float
    statistic: float = Field(description="observed mean of after − before")
    ci: tuple[float, float] = Field(description="percentile interval of the bootstrap means")
    confidence: float
    n_boot: int
    seed: int
    p_value: float


class NonInferiorityTest(BaseModel):
    """One-sided non-inferiority test of ``after`` against ``before`` on paired data.

    ``estimate`` and ``ci`` are on the *improvement* scale: positive means ``after`` is
    better (for lower-is-better metrics that is ``before − after``). H0: improvement ≤
    −margin; ``non_inferior`` means H0 is rejected at ``alpha``.
    """

    test: str
    null: str
    metric: str
    higher_is_better: bool
    n: int
    before_mean: float
    after_mean: float
    margin: float
    estimate: float = Field(description="mean improvement (after better > 0)")
    ci: tuple[float, float] = Field(
        description="two-sided 1 − 2·alpha interval of the improvement (informational)"
    )
    statistic: float
    df: float | None = None
    p_value: float
    alpha: float
    non_inferior: bool
    b: int | None = Field(None, description="binary only: right before, wrong after")
    c: int | None = Field(None, description="binary only: wrong before, right after")


class CategoryTest(BaseModel):
    """A per-category target test (report only; the decision uses the pooled test)."""

    suite: str
    category: str
    test: PairedBinaryTest
    p_holm: float = Field(description="Holm-adjusted one-sided p-value across categories")


class TargetResult(BaseModel):
    """The target-gain check: ``significant`` is the verdict of ``GateConfig.target_test``."""

    pooled: PairedBinaryTest
    per_category: list[CategoryTest]
    significant: bool
    bootstrap: BootstrapTest | None = Field(
        None, description="The pooled paired bootstrap, when target_test is 'bootstrap'."
    )


class SentinelResult(BaseModel):
    """One sentinel check: non-inferiority (binary or NLL) or, per suite, no significant harm.

    ``suite`` names the suite, or ``"pooled: a+b+…"`` for the pooled binary test. ``kind``:
    ``"binary"`` (Tango non-inferiority; ``test.margin`` is ``sentinel_margin`` for the
    pooled test and in ``"per_suite"`` mode, ``suite_margin`` for a suite's own test in
    ``"pooled_and_suite"`` mode), ``"nll"``, or ``"no_harm"`` (``"pooled"`` mode's per-suite
    McNemar harm test, in ``harm``).
    """

    suite: str
    kind: Literal["binary", "nll", "no_harm"]
    test: NonInferiorityTest | None
    harm: PairedBinaryTest | None = None
    passed: bool
    note: str = ""


class GateConfig(BaseModel):
    """When a round is accepted. Serialised into every :class:`GateDecision`."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        0.05,
        gt=0.0,
        lt=0.5,
        description="Level of every one-sided test (target gain and each sentinel). "
        "No correction across sentinels: they form an intersection-union test.",
    )
    sentinel_margin: float = Field(
        0.10,
        gt=0.0,
        lt=1.0,
        description="Non-inferiority margin of the pooled binary sentinel test ('pooled' and "
        "'pooled_and_suite' modes) or of each suite's test ('per_suite'), in absolute accuracy "
        "(0.10 = a drop of up to 10 points is tolerated). A test needs "
        "min_noninferiority_n(margin) items to pass when no answer changes (25 at 0.10, 52 at "
        "0.05).",
    )
    suite_margin: float = Field(
        0.20,
        gt=0.0,
        lt=1.0,
        description="'pooled_and_suite' mode only: non-inferiority margin of each binary "
        "sentinel suite's own test, in absolute accuracy (the test uses max(suite_margin, "
        "sentinel_margin): no suite is held tighter than the pool). It bounds what one suite "
        "can lose: a round in which any suite truly lost this much or more is accepted with "
        "probability at most alpha (to the accuracy of Tango's score test). Wider than "
        "sentinel_margin because a suite has few items: 0.20 keeps an unchanged round's pass "
        "rate usable at 32-64 items per suite (bench/sentinel_gate_power.py).",
    )
    sentinel_mode: Literal["pooled_and_suite", "pooled", "per_suite"] = Field(
        "pooled_and_suite",
        description="'pooled_and_suite': a non-inferiority test on all binary sentinel items "
        "pooled (at sentinel_margin) and one per binary suite (at suite_margin); guarantees "
        "P(accept | some suite lost >= suite_margin) <= alpha, for each suite, and P(accept | "
        "the pooled items lost >= sentinel_margin) <= alpha (to the accuracy of Tango's score "
        "test), nothing about smaller losses of one suite. 'pooled' (the old default): the "
        "pooled test plus, per suite, an exact McNemar test that rejects a suite that got "
        "significantly worse; guarantees only the pooled bound, NOT any per-suite bound (one "
        "32-item suite of five can lose 15 points and pass in about half of the rounds). "
        "'per_suite': a test per suite at sentinel_margin; guarantees P(accept | any suite "
        "lost >= sentinel_margin) <= alpha but rarely passes with few items per suite (see "
        "gate_power).",
    )
    nll_margin: float = Field(
        0.10,
        gt=0.0,
        description="Non-inferiority margin for NLL sentinels, in nats/token (a mean "
        "per-token NLL increase of up to this, about 10% perplexity at 0.10, is tolerated).",
    )
    require_target_gain: bool = Field(
        True,
        description="Reject unless the pooled target items improve significantly "
        "(one-sided at alpha, by target_test).",
    )
    max_loss_ratio: float = Field(
        DEFAULT_MAX_LOSS_RATIO,
        gt=0.0,
        description="Reject if the last training loss exceeds this multiple of the first "
        "non-zero one.",
    )
    metric: MetricField = Field(
        "correct",
        description="Binary outcome (selfimprove.evaluate.is_solved): 'correct' (answer "
        "extracted) or 'strict' (correct and format_ok; records with format_ok None count on "
        "`correct` alone). The old spelling 'extracted' is read as 'correct'.",
    )
    collateral: Literal["report", "reject", "off"] = Field(
        "report",
        description="Skill items outside the round's targets and the sentinels, pooled: an "
        "exact one-sided McNemar test for harm. 'report' adds it to the reasons only; "
        "'reject' also rejects a round that made them significantly worse.",
    )
    target_test: Literal["mcnemar", "bootstrap"] = Field(
        "mcnemar",
        description="Test of the pooled target gain: 'mcnemar' (exact, one-sided) or "
        "'bootstrap' (paired bootstrap of the mean gain, shift-to-null p-value; slightly "
        "liberal below ~30 items). Per-category tests are McNemar either way.",
    )
    bootstrap_samples: int = Field(
        10000, ge=100, description="Resamples of the target bootstrap (target_test='bootstrap')."
    )
    bootstrap_seed: int = Field(0, description="Seed of the target bootstrap's resampling.")


class GateDecision(BaseModel):
    accepted: bool
    reasons: list[str] = Field(
        description="One line per check, 'ok…', 'warning…' (a reported-only check that "
        "failed) or 'rejected:', naming the test and numbers."
    )
    target: TargetResult | None
    sentinels: list[SentinelResult]
    loss_ok: bool
    config: GateConfig
    #: non-target, non-sentinel items pooled (McNemar for harm), when checked
    collateral: PairedBinaryTest | None = None


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def _paired_floats(before: Sequence[float], after: Sequence[float]) -> np.ndarray:
    x = np.asarray(before, dtype=float)
    y = np.asarray(after, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"before and after must be 1-D of equal length ({x.shape} vs {y.shape})")
    if len(x) == 0:
        raise ValueError("no paired items")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("before/after contain non-finite values; drop or handle them first")
    return y - x


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    alternative: Alternative = "greater",
    confidence: float = 0.95,
) -> BootstrapTest:
    """Paired bootstrap of the mean difference ``d = after − before``.

    Items are resampled with replacement (pairs stay together). The CI is the percentile
    interval of the bootstrap means. The p-value uses the *shift-to-null* method: the
    bootstrap means recentred on 0, ``m* − m̂``, approximate the sampling distribution of
    the mean under H0 (mean difference 0), so for ``"greater"``
    ``p = (1 + #{m* − m̂ ≥ m̂}) / (n_boot + 1)``; ``"less"`` counts ``≤ m̂``, and
    ``"two-sided"`` counts ``|m* − m̂| ≥ |m̂|``. The ``+1`` keeps p > 0 and the test valid
    with a finite ``n_boot``. Like the z-test it resembles, it is slightly liberal for
    small n (roughly n < 30); prefer a t-test there.
    """
    d = _paired_floats(before, after)
    n = len(d)
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # Chunk the (n_boot, n) index matrix so memory stays ~ 8 MB whatever n is.
    chunk = max(1, 1_000_000 // n)
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(k, n))
        means[s : s + k] = d[idx].mean(axis=1)
    m = float(d.mean())
    shifted = means - m
    if alternative == "greater":
        hits = int(np.sum(shifted >= m))
        null = "mean(after − before) ≤ 0"
    elif alternative == "less":
        hits = int(np.sum(shifted <= m))
        null = "mean(after − before) ≥ 0"
    else:
        hits = int(np.sum(np.abs(shifted) >= abs(m)))
        null = "mean(after − before) = 0"
    q = (1 - confidence) / 2
    lo, hi = np.quantile(means, [q, 1 - q])
    return BootstrapTest(
        null=null,
        alternative=alternative,
        n=n,
        mean_before=float(np.mean(before)),
        mean_after=float(np.mean(after)),
        statistic=m,
        ci=(float(lo), float(hi)),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        p_value=(1 + hits) / (n_boot + 1),
    )


def tango_restricted_mle(b: int, c: int, n: int, delta0: float) -> float:
    """MLE of P(right→wrong) under the constraint P(wrong→right) − P(right→wrong) = delta0.

    Root of ``2n q² + (−b − c + (2n − c + b)·δ0) q − b·δ0(1 − δ0) = 0`` (Tango 1998), the
    stationary point of the multinomial likelihood on the constrained line.
    """
    a2 = 2.0 * n
    a1 = -b - c + (2.0 * n - c + b) * delta0
    a0 = -b * delta0 * (1.0 - delta0)
    disc = max(0.0, a1 * a1 - 4.0 * a2 * a0)
    return (-a1 + math.sqrt(disc)) / (2.0 * a2)


def noninferiority_binary(
    before: Sequence[bool],
    after: Sequence[bool],
    margin: float,
    *,
    alpha: float = 0.05,
    metric: str = "accuracy",
) -> NonInferiorityTest:
    """Non-inferiority of paired binary outcomes: H0 p_after − p_before ≤ −margin.

    Uses Tango's (1998) score test: with δ0 = −margin and q̃ the restricted MLE of
    P(right→wrong) under H0 (:func:`tango_restricted_mle`),
    ``Z = (c − b − n·δ0) / sqrt(n·(2q̃ + δ0(1 − δ0)))``, p = 1 − Φ(Z). The variance is
    estimated *under the null*, so it stays positive when few pairs are discordant — the
    Wald statistic with the observed paired variance ``((b+c)/n − (c−b)²/n²)/n`` is
    infinite at b = c = 0 and clearly liberal when b + c is small, and the exact
    (unconditional) alternatives cost a nuisance-parameter maximisation per call for
    little gain at gate sizes (n ≥ 100). Size at the boundary is checked by simulation in
    the tests. ``ci`` is Newcombe's 1 − 2α interval (informational; the decision is the
    score test's).
    """
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    n_both, b, c, n_neither = paired_table(before, after)
    n = n_both + b + c + n_neither
    delta0 = -margin
    q = tango_restricted_mle(b, c, n, delta0)
    var = n * (2.0 * q + delta0 * (1.0 - delta0))
    z = (c - b - n * delta0) / math.sqrt(var) if var > 0 else math.inf
    p = float(stats.norm.sf(z))
    return NonInferiorityTest(
        test="Tango score test for paired proportions (one-sided, non-inferiority)",
        null=f"p_after − p_before ≤ −{margin:g}",
        metric=metric,
        higher_is_better=True,
        n=n,
        before_mean=(n_both + b) / n,
        after_mean=(n_both + c) / n,
        margin=margin,
        estimate=(c - b) / n,
        ci=newcombe_paired_ci(n_both, b, c, n_neither, confidence=1 - 2 * alpha),
        statistic=float(z),
        p_value=p,
        alpha=alpha,
        non_inferior=p <= alpha,
        b=b,
        c=c,
    )


def min_noninferiority_n(margin: float, alpha: float = 0.05) -> int:
    """Fewest paired items with which :func:`noninferiority_binary` passes when no answer changes.

    With no discordant pair (b = c = 0) the Tango statistic is ``sqrt(n·m/(1 − m))``
    (q̃ = m), so with fewer items than this a round in which nothing changed always fails,
    and so does one whose answers only flip evenly both ways. Fewer items do *not* make the
    test impossible to pass: answers that improve (c > b) raise the statistic, e.g. at
    margin 0.05 (this bound: 52) 47 items with 3 wrong→right and 0 right→wrong give
    p = 0.009. So below this n the test cannot pass unless sentinel answers improve.
    """
    z = float(stats.norm.isf(alpha))
    return math.ceil(z * z * (1.0 - margin) / margin - 1e-9)


def _tango_pass_cells(n: int, margin: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``(b, c)`` tables (b + c ≤ n) on which :func:`noninferiority_binary` passes."""
    b, c = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="ij")
    keep = b + c <= n
    b, c = b[keep], c[keep]
    # tango_restricted_mle, vectorised (delta0 = −margin)
    a1 = -b - c + (2.0 * n - c + b) * -margin
    a0 = b * margin * (1.0 + margin)
    q = (-a1 + np.sqrt(np.maximum(0.0, a1 * a1 - 8.0 * n * a0))) / (4.0 * n)
    var = n * (2.0 * q - margin * (1.0 + margin))
    num = c - b + n * margin
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)), np.inf)
    ok = z >= float(stats.norm.isf(alpha))
    return b[ok], c[ok]


def _trinomial(b: np.ndarray, c: np.ndarray, n: int, pb: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """P(b right→wrong, c wrong→right) among n items, broadcast over rows of ``pb``/``pc``."""
    from scipy.special import gammaln, xlogy

    r = n - b - c
    logp = gammaln(n + 1.0) - gammaln(b + 1.0) - gammaln(c + 1.0) - gammaln(r + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = logp + xlogy(b, pb) + xlogy(c, pc) + xlogy(r, np.maximum(1.0 - pb - pc, 0.0))
    return np.exp(logp)


def noninferiority_binary_power(
    n: int,
    margin: float,
    *,
    alpha: float = 0.05,
    discordance: float = 0.1,
    delta: float = 0.0,
) -> float:
    """Exact probability that :func:`noninferiority_binary` shows non-inferiority.

    Under a model where each item flips wrong→right with probability (ψ + δ)/2 and
    right→wrong with (ψ − δ)/2 (ψ = ``discordance``, δ = ``delta`` the true change in
    accuracy), the counts (b, c, rest) are trinomial; the power sums their probabilities
    over the (b, c) where the score test passes. Exact, O(n²) (vectorised).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pb, pc = (discordance - delta) / 2.0, (discordance + delta) / 2.0
    if min(pb, pc) < 0 or pb + pc > 1:
        raise ValueError(f"impossible flip rates: discordance={discordance}, delta={delta}")
    b, c = _tango_pass_cells(n, margin, alpha)
    power = float(np.sum(_trinomial(b, c, n, np.asarray(pb), np.asarray(pc))))
    return min(1.0, power)


def noninferiority_binary_size(
    n: int, margin: float, *, alpha: float = 0.05, grid: int = 401
) -> float:
    """Exact worst-case size of :func:`noninferiority_binary` with ``n`` items.

    The largest probability of passing when accuracy truly fell by exactly ``margin``
    (δ = −margin, the boundary of H0), maximised over the discordance ψ ∈ [margin, 1] on a
    grid of ``grid`` points. Tango's test is a normal approximation, so this is close to
    but not always below ``alpha`` (0.052, 0.062, 0.054 at margin 0.20 with 32, 48, 64
    items; 0.051 at margin 0.10 with 160).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    b, c = _tango_pass_cells(n, margin, alpha)
    psi = np.linspace(margin, 1.0, grid)[:, None]
    sizes = _trinomial(b, c, n, (psi + margin) / 2.0, (psi - margin) / 2.0).sum(axis=1)
    return float(min(1.0, sizes.max()))


def _no_harm_power(n: int, alpha: float, discordance: float) -> float:
    """Exact P(the one-sided McNemar harm test does *not* reject) when nothing changes."""
    d = np.arange(n + 1)
    p_d = stats.binom.pmf(d, n, discordance)  # discordant pairs
    cc = np.arange(n + 1)[None, :]
    p_less = stats.binom.cdf(cc, d[:, None], 0.5)  # P(c' ≤ c) under H0, per (d, c)
    p_c = stats.binom.pmf(cc, d[:, None], 0.5)  # c | d when nothing changes
    passes = (cc <= d[:, None]) & (p_less > alpha)
    return float(min(1.0, np.sum(p_d * np.sum(np.where(passes, p_c, 0.0), axis=1))))


class _BinaryPlan(NamedTuple):
    """One binary sentinel test the gate runs (see :func:`_binary_families`)."""

    kind: Literal["binary", "no_harm"]
    suites: tuple[str, ...]
    n: int
    margin: float | None  # None for the McNemar harm test


def _binary_families(n_by_suite: Mapping[str, int], config: GateConfig) -> dict[str, _BinaryPlan]:
    """The binary sentinel tests the gate runs, by result name (``SentinelResult.suite``).

    ``"pooled: a+b+…"`` names the pooled test; a suite's name, its own test. A suite's own
    test in ``"pooled_and_suite"`` mode uses ``max(suite_margin, sentinel_margin)``: no
    suite is held to a tighter margin than the pool. One binary suite gets one test at
    ``sentinel_margin`` in every mode (its pooled test; its own test at a margin at least as
    wide is implied by it, the score test's p-value falling as the margin widens).
    """
    suites = tuple(n_by_suite)
    own = {s: _BinaryPlan("binary", (s,), n_by_suite[s], config.sentinel_margin) for s in suites}
    if config.sentinel_mode == "per_suite" or len(suites) <= 1:
        return own
    name = "pooled: " + "+".join(suites)
    plans = {name: _BinaryPlan("binary", suites, sum(n_by_suite.values()), config.sentinel_margin)}
    kind: Literal["binary", "no_harm"] = "binary"
    margin: float | None = max(config.suite_margin, config.sentinel_margin)
    if config.sentinel_mode == "pooled":
        kind, margin = "no_harm", None
    for s in suites:
        plans[s] = _BinaryPlan(kind, (s,), n_by_suite[s], margin)
    return plans


def gate_power(
    n_by_suite: Mapping[str, int], config: GateConfig, discordance: Sequence[float] = (0.1, 0.2)
) -> dict[str, float]:
    """Exact pass probability of each binary sentinel test when nothing truly changes.

    Args:
        n_by_suite: Binary sentinel items per suite.
        config: The gate; ``sentinel_mode`` decides which tests run (the pooled test, the
            per-suite tests, or the pooled mode's per-suite McNemar harm tests).
        discordance: Fractions of items whose answer flips (half each way).

    Returns:
        ``{"<test> @ <ψ> discordant": P(pass)}`` for every test and ψ; the per-suite
        McNemar harm tests of ``"pooled"`` mode are keyed ``"<suite> (no harm) @ …"``. A
        test with fewer items than :func:`min_noninferiority_n` is included too: it
        passes only in rounds where, by chance, more answers flip wrong→right than
        right→wrong, so its power is low but not 0 (:func:`gate_warnings` names it). The round
        passes only if every test passes; the tests share items, so the product of these
        numbers approximates, not equals, the gate's pass rate (the bench
        ``bench/sentinel_gate_power.py`` simulates it).
    """
    out: dict[str, float] = {}
    for name, plan in _binary_families(n_by_suite, config).items():
        for psi in discordance:
            if plan.margin is None:
                key = f"{name} (no harm) @ {psi:.0%} discordant"
                out[key] = _no_harm_power(plan.n, config.alpha, psi)
            else:
                key = f"{name} @ {psi:.0%} discordant"
                out[key] = noninferiority_binary_power(
                    plan.n, plan.margin, alpha=config.alpha, discordance=psi
                )
    return out


def gate_warnings(n_by_suite: Mapping[str, int], config: GateConfig) -> list[str]:
    """One line per binary sentinel test with fewer items than it needs to pass unchanged.

    Such a gate is legal (it accepts rounds that improve the sentinels) but rejects every
    round that leaves them as they were; see :func:`min_noninferiority_n`.
    """
    lines = []
    for name, plan in _binary_families(n_by_suite, config).items():
        if plan.margin is None:
            continue
        need = min_noninferiority_n(plan.margin, config.alpha)
        if plan.n < need:
            lines.append(
                f"sentinel test {name} (non-inferiority at margin {plan.margin:g}, alpha "
                f"{config.alpha:g}) has {plan.n} items: below {need} it cannot pass unless "
                "sentinel answers improve (with no change it always fails)"
            )
    return lines


def noninferiority_mean(
    before: Sequence[float],
    after: Sequence[float],
    margin: float,
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    metric: str = "mean",
) -> NonInferiorityTest:
    """Paired one-sided t-test of non-inferiority for a continuous metric.

    With the improvement ``u = after − before`` (``before − after`` when lower is better,
    e.g. NLL), H0: mean(u) ≤ −margin, t = (ū + margin)/(s_u/√n) on n − 1 df. ``margin`` is
    in the metric's units (nats/token for NLL). Identical to
    ``scipy.stats.ttest_1samp(u, -margin, alternative="greater")``. If every difference
    is equal (s_u = 0) the decision is exact: non-inferior iff ū > −margin.
    """
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    d = _paired_floats(before, after)
    u = d if higher_is_better else -d
    n = len(u)
    mean = float(u.mean())
    sd = float(u.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        se = sd / math.sqrt(n)
        t = (mean + margin) / se
        p = float(stats.t.sf(t, n - 1))
        h = float(stats.t.ppf(1 - alpha, n - 1)) * se
        ci = (mean - h, mean + h)
    elif n > 1:  # all differences equal: no sampling noise to test against
        t = math.copysign(math.inf, mean + margin) if mean + margin != 0 else 0.0
        p = 0.0 if mean > -margin else 1.0
        ci = (mean, mean)
    else:
        t, p, ci = math.nan, 1.0, (math.nan, math.nan)
    direction = "after − before" if higher_is_better else "before − after"
    return NonInferiorityTest(
        test="paired t-test (one-sided, non-inferiority)",
        null=f"mean({direction}) ≤ −{margin:g}",
        metric=metric,
        higher_is_better=higher_is_better,
        n=n,
        before_mean=float(np.mean(before)),
        after_mean=float(np.mean(after)),
        margin=margin,
        estimate=mean,
        ci=ci,
        statistic=float(t),
        df=float(n - 1),
        p_value=p,
        alpha=alpha,
        non_inferior=p <= alpha,
    )


# ---------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------


def _field(rec: Any, name: str) -> Any:
    """:func:`~selfimprove.evaluate.record_field`, with a fast path for plain dict rows."""
    if type(rec) is dict:
        return rec.get(name)
    return record_field(rec, name)


def _key(rec: Any) -> tuple[str, str]:
    return (str(_field(rec, "suite")), str(_field(rec, "sample_id")))


def _index(records: Sequence[Any], name: str) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for r in records:
        k = _key(r)
        if k in out:
            raise ValueError(f"{name}: duplicate item (suite={k[0]!r}, sample_id={k[1]!r})")
        out[k] = r
    return out


def _fmt_keys(keys: Sequence[tuple[str, str]], limit: int = 10) -> str:
    shown = ", ".join(f"{s}/{i}" for s, i in sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _pair(before: Sequence[Any], after: Sequence[Any]) -> list[tuple[Any, Any]]:
    bi, ai = _index(before, "before"), _index(after, "after")
    only_b = [k for k in bi if k not in ai]
    only_a = [k for k in ai if k not in bi]
    if only_b or only_a:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} missing from after: {_fmt_keys(only_b)}")
        if only_a:
            parts.append(f"{len(only_a)} missing from before: {_fmt_keys(only_a)}")
        raise ValueError(
            "before and after must score the same items (paired by suite, sample_id); "
            + "; ".join(parts)
        )
    pairs = []
    for k, rb in bi.items():
        ra = ai[k]
        hb, ha = _field(rb, "input_hash"), _field(ra, "input_hash")
        if hb is not None and ha is not None and hb != ha:
            raise ValueError(
                f"item {k[0]}/{k[1]} has different inputs before and after "
                f"(input_hash {hb} vs {ha}); the evaluation sets are not the same"
            )
        pairs.append((rb, ra))
    return pairs


def _is_binary(rec: Any) -> bool:
    # Decided on the *before* record; an after record with ``correct`` None (unscored)
    # counts as wrong, so a broken evaluation cannot drop items from a test.
    return _field(rec, "mode") != "nll" and _field(rec, "correct") is not None


def _target(
    pairs: list[tuple[Any, Any]],
    target_categories: Sequence[tuple[str, str]],
    config: GateConfig,
) -> TargetResult:
    wanted = {(str(s), str(c)) for s, c in target_categories}
    by_cat: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)
    for rb, ra in pairs:
        cat = (str(_field(rb, "suite")), str(_field(rb, "category")))
        if cat in wanted and _is_binary(rb):
            by_cat[cat].append((is_solved(rb, config.metric), is_solved(ra, config.metric)))
    missing = sorted(wanted - set(by_cat))
    if missing:
        raise ValueError(
            "target categories with no scored (binary) items: "
            + ", ".join(f"{s}/{c}" for s, c in missing)
        )
    cats = sorted(by_cat)
    tests = [
        mcnemar_exact([p[0] for p in by_cat[k]], [p[1] for p in by_cat[k]], alternative="greater")
        for k in cats
    ]
    adj = holm([t.p_greater for t in tests])
    pooled_pairs = [p for k in cats for p in by_cat[k]]
    before = [p[0] for p in pooled_pairs]
    after = [p[1] for p in pooled_pairs]
    pooled = mcnemar_exact(before, after, alternative="greater")
    boot = None
    p_gain = pooled.p_greater
    if config.target_test == "bootstrap":
        boot = paired_bootstrap(
            [float(x) for x in before],
            [float(x) for x in after],
            n_boot=config.bootstrap_samples,
            seed=config.bootstrap_seed,
            alternative="greater",
        )
        p_gain = boot.p_value
    return TargetResult(
        pooled=pooled,
        per_category=[
            CategoryTest(suite=k[0], category=k[1], test=t, p_holm=a)
            for k, t, a in zip(cats, tests, adj, strict=True)
        ],
        significant=p_gain <= config.alpha,
        bootstrap=boot,
    )


def _collateral(
    pairs: list[tuple[Any, Any]],
    target_categories: Sequence[tuple[str, str]],
    sentinel_suites: Sequence[str],
    config: GateConfig,
) -> PairedBinaryTest | None:
    """Pooled McNemar (harm) on binary items that are neither targets nor sentinels."""
    wanted = {(str(s), str(c)) for s, c in target_categories}
    sent = set(sentinel_suites)
    rows = [
        (is_solved(rb, config.metric), is_solved(ra, config.metric))
        for rb, ra in pairs
        if _is_binary(rb)
        and str(_field(rb, "suite")) not in sent
        and (str(_field(rb, "suite")), str(_field(rb, "category"))) not in wanted
    ]
    if not rows:
        return None
    return mcnemar_exact([b for b, _ in rows], [a for _, a in rows], alternative="less")


def _binary_noninferiority(
    name: str, rows: list[tuple[bool, bool]], margin: float, config: GateConfig
) -> SentinelResult:
    t = noninferiority_binary(
        [x for x, _ in rows], [y for _, y in rows], margin, alpha=config.alpha, metric=config.metric
    )
    return SentinelResult(suite=name, kind="binary", test=t, passed=t.non_inferior)


def _sentinels(
    pairs: list[tuple[Any, Any]], sentinel_suites: Sequence[str], config: GateConfig
) -> list[SentinelResult]:
    by_suite: dict[Any, list[tuple[Any, Any]]] = {s: [] for s in sentinel_suites}
    for rb, ra in pairs:
        rows = by_suite.get(_field(rb, "suite"))
        if rows is not None:
            rows.append((rb, ra))
    out: list[SentinelResult] = []
    binary_by_suite: dict[str, list[tuple[bool, bool]]] = {}
    for suite, rows in by_suite.items():
        if not rows:
            raise ValueError(f"sentinel suite {suite!r} has no records in the evaluation")
        binary: list[tuple[bool, bool]] = []
        nll: list[tuple[Any, Any]] = []
        for rb, ra in rows:
            if _field(rb, "mode") == "nll":
                nll.append((rb, ra))
            elif _field(rb, "correct") is not None:  # _is_binary
                binary.append((is_solved(rb, config.metric), is_solved(ra, config.metric)))
        if not binary and not nll:
            raise ValueError(
                f"sentinel suite {suite!r} has neither binary (`correct`) nor NLL-mode records"
            )
        if binary:
            binary_by_suite[suite] = binary
        if nll:
            out.append(_nll_sentinel(suite, nll, config))
    binary_results: list[SentinelResult] = []
    families = _binary_families({k: len(v) for k, v in binary_by_suite.items()}, config)
    for name, plan in families.items():
        outcomes = [p for s in plan.suites for p in binary_by_suite[s]]
        if plan.margin is not None:
            binary_results.append(_binary_noninferiority(name, outcomes, plan.margin, config))
            continue
        h = mcnemar_exact([x for x, _ in outcomes], [y for _, y in outcomes], alternative="less")
        binary_results.append(
            SentinelResult(
                suite=name, kind="no_harm", test=None, harm=h, passed=h.p_less > config.alpha
            )
        )
    return binary_results + out


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _nll_sentinel(suite: str, rows: list[tuple[Any, Any]], config: GateConfig) -> SentinelResult:
    # An item the old model scored but the new one cannot (NaN/inf) is a breakdown, not
    # missing data: fail the sentinel rather than drop it.
    broken = [
        _key(rb)
        for rb, ra in rows
        if _finite(_field(rb, "ref_nll")) and not _finite(_field(ra, "ref_nll"))
    ]
    if broken:
        return SentinelResult(
            suite=suite,
            kind="nll",
            test=None,
            passed=False,
            note=f"{len(broken)} items have non-finite ref_nll after the round: {_fmt_keys(broken)}",
        )
    usable = [
        (float(_field(rb, "ref_nll")), float(_field(ra, "ref_nll")))
        for rb, ra in rows
        if _finite(_field(rb, "ref_nll")) and _finite(_field(ra, "ref_nll"))
    ]
    if len(usable) < 2:
        return SentinelResult(
            suite=suite,
            kind="nll",
            test=None,
            passed=False,
            note=f"only {len(usable)} items with finite ref_nll; cannot test non-inferiority",
        )
    t = noninferiority_mean(
        [u[0] for u in usable],
        [u[1] for u in usable],
        config.nll_margin,
        higher_is_better=False,
        alpha=config.alpha,
        metric="ref_nll",
    )
    dropped = len(rows) - len(usable)
    note = (
        f"{dropped} items without a finite ref_nll before the round were skipped" if dropped else ""
    )
    return SentinelResult(suite=suite, kind="nll", test=t, passed=t.non_inferior, note=note)


def check_losses(
    train_losses: Sequence[float] | None, max_loss_ratio: float = DEFAULT_MAX_LOSS_RATIO
) -> tuple[bool, str]:
    """Training health: all losses finite and last ≤ ``max_loss_ratio`` × the first non-zero.

    The one divergence rule (the gate's loss check and ``TrainResult.diverged``). The
    reference is the first *non-zero* logged loss: a logging step of only KL-anchor rows logs
    exactly 0 at the start (the LoRA update is still zero, so policy = base), and ``last >
    ratio × 0`` would call every such run diverged. ``None`` means "not supplied" and
    passes; an empty sequence fails (training that recorded no loss did not happen as
    planned). Returns ``(ok, reason line)``.
    """
    if train_losses is None:
        return True, "ok: training losses not supplied; loss check skipped"
    losses = [float(v) for v in train_losses]
    if not losses:
        return False, "rejected: training recorded no losses"
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        return False, (
            f"rejected: {len(bad)} non-finite training losses (first at step {bad[0]}: "
            f"{losses[bad[0]]})"
        )
    first = next((v for v in losses if v != 0.0), 0.0)
    last = losses[-1]
    label = "first" if first == losses[0] else "first non-zero"
    if last > max_loss_ratio * first:
        return False, (
            f"rejected: training diverged, last loss {last:.4g} > {max_loss_ratio:g} × "
            f"{label} {first:.4g}"
        )
    return True, f"ok: training losses finite, last {last:.4g} vs {label} {first:.4g}"


def decide(
    before: Sequence[Any],
    after: Sequence[Any],
    *,
    target_categories: Sequence[tuple[str, str]],
    sentinel_suites: Sequence[str],
    config: GateConfig,
    train_losses: Sequence[float] | None = None,
) -> GateDecision:
    """Accept or reject a round from per-item records before and after it.

    Args:
        before: :class:`~selfimprove.evaluate.EvalRecord` objects or plain dicts with the
            same fields, scored with the pre-round model.
        after: The same items scored with the post-round model.
        target_categories: ``(suite, category)`` pairs the round aimed to improve.
        sentinel_suites: Suites that must not regress. Binary records (``correct`` set)
            are tested with :func:`noninferiority_binary`, by ``sentinel_mode``: pooled over
            suites at ``sentinel_margin`` and per suite at ``suite_margin``
            (``"pooled_and_suite"``), pooled plus a per-suite McNemar harm test
            (``"pooled"``), or per suite at ``sentinel_margin`` (``"per_suite"``); records of
            mode ``"nll"`` with :func:`noninferiority_mean` on ``ref_nll`` (lower is better)
            at ``nll_margin``, per suite.
        config: Levels and margins.
        train_losses: Per-step training losses of the round, if any.

    Returns:
        The decision, one reason line per check, and every test's full result.

    Raises:
        ValueError: The two record sets do not hold the same (suite, sample_id) items, an
            item's input changed, a target category or sentinel suite has no records, or
            ``require_target_gain`` is set with no target categories.

    The gate accepts iff the pooled target test is significant (when required), every
    sentinel shows non-inferiority, and the losses are healthy. No multiplicity correction
    is applied across sentinels: requiring all of them to pass is an intersection-union
    test, whose level is α without correction (see the module docstring).
    """
    if config.require_target_gain and not target_categories:
        raise ValueError("require_target_gain is set but no target_categories were given")
    pairs = _pair(before, after)
    checks: list[tuple[bool, str]] = []  # (passed, reason line), in report order
    target = _target(pairs, target_categories, config) if target_categories else None
    if target is not None:
        checks.append(_target_reason(target, config))
    sentinels = _sentinels(pairs, sentinel_suites, config)
    checks += [_sentinel_reason(s, config) for s in sentinels]
    collateral = None
    if config.collateral != "off":
        collateral = _collateral(pairs, target_categories, sentinel_suites, config)
    if collateral is not None:
        checks.append(_collateral_reason(collateral, config))
    loss_ok, loss_line = check_losses(train_losses, config.max_loss_ratio)
    checks.append((loss_ok, loss_line))
    reasons = [line for _ok, line in checks]
    accepted = all(ok for ok, _line in checks)
    log.info("gate %s: %s", "accepted" if accepted else "rejected", "; ".join(reasons))
    return GateDecision(
        accepted=accepted,
        reasons=reasons,
        target=target,
        sentinels=sentinels,
        loss_ok=loss_ok,
        config=config,
        collateral=collateral,
    )


def _target_reason(target: TargetResult, config: GateConfig) -> tuple[bool, str]:
    t = target.pooled
    if target.bootstrap is None:
        test, p_gain = "exact McNemar", t.p_greater
    else:
        test = f"paired bootstrap ({target.bootstrap.n_boot} resamples)"
        p_gain = target.bootstrap.p_value
    line = (
        f"target gain: {test} one-sided on {t.n} pooled items, "
        f"{t.before_rate:.3f} → {t.after_rate:.3f} (Δ {t.delta:+.3f}, "
        f"{t.confidence:.0%} CI [{t.delta_ci[0]:+.3f}, {t.delta_ci[1]:+.3f}]), "
        f"b={t.b} right→wrong, c={t.c} wrong→right, p={p_gain:.3g} vs α={config.alpha:g}"
    )
    if target.significant:
        return True, "ok: " + line
    if config.require_target_gain:
        return False, "rejected: no significant " + line
    return True, "ok (not required): no significant " + line


def _sentinel_reason(s: SentinelResult, config: GateConfig) -> tuple[bool, str]:
    if s.kind == "no_harm" and s.harm is not None:
        h = s.harm
        line = (
            f"sentinel {s.suite} ({config.metric}): exact McNemar one-sided for harm, "
            f"n={h.n}, {h.before_rate:.3f} → {h.after_rate:.3f}, b={h.b} right→wrong, "
            f"c={h.c} wrong→right, p={h.p_less:.3g} vs α={config.alpha:g}"
        )
        if s.passed:
            return True, "ok: no significant harm, " + line
        return False, "rejected: significantly worse, " + line
    if s.test is None:
        return False, f"rejected: sentinel {s.suite} ({s.kind}): {s.note}"
    nt = s.test
    unit = "nats/token" if s.kind == "nll" else "accuracy"
    line = (
        f"sentinel {s.suite} ({nt.metric}): {nt.test}, n={nt.n}, "
        f"{nt.before_mean:.3f} → {nt.after_mean:.3f}, improvement {nt.estimate:+.3f} "
        f"(CI [{nt.ci[0]:+.3f}, {nt.ci[1]:+.3f}]), margin {nt.margin:g} {unit}, "
        f"stat={nt.statistic:.3g}, p={nt.p_value:.3g} vs α={nt.alpha:g}"
    )
    if s.note:
        line += f"; {s.note}"
    if s.passed and s.kind == "binary" and nt.ci[1] < 0:
        # the 1 − 2α interval lies below 0: significantly worse, by less than the margin
        return True, "warning (non-inferior, not gating): significantly worse, " + line
    if s.passed:
        return True, "ok: non-inferior, " + line
    return False, "rejected: non-inferiority not shown, " + line


def _collateral_reason(h: PairedBinaryTest, config: GateConfig) -> tuple[bool, str]:
    line = (
        f"non-target skills ({config.metric}, not sentinels): exact McNemar one-sided for "
        f"harm, n={h.n}, {h.before_rate:.3f} → {h.after_rate:.3f}, b={h.b} right→wrong, "
        f"c={h.c} wrong→right, p={h.p_less:.3g} vs α={config.alpha:g}"
    )
    harmed = h.p_less <= config.alpha
    if config.collateral == "reject" and harmed:
        return False, "rejected: significantly worse, " + line
    tag = "reported, not gating" if config.collateral == "report" else "no significant harm"
    return True, f"{'warning' if harmed else 'ok'} ({tag}): " + line
