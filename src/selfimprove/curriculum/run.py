"""``run_curriculum``: staged post-training of a base model, each stage's model writing the next
stage's data (source 003).

Per stage ``k`` (phases marked in ``state.json``; a resumed run skips finished ones and
evaluation resumes item by item):

1. ``s{k}/baselines`` — on the stage's held-out items: the *in-context baseline* (the base
   model prompted ``baseline_format``, URIAL by default) and the *current* model (the base, or
   the last accepted stage) in the zero-shot ``stage_format``.
2. ``s{k}/data`` — the current model writes: ``samples`` sampled replies per pool item (the
   base model in ``writer_format``, a trained stage in ``stage_format``); a reply is kept when
   it ended before the cap, its validator accepts it and it is new for its item (at most
   ``max_per_item``). Every row records its writer's weights hash; the provenance guard
   refuses rows of any other model, here and again before training.
3. ``s{k}/train`` — LoRA on the current model (the accepted chain merged), prompts in
   ``stage_format``; a base model's rows pass the chat-template token scan.
4. ``s{k}/eval`` — the candidate on the held-out items and the sentinels.
5. ``s{k}/gate`` — accepted iff (a) :func:`selfimprove.gate.decide` against the current model
   accepts (one-sided exact McNemar on the stage's items, non-inferiority on every sentinel
   suite, healthy losses) **and** (b) the candidate beats the in-context baseline (one-sided
   exact McNemar, level ``alpha``). Requiring both is an intersection-union test: level α
   without correction. Accepted: the adapter joins the chain and writes the next stage's
   data; rejected: the chain stays (roll back).

Every number is on held-out items the stage never trained on (stage 1: other topics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfimprove.contamination import check_provenance
from selfimprove.curriculum.config import CurriculumConfig, check_stages
from selfimprove.curriculum.records import CurriculumState, ModelScore, StageResult
from selfimprove.curriculum.stages import StageTasks, stage_tasks
from selfimprove.engine import Engine
from selfimprove.evaluate import (
    EvalRecord,
    Item,
    ProgressHook,
    check_resumed_model,
    evaluate_resumable,
    plan_items,
    register_eval_items,
    resolve_suites,
)
from selfimprove.faults import fault
from selfimprove.loop.context import PhaseState, step_progress, with_adapter
from selfimprove.models import LoadedModel, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.stats import PairedBinaryTest, mcnemar_exact, wilson_ci
from selfimprove.store import RunStore, collect_provenance, remove_orphans
from selfimprove.synth import assemble, random_control_samples
from selfimprove.synth.assemble import from_records, to_record
from selfimprove.synth.self_generated import near_duplicate_key
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.train import TrainExample

if TYPE_CHECKING:
    from selfimprove.config import Config

log = logging.getLogger(__name__)


@dataclass
class CurriculumContext:
    cfg: Config
    store: RunStore
    run_id: str
    phases: PhaseState
    base: LoadedModel
    runtime: Runtime
    registry: NeverTrainRegistry
    sentinel_items: list[Item]
    sentinel_names: list[str]
    hook: ProgressHook
    _models: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def ccfg(self) -> CurriculumConfig:
        return self.cfg.curriculum

    @property
    def state(self) -> CurriculumState:
        return self.phases.state  # type: ignore[no-any-return]

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    def model(self, chain: list[str]) -> LoadedModel:
        """The base with the adapters ``chain`` merged in order (cached per chain)."""
        key = "|".join(chain)
        if key not in self._models:
            m = self.base
            for rel in chain:
                m = with_adapter(m, str(self.run_dir / rel))
            self._models = {k: v for k, v in self._models.items() if k == ""}  # keep the base
            self._models[key] = m
        return self._models[key]

    def engine(self, chain: list[str], fmt: str) -> Engine:
        return Engine(self.model(chain), runtime=self.runtime, prompt_format=fmt)

    def evaluate(
        self, fname: str, engine: Engine, items: list[Item], **gen: Any
    ) -> list[EvalRecord]:
        c = self.ccfg
        g = self.cfg.generation.model_copy(
            update={"max_new_tokens": c.max_new_tokens, "temperature": 0.0, **gen}
        )
        return evaluate_resumable(
            engine,
            items,
            self.store,
            self.run_id,
            fname,
            g,
            seed=c.seed,
            hook=self.hook,
            reference_nll=False,
        )


def _tag(chain: list[str]) -> str:
    """File tag of a model: ``s0`` (the base), ``s1`` … (the last accepted stage)."""
    return Path(chain[-1]).name if chain else "s0"


def _baseline_tag(ccfg: CurriculumConfig) -> str:
    return f"base-{ccfg.baseline_format}"


# --------------------------------------------------------------------------- phases


def _baselines(ctx: CurriculumContext, st: StageTasks, res: StageResult) -> None:
    t = time.time()
    c, k = ctx.ccfg, st.number
    ctx.hook.phase(
        f"Stage {k} ({st.name}): in-context baseline ({c.baseline_format}) and current model "
        f"({_tag(ctx.state.chain)}, {c.stage_format}) on {len(st.heldout)} held-out items"
    )
    ctx.evaluate(
        f"eval_{_baseline_tag(c)}_s{k}.jsonl", ctx.engine([], c.baseline_format), st.heldout
    )
    cur = ctx.engine(ctx.state.chain, c.stage_format)
    ctx.evaluate(f"eval_{_tag(ctx.state.chain)}_s{k}.jsonl", cur, st.heldout)
    if not ctx.state.chain and ctx.sentinel_items:
        ctx.evaluate("eval_s0_sentinels.jsonl", cur, ctx.sentinel_items)
    res.seconds["baselines"] = round(time.time() - t, 1)
    ctx.phases.mark(f"s{k}/baselines")


def _copies(pool: list[Item], n: int) -> list[Item]:
    """``n`` copies of every pool item, ids ``<id>~<j>`` (one sampled reply each)."""
    return [
        (su, task, x.model_copy(update={"id": f"{x.id}~{j}"}))
        for su, task, x in pool
        for j in range(n)
    ]


def _data(ctx: CurriculumContext, st: StageTasks, res: StageResult) -> None:
    t = time.time()
    c, k, chain = ctx.ccfg, st.number, ctx.state.chain
    fmt = c.stage_format if chain else c.writer_format
    writer = ctx.engine(chain, fmt)
    res.writer, res.writer_hash = f"{_tag(chain)} ({fmt})", writer.loaded.weights_hash
    ctx.hook.phase(
        f"Stage {k} data: {res.writer} writes {c.samples} sampled replies for each of "
        f"{len(st.pool)} pool items"
    )
    recs = ctx.evaluate(
        f"writer_s{k}.jsonl",
        writer,
        _copies(st.pool, c.samples),
        temperature=c.temperature,
        top_p=c.top_p,
    )
    by_id = {x.id: (su, x) for su, _t, x in st.pool}
    f = res.funnel
    f.pool_items, f.sampled = len(st.pool), len(recs)
    seen: dict[str, set[str]] = {}
    rows: list[TrainExample] = []
    for r in sorted(recs, key=lambda r: r.sample_id):
        if r.finish_reason == "length" or r.output is None:
            continue
        f.ended += 1
        if not r.correct:
            continue
        f.verified += 1
        item_id = r.sample_id.rsplit("~", 1)[0]
        if item_id not in by_id:  # drawn before a resume, since registered as evaluation
            continue
        reply = r.output.strip()
        keys = seen.setdefault(item_id, set())
        if near_duplicate_key(reply) in keys:
            continue
        f.distinct += 1
        if len(keys) >= c.max_per_item:
            continue
        keys.add(near_duplicate_key(reply))
        su, x = by_id[item_id]
        rows.append(
            TrainExample(
                id=f"s{k}/{r.sample_id}",
                suite=su,
                category=x.category,
                input_hash=x.input_hash(),
                prompt=x.input,  # type: ignore[arg-type]
                completion=" " + reply,
                source=f"curriculum:s{k}:{res.writer}",
                round=k,
                generator=res.writer_hash,
            )
        )
    f.kept, f.items_with_a_row = len(rows), sum(1 for v in seen.values() if v)
    check_provenance(rows, ctx.state.writers, where=f"stage {k} data")
    ctx.store.write_records(ctx.run_id, f"data_s{k}.jsonl", map(to_record, rows))
    replay = _replay(ctx, k)
    ctx.store.write_records(ctx.run_id, f"replay_s{k}.jsonl", map(to_record, replay))
    res.seconds["data"] = round(time.time() - t, 1)
    ctx.hook.phase(
        f"Stage {k} data: {f.sampled} sampled, {f.ended} ended, {f.verified} verified, "
        f"{f.kept} kept ({f.items_with_a_row} of {f.pool_items} pool items)"
    )
    ctx.phases.mark(f"s{k}/data")


def _replay(ctx: CurriculumContext, k: int) -> list[TrainExample]:
    """The current model's own verified answers (``stage_format``) on ``3 * replay`` fresh
    items of ``replay_suites``: up to ``replay`` rows, trained as KL anchors."""
    c, chain = ctx.ccfg, ctx.state.chain
    if not c.replay:
        return []
    items, _f = random_control_samples(
        3 * c.replay,
        seed_key=f"curriculum-replay:{c.seed}:{k}",
        registry=ctx.registry,
        suites=c.replay_suites,
    )
    eng = ctx.engine(chain, c.stage_format)
    ctx.hook.phase(f"Stage {k} replay: {_tag(chain)} answers {len(items)} fresh skill items")
    recs = ctx.evaluate(f"replay_eval_s{k}.jsonl", eng, items)
    gen = eng.loaded.weights_hash
    return [
        r.model_copy(update={"generator": gen, "round": k})
        for r in assemble.replay_rows(recs, items, c.replay)
    ]


def _train(ctx: CurriculumContext, st: StageTasks, res: StageResult) -> None:
    from selfimprove.train import train_lora

    t = time.time()
    c, k = ctx.ccfg, st.number
    rows = from_records(ctx.store.read_records(ctx.run_id, f"data_s{k}.jsonl"))
    check_provenance(rows, ctx.state.writers, where=f"run {ctx.run_id}, data_s{k}.jsonl")
    res.n_train = len(rows)
    if not rows:
        res.train = None
        ctx.hook.phase(f"Stage {k}: no verified rows, nothing to train (the stage is rejected)")
        ctx.phases.mark(f"s{k}/train")
        return
    replay = from_records(ctx.store.read_records(ctx.run_id, f"replay_s{k}.jsonl"))
    check_provenance(replay, ctx.state.writers, where=f"run {ctx.run_id}, replay_s{k}.jsonl")
    examples = assemble.round_examples(rows, replay, c.anchor_text, replay_as_anchor=True)
    ctx.hook.phase(
        f"Stage {k}: training LoRA on {len(rows)} rows + {len(replay)} replay and "
        f"{c.anchor_text} text anchors (KL to the current model; {c.stage_format} prompts)"
    )
    out = ctx.run_dir / "adapters" / f"s{k}"
    tr = train_lora(
        ctx.model(ctx.state.chain),
        examples,
        c.train.model_copy(update={"seed": c.seed + k}),
        out,
        runtime=ctx.runtime,
        never_train=ctx.registry,
        progress=step_progress(ctx.hook, "train", fault_point=f"s{k}/train"),
        prompt_format=c.stage_format,
    )
    res.train = {
        "n_examples": tr.n_examples,
        "n_anchor": tr.n_anchor,
        "n_tokens": tr.n_tokens,
        "final_loss": tr.final_loss,
        "losses": tr.losses,
        "seconds": round(tr.seconds, 1),
        "diverged": tr.diverged,
    }
    res.seconds["train"] = round(time.time() - t, 1)
    ctx.phases.mark(f"s{k}/train")


def _evaluate_candidate(ctx: CurriculumContext, st: StageTasks, res: StageResult) -> None:
    t = time.time()
    c, k = ctx.ccfg, st.number
    if res.train is not None:
        cand = [*ctx.state.chain, f"adapters/s{k}"]
        ctx.hook.phase(f"Stage {k}: candidate on the held-out items and the sentinels")
        eng = ctx.engine(cand, c.stage_format)
        ctx.evaluate(f"eval_s{k}_s{k}.jsonl", eng, st.heldout)
        if ctx.sentinel_items:
            ctx.evaluate(f"eval_s{k}_sentinels.jsonl", eng, ctx.sentinel_items)
    res.seconds["eval"] = round(time.time() - t, 1)
    ctx.phases.mark(f"s{k}/eval")


def _read(ctx: CurriculumContext, fname: str) -> list[EvalRecord]:
    return [EvalRecord.model_validate(r) for r in ctx.store.read_records(ctx.run_id, fname)]


def _score(name: str, recs: list[EvalRecord]) -> ModelScore:
    k, n = sum(bool(r.correct) for r in recs), len(recs)
    acc, ci = (k / n if n else 0.0), wilson_ci(k, n) if n else (0.0, 1.0)
    ended = sum(r.finish_reason != "length" for r in recs) / max(1, len(recs))
    return ModelScore(name=name, accuracy=acc, ci=ci, ended=ended, n=len(recs))


@dataclass
class StageVerdict:
    accepted: bool
    reasons: list[str]
    gate: Any
    vs_baseline: PairedBinaryTest
    vs_previous: PairedBinaryTest


def stage_verdict(
    baseline: list[EvalRecord],
    previous: list[EvalRecord],
    candidate: list[EvalRecord],
    *,
    categories: list[tuple[str, str]],
    sentinel_suites: list[str],
    ccfg: CurriculumConfig,
    train_losses: list[float] | None = None,
) -> StageVerdict:
    """Accept a stage iff the loop's gate accepts it against the previous model (one-sided
    exact McNemar on the stage's ``categories``, non-inferiority on every sentinel suite,
    healthy losses) **and** it beats the in-context ``baseline`` on the stage's items
    (one-sided exact McNemar at ``ccfg.alpha``). ``previous``/``candidate`` hold the stage's
    items and the sentinels; ``baseline`` the stage's items only."""
    from selfimprove.gate import decide

    gate = decide(
        previous,
        candidate,
        target_categories=categories,
        sentinel_suites=sentinel_suites,
        config=ccfg.gate.model_copy(update={"alpha": ccfg.alpha}),
        train_losses=train_losses,
    )
    stage_cats = set(categories)

    def outcomes(recs: list[EvalRecord]) -> dict[tuple[str, str], bool]:
        return {
            (r.suite, r.sample_id): bool(r.correct)
            for r in recs
            if (r.suite, r.category) in stage_cats
        }

    b, p, c = outcomes(baseline), outcomes(previous), outcomes(candidate)
    common = sorted(b.keys() & c.keys() & p.keys())
    if not common:
        raise ValueError("the baseline, previous and candidate records share no stage item")
    vs_b = mcnemar_exact([b[i] for i in common], [c[i] for i in common], alternative="greater")
    vs_p = mcnemar_exact([p[i] for i in common], [c[i] for i in common], alternative="greater")
    beats = vs_b.p_value < ccfg.alpha
    line = (
        f"{'ok' if beats else 'fail'}: vs the in-context baseline {vs_b.delta:+.1%} "
        f"[{vs_b.delta_ci[0]:+.1%}, {vs_b.delta_ci[1]:+.1%}], one-sided exact McNemar "
        f"p={vs_b.p_value:.3g} ({vs_b.c} gained, {vs_b.b} lost)"
    )
    return StageVerdict(
        accepted=bool(gate.accepted and beats),
        reasons=[*gate.reasons, line],
        gate=gate,
        vs_baseline=vs_b,
        vs_previous=vs_p,
    )


