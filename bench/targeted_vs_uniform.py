"""Experiment: one round of targeted vs uniform training data, side by side, per learning rate.

The loop's random arm kept matching the targeted arm on the targeted categories. This script
isolates one round of training from the rest of the loop (no gate, no replay, no self-data):
for each learning rate it trains the embedded model twice from the base with the same budget,

* ``targeted``: ``--n`` templated items split over ``--categories`` (worked solutions), and
* ``uniform``: ``--n`` items drawn uniformly over every skill category (the random arm's draw),

both with the loop's 40 general-text KL anchors, and evaluates base and candidates on fresh
items of the categories (``--n-eval`` each, never trained on) and on sentinel_math. It prints
solved counts per category and the pooled gain of each arm over the base, side by side.

    python bench/targeted_vs_uniform.py [--lrs 2e-4,1e-3] [--n 128] [--n-eval 24]

Measured on the 2-core CPU (2026-11-26, count_words, count_letters, units_mass, units_length):
lr 2e-4: base 3/96, targeted 10/96, uniform 3/96; lr 1e-3: targeted 29/96, uniform 18/96.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from selfimprove.engine import Engine
from selfimprove.evaluate import evaluate_items, resolve_suites
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.synth import random_control_samples, templated_variations
from selfimprove.synth.templated import find_task
from selfimprove.synth.worked import training_completion
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.tasks.suites import anchor_passages
from selfimprove.train import TrainConfig, TrainExample, train_lora

DEFAULT_CATS = "counting/count_words,counting/count_letters,units/units_mass,units/units_length"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--categories", default=DEFAULT_CATS, help="suite/category,...")
    ap.add_argument("--lrs", default="2e-4,1e-3", help="learning rates to compare")
    ap.add_argument("--n", type=int, default=128, help="training items per arm")
    ap.add_argument("--n-eval", type=int, default=24, help="fresh eval items per category")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    cats = [tuple(c.split("/", 1)) for c in args.categories.split(",")]
    rt = resolve_runtime()
    base = load_model(None)
    registry = NeverTrainRegistry()
    items = []
    for su, c in cats:
        task = find_task(su, c)
        xs = task.samples(args.n_eval, 777)
        registry.add(xs, source="bench")
        items += [(su, task, x) for x in xs]
    for suite in resolve_suites(["sentinels"]):
        if suite.name == "sentinel_math":
            items += [(suite.name, t, x) for t in suite.tasks for x in t.samples(32, 777)]

    def solved(adapter: str | None) -> dict[str, tuple[int, int]]:
        lm = base
        if adapter is not None:
            clone = LoadedModel(
                copy.deepcopy(base.model), base.tokenizer, base.name, base.source, base.weights_hash
            )
            lm = attach_adapter(clone, adapter, merge=True)
        out: dict[str, list[int]] = {}
        for r in evaluate_items(Engine(lm, runtime=rt), items, reference_nll=False):
            key = "sentinel_math" if r.suite == "sentinel_math" else r.category
            a = out.setdefault(key, [0, 0])
            a[0] += bool(r.correct)
            a[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    skills = [s.name for s in resolve_suites(["skills"])]
    anchors = [
        TrainExample(prompt=p, completion=c, source="anchor", id=f"anchor/{i}", anchor=True)
        for i, (p, c) in enumerate(anchor_passages()[:40])
    ]
    data = {
        "targeted": templated_variations(cats, args.n, seed_key="probe-t", registry=registry)[0],
        "uniform": random_control_samples(
            args.n, seed_key="probe-r", registry=registry, suites=skills
        )[0],
    }
    columns: dict[str, dict[str, tuple[int, int]]] = {"base": solved(None)}
    with tempfile.TemporaryDirectory() as tmp:
        for lr in [float(x) for x in args.lrs.split(",")]:
            for arm, drawn in data.items():
                ex = [
                    TrainExample(prompt=s.input, completion=training_completion(t, s), id=s.id)
                    for _su, t, s in drawn
                ] + anchors
                cfg = TrainConfig(learning_rate=lr, epochs=args.epochs, seed=0)
                t0 = time.time()
                res = train_lora(base, ex, cfg, Path(tmp) / f"{arm}-{lr}", runtime=rt,
                                 never_train=registry)  # fmt: skip
                name = f"{arm} lr={lr:g}"
                columns[name] = solved(str(Path(tmp) / f"{arm}-{lr}"))
                print(f"{name}: trained {time.time() - t0:.0f} s, loss "
                      f"{res.losses[0]:.2f} -> {res.losses[-1]:.2f}", flush=True)  # fmt: skip
    names = list(columns)
    print("\n" + "category".ljust(16) + "".join(n.rjust(20) for n in names))
    for key in columns["base"]:
        row = "".join(f"{columns[n][key][0]}/{columns[n][key][1]}".rjust(20) for n in names)
        print(key.ljust(16) + row)
    target_keys = [c for _s, c in cats]
    b = sum(columns["base"][k][0] for k in target_keys)
    tot = sum(columns["base"][k][1] for k in target_keys)
    print("pooled targets".ljust(16) + "".join(
        f"{sum(columns[n][k][0] for k in target_keys)}/{tot}".rjust(20) for n in names))  # fmt: skip
    for lr in args.lrs.split(","):
        gt = sum(columns[f"targeted lr={float(lr):g}"][k][0] for k in target_keys) - b
        gu = sum(columns[f"uniform lr={float(lr):g}"][k][0] for k in target_keys) - b
        ratio = f"{gt / gu:.2f}" if gu > 0 else "undefined (uniform gain <= 0)"
        print(f"lr={float(lr):g}: gain targeted {100 * gt / tot:+.1f} pts, "
              f"uniform {100 * gu / tot:+.1f} pts, ratio {ratio}")  # fmt: skip


if __name__ == "__main__":
    main()
