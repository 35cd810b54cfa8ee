"""``run_loop`` and ``run_sweep``: open (or resume) a run, drive the phases, summarize."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfimprove.errors import ConfigError
from selfimprove.evaluate import (
    EvalRecord,
    ProgressHook,
    check_resumed_model,
    plan_items,
    register_eval_items,
    resolve_suites,
)
from selfimprove.faults import fault
from selfimprove.gate import GateConfig
from selfimprove.loop import phases
from selfimprove.loop.config import LoopConfig
from selfimprove.loop.context import LoopContext, PhaseState
from selfimprove.loop.records import LoopResult, LoopSummary, SweepPoint
from selfimprove.loop.summary import summarize
from selfimprove.models import LoadedModel, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import (
    RunInfo,
    RunStore,
    atomic_write_text,
    collect_provenance,
    remove_orphans,
)

if TYPE_CHECKING:
    from selfimprove.config import Config

log = logging.getLogger(__name__)


def run_loop(
    cfg: Config, *, resume: str | None = None, hook: ProgressHook | None = None
) -> LoopResult:
    """Run (or resume) the closed loop described by ``cfg.loop``; returns per-round results.

    One run is ``cfg.loop.rounds`` rounds x the arms (``targeted``: data from the arm's weak
    categories; ``random``: the same budget drawn uniformly, the control). Every round
    retrains from the base model on the arm's accumulated verified data, evaluates the
    candidate on the fixed items and asks the gate; see :mod:`selfimprove.loop.phases`.

    Args:
        cfg: the resolved config (:func:`selfimprove.config.load_config`).
        resume: id (or prefix) of an interrupted or failed run: its stored config is used and
            finished phases are skipped.
        hook: progress callbacks (the CLI renders them).
    """
    hook = hook or ProgressHook()
    store = RunStore(cfg.store.root)
    store.mark_stale_running()
    prev = store.resumable(resume, kind="run") if resume is not None else None
    if prev is not None:  # the run's own config; only the thread count may change
        stored = type(cfg).model_validate(prev.config)
        threads = {"threads": cfg.runtime.threads}
        cfg = stored.model_copy(update={"runtime": stored.runtime.model_copy(update=threads)})
    lcfg = cfg.loop
    skills, sentinels, plan = evaluation_plan(lcfg)
    sentinel_names = [s.name for s in sentinels]
    check_gate_power(plan, sentinel_names, lcfg.gate, hook)
    hook.phase(f"Loading model {cfg.model.name}")
    runtime = resolve_runtime(cfg.runtime.threads, cfg.runtime.dtype)
    base = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if prev is not None:
        check_resumed_model(prev, base, hook)
    registry = register_eval_items(store, plan)
    with _open_run(store, cfg, prev, runtime, base) as info:
        # we hold the run's writer lock: temp folders in it are a killed writer's leftovers
        for orphan in remove_orphans(store.run_dir(info.id) / "adapters", _ORPHANS):
            hook.phase(f"Removed the unfinished {orphan.name} a killed run left behind")
        ctx = LoopContext(
            cfg=cfg,
            store=store,
            run_id=info.id,
            phases=PhaseState(store.run_dir(info.id)),
            base=base,
            runtime=runtime,
            registry=registry,
            items=[(su.name, t, x) for su, t, xs in plan for x in xs],
            skill_names=[s.name for s in skills],
            sentinel_names=sentinel_names,
            sentinels=sentinels,
            hook=hook,
        )
        phases.baseline(ctx)
        phases.replay(ctx)
        phases.restore_arms(ctx)
        for rnd in range(1, lcfg.rounds + 1):
            for arm in lcfg.arms:
                phases.run_round(ctx, rnd, arm)
        summary = finish(ctx)
    return LoopResult(
        run_id=ctx.run_id,
        run_dir=str(ctx.run_dir),
        rounds=ctx.phases.state.rounds,
        summary=summary,
    )


#: what a killed adapter save leaves (selfimprove.store.publish_dir, train._atomic_save)
_ORPHANS = (".*.tmp-*", ".*.old-*")


def evaluation_plan(lcfg: LoopConfig) -> tuple[list[Any], list[Any], list[Any]]:
    """The run's fixed evaluation items: ``(skill suites, sentinel suites, plan)``.

    ``plan`` is :func:`selfimprove.evaluate.plan_items` over both (``eval_n`` items per skill
    suite, ``sentinel_n`` per sentinel suite, seeded by ``loop.seed``).
    """
    skills, sentinels = resolve_suites(lcfg.skill_suites), resolve_suites(lcfg.sentinel_suites)
    both = sorted({s.name for s in skills} & {s.name for s in sentinels})
    if both:
        raise ConfigError(
            f"Suite(s) {', '.join(both)} are both skill and sentinel suites; a suite is either "
            "trained toward (loop.skill_suites) or guarded (loop.sentinel_suites), not both."
        )
    plan = plan_items(skills, lcfg.eval_n, lcfg.seed) + plan_items(
        sentinels, lcfg.sentinel_n, lcfg.seed
    )
    return skills, sentinels, plan


@contextmanager
def _open_run(
    store: RunStore, cfg: Config, prev: RunInfo | None, runtime: Runtime, base: LoadedModel
) -> Iterator[RunInfo]:
    """The run's lifecycle: ``store.resume`` an earlier run or ``store.track`` a new one."""
    if prev is not None:
        with store.resume(prev.id, kind="run") as info:
            yield info
        return
    prov = collect_provenance(
        {
            "runtime": runtime.describe(),
            "model_source": base.source,
            "model_hash": base.weights_hash,
        }
    )
    with store.track(
        "run",
        config=cfg.model_dump(mode="json"),
        seed=cfg.loop.seed,
        model=base.name,
        provenance=prov,
    ) as info:
        yield info


