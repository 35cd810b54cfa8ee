"""The loop's phases, one function each, over one :class:`LoopContext`.

``baseline`` and ``replay`` run once per run (``r0/…``); every round of every arm runs
``weak_areas`` → ``data`` → ``train`` → ``evaluate`` → ``gate`` (:func:`run_round`). Each
phase writes its artifact atomically and then marks itself done in ``state.json``; a
resumed run skips finished phases and evaluation resumes item by item, so a kill at any point
loses at most one chunk of evaluation or one training run. The curriculum and the strategy
controller reuse these functions with their own contexts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.engine import Engine
from selfimprove.evaluate import (
    EvalRecord,
    Item,
    aggregate,
    evaluate_resumable,
)
from selfimprove.loop.context import LoopContext, step_progress
from selfimprove.loop.records import ArmRound, BehaviorDiff, FlaggedRegion, TrainRound
from selfimprove.loop.split import load_or_make_split
from selfimprove.synth import (
    assemble,
    random_control_samples,
    self_generated_data,
    templated_variations,
)
from selfimprove.train import TrainExample
from selfimprove.weakness import rank_weak_areas, stalled_targets

log = logging.getLogger(__name__)


def _key(r: EvalRecord | dict[str, Any]) -> tuple[str, str]:
    if isinstance(r, dict):
        return (r["suite"], r["sample_id"])
    return (r.suite, r.sample_id)


def evaluate_phase(
    ctx: LoopContext,
    name: str,
    engine: Engine,
    items: Sequence[Item],
    *,
    reference_nll: bool = True,
) -> list[EvalRecord]:
    """Evaluate ``items`` into ``<name>.jsonl`` in chunks, skipping items already stored.

    ``reference_nll=False`` skips the gold answer's NLL of generate-mode items (one more
    forward pass each), which only the weak-area ranking reads.
    """
    return evaluate_resumable(
        engine,
        items,
        ctx.store,
        ctx.run_id,
        f"{name}.jsonl",
        ctx.cfg.generation,
        seed=ctx.lcfg.seed,
        hook=ctx.hook,
        reference_nll=reference_nll,
        planned=ctx.items,
    )


def _records(ctx: LoopContext, name: str) -> list[EvalRecord]:
    return [EvalRecord.model_validate(r) for r in ctx.store.read_records(ctx.run_id, name)]


# --------------------------------------------------------------------------- once per run


def baseline(ctx: LoopContext) -> None:
    """The run's item split (``split.json``), then the base model on all the fixed evaluation
    items, both halves (``eval_r0_base.jsonl``)."""
    t = time.time()
    ctx.split = load_or_make_split(
        ctx.run_dir,
        ctx.items,
        ctx.lcfg.seed,
        sentinel_suites=ctx.sentinel_names,
        selection_fraction=ctx.lcfg.selection_fraction,
        started=ctx.phases.done("r0/baseline"),
    )
    ctx.hook.phase("Evaluation items: " + ctx.split.describe())
    ctx.hook.phase("Baseline evaluation")
    ctx.baseline = evaluate_phase(ctx, "eval_r0_base", ctx.engine_for(None), ctx.items)
    if not ctx.phases.done("r0/baseline"):
        ctx.store.write_json(
            ctx.run_id,
            "metrics_r0_base.json",
            [m.model_dump(mode="json") for m in aggregate(ctx.baseline)],
        )
        ctx.phases.mark("r0/baseline")
    ctx.baseline_seconds = time.time() - t


def replay(ctx: LoopContext) -> None:
    """Self-distillation replay rows: the base model's own verified-correct answers.

    Draws ``3n`` fresh, non-evaluation items uniformly across the skill suites, lets the
    base model answer them greedily (records in ``replay_eval.jsonl``, resumable) and keeps up
    to ``n`` correct answers as training rows. Training on them anchors what the model already
    does right, so a round's targeted data cannot silently rewrite it (the sentinel drop of the
    first real runs); it cannot raise accuracy on those items, only keep it.
    """
    n = ctx.lcfg.replay
    if not n:
        return
    if not ctx.phases.done("r0/replay"):
        ctx.hook.phase(f"Replay: base-model answers on {3 * n} fresh skill items")
        items, _f = random_control_samples(
            3 * n,
            seed_key=f"replay:{ctx.lcfg.seed}",
            registry=ctx.registry,
            suites=ctx.skill_names,
        )
        recs = evaluate_phase(ctx, "replay_eval", ctx.engine_for(None), items)
        rows = assemble.replay_rows(recs, items, n)
        funnel = ctx.phases.state.replay_funnel
        funnel.drawn, funnel.answered, funnel.kept_correct = len(items), len(recs), len(rows)
        ctx.store.write_records(ctx.run_id, "replay.jsonl", map(assemble.to_record, rows))
        ctx.phases.mark("r0/replay")
    ctx.replay_rows = assemble.from_records(ctx.store.read_records(ctx.run_id, "replay.jsonl"))


def restore_arms(ctx: LoopContext) -> None:
    """Each arm's current model: the base, or (resumed) the last accepted adapter's records."""
    ctx.evals = {arm: ctx.baseline for arm in ctx.lcfg.arms}
    for arm in ctx.lcfg.arms:
        cur = ctx.phases.state.current.setdefault(arm, None)
        if cur is not None:
            ctx.evals[arm] = _records(ctx, f"eval_{Path(cur).name}.jsonl")


# --------------------------------------------------------------------------- per round


def run_round(ctx: LoopContext, rnd: int, arm: str) -> ArmRound:
    """One round of one arm: weak areas, data, training, evaluation, gate."""
    ar = ctx.arm_round(rnd, arm)
    ctx.hook.phase(f"Round {rnd} · {arm} arm")
    if not ctx.phases.done(f"{ar.tag}/data"):
        weak_areas(ctx, ar)
        data(ctx, ar)
    rows = assemble.from_records(ctx.store.read_records(ctx.run_id, f"data_{ar.tag}.jsonl"))
    ar.n_train = len(rows)
    if not ctx.phases.done(f"{ar.tag}/train"):
        train(ctx, ar, rows)
    after = evaluate(ctx, ar)
    if not ctx.phases.done(f"{ar.tag}/gate"):
        gate(ctx, ar, after)
    verdict = "ACCEPTED" if ar.accepted else "REJECTED"
    ctx.hook.phase(f"Verdict: {verdict} — " + "; ".join(ar.reasons[:3]))
    if ar.accepted:
        ctx.evals[arm] = after
    ctx.phases.save()
    return ar


def retired_targets(ctx: LoopContext, rnd: int) -> dict[tuple[str, str], str]:
    """Targets of the targeted arm's earlier rounds that gained nothing when trained on."""
    if not ctx.lcfg.weakness.retire_stalled:
        return {}
    out: dict[tuple[str, str], str] = {}
    for r in ctx.phases.state.rounds:
        if r.arm == "targeted" and r.round < rnd:
            for key, why in r.stalled.items():
                s, c = key.split("/", 1)
                out.setdefault((s, c), f"round {r.round}: {why}")
    return out


