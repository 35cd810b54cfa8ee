"""A/B of one loop round: retrain a stored round's training set under variants, side by side.

Rebuilds the training set of one round/arm of a finished `selfimprove run` as the loop does
(accumulated data + replay rows outside the round's targets as KL anchors + text anchors),
trains it once per variant (``grouped:SEED`` = length-grouped steps, ``random:SEED`` = random
order; SEED = LoRA/data seed), and scores each adapter on the run's fixed target items,
sentinel_math and general_nll (accuracy, accuracy, mean NLL per token).

    python bench/round_ab.py RUN_DIR r2_targeted grouped:1,random:1,grouped:2,random:2 OUT_DIR
"""

import json
import sys
import time
from pathlib import Path

from selfimprove.engine import Engine
from selfimprove.evaluate import evaluate_items, is_solved, plan_items, resolve_suites
from selfimprove.loop import LoopConfig, with_adapter
from selfimprove.models import load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.store import RunStore
from selfimprove.synth import assemble
from selfimprove.train import train_lora

run = Path(sys.argv[1])
tag = sys.argv[2]  # e.g. r2_targeted
variants = sys.argv[3].split(",")  # e.g. grouped:1,random:1
out = Path(sys.argv[4])
state = json.loads((run / "state.json").read_text())
rnd, arm = int(tag[1]), tag.split("_")[1]
ar = next(r for r in state["rounds"] if r["round"] == rnd and r["arm"] == arm)
targets = {tuple(t) for t in ar["targets"]}
cfg = json.loads((run / "config.json").read_text())
lcfg = LoopConfig(**cfg["loop"])
store = RunStore(run.parent.parent)
rows = assemble.from_records(store.read_records(run.name, f"data_{tag}.jsonl"))
replay = assemble.from_records(store.read_records(run.name, "replay.jsonl"))
tcats = {c for _s, c in targets}
# the loop's own assembly (selfimprove.loop.phases.train), without the pass schedule
examples = assemble.round_examples(
    rows, [r for r in replay if r.category not in tcats], lcfg.anchor_text, replay_as_anchor=True
)
print(tag, "examples", len(examples), "targets", sorted(targets), flush=True)

rt = resolve_runtime(None, "auto")
base = load_model("embedded")
plan = plan_items(resolve_suites(lcfg.skill_suites), lcfg.eval_n, lcfg.seed) + plan_items(
    resolve_suites(["sentinel_math", "general_nll"]), lcfg.sentinel_n, lcfg.seed
)
items = [
    (su.name, t, x)
    for su, t, xs in plan
    for x in xs
    if (su.name, x.category) in targets or su.name in ("sentinel_math", "general_nll")
]
print("eval items", len(items), flush=True)


def score(lm):
    recs = evaluate_items(Engine(lm, runtime=rt), items, max_new_tokens=96, batch_size=128)
    tgt = [r for r in recs if (r.suite, r.category) in targets]
    sm = [r for r in recs if r.suite == "sentinel_math"]
    nll = [r.ref_nll for r in recs if r.suite == "general_nll"]
    return (
        sum(is_solved(r, "correct") for r in tgt) / len(tgt),
        sum(is_solved(r, "correct") for r in sm) / len(sm),
        sum(nll) / len(nll),
    )


t0, s0, n0 = score(base)
print(f"base       target {t0:.3f} sentinel_math {s0:.3f} general_nll {n0:.4f}", flush=True)
for v in variants:
    mode, seed = v.split(":")
    tc = lcfg.train.model_copy(update={"seed": int(seed), "group_by_length": mode == "grouped"})
    t = time.time()
    res = train_lora(base, examples, tc, out / v.replace(":", "_"), runtime=rt)
    secs = time.time() - t
    lm = with_adapter(base, str(out / v.replace(":", "_")))
    tv, sv, nv = score(lm)
    print(
        f"{v:10s} train {secs:.0f}s loss {res.final_loss:.3f}  target {tv:.3f} "
        f"sentinel_math {sv:.3f} general_nll {nv:.4f}",
        flush=True,
    )
