"""Benchmark: the loop's fixed evaluation set, old vs new generation settings, one process.

`selfimprove run` evaluates every candidate on the same fixed items (32 per skill suite and
per sentinel suite: 448 on the default config). This script evaluates them twice on the same
model, side by side:

* old: ``generation.batch_size`` 32 and every item generated to the run's cap (96 tokens);
* new: the current ``GenerationConfig().batch_size`` and the tasks' own caps (refusal and
  benign-control replies stop at 32 tokens, ``tasks.suites.REFUSAL_MAX_NEW_TOKENS``).

It prints wall time, generated tokens and accuracy per setting, the speed ratio, and how many
items got the same verdict (greedy decoding; batch composition changes bf16 rounding, so a
few replies differ even where nothing else does).

    python bench/eval_speed.py [--adapter RUN/adapters/r1_targeted] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from selfimprove.config import GenerationConfig
from selfimprove.engine import Engine
from selfimprove.evaluate import evaluate_items
from selfimprove.loop import LoopConfig, evaluation_plan
from selfimprove.models import attach_adapter, load_model
from selfimprove.runtime import resolve_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--adapter", default=None, help="PEFT adapter folder (e.g. a loop round's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lcfg = LoopConfig(seed=args.seed)
    _skills, _sentinels, plan = evaluation_plan(lcfg)
    items = [(su.name, t, x) for su, t, xs in plan for x in xs]
    uncapped = [(s, dataclasses.replace(t, max_new_tokens=None), x) for s, t, x in items]

    loaded = load_model(args.model)
    if args.adapter:
        loaded = attach_adapter(loaded, args.adapter)
    eng = Engine(loaded, runtime=resolve_runtime(None, "auto"))
    gen = GenerationConfig()
    settings = {
        "old (batch 32, no task caps)": (uncapped, 32),
        f"new (batch {gen.batch_size}, task caps)": (items, gen.batch_size),
    }
    results = {}
    for name, (its, bs) in settings.items():
        t = time.perf_counter()
        recs = evaluate_items(eng, its, max_new_tokens=gen.max_new_tokens, batch_size=bs)
        secs = time.perf_counter() - t
        results[name] = (secs, recs)
        scored = [r for r in recs if r.correct is not None]
        acc = sum(bool(r.correct) for r in scored) / len(scored)
        toks = sum(r.n_tokens or 0 for r in recs)
        print(
            f"{name:32s} {secs:7.1f} s  {toks:6d} tokens  accuracy {acc:.3f}  ({len(recs)} items)"
        )
    (t_old, r_old), (t_new, r_new) = results.values()
    same = sum(a.correct == b.correct for a, b in zip(r_old, r_new, strict=True))
    print(f"speed-up old/new: {t_old / t_new:.2f}x; same verdict on {same}/{len(r_old)} items")


if __name__ == "__main__":
    main()