def weak_areas(ctx: LoopContext, ar: ArmRound) -> None:
    """The round's target categories: the arm's weakest (targeted), the same ones (random).

    The random arm draws its data uniformly, but is judged on the targeted arm's categories.
    """
    if ar.arm != "targeted":
        tgt = ctx.find_round(ar.round, "targeted")
        ar.targets = list(tgt.targets) if tgt is not None else []
        return
    wcfg = ctx.lcfg.weakness
    retired = retired_targets(ctx, ar.round)
    areas = rank_weak_areas(
        ctx.split.select(selection_records(ctx, ar.arm)),
        wcfg,
        exclude_suites=ctx.sentinel_names,
        retired=retired,
    )
    ar.weak_areas = [a for a in areas if a.selected] or [
        a for a in areas if (a.suite, a.category) not in retired
    ][: wcfg.top_k]
    ar.targets = [(a.suite, a.category) for a in ar.weak_areas]
    ctx.hook.phase(
        "Weak areas: "
        + ", ".join(
            f"{s}/{c} ({a.error_rate:.0%})"
            for (s, c), a in zip(ar.targets, ar.weak_areas, strict=True)
        )
        + (
            "; retired (no gain when targeted): " + ", ".join(f"{s}/{c}" for s, c in retired)
            if retired
            else ""
        )
    )