def _gate(ctx: CurriculumContext, st: StageTasks, res: StageResult) -> None:
    c, k, chain = ctx.ccfg, st.number, ctx.state.chain
    base_recs = _read(ctx, f"eval_{_baseline_tag(c)}_s{k}.jsonl")
    prev_recs = _read(ctx, f"eval_{_tag(chain)}_s{k}.jsonl")
    names = {
        "baseline": f"base + {c.baseline_format} (in-context)",
        "previous": f"{_tag(chain)} ({c.stage_format})",
        "candidate": f"s{k} ({c.stage_format})",
    }
    res.scores = [_score(names["baseline"], base_recs), _score(names["previous"], prev_recs)]
    if res.train is None:
        res.accepted = False
        res.reasons = ["rejected: no verified training rows"]
        ctx.phases.mark(f"s{k}/gate")
        return
    cand_recs = _read(ctx, f"eval_s{k}_s{k}.jsonl")
    res.scores.append(_score(names["candidate"], cand_recs))
    sent_prev = _read(ctx, f"eval_{_tag(chain)}_sentinels.jsonl") if ctx.sentinel_items else []
    sent_cand = _read(ctx, f"eval_s{k}_sentinels.jsonl") if ctx.sentinel_items else []
    v = stage_verdict(
        base_recs,
        prev_recs + sent_prev,
        cand_recs + sent_cand,
        categories=st.categories,
        sentinel_suites=ctx.sentinel_names,
        ccfg=c,
        train_losses=(res.train or {}).get("losses"),
    )
    res.gate, res.vs_baseline, res.vs_previous = v.gate, v.vs_baseline, v.vs_previous
    res.accepted, res.reasons = v.accepted, v.reasons
    res.per_category = _per_category(base_recs, prev_recs, cand_recs, names)
    res.samples = _samples(base_recs, cand_recs)
    if res.accepted:
        adapter = f"adapters/s{k}"
        ctx.state.chain.append(adapter)
        ctx.state.writers[ctx.model(ctx.state.chain).weights_hash] = f"s{k}"
    ctx.phases.mark(f"s{k}/gate")


