"""The closed loop: evaluate -> weak areas -> targeted data -> LoRA -> re-evaluate -> gate.

One ``selfimprove run`` is R rounds x two arms with the same example budget:

* ``targeted``: data from the weak categories of the arm's current accepted model;
* ``random``: the same number of examples drawn uniformly across all skill categories
  (the control that turns "error-driven works" from an assumption into a measurement).

Each round re-trains from the *base* model on the arm's *accumulated* verified data (STaR /
ReST-EM: accumulate, do not replace), evaluates the candidate on the same fixed items as
the baseline, and asks the gate (:mod:`selfimprove.gate`) for a paired decision. Accepted
adapters become the arm's current model; rejected ones are kept for inspection only.

Resume: every phase writes its artifact atomically and then marks itself done in
``state.json``; evaluation phases append records in chunks. ``resume`` skips finished
phases and finished evaluation items, so a kill at any point loses at most one chunk of
evaluation or one training run.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.engine import Engine
from selfimprove.evaluate import (
    EvalRecord,
    Item,
    ProgressHook,
    aggregate,
    evaluate_to_store,
    plan_items,
    register_eval_items,
    resolve_suites,
)
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.store import RunStore, atomic_write_text, collect_provenance
from selfimprove.synth import (
    Funnel,
    SelfDataConfig,
    random_control_samples,
    self_generated_data,
    templated_variations,
)
from selfimprove.synth.self_generated import normalize_text
from selfimprove.synth.worked import training_completion
from selfimprove.tasks.suites import anchor_passages
from selfimprove.weakness import WeakArea, WeaknessConfig, rank_weak_areas, stalled_targets

if TYPE_CHECKING:
    from selfimprove.train import TrainConfig, TrainExample

log = logging.getLogger(__name__)

Arm = Literal["targeted", "random"]
_ARMS: tuple[Arm, ...] = ("targeted", "random")


class LoopConfig(BaseModel):
    """Settings of ``selfimprove run`` (the ``loop:`` section of selfimprove.yaml)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(3, ge=1, le=20, description="Improvement rounds per arm.")
    budget: int = Field(128, ge=4, description="New training examples per round per arm.")
    arms: list[Arm] = Field(default_factory=lambda: list(_ARMS))
    skill_suites: list[str] = Field(default_factory=lambda: ["skills"])
    sentinel_suites: list[str] = Field(default_factory=lambda: ["sentinels"])
    eval_n: int = Field(
        32, ge=4, description="Fixed evaluation items per skill suite (split over categories)."
    )
    sentinel_n: int = Field(32, ge=4, description="Fixed evaluation items per sentinel suite.")
    weakness: WeaknessConfig = Field(default_factory=WeaknessConfig)
    self_data: SelfDataConfig = Field(default_factory=SelfDataConfig)
    replay: int = Field(
        32,
        ge=0,
        description="Self-distillation replay: fresh items from the skill suites answered "
        "correctly by the base model (its own verified outputs), added to every round's "
        "training data in both arms, minus the round's target categories, so that behavior the "
        "round does not target stays in place. 0 turns it off.",
    )
    replay_loss: Literal["kl", "nll"] = Field(
        "kl",
        description="Loss on the replay rows: 'kl' = teacher-forced KL to the base model over "
        "its own answer (pins its whole next-token distribution there), 'nll' = imitate the "
        "answer (also sharpens the model toward it).",
    )
    anchor_text: int = Field(
        40,
        ge=0,
        description="General-text anchors: this many short original passages "
        "(tasks.suites.anchor_passages, disjoint from general_nll's items, same format) added "
        "to every round's training data in both arms with a KL-to-base loss, against the "
        "forgetting that general_nll measures (+0.12 nats/token by round 3 without them). "
        "0 turns it off.",
    )
    worked_solutions: bool = Field(
        True,
        description="Templated completions carry a short verified derivation before the "
        "'Answer:' line (selfimprove.synth.worked) where the family has one; off: 'Answer: X' "
        "only, which taught the model to drop its working and cost sentinel_math accuracy.",
    )
    earlier_data_passes: int | None = Field(
        1,
        ge=1,
        description="Passes over earlier rounds' rows in a round's training. Every round "
        "retrains from the base model on all accumulated data; this round's new rows, the "
        "replay rows and the text anchors get train.epochs passes, rows from earlier rounds "
        "this many (in one shuffled epoch), so training time grows with the new data "
        "rather than with the round number. null = train.epochs passes for every row.",
    )
    earlier_data_rows: int | None = Field(
        128,
        ge=0,
        description="At most this many of the earlier rounds' rows in a round's training, "
        "drawn afresh each round (seeded); with earlier_data_passes this keeps the training "
        "cost of every round after the first the same (a fixed step budget). null = all.",
    )
    keep_accepted_rows: bool = Field(
        False,
        description="Rows added by earlier *accepted* rounds of the arm get train.epochs "
        "passes and are never capped by earlier_data_rows; only rejected rounds' rows are "
        "thinned, so a candidate is not trained on less of what the accepted model learned "
        "from. Costs training time once a round is accepted.",
    )
    behavior_diff: int = Field(
        0,
        ge=0,
        description="Samples per model for a behavior-change check of every candidate against "
        "its arm's current model on the sentinel suites (selfimprove.diff.detect_changes, one "
        "region per suite, BH at q=0.1). Reported next to the gate's reasons, not part of its "
        "decision. 0 turns it off; 24 costs about a minute per candidate on 2 CPU cores.",
    )
    weight_policy: Literal["uniform", "confidence", "inverse"] = "uniform"
    seed: int = 0
    train: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of selfimprove.train.TrainConfig fields."
    )
    gate: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of selfimprove.gate.GateConfig fields."
    )