def selection_records(ctx: LoopContext, arm: str) -> list[EvalRecord]:
    """The arm's current model's records, with every selection item scored.

    Candidates are scored on the confirmation half and their targets' selection items only
    (all the gate and retirement need); an accepted model of the targeted arm gets the rest
    of the selection half here, when it is about to choose the next round's targets.
    """
    cur = ctx.phases.state.current.get(arm)
    if cur is None:
        return ctx.evals[arm]
    have = {_key(r) for r in ctx.evals[arm]}
    if any((it[0], it[2].id) not in have for it in ctx.split.select(ctx.items)):
        ctx.hook.phase("Scoring the accepted model on the selection half")
        ctx.evals[arm] = evaluate_phase(
            ctx,
            f"eval_{Path(cur).name}",
            ctx.engine_for(ctx.current_adapter(arm)),
            ctx.split.select(ctx.items),
        )
    return ctx.evals[arm]


def candidate_items(ctx: LoopContext, ar: ArmRound) -> tuple[list[Item], list[Item]]:
    """What a candidate is scored on: ``(confirmation half, selection items)``. The
    confirmation half feeds the gate and the reported gains; the targeted arm's candidates
    are also scored on their targets' selection items (retirement of stalled targets)."""
    want = set(ar.targets) if ar.arm == "targeted" else set()
    conf = ctx.split.confirm(ctx.items)
    sel = [it for it in ctx.split.select(ctx.items) if (it[0], it[2].category) in want]
    if ctx.split.legacy:
        sel = []
    return conf, sel


def _fmt_funnel(f: dict[str, int]) -> str:
    keys = (
        "star_verified",
        "rationalize_verified",
        "critique_verified",
        "variation_parsed_verified",
    )
    return ", ".join(f"{k.split('_')[0]} {f[k]}" for k in keys if k in f) or "no self data"


def data(ctx: LoopContext, ar: ArmRound) -> None:
    """Fresh verified rows for the round (``data_<tag>.jsonl``: earlier rounds' + new).

    Both arms use the same pipeline (templated items, a share rewritten by the arm's current
    model: STaR, critique, variations); only the choice of categories differs.
    """
    t = time.time()
    lcfg, rnd, tag = ctx.lcfg, ar.round, ar.tag
    seed_key = f"train:{lcfg.seed}:{rnd}:{ar.arm}"
    prev = (
        assemble.from_records(ctx.store.read_records(ctx.run_id, f"data_r{rnd - 1}_{ar.arm}.jsonl"))
        if rnd > 1
        else []
    )
    seen = {r.input_hash for r in prev}
    draw = (
        functools.partial(templated_variations, ar.targets)
        if ar.arm == "targeted"
        else functools.partial(random_control_samples, suites=ctx.skill_names)
    )
    n_self = round(lcfg.budget * lcfg.self_data.fraction)
    new, funnel = draw(lcfg.budget, seed_key=seed_key, registry=ctx.registry, seen=seen)
    pool, gold = new[:n_self], new[n_self:]
    self_rows: list[TrainExample] = []
    if pool:
        ctx.hook.phase(
            f"Self-generated data: STaR x{lcfg.self_data.star_k}, critique, "
            f"variations on {len(pool)} fresh items"
        )
        self_rows, ar.self_funnel = self_generated_data(
            ctx.engine_for(ctx.current_adapter(ar.arm)),
            pool,
            n_self,
            lcfg.self_data,
            seed=lcfg.seed + 1000 * rnd,
            registry=ctx.registry,
            seen={assemble.text_key(r) for r in prev},
            batch_size=ctx.cfg.generation.batch_size,
            rnd=rnd,
        )
        short = n_self - len(self_rows)
        if short > 0:  # keep the example budget equal across arms
            more, f2 = draw(short, seed_key=seed_key + ":fill", registry=ctx.registry, seen=seen)
            gold = gold + more
            funnel = funnel.merge(f2)
    ar.funnel = funnel
    new_rows = self_rows + assemble.templated_rows(gold, rnd, worked=lcfg.worked_solutions)
    pairs = assemble.preference_pairs(self_rows, rnd)
    if pairs:
        ctx.store.write_records(ctx.run_id, f"pairs_{tag}.jsonl", pairs)
    rows = prev + new_rows
    ctx.store.write_records(ctx.run_id, f"data_{tag}.jsonl", map(assemble.to_record, rows))
    ar.seconds["data"] = round(time.time() - t, 1)
    ctx.hook.phase(
        f"Targeted data: {len(self_rows)} self-generated + "
        f"{len(new_rows) - len(self_rows)} templated new "
        f"({_fmt_funnel(ar.self_funnel)}); {len(rows)} accumulated"
    )
    ctx.phases.mark(f"{tag}/data")


