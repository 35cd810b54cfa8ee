"""No-op-training simulation of the loop's target choice and gate: old flow vs the split.

Prints, per ranking and item plan, the target test's false-positive rate (nominal α = 0.05),
the accept rate, the mean reported gain of the last round's candidates (truth: 0 points) and
the mean gain of accepted models on the items that accepted them (the winner's curse that
`efficiency` avoids). See selfimprove.loop.validity. Usage: python bench/loop_validity.py [n_runs]
"""

from __future__ import annotations

import sys
import time

from selfimprove.loop.config import LoopConfig
from selfimprove.loop.run import evaluation_plan
from selfimprove.loop.validity import simulate_noop_rounds


def skill_items(eval_n: int) -> list:
    skills, _s, plan = evaluation_plan(LoopConfig(eval_n=eval_n))
    names = {s.name for s in skills}
    return [(su.name, t, x) for su, t, xs in plan for x in xs if su.name in names]


def main() -> None:
    n_runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(f"{n_runs} runs x 3 rounds per row, flip 30% of answers, no true gain")
    print(f"{'flow':<34}{'rank_by':<11}{'FPR':>7}{'accept':>8}{'gain (pts)':>16}{'accepted':>10}")
    t0 = time.time()
    worst = 0.0
    for label, eval_n, split in (
        ("old: same items, eval_n 32", 32, False),
        ("old: same items, eval_n 64", 64, False),
        ("split: select/confirm, eval_n 64", 64, True),
    ):
        items = skill_items(eval_n)
        for rank_by in ("learnable", "error"):
            r = simulate_noop_rounds(items, n_runs=n_runs, split=split, rank_by=rank_by, seed=1)
            acc = "–" if r.mean_accepted_gain is None else f"{r.mean_accepted_gain:+.1f}"
            print(
                f"{label:<34}{rank_by:<11}{r.false_positive_rate:>7.3f}{r.accept_rate:>8.3f}"
                f"{r.mean_reported_gain:>+10.2f} ±{r.gain_se:.2f}{acc:>10}"
            )
            if split:
                worst = max(worst, r.false_positive_rate)
    print(f"split: worst false-positive rate {worst:.3f} at alpha 0.05 ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