class ArmRound(BaseModel):
    """What one round of one arm did."""

    round: int
    arm: Arm
    weak_areas: list[WeakArea] = Field(default_factory=list)
    targets: list[tuple[str, str]] = Field(default_factory=list)
    funnel: Funnel = Field(default_factory=Funnel)
    self_funnel: dict[str, int] = Field(default_factory=dict)
    n_train: int = 0
    train: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict)
    diff: dict[str, Any] = Field(default_factory=dict)
    accepted: bool = False
    seconds: dict[str, float] = Field(default_factory=dict)
    #: targets ("suite/category") whose accuracy did not rise in this round's candidate
    stalled: dict[str, str] = Field(default_factory=dict)


class LoopState(BaseModel):
    done: list[str] = Field(default_factory=list)
    replay_funnel: dict[str, int] = Field(default_factory=dict)
    rounds: list[ArmRound] = Field(default_factory=list)
    current: dict[str, str | None] = Field(default_factory=dict)  # arm -> accepted adapter dir


class LoopResult(BaseModel):
    run_id: str
    run_dir: str
    rounds: list[ArmRound]
    summary: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _key(r: EvalRecord | dict[str, Any]) -> tuple[str, str]:
    if isinstance(r, dict):
        return (r["suite"], r["sample_id"])
    return (r.suite, r.sample_id)