def train(ctx: LoopContext, ar: ArmRound, rows: list[TrainExample]) -> None:
    """LoRA from the base model on the accumulated rows + replay + text anchors."""
    from selfimprove.train import apply_weight_policy, train_lora

    t = time.time()
    lcfg, train_cfg = ctx.lcfg, ctx.lcfg.train
    # replay leaves out the round's targets: it must not anchor what we want to move
    target_cats = {c for _s, c in ar.targets}
    replay_now = [r for r in ctx.replay_rows if r.category not in target_cats]
    examples = assemble.round_examples(
        rows, replay_now, lcfg.anchor_text, replay_as_anchor=lcfg.replay_loss == "kl"
    )
    examples = apply_weight_policy(
        ctx.base,
        examples,
        train_cfg,
        runtime=ctx.runtime,
        batch_size=ctx.cfg.generation.batch_size,
        system_prompt=ctx.cfg.model.system_prompt,
        prompt_format=ctx.cfg.model.prompt_format,
    )
    keep_rounds = (
        {
            r.round
            for r in ctx.phases.state.rounds
            if r.arm == ar.arm and r.accepted and r.round < ar.round
        }
        if lcfg.keep_accepted_rows
        else set()
    )
    earlier = assemble.earlier_flags(rows, ar.round, keep_rounds)
    earlier += [False] * (len(examples) - len(rows))  # replay, text anchors
    passes, round_cfg, n_old = assemble.schedule_passes(
        examples,
        earlier,
        train_cfg,
        lcfg.earlier_data_passes,
        lcfg.earlier_data_rows,
        seed_key=f"{lcfg.seed}:{ar.tag}",
    )
    ctx.hook.phase(
        f"Training LoRA on {len(examples) - sum(earlier) + n_old} examples"
        + (
            f" ({n_old} of {sum(earlier)} earlier "
            f"{'rejected ' if lcfg.keep_accepted_rows else ''}rounds' rows × "
            f"{lcfg.earlier_data_passes or train_cfg.epochs}, the rest × {train_cfg.epochs})"
            if round_cfg is not train_cfg
            else ""
        )
    )
    res = train_lora(
        ctx.base,
        passes,
        round_cfg,
        ctx.adapter_dir(ar),
        runtime=ctx.runtime,
        never_train=ctx.registry,
        progress=step_progress(ctx.hook, "train", fault_point=f"{ar.tag}/train"),
        system_prompt=ctx.cfg.model.system_prompt,
        prompt_format=ctx.cfg.model.prompt_format,
    )
    ar.train = TrainRound(
        **res.model_dump(),
        n_distinct=len(examples),
        n_earlier=sum(earlier),
        n_earlier_used=n_old,
        n_replay=len(replay_now),
        n_anchor_text=len(assemble.anchor_rows(lcfg.anchor_text)),
    )
    ar.seconds["train"] = round(time.time() - t, 1)
    ctx.phases.mark(f"{ar.tag}/train")