def finish(ctx: LoopContext) -> LoopSummary:
    """Summary (``summary.json``, the registry), ``summary_rounds.json`` and the HTML report."""
    from selfimprove.report import render_run_report

    rounds, split = ctx.phases.state.rounds, ctx.split
    # every number reported is on the confirmation half: none of it chose a target
    candidates: dict[tuple[int, str], list[EvalRecord]] = {
        (r.round, str(r.arm)): split.confirm(
            EvalRecord.model_validate(x)
            for x in ctx.store.read_records(ctx.run_id, f"eval_{r.tag}.jsonl")
        )
        for r in rounds
    }
    summary = summarize(
        rounds,
        split.confirm(ctx.baseline),
        {arm: split.confirm(recs) for arm, recs in ctx.evals.items()},
        ctx.lcfg,
        ctx.baseline_seconds,
        candidates,
        replay=ctx.phases.state.replay_funnel,
    )
    summary.split = split.describe()
    summary.n_selection, summary.n_confirmation = len(split.selection), len(split.confirmation)
    if split.legacy:
        summary.n_selection = 0
    ctx.store.write_json(
        ctx.run_id, "summary_rounds.json", [r.model_dump(mode="json") for r in rounds]
    )
    ctx.store.set_summary(ctx.run_id, summary.model_dump(mode="json"))
    fault("loop:summary")
    summary.report = str(render_run_report(ctx.run_dir))
    return summary


def check_gate_power(
    plan: Sequence[tuple[Any, Any, Sequence[Any]]],
    sentinel_names: Sequence[str],
    gate_cfg: GateConfig,
    hook: ProgressHook | None = None,
) -> dict[str, float]:
    """Count the binary sentinel items of the plan and ask :func:`selfimprove.gate.gate_power`.

    Returns each sentinel test's chance of passing a round that changed nothing. A test with
    too few items to pass unchanged (:func:`selfimprove.gate.gate_warnings`) does not stop
    the run — it can still pass when sentinel answers improve — but the user is told how
    to fix it.
    """
    from selfimprove.gate import gate_power, gate_warnings

    n_by_suite: dict[str, int] = defaultdict(int)
    for suite, task, xs in plan:
        if suite.name in sentinel_names and getattr(task, "mode", "generate") != "nll":
            n_by_suite[suite.name] += len(xs)
    for line in gate_warnings(dict(n_by_suite), gate_cfg):
        msg = (
            f"Warning: {line}. Raise loop.sentinel_n or the margin "
            "(loop.gate.suite_margin / sentinel_margin) if rounds that leave the sentinels "
            "unchanged should be accepted."
        )
        log.warning(msg)
        if hook is not None:
            hook.phase(msg)
    power = gate_power(dict(n_by_suite), gate_cfg)
    if power:
        log.info(
            "gate power (no true change): %s",
            ", ".join(f"{k}: {v:.2f}" for k, v in power.items()),
        )
    return power


# --------------------------------------------------------------------------- sweeps

#: The users' "experiment variations": knob -> (dotted config path, default grid).
SWEEP_KNOBS: dict[str, tuple[str, list[Any]]] = {
    "threshold": ("weakness.error_threshold", [0.3, 0.5, 0.7]),
    "filtering": ("self_data.ppl_max", [15.0, 60.0, 1e9]),
    "variations": ("self_data.fraction", [0.0, 0.25, 0.5]),
}


def run_sweep(
    cfg: Config,
    knob: str,
    values: Sequence[Any] | None = None,
    *,
    hook: ProgressHook | None = None,
) -> list[SweepPoint]:
    """Run one loop per value of ``knob`` (other settings from ``cfg``) and tabulate outcomes.

    Each point is its own run in the store (resumable with ``selfimprove run --resume``); the
    table is also written to ``<store>/sweeps/<knob>-<time>.json``.
    """
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
            SweepPoint(
                knob=knob,
                value=v,
                run_id=res.run_id,
                targets=s.targets,
                target_acc_before=s.target_acc_before,
                target_acc_after=s.target_acc_after,
                accepted_rounds=s.accepted_rounds,
                efficiency_ratio=s.efficiency.ratio if s.efficiency is not None else None,
                efficiency=s.efficiency,
                examples={
                    arm: max((r.n_train for r in res.rounds if r.arm == arm), default=0)
                    for arm in point.loop.arms
                },
            )
        )
    out = Path(cfg.store.root) / "sweeps" / f"{knob}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps([r.model_dump(mode="json") for r in rows], indent=1))
    return rows