class _Phases:
    """Phase bookkeeping in ``state.json`` (atomic rewrite after every phase)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "state.json"
        self.state = (
            LoopState.model_validate_json(self.path.read_text())
            if self.path.is_file()
            else LoopState()
        )

    def done(self, name: str) -> bool:
        return name in self.state.done

    def mark(self, name: str) -> None:
        if name not in self.state.done:
            self.state.done.append(name)
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, self.state.model_dump_json(indent=1))


def _eval_phase(
    store: RunStore,
    run_id: str,
    name: str,
    engine: Engine,
    items: Sequence[Item],
    gen: Any,
    seed: int,
    hook: ProgressHook,
) -> list[EvalRecord]:
    """Evaluate ``items`` into ``<name>.jsonl`` in chunks, skipping items already stored."""
    fname = f"{name}.jsonl"
    path = store.run_dir(run_id) / fname
    have = store.read_records(run_id, fname, skip_corrupt=True) if path.is_file() else []
    done = {_key(r) for r in have}
    todo = [it for it in items if (it[0], it[2].id) not in done]
    hook.start(len(todo), name)
    evaluate_to_store(engine, todo, store, run_id, fname, gen, seed=seed, progress=hook.advance)
    return [
        EvalRecord.model_validate(r) for r in store.read_records(run_id, fname, skip_corrupt=True)
    ]


def _train_row(
    suite: str, s: Any, completion: str, source: str, rnd: int, *, row_id: str | None = None
) -> dict[str, Any]:
    """One training-data row (``data_*.jsonl``, ``replay.jsonl``) for sample ``s``."""
    return {
        "id": row_id or s.id,
        "suite": suite,
        "category": s.category,
        "input_hash": s.input_hash(),
        "prompt": s.input if isinstance(s.input, str) else [m.model_dump() for m in s.input],
        "completion": completion,
        "source": source,
        "round": rnd,
    }


def _schedule_passes(
    examples: list[TrainExample],
    earlier: list[bool],
    cfg: TrainConfig,
    earlier_passes: int | None,
    earlier_rows: int | None = None,
    *,
    seed_key: str = "",
) -> tuple[list[TrainExample], TrainConfig, int]:
    """The examples to train on, the config to train them with, and how many earlier rows.

    Rows not marked ``earlier`` get ``cfg.epochs`` passes. Rows marked ``earlier`` (from
    earlier rounds) get ``earlier_passes`` (``None`` = ``cfg.epochs``), and when there are more
    than ``earlier_rows`` of them only a random ``earlier_rows`` (seeded by ``seed_key``) are
    used. When that changes anything, every example is repeated by its pass count and the
    result is trained for one epoch (one shuffle over all copies, one learning-rate schedule);
    otherwise ``examples`` and ``cfg`` come back unchanged.
    """
    old = [i for i, e in enumerate(earlier) if e]
    keep = set(old)
    if earlier_rows is not None and len(old) > earlier_rows:
        keep = set(random.Random(f"earlier:{seed_key}").sample(old, earlier_rows))
    passes = cfg.epochs if earlier_passes is None else min(earlier_passes, cfg.epochs)
    if not old or (passes == cfg.epochs and len(keep) == len(old)):
        return examples, cfg, len(old)
    out: list[TrainExample] = []
    for i, (ex, is_old) in enumerate(zip(examples, earlier, strict=True)):
        out += [ex] * ((passes if i in keep else 0) if is_old else cfg.epochs)
    return out, cfg.model_copy(update={"epochs": 1}), len(keep)


def _earlier_flags(
    rows: Sequence[dict[str, Any]], rnd: int, keep_rounds: set[int] | frozenset[int] = frozenset()
) -> list[bool]:
    """Which training rows count as "earlier" in round ``rnd`` (thinned by
    :func:`_schedule_passes`): rows added before ``rnd``, except rows of ``keep_rounds`` (the
    arm's accepted rounds under ``keep_accepted_rows``), which train like this round's rows."""
    out = []
    for r in rows:
        k = int(r.get("round", rnd))
        out.append(k < rnd and k not in keep_rounds)
    return out


def _replay_phase(
    store: RunStore,
    run_id: str,
    engine: Engine,
    n: int,
    *,
    suites: Sequence[str],
    registry: Any,
    gen: Any,
    seed: int,
    hook: ProgressHook,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Self-distillation replay rows: the base model's own verified-correct answers.

    Draws ``3n`` fresh, non-evaluation items uniformly across the skill ``suites``, lets the
    base model answer them greedily (records in ``replay_eval.jsonl``, resumable) and keeps up
    to ``n`` correct answers as training rows. Training on them anchors what the model already
    does right, so a round's targeted data cannot silently rewrite it (the sentinel drop of the
    first real runs); it cannot raise accuracy on those items, only keep it.
    """
    items, _f = random_control_samples(
        3 * n, seed_key=f"replay:{seed}", registry=registry, suites=suites
    )
    recs = _eval_phase(store, run_id, "replay_eval", engine, items, gen, seed, hook)
    by_id = {(su, s.id): (su, s) for su, _t, s in items}
    rows: list[dict[str, Any]] = []
    for r in recs:
        if len(rows) >= n:
            break
        if not r.correct or not r.output or (r.suite, r.sample_id) not in by_id:
            continue
        su, s = by_id[(r.suite, r.sample_id)]
        rows.append(_train_row(su, s, r.output, "replay", 0, row_id=f"replay/{s.id}"))
    funnel = {"drawn": len(items), "answered": len(recs), "kept_correct": len(rows)}
    return rows, funnel


def _norm_row(r: dict[str, Any]) -> str:
    p = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
    return normalize_text(p + " " + r["completion"])


def _fmt_funnel(f: dict[str, int]) -> str:
    keys = (
        "star_verified",
        "rationalize_verified",
        "critique_verified",
        "variation_parsed_verified",
    )
    return ", ".join(f"{k.split('_')[0]} {f[k]}" for k in keys if k in f) or "no self data"


def _fault(point: str) -> None:
    """Test-only fault injection: ``SELFIMPROVE_FAULT=kill:<point>`` SIGKILLs this process at
    ``point`` (e.g. ``kill:r1_random/train``), the hardest kill there is (no cleanup runs)."""
    if os.environ.get("SELFIMPROVE_FAULT") == f"kill:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def _step_progress(hook: ProgressHook, name: str, fault: str | None = None) -> Any:
    """Adapt ``progress(step, total)`` callbacks to the hook's start/advance protocol."""
    last = [0]

    def cb(step: int, total: int) -> None:
        if fault is not None:
            _fault(fault)
        if last[0] == 0:
            hook.start(total, name)
        hook.advance(step - last[0])
        last[0] = step

    return cb


def _with_adapter(base: LoadedModel, adapter: str | None) -> LoadedModel:
    if adapter is None:
        return base
    # PEFT injects LoRA layers into the wrapped modules: work on a copy, keep the base clean.
    # Merged: every forward pass of the loop (evaluation, data, reference NLL) runs a plain
    # dense model, like the base's, instead of paying LoRA's per-layer overhead.
    clone = LoadedModel(
        copy.deepcopy(base.model), base.tokenizer, base.name, base.source, base.weights_hash
    )
    return attach_adapter(clone, adapter, merge=True)


def _retired(
    rounds: Sequence[ArmRound], rnd: int, wcfg: WeaknessConfig
) -> dict[tuple[str, str], str]:
    """Targets of the targeted arm's earlier rounds that gained nothing when trained on."""
    if not wcfg.retire_stalled:
        return {}
    out: dict[tuple[str, str], str] = {}
    for r in rounds:
        if r.arm == "targeted" and r.round < rnd:
            for key, why in r.stalled.items():
                s, c = key.split("/", 1)
                out.setdefault((s, c), f"round {r.round}: {why}")
    return out


def _target_accuracy(
    records: Sequence[EvalRecord], targets: Sequence[tuple[str, str]], metric: str
) -> float | None:
    rs = [r for r in records if (r.suite, r.category) in set(targets) and r.correct is not None]
    if not rs:
        return None
    ok = [bool(r.correct and r.format_ok) if metric == "strict" else bool(r.correct) for r in rs]
    return sum(ok) / len(ok)


# --------------------------------------------------------------------------- the loop


def _behavior_diff(
    engine_a: Engine, engine_b: Engine, suites: Sequence[Any], lcfg: LoopConfig, hook: Any
) -> dict[str, Any]:
    """Where does the candidate behave differently from the arm's model? (sentinel families)"""
    from selfimprove.diff import DiffConfig, detect_changes, regions_from_suites

    regions = [
        r
        for r in regions_from_suites(suites, 16, seed=lcfg.seed + 7919, by="suite")
        if r.items and all(getattr(it.task, "mode", "generate") != "nll" for it in r.items)
    ]
    res = detect_changes(
        engine_a,
        engine_b,
        regions,
        DiffConfig(n_per_region=16, budget=lcfg.behavior_diff, max_new_tokens=24, seed=lcfg.seed),
        phase=lambda text: hook.phase("Behavior diff: " + text),
    )
    flagged = [
        {
            "region": r.region,
            "q": r.q_value,
            "stat": r.top_stat,
            "label": r.label.text if r.label else "",
        }
        for r in res.flagged
    ]
    line = (
        "info (not part of the decision): behavior diff vs the arm's model on "
        f"{len(regions)} sentinel families, {res.cost.samples_per_model} samples/model: "
        + (
            ", ".join(f"{f['region']} changed ({f['stat']}, q={f['q']:.3g})" for f in flagged)
            if flagged
            else "no region changed at q=0.1"
        )
    )
    return {"flagged": flagged, "line": line, "samples_per_model": res.cost.samples_per_model}


def check_gate_power(
    plan: Sequence[tuple[Any, Any, Sequence[Any]]], sentinel_names: Sequence[str], gate_cfg: Any
) -> dict[str, float]:
    """Count the binary sentinel items of the plan and ask :func:`selfimprove.gate.gate_power`.

    Raises :class:`ConfigError` (naming the fix) for a gate that could not accept a round
    even if no answer changed; logs and returns the power otherwise.
    """
    from selfimprove.errors import ConfigError
    from selfimprove.gate import gate_power

    n_by_suite: dict[str, int] = defaultdict(int)
    for suite, task, xs in plan:
        if suite.name in sentinel_names and getattr(task, "mode", "generate") != "nll":
            n_by_suite[suite.name] += len(xs)
    try:
        power = gate_power(dict(n_by_suite), gate_cfg)
    except ValueError as e:
        raise ConfigError(
            f"{e} Raise loop.sentinel_n, raise loop.gate.sentinel_margin, or use "
            "loop.gate.sentinel_mode: pooled."
        ) from None
    if power:
        log.info(
            "gate power (no true change): %s",
            ", ".join(f"{k}: {v:.2f}" for k, v in power.items()),
        )
    return power


def run_loop(
    cfg: Any, *, resume: str | None = None, hook: ProgressHook | None = None
) -> LoopResult:
    """Run (or resume) the closed loop described by ``cfg.loop``; returns per-round results."""
    from selfimprove.gate import GateConfig, decide
    from selfimprove.train import TrainConfig, TrainExample, apply_weight_policy, train_lora

    hook = hook or ProgressHook()
    lcfg: LoopConfig = cfg.loop
    store = RunStore(cfg.store.root)
    store.mark_stale_running()
    if resume is not None:
        prev = store.get_run(resume)
        if prev.kind != "run":
            from selfimprove.errors import StoreError

            raise StoreError(f"Run {prev.id} is a {prev.kind!r} run, not a `selfimprove run`.")
        from selfimprove.config import Config

        cfg = Config.model_validate(prev.config)
        lcfg = cfg.loop
    from pydantic import ValidationError

    from selfimprove.config import format_validation_error
    from selfimprove.errors import ConfigError

    # the gate measures the same accuracy that picked the weak areas
    gate_metric = "strict" if lcfg.weakness.metric == "strict" else "correct"
    try:
        train_cfg = TrainConfig(
            **{"seed": lcfg.seed, "weight_policy": lcfg.weight_policy, **lcfg.train}
        )
        gate_cfg = GateConfig(**{"metric": gate_metric, **lcfg.gate})
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(e, "loop.train / loop.gate")
            + "\nFix: correct these keys under loop.train or loop.gate (their fields: "
            "selfimprove.train.TrainConfig, selfimprove.gate.GateConfig)."
        ) from None

    skills = resolve_suites(lcfg.skill_suites)
    sentinels = resolve_suites(lcfg.sentinel_suites)
    plan = plan_items(skills, lcfg.eval_n, lcfg.seed) + plan_items(
        sentinels, lcfg.sentinel_n, lcfg.seed
    )
    items: list[Item] = [(su.name, t, x) for su, t, xs in plan for x in xs]
    sentinel_names = [s.name for s in sentinels]
    check_gate_power(plan, sentinel_names, gate_cfg)

    hook.phase(f"Loading model {cfg.model.name}")
    runtime = resolve_runtime(cfg.runtime.threads, cfg.runtime.dtype)
    base = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)

    registry = register_eval_items(store, plan)

    if resume is not None:
        ctx = store.resume(prev.id)
    else:
        prov = collect_provenance(
            {
                "runtime": runtime.describe(),
                "model_source": base.source,
                "model_hash": base.weights_hash,
            }
        )
        ctx = store.track(
            "run",
            config=cfg.model_dump(mode="json"),
            seed=lcfg.seed,
            model=base.name,
            provenance=prov,
        )

    with ctx as info:
        run_id = info.id
        run_dir = store.run_dir(run_id)
        phases = _Phases(run_dir)
        gen = cfg.generation

        def engine_for(adapter: str | None) -> Engine:
            return Engine(
                _with_adapter(base, adapter), runtime=runtime, system_prompt=cfg.model.system_prompt
            )

        t = time.time()
        hook.phase("Baseline evaluation")
        baseline = _eval_phase(
            store, run_id, "eval_r0_base", engine_for(None), items, gen, lcfg.seed, hook
        )
        if not phases.done("r0/baseline"):
            store.write_json(
                run_id,
                "metrics_r0_base.json",
                [m.model_dump(mode="json") for m in aggregate(baseline)],
            )
            phases.mark("r0/baseline")
        base_secs = time.time() - t
        replay_rows: list[dict[str, Any]] = []
        if lcfg.replay:
            if not phases.done("r0/replay"):
                hook.phase(f"Replay: base-model answers on {3 * lcfg.replay} fresh skill items")
                replay_rows, phases.state.replay_funnel = _replay_phase(
                    store,
                    run_id,
                    engine_for(None),
                    lcfg.replay,
                    suites=[s.name for s in skills],
                    registry=registry,
                    gen=gen,
                    seed=lcfg.seed,
                    hook=hook,
                )
                store.write_records(run_id, "replay.jsonl", replay_rows)
                phases.mark("r0/replay")
            replay_rows = store.read_records(run_id, "replay.jsonl")
        evals: dict[str, list[EvalRecord]] = {arm: baseline for arm in lcfg.arms}
        for arm in lcfg.arms:
            phases.state.current.setdefault(arm, None)
            cur = phases.state.current[arm]
            if cur is not None:  # resumed: the arm's accepted model's records
                name = Path(cur).name
                evals[arm] = [
                    EvalRecord.model_validate(r)
                    for r in store.read_records(run_id, f"eval_{name}.jsonl")
                ]
        by_round = {(r.round, r.arm): r for r in phases.state.rounds}

        for rnd in range(1, lcfg.rounds + 1):
            for arm in lcfg.arms:
                tag = f"r{rnd}_{arm}"
                ar = by_round.get((rnd, arm)) or ArmRound(round=rnd, arm=arm)
                if (rnd, arm) not in by_round:
                    phases.state.rounds.append(ar)
                    by_round[(rnd, arm)] = ar
                hook.phase(f"Round {rnd} · {arm} arm")
                data_file = f"data_{tag}.jsonl"
                # -- weak areas + targeted data
                if not phases.done(f"{tag}/data"):
                    t = time.time()
                    seed_key = f"train:{lcfg.seed}:{rnd}:{arm}"
                    prev_data = (
                        store.read_records(run_id, f"data_r{rnd - 1}_{arm}.jsonl")
                        if rnd > 1
                        else []
                    )
                    seen = {r["input_hash"] for r in prev_data}
                    if arm == "targeted":
                        retired = _retired(phases.state.rounds, rnd, lcfg.weakness)
                        areas = rank_weak_areas(
                            evals[arm],
                            lcfg.weakness,
                            exclude_suites=sentinel_names,
                            retired=retired,
                        )
                        ar.weak_areas = [a for a in areas if a.selected] or [
                            a for a in areas if (a.suite, a.category) not in retired
                        ][: lcfg.weakness.top_k]
                        ar.targets = [(a.suite, a.category) for a in ar.weak_areas]
                        hook.phase(
                            "Weak areas: "
                            + ", ".join(
                                f"{s}/{c} ({a.error_rate:.0%})"
                                for (s, c), a in zip(ar.targets, ar.weak_areas, strict=True)
                            )
                            + (
                                "; retired (no gain when targeted): "
                                + ", ".join(f"{s}/{c}" for s, c in retired)
                                if retired
                                else ""
                            )
                        )
                        draw = functools.partial(templated_variations, ar.targets)
                    else:
                        draw = functools.partial(
                            random_control_samples, suites=[s.name for s in skills]
                        )
                        # the control is judged on the same categories as the targeted arm
                        tgt = by_round.get((rnd, "targeted"))
                        ar.targets = list(tgt.targets) if tgt is not None else []
                    # both arms use the same pipeline; only the choice of categories differs
                    n_self = round(lcfg.budget * lcfg.self_data.fraction)
                    new, funnel = draw(lcfg.budget, seed_key=seed_key, registry=registry, seen=seen)
                    pool, gold = new[:n_self], new[n_self:]
                    self_rows: list[dict[str, Any]] = []
                    pairs: list[dict[str, Any]] = []
                    if pool:
                        hook.phase(
                            f"Self-generated data: STaR x{lcfg.self_data.star_k}, critique, "
                            f"variations on {len(pool)} fresh items"
                        )
                        seen_text = {_norm_row(r) for r in prev_data}
                        kept, ar.self_funnel = self_generated_data(
                            engine_for(phases.state.current.get(arm)),
                            pool,
                            n_self,
                            lcfg.self_data,
                            seed=lcfg.seed + 1000 * rnd,
                            registry=registry,
                            seen=seen_text,
                            batch_size=gen.batch_size,
                        )
                        for k_ in kept:
                            self_rows.append(
                                {
                                    "id": k_.sample_id,
                                    "suite": k_.suite,
                                    "category": k_.category,
                                    "input_hash": k_.input_hash,
                                    "prompt": k_.prompt,
                                    "completion": k_.completion,
                                    "source": k_.source,
                                    "round": rnd,
                                }
                            )
                            if k_.rejected is not None:
                                pairs.append(
                                    {
                                        "prompt": k_.prompt,
                                        "chosen": k_.completion,
                                        "rejected": k_.rejected,
                                        "id": k_.sample_id,
                                        "round": rnd,
                                    }
                                )
                        short = n_self - len(kept)
                        if short > 0:  # keep the example budget equal across arms
                            more, f2 = draw(
                                short, seed_key=seed_key + ":fill", registry=registry, seen=seen
                            )
                            gold = gold + more
                            funnel = funnel.merge(f2)
                    ar.funnel = funnel
                    rows = (
                        prev_data
                        + self_rows
                        + [
                            _train_row(
                                su,
                                s,
                                training_completion(t_, s, worked=lcfg.worked_solutions),
                                "templated",
                                rnd,
                            )
                            for su, t_, s in gold
                        ]
                    )
                    if pairs:
                        store.write_records(run_id, f"pairs_{tag}.jsonl", pairs)
                    store.write_records(run_id, data_file, rows)
                    ar.seconds["data"] = round(time.time() - t, 1)
                    hook.phase(
                        f"Targeted data: {len(self_rows)} self-generated + "
                        f"{len(rows) - len(prev_data) - len(self_rows)} templated new "
                        f"({_fmt_funnel(ar.self_funnel)}); {len(rows)} accumulated"
                    )
                    phases.mark(f"{tag}/data")
                rows = store.read_records(run_id, data_file)
                ar.n_train = len(rows)
                # replay leaves out the round's targets: it must not anchor what we want to move
                target_cats = {c for _s, c in ar.targets}
                replay_now = [r for r in replay_rows if r["category"] not in target_cats]
                adapter_dir = run_dir / "adapters" / tag
                # -- training (from the base model, on the accumulated data)
                if not phases.done(f"{tag}/train"):
                    t = time.time()
                    examples = [
                        TrainExample(
                            prompt=r["prompt"], completion=r["completion"], source=arm, id=r["id"]
                        )
                        for r in rows
                    ] + [
                        TrainExample(
                            prompt=r["prompt"],
                            completion=r["completion"],
                            source="replay",
                            id=r["id"],
                            anchor=lcfg.replay_loss == "kl",
                        )
                        for r in replay_now
                    ]
                    examples += [
                        TrainExample(
                            prompt=p_, completion=c_, source="anchor", id=f"anchor/{i}", anchor=True
                        )
                        for i, (p_, c_) in enumerate(anchor_passages()[: lcfg.anchor_text])
                    ]
                    examples = apply_weight_policy(
                        base,
                        examples,
                        train_cfg,
                        runtime=runtime,
                        batch_size=gen.batch_size,
                        system_prompt=cfg.model.system_prompt,
                    )
                    accepted_rounds = (
                        {
                            r.round
                            for r in phases.state.rounds
                            if r.arm == arm and r.accepted and r.round < rnd
                        }
                        if lcfg.keep_accepted_rows
                        else set()
                    )
                    earlier = _earlier_flags(rows, rnd, accepted_rounds)
                    earlier += [False] * (len(examples) - len(rows))  # replay, text anchors
                    passes, round_cfg, n_old = _schedule_passes(
                        examples,
                        earlier,
                        train_cfg,
                        lcfg.earlier_data_passes,
                        lcfg.earlier_data_rows,
                        seed_key=f"{lcfg.seed}:{tag}",
                    )
                    hook.phase(
                        f"Training LoRA on {len(examples) - sum(earlier) + n_old} examples"
                        + (
                            f" ({n_old} of {sum(earlier)} earlier "
                            f"{'rejected ' if lcfg.keep_accepted_rows else ''}rounds' rows × "
                            f"{lcfg.earlier_data_passes or train_cfg.epochs}, "
                            f"the rest × {train_cfg.epochs})"
                            if round_cfg is not train_cfg
                            else ""
                        )
                    )
                    res = train_lora(
                        base,
                        passes,
                        round_cfg,
                        adapter_dir,
                        runtime=runtime,
                        never_train=registry,
                        progress=_step_progress(hook, "train", fault=f"{tag}/train"),
                        system_prompt=cfg.model.system_prompt,
                    )
                    ar.train = {
                        **res.model_dump(mode="json"),
                        "n_distinct": len(examples),
                        "n_earlier": sum(earlier),
                        "n_earlier_used": n_old,
                        "n_replay": len(replay_now),
                        "n_anchor_text": min(lcfg.anchor_text, len(anchor_passages())),
                    }
                    ar.seconds["train"] = round(time.time() - t, 1)
                    phases.mark(f"{tag}/train")
                # -- post-training evaluation on the same fixed items
                t = time.time()
                hook.phase("Post-training evaluation")
                after = _eval_phase(
                    store,
                    run_id,
                    f"eval_{tag}",
                    engine_for(str(adapter_dir)),
                    items,
                    gen,
                    lcfg.seed,
                    hook,
                )
                ar.seconds["eval"] = ar.seconds.get("eval", 0.0) + round(time.time() - t, 1)
                # -- gate
                if not phases.done(f"{tag}/gate"):
                    targets = ar.targets or [(a.suite, a.category) for a in ar.weak_areas]
                    decision = decide(
                        evals[arm],
                        after,
                        target_categories=targets,
                        sentinel_suites=sentinel_names,
                        config=gate_cfg,
                        train_losses=ar.train.get("losses"),
                    )
                    ar.gate = decision.model_dump(mode="json")
                    ar.accepted = decision.accepted
                    if arm == "targeted":
                        ar.stalled = {
                            f"{s}/{c}": why
                            for (s, c), why in stalled_targets(
                                evals[arm], after, targets, lcfg.weakness.metric
                            ).items()
                        }
                    if lcfg.behavior_diff:
                        ar.diff = _behavior_diff(
                            engine_for(phases.state.current.get(arm)),
                            engine_for(str(adapter_dir)),
                            sentinels,
                            lcfg,
                            hook,
                        )
                        ar.gate["reasons"].append(ar.diff["line"])
                    if decision.accepted:
                        phases.state.current[arm] = str(adapter_dir)
                    phases.mark(f"{tag}/gate")
                verdict = "ACCEPTED" if ar.accepted else "REJECTED"
                hook.phase(f"Verdict: {verdict} — " + "; ".join(ar.gate.get("reasons", [])[:3]))
                if ar.accepted:
                    evals[arm] = after
                phases.save()

        candidates: dict[tuple[int, str], list[EvalRecord]] = {
            (r.round, str(r.arm)): [
                EvalRecord.model_validate(x)
                for x in store.read_records(run_id, f"eval_r{r.round}_{r.arm}.jsonl")
            ]
            for r in phases.state.rounds
        }
        summary = summarize(phases.state.rounds, baseline, evals, lcfg, base_secs, candidates)
        summary["replay"] = phases.state.replay_funnel
        store.write_json(
            run_id, "summary_rounds.json", [r.model_dump(mode="json") for r in phases.state.rounds]
        )
        store.set_summary(run_id, summary)
        from selfimprove.report import render_run_report

        report = render_run_report(run_dir)
        summary["report"] = str(report)
    return LoopResult(
        run_id=run_id,
        run_dir=str(store.run_dir(run_id)),
        rounds=phases.state.rounds,
        summary=summary,
    )