def evaluate(ctx: LoopContext, ar: ArmRound) -> list[EvalRecord]:
    """The candidate on the fixed items it is judged on (``eval_<tag>.jsonl``,
    :func:`candidate_items`)."""
    t = time.time()
    ctx.hook.phase("Post-training evaluation")
    engine = ctx.engine_for(str(ctx.adapter_dir(ar)))
    conf, sel = candidate_items(ctx, ar)
    # the gate does not read a generate item's gold-answer NLL; ranking (selection) does
    after = evaluate_phase(ctx, f"eval_{ar.tag}", engine, conf, reference_nll=ctx.split.legacy)
    if sel:
        after = evaluate_phase(ctx, f"eval_{ar.tag}", engine, sel)
    ar.seconds["eval"] = ar.seconds.get("eval", 0.0) + round(time.time() - t, 1)
    return after


def gate(ctx: LoopContext, ar: ArmRound, after: list[EvalRecord]) -> None:
    """Paired decision against the arm's current model on the confirmation half; accepted
    adapters become current. Retirement compares the targets' selection items."""
    from selfimprove.gate import decide

    lcfg, split = ctx.lcfg, ctx.split
    targets = ar.targets or [(a.suite, a.category) for a in ar.weak_areas]
    decision = decide(
        split.confirm(ctx.evals[ar.arm]),
        split.confirm(after),
        target_categories=targets,
        sentinel_suites=ctx.sentinel_names,
        config=lcfg.gate,
        train_losses=ar.train.losses if ar.train is not None else None,
    )
    ar.gate, ar.accepted = decision, decision.accepted
    if ar.arm == "targeted":
        stalled = stalled_targets(
            split.select(ctx.evals[ar.arm]), split.select(after), targets, lcfg.weakness.metric
        )
        ar.stalled = {f"{s}/{c}": why for (s, c), why in stalled.items()}
    adapter = str(ctx.adapter_dir(ar))
    if lcfg.behavior_diff and decision.accepted:
        ar.diff = behavior_diff(
            ctx, ctx.engine_for(ctx.current_adapter(ar.arm)), ctx.engine_for(adapter)
        )
        if ar.diff.flagged and lcfg.behavior_action == "reject":
            decision.accepted = ar.accepted = False
            decision.reasons.append("rejected: " + ar.diff.line)
        else:
            decision.reasons.append(("warning: " if ar.diff.flagged else "ok: ") + ar.diff.line)
    elif lcfg.behavior_diff:
        decision.reasons.append("behavior diff: not run (the gate rejected the round)")
    if decision.accepted:
        ctx.phases.state.current[ar.arm] = f"adapters/{ar.tag}"  # relative to the run folder
    ctx.phases.mark(f"{ar.tag}/gate")


def behavior_diff(ctx: LoopContext, engine_a: Engine, engine_b: Engine) -> BehaviorDiff:
    """Where does the candidate behave differently from the arm's model? (sentinel families)"""
    from selfimprove.diff import DiffConfig, detect_changes, regions_from_suites

    lcfg = ctx.lcfg
    regions = [
        r
        for r in regions_from_suites(ctx.sentinels, 16, seed=lcfg.seed + 7919, by="suite")
        if r.items and all(getattr(it.task, "mode", "generate") != "nll" for it in r.items)
    ]
    res = detect_changes(
        engine_a,
        engine_b,
        regions,
        DiffConfig(n_per_region=16, budget=lcfg.behavior_diff, max_new_tokens=24, seed=lcfg.seed),
        phase=lambda text: ctx.hook.phase("Behavior diff: " + text),
    )
    flagged = [
        FlaggedRegion(
            region=r.region,
            q=r.q_value,
            stat=(r.changed_stats or [r.top_stat])[0],
            label=r.label.text if r.label else "",
        )
        for r in res.flagged
    ]
    role = "rejects the round" if lcfg.behavior_action == "reject" else "flags only"
    line = (
        f"behavior diff ({role}) vs the arm's model on "
        f"{len(regions)} sentinel families, {res.cost.samples_per_model} samples/model: "
        + (
            ", ".join(f"{f.region} changed ({f.stat}, q={f.q:.3g})" for f in flagged)
            if flagged
            else "no region changed at q=0.1"
        )
    )
    return BehaviorDiff(flagged=flagged, line=line, samples_per_model=res.cost.samples_per_model)
