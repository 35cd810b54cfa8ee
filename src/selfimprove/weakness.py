"""Weak areas: rank evaluation categories by how often and how badly the model fails.

Input: per-example :class:`~selfimprove.evaluate.EvalRecord` rows of one evaluation.
Output: :class:`WeakArea` rows, one per (suite, category). Which weak areas are chosen
(``rank_by``):

* ``error``: by error rate (the lower end of its Wilson interval, so that categories we are
  *sure* are weak come first), ties broken toward the higher gold perplexity.
* ``learnable`` (default): by expected headroom the model is near, ``lower Wilson bound of the
  error rate x exp(-mean reference NLL)`` — the error rate times the model's geometric-mean
  per-token probability of the gold answer. Among categories that fail equally often it
  picks the ones whose right answer the model already finds likely. Measured on three seeds
  of the loop (README, "Choosing learnable targets"): word_sort_5/8, reverse_word and
  first_letters (gold perplexity 60-150) gained nothing in any of the 18 trained models of
  either arm, word_sort_3 (~40) at most 2 of 11 items; the ``error`` ranking, breaking
  100%-error ties by item count and then by *higher* perplexity, chose three word-sorting
  categories first in two of the three seeds.

``retired`` areas (targets of an earlier round whose accuracy did not rise after training on
them, see :func:`stalled_targets`) are never selected again in the run.

The users' ``perplexity_threshold`` (source 001) is a threshold on exp(mean reference NLL),
the perplexity of the *gold* answer, not of the model's own output. Failures are classified
per family: ``no_answer`` (nothing extractable), ``format_error`` (right answer, wrong
format), ``wrong_answer``.

It does not generate data (see :mod:`selfimprove.synth`) and never looks at sentinel suites
as targets: those guard against regressions.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from selfimprove.evaluate import EvalRecord, Metric, MetricField, is_solved
from selfimprove.stats import wilson_ci

__all__ = [
    "Metric",
    "WeakArea",
    "WeaknessConfig",
    "classify_failure",
    "rank_weak_areas",
    "stalled_targets",
]


class WeaknessConfig(BaseModel):
    """How weak areas are chosen (the users' thresholds, sec. 001)."""

    model_config = {"extra": "forbid"}
    metric: MetricField = Field(
        "correct",
        description="Error of 'correct' accuracy (the skill: answer extracted anywhere "
        "sensible) or 'strict' (correct AND strict format; at baseline nearly every category "
        "fails it); see selfimprove.evaluate.is_solved. The old spelling 'extracted' is read "
        "as 'correct'.",
    )
    error_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="A category is weak if its error rate is at least this."
    )
    perplexity_threshold: float | None = Field(
        None,
        gt=1.0,
        description="Also weak if the gold answer's perplexity exp(mean ref NLL) exceeds this.",
    )
    top_k: int = Field(4, ge=1, description="At most this many weak areas per round.")
    rank_by: Literal["learnable", "error"] = Field(
        "learnable",
        description="'learnable': error rate x the model's per-token probability of the gold "
        "answer (fails, but is near the right answer); 'error': error rate alone, ties to the "
        "higher gold perplexity.",
    )
    retire_stalled: bool = Field(
        True,
        description="Never re-select a target whose accuracy did not rise after a round of "
        "training on it (its slot goes to the next weak area).",
    )
    min_items: int = Field(3, ge=1, description="Ignore categories with fewer scored items.")


class WeakArea(BaseModel):
    suite: str
    category: str
    n: int
    error_rate: float
    error_ci: tuple[float, float]
    ref_perplexity: float | None
    failure_types: dict[str, int]
    score: float  # ranking key (rank_by): lower CI bound of the error rate [x gold probability]
    selected: bool = False
    reason: str = ""


def classify_failure(r: EvalRecord, metric: Metric = "strict") -> str | None:
    """``None`` if the item counts as solved (:func:`~selfimprove.evaluate.is_solved`), else
    the failure type."""
    if is_solved(r, metric):
        return None
    if r.correct and not r.format_ok:
        return "format_error"
    if r.extracted is None or not str(r.extracted).strip():
        return "no_answer"
    return "wrong_answer"