def summarize(
    rounds: Sequence[ArmRound],
    baseline: Sequence[EvalRecord],
    evals: dict[str, list[EvalRecord]],
    lcfg: LoopConfig,
    base_secs: float,
    candidates: dict[tuple[int, str], list[EvalRecord]] | None = None,
) -> dict[str, Any]:
    """Headline numbers: target-category accuracy before/after per arm and the efficiency ratio.

    ``evals`` are each arm's accepted model's records; ``candidates`` every round's candidate
    records (accepted or not), from which the per-round curve and the efficiency comparison
    (last round's candidates: both arms trained on the same number of examples) come.
    """
    targets = sorted({t for r in rounds if r.arm == "targeted" for t in r.targets})
    metric = lcfg.weakness.metric
    out: dict[str, Any] = {"targets": [f"{s}/{c}" for s, c in targets], "metric": metric}
    b = _target_accuracy(baseline, targets, metric)
    out["target_acc_before"] = b
    gains = {}
    for arm, recs in evals.items():
        a = _target_accuracy(recs, targets, metric)
        out[f"target_acc_after_{arm}"] = a
        n_ex = max((r.n_train for r in rounds if r.arm == arm and r.accepted), default=0)
        gains[arm] = ((a - b) if (a is not None and b is not None) else None, n_ex)
    out["retired_targets"] = {
        k: f"round {r.round}: {why}"
        for r in rounds
        if r.arm == "targeted" and lcfg.weakness.retire_stalled
        for k, why in r.stalled.items()
    }
    out["accepted_rounds"] = {
        arm: sum(r.accepted for r in rounds if r.arm == arm) for arm in lcfg.arms
    }
    g_t, n_t = gains.get("targeted", (None, 0))
    g_r, n_r = gains.get("random", (None, 0))
    if g_t is not None and g_r is not None and n_t and n_r and g_r > 0:
        out["efficiency_ratio"] = (g_t / n_t) / (g_r / n_r)
    else:
        out["efficiency_ratio"] = None
    out["baseline_eval_seconds"] = round(base_secs, 1)
    if candidates:
        out["per_round"] = [
            {
                "round": rnd,
                "arm": arm,
                "target_acc": _target_accuracy(recs, targets, metric),
                "n_train": next((r.n_train for r in rounds if (r.round, r.arm) == (rnd, arm)), 0),
                "accepted": any(r.accepted for r in rounds if (r.round, r.arm) == (rnd, arm)),
            }
            for (rnd, arm), recs in sorted(candidates.items())
        ]
        last = max(rnd for rnd, _a in candidates)
        if (last, "targeted") in candidates and (last, "random") in candidates:
            out["efficiency"] = efficiency(
                baseline,
                candidates[(last, "targeted")],
                candidates[(last, "random")],
                targets,
                metric,
                seed=lcfg.seed,
            )
    # per-category accuracy (with Wilson 95% CIs) before and after, every scored category
    strict = metric == "strict"

    def acc_map(recs: Sequence[EvalRecord]) -> dict[tuple[str, str], Any]:
        m = {}
        for c in aggregate(recs):
            v, ci = (c.strict_accuracy, c.strict_ci) if strict else (c.accuracy, c.accuracy_ci)
            if v is not None:
                m[(c.suite, c.category)] = (v, ci, c.n)
        return m

    before = acc_map(baseline)
    after = {arm: acc_map(recs) for arm, recs in evals.items()}
    out["per_category"] = [
        {
            "suite": su,
            "category": ca,
            "target": (su, ca) in set(targets),
            "n": n,
            "before": v,
            "before_ci": ci,
            **{f"after_{arm}": after[arm].get((su, ca), (None, None, 0))[0] for arm in after},
            **{f"after_{arm}_ci": after[arm].get((su, ca), (None, None, 0))[1] for arm in after},
        }
        for (su, ca), (v, ci, n) in sorted(before.items())
    ]
    return json.loads(json.dumps(out))


