"""Headline numbers of a loop run: target accuracy per arm, per category, and efficiency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from selfimprove.evaluate import EvalRecord, Metric, aggregate, is_solved
from selfimprove.loop.config import LoopConfig
from selfimprove.loop.records import (
    ArmRound,
    CategoryChange,
    Efficiency,
    LoopSummary,
    ReplayFunnel,
    RoundPoint,
)
from selfimprove.stats import ratio_confidence_set

Key = tuple[str, str]


def target_accuracy(
    records: Sequence[EvalRecord], targets: Sequence[Key], metric: Metric
) -> float | None:
    """Accuracy on the scored items of the ``targets`` categories (``None``: no such item)."""
    tset = set(targets)
    rs = [r for r in records if (r.suite, r.category) in tset and r.correct is not None]
    if not rs:
        return None
    return sum(is_solved(r, metric) for r in rs) / len(rs)


def summarize(
    rounds: Sequence[ArmRound],
    baseline: Sequence[EvalRecord],
    evals: Mapping[str, Sequence[EvalRecord]],
    lcfg: LoopConfig,
    base_secs: float,
    candidates: Mapping[tuple[int, str], Sequence[EvalRecord]] | None = None,
    *,
    replay: ReplayFunnel | None = None,
) -> LoopSummary:
    """Target-category accuracy before/after per arm, the arms' comparison, per category.

    ``evals`` are each arm's accepted model's records; ``candidates`` every round's candidate
    records (accepted or not), from which the per-round curve and the efficiency comparison
    (last round's candidates: both arms trained on the same number of examples, neither
    chosen by the gate) come. The loop passes confirmation-half records only
    (:mod:`selfimprove.loop.split`): no reported number is measured on an item that chose a
    target.
    """
    targets = sorted({t for r in rounds if r.arm == "targeted" for t in r.targets})
    metric = lcfg.weakness.metric
    b = target_accuracy(baseline, targets, metric)
    after = {arm: target_accuracy(recs, targets, metric) for arm, recs in evals.items()}
    s = LoopSummary(
        targets=[f"{su}/{c}" for su, c in targets],
        metric=metric,
        target_acc_before=b,
        target_acc_after=after,
        retired_targets={
            k: f"round {r.round}: {why}"
            for r in rounds
            if r.arm == "targeted" and lcfg.weakness.retire_stalled
            for k, why in r.stalled.items()
        },
        accepted_rounds={arm: sum(r.accepted for r in rounds if r.arm == arm) for arm in lcfg.arms},
        baseline_eval_seconds=round(base_secs, 1),
        per_category=per_category(baseline, evals, targets, metric),
        replay=replay or ReplayFunnel(),
    )
    if candidates:
        s.per_round = [
            RoundPoint(
                round=rnd,
                arm=arm,
                target_acc=target_accuracy(recs, targets, metric),
                n_train=next((r.n_train for r in rounds if (r.round, r.arm) == (rnd, arm)), 0),
                accepted=any(r.accepted for r in rounds if (r.round, r.arm) == (rnd, arm)),
            )
            for (rnd, arm), recs in sorted(candidates.items())
        ]
        last = max(rnd for rnd, _a in candidates)
        if (last, "targeted") in candidates and (last, "random") in candidates:
            s.efficiency = efficiency(
                baseline,
                candidates[(last, "targeted")],
                candidates[(last, "random")],
                targets,
                metric,
                seed=lcfg.seed,
            )
            s.efficiency_ratio = s.efficiency.ratio
    return s


def per_category(
    baseline: Sequence[EvalRecord],
    evals: Mapping[str, Sequence[EvalRecord]],
    targets: Sequence[Key],
    metric: Metric,
) -> list[CategoryChange]:
    """Accuracy (Wilson 95% CI) of every scored category before and after, per arm."""
    strict = metric == "strict"

    def acc_map(
        recs: Sequence[EvalRecord],
    ) -> dict[Key, tuple[float, tuple[float, float] | None, int]]:
        m = {}
        for c in aggregate(recs):
            v, ci = (c.strict_accuracy, c.strict_ci) if strict else (c.accuracy, c.accuracy_ci)
            if v is not None:
                m[(c.suite, c.category)] = (v, ci, c.n)
        return m

    before = acc_map(baseline)
    after = {arm: acc_map(recs) for arm, recs in evals.items()}
    tset = set(targets)
    return [
        CategoryChange(
            suite=su,
            category=ca,
            target=(su, ca) in tset,
            n=n,
            before=v,
            before_ci=ci,
            after={arm: a[(su, ca)][0] if (su, ca) in a else None for arm, a in after.items()},
            after_ci={arm: a[(su, ca)][1] if (su, ca) in a else None for arm, a in after.items()},
        )
        for (su, ca), (v, ci, n) in sorted(before.items())
    ]


def efficiency(
    baseline: Sequence[EvalRecord],
    targeted: Sequence[EvalRecord],
    random_arm: Sequence[EvalRecord],
    targets: Sequence[Key],
    metric: Metric,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> Efficiency:
    """Targeted vs random gain on the target items: the difference leads, the ratio follows.

    Both arms were trained on the same number of examples, so the ratio of gains is the
    ratio of gains per example. Gains and their difference get paired-bootstrap 95% CIs
    (items resampled jointly: the same items were evaluated under the base and both
    candidates). The ratio gets a Fieller confidence set
    (:func:`selfimprove.stats.ratio_confidence_set`), which is unbounded whenever the random
    arm's gain is not significantly different from 0 — then only the difference says how
    the arms compare, and ``ratio_ci`` is ``None``.
    """
    tset = set(targets)
    maps = [
        {
            (r.suite, r.sample_id): float(is_solved(r, metric))
            for r in recs
            if (r.suite, r.category) in tset and r.correct is not None
        }
        for recs in (baseline, targeted, random_arm)
    ]
    keys = sorted(set(maps[0]) & set(maps[1]) & set(maps[2]))
    if not keys:
        return Efficiency(n_items=0)
    m = np.array([[mp[k] for k in keys] for mp in maps])  # (3, n_items)
    gain_t, gain_r = m[1] - m[0], m[2] - m[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    bt, br = gain_t[idx].mean(1), gain_r[idx].mean(1)
    gt, gr = float(gain_t.mean()), float(gain_r.mean())
    ratio_set = ratio_confidence_set(gain_t, gain_r, confidence=0.95)

    def ci(x: np.ndarray) -> tuple[float, float]:
        return (float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975)))

    return Efficiency(
        n_items=len(keys),
        gain_targeted=gt,
        gain_targeted_ci=ci(bt),
        gain_random=gr,
        gain_random_ci=ci(br),
        difference=gt - gr,
        difference_ci=ci(bt - br),
        ratio=gt / gr if gr > 0 else None,
        ratio_ci=(ratio_set.lo, ratio_set.hi) if ratio_set.bounded else None,
        ratio_set=ratio_set,
    )
