"""Power of the gate's sentinel modes, by simulating rounds and judging them with ``decide()``.

Five binary sentinel suites (the loop's ``sentinels`` group) of N items each. Every
simulated round draws each item's before/after answers from a flip model: an item goes
right→wrong with probability ``pb``, wrong→right with ``pc``, and otherwise keeps one
answer (right with probability 0.6). Columns:

* ``null 10%`` / ``null 20%``: nothing changes, 10% / 20% of items flip (half each way);
  the share of rounds the sentinels *accept* (higher is better).
* ``rej 15pt`` / ``rej 20pt``: one suite truly loses 15 / 20 points (``pb − pc``) on top of
  10% symmetric flips (the least noisy, so least rejecting, end of the 10–50% discordance
  measured on SmolLM2-135M), the other four unchanged with the same flips; the share of
  rounds *rejected* (higher is better).
* ``size``: the exact worst-case size (:func:`selfimprove.gate.noninferiority_binary_size`)
  of one suite's own test, where the mode runs one.

Every round is judged by ``decide()`` with ``require_target_gain=False`` and no target
items, so only the sentinels decide. The same simulated rounds are judged under every
mode, so rows differ by the mode alone. Seeded; about two minutes on one core.

    python bench/sentinel_gate_power.py [--rounds 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from selfimprove.gate import GateConfig, decide, noninferiority_binary_size

SUITES = 5
SIZES = (32, 48, 64)
SUITE_MARGINS = (0.15, 0.20, 0.25)
#: column name -> (loss of suite s0, symmetric flip rate)
SCENARIOS = {
    "null 10%": (0.0, 0.10),
    "null 20%": (0.0, 0.20),
    "rej 15pt": (0.15, 0.10),
    "rej 20pt": (0.20, 0.10),
}
#: no target items and no other skills in the simulated rounds: only the sentinels decide
SENTINELS_ONLY: dict[str, Any] = {"require_target_gain": False, "collateral": "off"}


def configs() -> dict[str, GateConfig]:
    """The rows' gate configurations (per items-per-suite), by row label."""
    out = {
        f"pooled_and_suite m={m:.2f}": GateConfig(
            sentinel_mode="pooled_and_suite", suite_margin=m, **SENTINELS_ONLY
        )
        for m in SUITE_MARGINS
    }
    out["pooled (old default)"] = GateConfig(sentinel_mode="pooled", **SENTINELS_ONLY)
    out["per_suite m=0.10"] = GateConfig(sentinel_mode="per_suite", **SENTINELS_ONLY)
    return out


def simulate_round(
    rng: np.random.Generator, commons: list[list[dict[str, Any]]], loss: float, flips: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Before/after records of one round: suite s0 loses ``loss``, all flip ``flips``.

    ``commons``: per suite, each item's record fields but ``correct``.
    """
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for k, common in enumerate(commons):
        n = len(common)
        pb, pc = flips / 2 + (loss if k == 0 else 0.0), flips / 2
        u = rng.random(n)
        kept = rng.random(n) < 0.6
        x = np.where(u < pb, True, np.where(u < pb + pc, False, kept)).tolist()
        y = np.where(u < pb, False, np.where(u < pb + pc, True, kept)).tolist()
        before += [{**c, "correct": v} for c, v in zip(common, x, strict=True)]
        after += [{**c, "correct": v} for c, v in zip(common, y, strict=True)]
    return before, after


def item_fields(n: int) -> list[list[dict[str, Any]]]:
    """The record fields but ``correct`` of ``SUITES`` suites of ``n`` items."""
    return [
        [
            {
                "suite": f"s{k}",
                "sample_id": str(i),
                "category": "c",
                "mode": "generate",
                "format_ok": True,
                "input_hash": f"s{k}-{i}",
            }
            for i in range(n)
        ]
        for k in range(SUITES)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1000, help="simulated rounds per cell")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfgs = configs()
    suites = [f"s{k}" for k in range(SUITES)]
    rates: dict[tuple[str, int], dict[str, float]] = {}
    for n in SIZES:
        for j, (col, (loss, flips)) in enumerate(SCENARIOS.items()):
            rng = np.random.default_rng([args.seed, n, j])
            accepted = dict.fromkeys(cfgs, 0)
            commons = item_fields(n)
            for _ in range(args.rounds):
                before, after = simulate_round(rng, commons, loss, flips)
                for label, cfg in cfgs.items():
                    d = decide(
                        before, after, target_categories=[], sentinel_suites=suites, config=cfg
                    )
                    accepted[label] += d.accepted
            for label in cfgs:
                acc = accepted[label] / args.rounds
                rates.setdefault((label, n), {})[col] = acc if col.startswith("null") else 1 - acc
    se = 0.5 / math.sqrt(args.rounds)
    print(
        f"{SUITES} binary sentinel suites, {args.rounds} simulated rounds per cell, seed "
        f"{args.seed}, alpha 0.05, sentinel_margin 0.10 (Monte-Carlo SE <= {se:.3f})"
    )
    head = f"{'mode':<26} {'items':>5} " + " ".join(f"{c:>9}" for c in SCENARIOS) + f" {'size':>6}"
    print(head)
    print("-" * len(head))
    for label, cfg in cfgs.items():
        for n in SIZES:
            r = rates[(label, n)]
            margin = {"pooled_and_suite": cfg.suite_margin, "per_suite": cfg.sentinel_margin}
            m = margin.get(cfg.sentinel_mode)
            size = f"{noninferiority_binary_size(n, m):6.3f}" if m is not None else f"{'-':>6}"
            cells = " ".join(f"{r[c]:9.3f}" for c in SCENARIOS)
            print(f"{label:<26} {n:>5} {cells} {size}")
    new = "pooled_and_suite m=0.20"
    old = "pooled (old default)"
    parts = [
        f"{n} items: accepts {rates[(new, n)]['null 10%']:.0%}/{rates[(new, n)]['null 20%']:.0%} "
        f"of unchanged rounds, rejects {rates[(new, n)]['rej 15pt']:.0%}/"
        f"{rates[(new, n)]['rej 20pt']:.0%} of 15/20-point one-suite losses "
        f"(old pooled: {rates[(old, n)]['rej 15pt']:.0%}/{rates[(old, n)]['rej 20pt']:.0%})"
        for n in (32, 48)
    ]
    print(
        "summary: default pooled_and_suite, suite_margin 0.20 at 10%/20% flips: "
        + "; ".join(parts)
        + f". [{time.perf_counter() - t0:.0f} s]"
    )


if __name__ == "__main__":
    main()