def efficiency(
    baseline: Sequence[EvalRecord],
    targeted: Sequence[EvalRecord],
    random_arm: Sequence[EvalRecord],
    targets: Sequence[tuple[str, str]],
    metric: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Targeted vs random gain on the target items, with paired-bootstrap 95% CIs.

    Both arms were trained on the same number of examples, so the ratio of gains is the
    ratio of gains per example. Items are resampled jointly (the same items were evaluated
    under the base and both candidates). The ratio is undefined when the random arm's gain
    is not positive; its CI uses the resamples where it is, and says how many those were.
    """
    import numpy as np

    tset = set(targets)

    def ok(r: EvalRecord) -> float:
        return float(bool(r.correct and r.format_ok) if metric == "strict" else bool(r.correct))

    maps = [
        {_key(r): ok(r) for r in recs if (r.suite, r.category) in tset and r.correct is not None}
        for recs in (baseline, targeted, random_arm)
    ]
    keys = sorted(set(maps[0]) & set(maps[1]) & set(maps[2]))
    if not keys:
        return {"n_items": 0}
    m = np.array([[mp[k] for k in keys] for mp in maps])  # 3 x n
    gain_t, gain_r = m[1] - m[0], m[2] - m[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    bt, br = gain_t[idx].mean(1), gain_r[idx].mean(1)
    pos = br > 0
    gt, gr = float(gain_t.mean()), float(gain_r.mean())
    return {
        "n_items": len(keys),
        "gain_targeted": gt,
        "gain_targeted_ci": [float(np.quantile(bt, 0.025)), float(np.quantile(bt, 0.975))],
        "gain_random": gr,
        "gain_random_ci": [float(np.quantile(br, 0.025)), float(np.quantile(br, 0.975))],
        "difference": gt - gr,
        "difference_ci": [
            float(np.quantile(bt - br, 0.025)),
            float(np.quantile(bt - br, 0.975)),
        ],
        "ratio": gt / gr if gr > 0 else None,
        "ratio_ci": (
            [
                float(np.quantile(bt[pos] / br[pos], 0.025)),
                float(np.quantile(bt[pos] / br[pos], 0.975)),
            ]
            if pos.mean() > 0.5
            else None
        ),
        "ratio_defined_fraction": float(pos.mean()),
    }


# --------------------------------------------------------------------------- sweeps

#: The users' "experiment variations": knob -> (dotted config path, default grid).
SWEEP_KNOBS: dict[str, tuple[str, list[Any]]] = {
    "threshold": ("weakness.error_threshold", [0.3, 0.5, 0.7]),
    "filtering": ("self_data.ppl_max", [15.0, 60.0, 1e9]),
    "variations": ("self_data.fraction", [0.0, 0.25, 0.5]),
}


def run_sweep(
    cfg: Any,
    knob: str,
    values: Sequence[Any] | None = None,
    *,
    hook: ProgressHook | None = None,
) -> list[dict[str, Any]]:
    """Run one loop per value of ``knob`` (other settings from ``cfg``) and tabulate outcomes.

    Each point is its own run in the store (resumable with ``selfimprove run --resume``); the
    table is also written to ``<store>/sweeps/<knob>-<time>.json``.
    """
    from selfimprove.errors import ConfigError

    if knob not in SWEEP_KNOBS:
        raise ConfigError(f"Unknown sweep knob {knob!r}; choose one of {', '.join(SWEEP_KNOBS)}.")
    path, grid = SWEEP_KNOBS[knob]
    hook = hook or ProgressHook()
    rows = []
    for v in values if values is not None else grid:
        point = cfg.model_copy(deep=True)
        loop_dump = point.loop.model_dump()
        node = loop_dump
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
        point.loop = LoopConfig.model_validate(loop_dump)
        hook.phase(f"Sweep {knob}: loop.{path} = {v}")
        res = run_loop(point, hook=hook)
        s = res.summary
        rows.append(
            {
                "knob": knob,
                "value": v,
                "run_id": res.run_id,
                "targets": s.get("targets"),
                "target_acc_before": s.get("target_acc_before"),
                **{k: v_ for k, v_ in s.items() if k.startswith("target_acc_after_")},
                "accepted_rounds": s.get("accepted_rounds"),
                "efficiency_ratio": s.get("efficiency_ratio"),
                "examples": {
                    arm: max((r.n_train for r in res.rounds if r.arm == arm), default=0)
                    for arm in point.loop.arms
                },
            }
        )
    out = Path(cfg.store.root) / "sweeps" / f"{knob}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(rows, indent=1))
    return rows