def rank_weak_areas(
    records: Iterable[EvalRecord],
    config: WeaknessConfig | None = None,
    *,
    exclude_suites: Sequence[str] = (),
    retired: Mapping[tuple[str, str], str] | None = None,
) -> list[WeakArea]:
    """All scored (suite, category) groups, best candidates first; the top ones are
    ``selected``. ``retired`` maps areas that may not be chosen to the reason why."""
    cfg = config or WeaknessConfig()
    groups: dict[tuple[str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        if r.correct is None or r.suite in exclude_suites:
            continue
        groups[(r.suite, r.category)].append(r)
    areas = []
    for (suite, cat), rs in groups.items():
        fails = [classify_failure(r, cfg.metric) for r in rs]
        k = sum(f is not None for f in fails)
        nll = [r.ref_nll for r in rs if r.ref_nll is not None and math.isfinite(r.ref_nll)]
        ppl = math.exp(sum(nll) / len(nll)) if nll else None
        lo, hi = wilson_ci(k, len(rs))
        if cfg.rank_by == "learnable":
            score = lo * (math.exp(-sum(nll) / len(nll)) if nll else 1.0)
        else:
            score = lo + (0.0 if ppl is None else min(ppl, 1e6) * 1e-9)
        areas.append(
            WeakArea(
                suite=suite,
                category=cat,
                n=len(rs),
                error_rate=k / len(rs),
                error_ci=(lo, hi),
                ref_perplexity=ppl,
                failure_types=dict(Counter(f for f in fails if f is not None)),
                score=score,
            )
        )
    tie = -1.0 if cfg.rank_by == "error" else 1.0
    areas.sort(key=lambda a: (-a.score, tie * (a.ref_perplexity or 0.0), a.suite, a.category))
    retired = retired or {}
    chosen = 0
    for a in areas:
        if (a.suite, a.category) in retired:
            a.reason = f"retired: {retired[(a.suite, a.category)]}"
            continue
        if a.n < cfg.min_items:
            a.reason = f"only {a.n} items"
            continue
        by_err = a.error_rate >= cfg.error_threshold
        by_ppl = (
            cfg.perplexity_threshold is not None
            and a.ref_perplexity is not None
            and a.ref_perplexity > cfg.perplexity_threshold
        )
        if (by_err or by_ppl) and chosen < cfg.top_k:
            a.selected = True
            chosen += 1
            why = []
            if by_err:
                why.append(f"error {a.error_rate:.0%} ≥ {cfg.error_threshold:.0%}")
            if by_ppl:
                why.append(f"gold perplexity {a.ref_perplexity:.1f} > {cfg.perplexity_threshold}")
            a.reason = "; ".join(why)
        elif by_err or by_ppl:
            a.reason = f"weak but beyond top_k={cfg.top_k}"
        else:
            a.reason = "not weak"
    return areas


def stalled_targets(
    before: Iterable[EvalRecord],
    after: Iterable[EvalRecord],
    targets: Sequence[tuple[str, str]],
    metric: Metric = "correct",
) -> dict[tuple[str, str], str]:
    """Targets whose solved count on the same fixed items did not rise from ``before`` (the
    model a round started from) to ``after`` (the round's trained candidate), with the counts.

    A weak learnability signal by design (one round, ~10 items per category): it only
    retires a target that gained *nothing*; one more solved item keeps it.
    """
    want = set(targets)

    def solved(recs: Iterable[EvalRecord]) -> dict[tuple[str, str], dict[str, bool]]:
        out: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
        for r in recs:
            if (r.suite, r.category) in want and r.correct is not None:
                out[(r.suite, r.category)][r.input_hash] = classify_failure(r, metric) is None
        return out

    b, a = solved(before), solved(after)
    stalled = {}
    for t in targets:
        common = b.get(t, {}).keys() & a.get(t, {}).keys()
        if not common:
            continue
        kb = sum(b[t][h] for h in common)
        ka = sum(a[t][h] for h in common)
        if ka <= kb:
            stalled[t] = f"no gain after training on it ({kb}/{len(common)} -> {ka}/{len(common)})"
    return stalled