def _per_category(
    base: list[EvalRecord],
    prev: list[EvalRecord],
    cand: list[EvalRecord],
    names: dict[str, str],
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for role, recs in (("baseline", base), ("previous", prev), ("candidate", cand)):
        by: dict[str, list[float]] = {}
        for r in recs:
            by.setdefault(r.category, []).append(float(bool(r.correct)))
        for cat, xs in by.items():
            out.setdefault(cat, {})[names[role]] = sum(xs) / len(xs)
    return dict(sorted(out.items()))


def _samples(base: list[EvalRecord], cand: list[EvalRecord], n: int = 6) -> list[dict[str, str]]:
    """A few held-out items, one per category: the baseline's and the stage's reply."""
    by = {(r.suite, r.sample_id): r for r in base}
    out, cats = [], set()
    for r in cand:
        b = by.get((r.suite, r.sample_id))
        if b is None or r.category in cats:
            continue
        cats.add(r.category)
        out.append(
            {
                "category": r.category,
                "baseline": (b.output or "")[:300],
                "baseline_ok": str(bool(b.correct)),
                "stage": (r.output or "")[:300],
                "stage_ok": str(bool(r.correct)),
            }
        )
        if len(out) >= n:
            break
    return out


def run_stage(ctx: CurriculumContext, number: int) -> StageResult:
    """One stage: baselines, data, training, evaluation, gate (finished phases skipped)."""
    st = stage_tasks(number, ctx.ccfg, ctx.registry)
    res = ctx.state.stage(number, st.name)
    k = number
    for name, fn in (
        ("baselines", _baselines),
        ("data", _data),
        ("train", _train),
        ("eval", _evaluate_candidate),
        ("gate", _gate),
    ):
        if not ctx.phases.done(f"s{k}/{name}"):
            fn(ctx, st, res)
    verdict = "ACCEPTED" if res.accepted else "REJECTED"
    ctx.hook.phase(f"Stage {k} verdict: {verdict} — " + "; ".join(res.reasons[:4]))
    ctx.phases.save()
    return res


# --------------------------------------------------------------------------- the run


def _sentinels(ccfg: CurriculumConfig) -> tuple[list[str], list[Item], list[Any]]:
    if not ccfg.sentinel_suites:
        return [], [], []
    suites = resolve_suites(ccfg.sentinel_suites)
    plan = plan_items(suites, ccfg.sentinel_n, ccfg.seed)
    return [s.name for s in suites], [(su.name, t, x) for su, t, xs in plan for x in xs], plan


def run_curriculum(
    cfg: Config, *, resume: str | None = None, hook: ProgressHook | None = None
) -> dict[str, Any]:
    """Run (or resume) the stages of ``cfg.curriculum`` on ``cfg.model``; returns the summary.

    ``resume``: id (or prefix) of an interrupted or failed curriculum run; its stored config
    is used (only the thread count may change) and finished phases are skipped.
    """
    hook = hook or ProgressHook()
    store = RunStore(cfg.store.root)
    store.mark_stale_running()
    prev = store.resumable(resume, kind="curriculum") if resume is not None else None
    if prev is not None:
        stored = type(cfg).model_validate(prev.config)
        threads = {"threads": cfg.runtime.threads}
        cfg = stored.model_copy(update={"runtime": stored.runtime.model_copy(update=threads)})
    ccfg = cfg.curriculum
    check_stages(ccfg.stages)
    for k in ccfg.stages:
        stage_tasks(k, ccfg)  # bad kinds / suites fail before the model loads
    sentinel_names, sentinel_items, sentinel_plan = _sentinels(ccfg)
    hook.phase(f"Loading model {cfg.model.name}")
    runtime = resolve_runtime(cfg.runtime.threads, cfg.runtime.dtype)
    base = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if prev is not None:
        check_resumed_model(prev, base, hook)
    held_plans = [p for k in ccfg.stages for p in stage_tasks(k, ccfg).heldout_plan]
    registry = register_eval_items(store, held_plans + sentinel_plan)
    prov = {
        "runtime": runtime.describe(),
        "model_source": base.source,
        "model_hash": base.weights_hash,
    }
    opened = (
        store.resume(prev.id, kind="curriculum")
        if prev is not None
        else store.track(
            "curriculum",
            config=cfg.model_dump(mode="json"),
            seed=ccfg.seed,
            model=base.name,
            provenance=collect_provenance(prov),
        )
    )
    with opened as info:
        run_dir = store.run_dir(info.id)
        for orphan in remove_orphans(run_dir / "adapters", (".*.tmp-*", ".*.old-*")):
            hook.phase(f"Removed the unfinished {orphan.name} a killed run left behind")
        ctx = CurriculumContext(
            cfg=cfg,
            store=store,
            run_id=info.id,
            phases=PhaseState(run_dir, CurriculumState),
            base=base,
            runtime=runtime,
            registry=registry,
            sentinel_items=sentinel_items,
            sentinel_names=sentinel_names,
            hook=hook,
        )
        ctx.state.writers.setdefault(base.weights_hash, base.name)
        for k in ccfg.stages:
            run_stage(ctx, k)
        summary = _finish(ctx)
    return summary


def _finish(ctx: CurriculumContext) -> dict[str, Any]:
    from selfimprove.curriculum.report import render_curriculum_report

    st = ctx.state
    summary = {
        "run_id": ctx.run_id,
        "run_dir": str(ctx.run_dir),
        "model": ctx.base.name,
        "chain": st.chain,
        "stages": [s.model_dump(mode="json", exclude={"gate"}) for s in st.stages],
    }
    ctx.store.write_json(ctx.run_id, "stages.json", [s.model_dump(mode="json") for s in st.stages])
    ctx.store.set_summary(ctx.run_id, summary)
    fault("curriculum:summary")
    summary["report"] = str(render_curriculum_report(ctx.run_dir))
    return summary
