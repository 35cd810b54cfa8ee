"""Benchmark: LoRA training on padded vs packed micro-batches, same data, side by side.

Builds a loop-like training set on the embedded model: skill items drawn uniformly across all
families with their worked-solution completions (the random arm's data) plus the general-text
KL anchors the loop adds, then trains it twice with the same seed and settings, once with
right-padded batches (``pack: false``) and once packed (``pack: true``, the default). Prints
the padding efficiency of the batches (real tokens / computed tokens), seconds for each, the
speed ratio, and how close the two loss curves are (they should agree up to bf16 rounding:
the same examples in the same steps, the same loss).

    python bench/train_packing.py [--n 96] [--anchors 24] [--epochs 1] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from selfimprove.engine import Engine
from selfimprove.models import load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.synth.templated import random_control_samples
from selfimprove.synth.worked import training_completion
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.tasks.suites import anchor_passages
from selfimprove.train import TrainConfig, TrainExample, build_dataset, train_lora


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=96, help="supervised examples")
    ap.add_argument("--anchors", type=int, default=24, help="general-text KL anchors")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rt = resolve_runtime()
    loaded = load_model(args.model)
    drawn, _ = random_control_samples(
        args.n, seed_key=f"bench:{args.seed}", registry=NeverTrainRegistry()
    )
    examples = [
        TrainExample(
            prompt=s.input if isinstance(s.input, str) else list(s.input),
            completion=training_completion(t, s),
            id=s.id,
        )
        for _su, t, s in drawn
    ]
    examples += [
        TrainExample(prompt=p, completion=c, id=f"anchor/{i}", anchor=True)
        for i, (p, c) in enumerate(anchor_passages()[: args.anchors])
    ]
    random.Random(args.seed).shuffle(examples)

    eng = Engine(loaded, runtime=rt)
    ds = build_dataset(
        examples,
        loaded.tokenizer,
        eng.format_prompt,
        256,
        add_special_tokens=not eng.use_chat_template,
    )
    lengths = [len(r["input_ids"]) for r in ds.rows]
    # padding efficiency under random order (the trainer's sampler), averaged over 20 orders
    rng = random.Random(0)
    real = computed = 0
    for _ in range(20):
        order = rng.sample(lengths, len(lengths))
        for i in range(0, len(order), args.batch_size):
            b = order[i : i + args.batch_size]
            real += sum(b)
            computed += max(b) * len(b)
    print(
        f"{len(examples)} examples ({args.anchors} anchors), {sum(lengths)} tokens, "
        f"mean {sum(lengths) / len(lengths):.0f} / max {max(lengths)} per example; "
        f"padding efficiency of random batches of {args.batch_size}: {real / computed:.2f}"
    )
    print(f"runtime: {rt.describe()}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (one-time allocations and kernel selection) so neither timing pays for it
        train_lora(loaded, examples[:16], TrainConfig(epochs=1), Path(tmp) / "warm", runtime=rt)
        for name, pack in (("padded", False), ("packed", True)):
            cfg = TrainConfig(
                epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, pack=pack
            )
            t = time.perf_counter()
            res = train_lora(loaded, examples, cfg, Path(tmp) / name, runtime=rt)
            secs = time.perf_counter() - t
            assert res.packed == pack, (name, res.packed)
            results[name] = (secs, res.losses)
            print(
                f"{name:7s} {secs:7.1f} s  final loss {res.final_loss:.4f}  steps {len(res.losses)}"
            )
    (t_pad, l_pad), (t_pack, l_pack) = results["padded"], results["packed"]
    worst = max(abs(a - b) for a, b in zip(l_pad, l_pack, strict=True))
    mean_loss = sum(l_pad) / len(l_pad)
    print(
        f"speed-up packed vs padded: {t_pad / t_pack:.2f}x  "
        f"(padded {t_pad:.1f} s, packed {t_pack:.1f} s)"
    )
    print(f"loss curves: max |padded - packed| = {worst:.4f} (mean loss {mean_loss:.3f})")


if __name__ == "__main__":
    main()
