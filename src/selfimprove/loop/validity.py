"""Known-truth simulation of the loop's statistics: rounds whose training changes nothing.

A trained candidate that learned nothing still answers some items differently from the model
it started from (a small model's greedy answers flip in both directions after any LoRA
update). This module simulates exactly that on the loop's real item plan and runs the loop's
own target choice (:func:`selfimprove.weakness.rank_weak_areas`, retirement by
:func:`selfimprove.weakness.stalled_targets`) and gate (:func:`selfimprove.gate.decide`) on
it, round after round, accepting and rolling back as the loop does:

* every item ``i`` has a latent probability ``p_i`` of being solved (category accuracies
  spread over 5–95%, items scattered around them); the base model's record is one draw;
* a candidate (training from the base, as every round of the loop does) keeps each answer
  and, with probability ``flip``, redraws it from ``p_i`` — no item gets easier, so the true
  gain is exactly 0 and any "significant gain" is a false positive;
* ``split=True`` chooses targets on the selection half and judges them on the confirmation
  half (:mod:`selfimprove.loop.split`); ``split=False`` is the loop before it: both on the
  same items, where categories chosen for scoring low regress upward on re-scoring.

:func:`simulate_noop_rounds` returns the target test's false-positive rate per round and the
mean reported gain (the last round's candidate against the base on the targets, as
:func:`selfimprove.loop.summary.efficiency` reports it). ``tests/test_loop_validity.py``
holds it to its nominal level; ``bench/loop_validity.py`` prints the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Literal

import numpy as np

from selfimprove.evaluate import EvalRecord, Item
from selfimprove.gate import GateConfig, decide
from selfimprove.loop.split import ItemSplit, split_items
from selfimprove.weakness import WeaknessConfig, rank_weak_areas, stalled_targets


@dataclass(frozen=True)
class NoopResult:
    """What ``n_runs`` simulated runs of ``rounds`` no-op rounds gave."""

    split: bool
    rank_by: str
    n_runs: int
    n_rounds: int
    #: share of rounds whose target-gain test was significant (true gain 0: all false)
    false_positive_rate: float
    #: share of rounds accepted
    accept_rate: float
    #: mean over runs of the last candidate's gain on the targets (points; truth 0)
    mean_reported_gain: float
    #: standard error of that mean (points)
    gain_se: float
    #: mean gain of each run's last accepted model on the targets' judged items, runs with one
    mean_accepted_gain: float | None


def _records(
    meta: Sequence[tuple[str, str, str]], correct: np.ndarray, nll: np.ndarray
) -> list[EvalRecord]:
    return [
        EvalRecord.model_construct(
            suite=s,
            task=c,
            category=c,
            sample_id=i,
            input_hash=f"{s}/{i}",
            mode="generate",
            target="1",
            extracted="1" if ok else "0",
            correct=bool(ok),
            format_ok=True,
            ref_nll=float(v),
        )
        for (s, c, i), ok, v in zip(meta, correct, nll, strict=True)
    ]


def _acc(
    recs: Sequence[EvalRecord],
    keep: AbstractSet[tuple[str, str]],
    cats: AbstractSet[tuple[str, str]],
) -> list[float]:
    return [
        float(bool(r.correct))
        for r in recs
        if (r.suite, r.sample_id) in keep and (r.suite, r.category) in cats
    ]


def simulate_noop_rounds(
    items: Sequence[Item],
    *,
    n_runs: int = 200,
    rounds: int = 3,
    split: bool = True,
    rank_by: Literal["learnable", "error"] = "learnable",
    flip: float = 0.3,
    top_k: int = 4,
    alpha: float = 0.05,
    seed: int = 0,
) -> NoopResult:
    """Run the loop's target choice and gate ``n_runs`` × ``rounds`` times on no-op rounds.

    Args:
        items: the evaluation items (skill suites only; e.g. the loop's plan without its
            sentinels) — their suites, categories and sizes are used, not their text.
        split: judge on the confirmation half (the loop now) or on the selection items too.
        rank_by, top_k: the weak-area ranking (:class:`selfimprove.weakness.WeaknessConfig`).
        flip: share of a candidate's answers redrawn from their latent probability.
    """
    meta = [(s, x.category, x.id) for s, _t, x in items]
    cat_of = [(s, c) for s, c, _i in meta]
    cats = sorted(set(cat_of))
    cat_idx = np.array([cats.index(c) for c in cat_of])
    wcfg = WeaknessConfig(rank_by=rank_by, top_k=top_k, min_items=3, error_threshold=0.3)
    gcfg = GateConfig(alpha=alpha, collateral="off")
    rng = np.random.default_rng(seed)
    n_sig = n_acc = n_rounds = 0
    gains: list[float] = []
    acc_gains: list[float] = []
    for run in range(n_runs):
        sp = (
            split_items(items, seed * 100_003 + run, sentinel_suites=())
            if split
            else ItemSplit.legacy_split(items)
        )
        level = rng.uniform(0.05, 0.95, size=len(cats))[cat_idx]
        p = rng.beta(4 * level + 0.1, 4 * (1 - level) + 0.1)  # items scattered around it
        nll = -np.log(np.clip(p, 0.02, 1.0)) * rng.uniform(0.5, 1.5, size=len(p))
        base_ok = rng.random(len(p)) < p
        base = _records(meta, base_ok, nll)
        current = base
        retired: dict[tuple[str, str], str] = {}
        all_targets: set[tuple[str, str]] = set()
        last: list[EvalRecord] = base
        accepted_model: list[EvalRecord] | None = None
        for _rnd in range(rounds):
            areas = rank_weak_areas(sp.select(current), wcfg, retired=retired)
            targets = [(a.suite, a.category) for a in areas if a.selected] or [
                (a.suite, a.category) for a in areas if (a.suite, a.category) not in retired
            ][:top_k]
            all_targets |= set(targets)
            redraw = rng.random(len(p)) < flip
            cand_ok = np.where(redraw, rng.random(len(p)) < p, base_ok)
            cand = _records(meta, cand_ok, nll)
            d = decide(
                sp.confirm(current),
                sp.confirm(cand),
                target_categories=targets,
                sentinel_suites=[],
                config=gcfg,
            )
            n_rounds += 1
            n_sig += bool(d.target is not None and d.target.significant)
            n_acc += d.accepted
            for t in stalled_targets(sp.select(current), sp.select(cand), targets):
                retired.setdefault(t, "no gain")
            if d.accepted:
                current, accepted_model = cand, cand
            last = cand
        keep = sp.confirmation
        b, a = _acc(base, keep, all_targets), _acc(last, keep, all_targets)
        gains.append(100 * (sum(a) - sum(b)) / max(len(b), 1))
        if accepted_model is not None:
            acc = _acc(accepted_model, keep, all_targets)
            acc_gains.append(100 * (sum(acc) - sum(b)) / max(len(b), 1))
    g = np.asarray(gains)
    return NoopResult(
        split=split,
        rank_by=rank_by,
        n_runs=n_runs,
        n_rounds=n_rounds,
        false_positive_rate=n_sig / n_rounds,
        accept_rate=n_acc / n_rounds,
        mean_reported_gain=float(g.mean()),
        gain_se=float(g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else math.nan,
        mean_accepted_gain=float(np.mean(acc_gains)) if acc_gains else None,
    )
