"""Evaluation: suites -> per-example records -> per-category metrics with 95% CIs.

Modes (per task):
  * ``generate``: chat-formatted prompt, greedy generation (stopping after a complete
    ``Answer:`` line), validator -> ``correct`` (answer extracted anywhere sensible) and
    ``format_ok`` (strict last-line format); plus the reference answer's NLL and the
    generation's mean token entropy / margin (uncertainty).
  * ``choices``: sum log-likelihood and length-normalised (per token) log-likelihood of
    each choice; ``correct`` uses the sum, ``correct_norm`` the normalised score.
  * ``nll``: per-token NLL of the reference text only (a forgetting metric).

Records stream out through ``on_records`` task by task, so an interrupted evaluation keeps
what finished and ``skip`` lets a resumed one continue. The model's own perplexity on its
generation is *not* used as an error signal (it measures fluency, not correctness).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator

from selfimprove.engine import Engine
from selfimprove.faults import fault
from selfimprove.stats import wilson_ci  # also importable from here, as before
from selfimprove.store import RunStore
from selfimprove.tasks.base import Sample, Score, Task
from selfimprove.tasks.never_train import NeverTrainRegistry

if TYPE_CHECKING:
    from selfimprove.config import Config

log = logging.getLogger(__name__)

#: Stop once the reply contains a complete "Answer: ..." line (keeps that line).
ANSWER_LINE_STOP = re.compile(r"(?im)^[ \t*]*answer[ \t*]*:[^\n]*\S[^\n]*\n")


class EvalRecord(BaseModel):
    """One scored example (long format: one row per suite x category x example)."""

    suite: str
    task: str
    category: str
    sample_id: str
    input_hash: str
    mode: str
    target: str
    output: str | None = None
    extracted: str | None = None
    correct: bool | None = None
    correct_norm: bool | None = None
    format_ok: bool | None = None
    ref_nll: float | None = None  # mean per-token NLL (nats) of the reference answer
    ref_tokens: int | None = None
    entropy: float | None = None  # mean next-token entropy over the generation (nats)
    margin: float | None = None
    n_tokens: int | None = None
    finish_reason: str | None = None


#: Which outcome counts as "solved" (the one vocabulary of weakness, gate, loop and synth):
#: ``"correct"``: the validator found the right answer anywhere sensible in the reply (the
#: record field ``correct``); ``"strict"``: correct *and* in the strict last-line format
#: ``Answer: <answer>`` (the field ``format_ok``).
Metric = Literal["correct", "strict"]


def _metric_from_config(value: Any) -> Any:
    # Configs written before the vocabulary was unified spelled "correct" as "extracted"
    # (weakness.metric); stored run configs must still load.
    return "correct" if value == "extracted" else value


#: A config field holding a :data:`Metric`; also accepts the old spelling ``"extracted"``.
MetricField = Annotated[Metric, BeforeValidator(_metric_from_config)]


def record_field(record: Any, name: str) -> Any:
    """A field of an :class:`EvalRecord`-like object or of a plain dict row (missing: None)."""
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def is_solved(record: EvalRecord | Score | Mapping[str, Any], metric: Metric) -> bool:
    """Whether one scored item counts as solved under ``metric``: the one definition.

    ``record`` is an :class:`EvalRecord`, a plain dict row with its fields (stored
    ``records.jsonl`` lines; the gate accepts both) or a task's
    :class:`~selfimprove.tasks.base.Score`. ``correct`` None (unscored) is never solved.
    Under ``"strict"``, ``format_ok`` None means there is no format to check, so the item
    counts on ``correct`` alone; evaluation itself always sets ``format_ok`` on scored items
    (``choices`` mode: True), so this only matters for rows from elsewhere.

    Raises:
        ValueError: ``metric`` is not ``"correct"`` or ``"strict"``.
    """
    correct = bool(record_field(record, "correct"))
    if metric == "correct":
        return correct
    if metric == "strict":
        fmt = record_field(record, "format_ok")
        return correct and (fmt is None or bool(fmt))
    raise ValueError(f"unknown metric {metric!r}; use 'correct' or 'strict'")


class CategoryMetrics(BaseModel):
    """Aggregates for one (suite, category) with 95% confidence intervals."""

    suite: str
    category: str
    mode: str
    n: int
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    format_rate: float | None = None
    format_ci: tuple[float, float] | None = None
    strict_accuracy: float | None = None  # correct AND format_ok
    strict_ci: tuple[float, float] | None = None
    ref_nll: float | None = None
    ref_nll_ci: tuple[float, float] | None = None
    entropy: float | None = None


def mean_ci(xs: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and t-based 95% CI."""
    from scipy import stats

    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, (float("nan"), float("nan"))
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return m, (m - h, m + h)


Item = tuple[str, Task, Sample]  # (suite name, task, sample)


def evaluate_task(
    engine: Engine,
    suite_name: str,
    task: Task,
    samples: Sequence[Sample],
    **kwargs: Any,
) -> list[EvalRecord]:
    """Score ``samples`` of one task; returns records in sample order."""
    return evaluate_items(engine, [(suite_name, task, s) for s in samples], **kwargs)


def evaluate_items(
    engine: Engine,
    items: Sequence[Item],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_after_answer_line: bool = True,
    reference_nll: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[EvalRecord]:
    """Score a mixed list of items (any suites/tasks/modes); records come back in order.

    Items of the same mode share engine batches across tasks, so small categories still
    fill a batch. ``progress`` is called with item counts as they finish.
    """
    recs = [
        EvalRecord(
            suite=suite,
            task=task.name,
            category=s.category,
            sample_id=s.id,
            input_hash=s.input_hash(),
            mode=task.mode,
            target=s.target,
        )
        for suite, task, s in items
    ]
    by_mode: dict[str, list[int]] = defaultdict(list)
    for i, (_suite, task, _s) in enumerate(items):
        by_mode[task.mode].append(i)

    # one generate call per set of task stop strings (one call when no task has its own)
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in by_mode.get("generate", []):
        groups[tuple(items[i][1].stop)].append(i)
    for task_stops, gen_idx in groups.items():
        gens = engine.generate(
            [items[i][2].messages() for i in gen_idx],
            max_new_tokens=[
                min(max_new_tokens, items[i][1].max_new_tokens or max_new_tokens) for i in gen_idx
            ],
            stop=[*([ANSWER_LINE_STOP] if stop_after_answer_line else []), *task_stops],
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            progress=None if reference_nll else progress,
        )
        for i, g in zip(gen_idx, gens, strict=True):
            _suite, task, s = items[i]
            sc = task.score(g.text, s)
            r = recs[i]
            r.output, r.extracted, r.correct, r.format_ok = (
                g.text,
                sc.extracted,
                sc.correct,
                sc.format_ok,
            )
            r.entropy, r.margin = g.mean_entropy, g.mean_margin
            r.n_tokens, r.finish_reason = g.n_tokens, g.finish_reason
        if reference_nll:
            nlls = engine.continuation_nll(
                [items[i][2].messages() for i in gen_idx],
                [items[i][1].reference(items[i][2]) for i in gen_idx],
                batch_size=batch_size,
                progress=progress,
            )
            for i, sc_ in zip(gen_idx, nlls, strict=True):
                recs[i].ref_nll, recs[i].ref_tokens = sc_.mean, len(sc_.nll)

    ch_idx = by_mode.get("choices", [])
    if ch_idx:
        flat_p: list[Any] = []
        flat_c: list[str] = []
        for i in ch_idx:
            s = items[i][2]
            if not s.choices:
                raise ValueError(f"sample {s.id} in choices mode has no choices")
            flat_p.extend([s.messages()] * len(s.choices))
            flat_c.extend(s.choices)
        scores = engine.continuation_nll(flat_p, flat_c, batch_size=batch_size)
        k = 0
        for i in ch_idx:
            s = items[i][2]
            assert s.choices is not None
            chunk = scores[k : k + len(s.choices)]
            k += len(s.choices)
            sums = [c.logprob for c in chunk]
            norms = [c.logprob / max(1, len(c.nll)) for c in chunk]
            best = s.choices[max(range(len(sums)), key=sums.__getitem__)]
            best_n = s.choices[max(range(len(norms)), key=norms.__getitem__)]
            r = recs[i]
            r.output = r.extracted = best
            r.correct, r.correct_norm, r.format_ok = best == s.target, best_n == s.target, True
            if s.target in s.choices:
                t = chunk[s.choices.index(s.target)]
                r.ref_nll, r.ref_tokens = t.mean, len(t.nll)
        if progress:
            progress(len(ch_idx))

    nll_idx = by_mode.get("nll", [])
    if nll_idx:
        nlls = engine.continuation_nll(
            [items[i][2].messages() for i in nll_idx],
            [items[i][2].target for i in nll_idx],
            batch_size=batch_size,
            progress=progress,
        )
        for i, sc_ in zip(nll_idx, nlls, strict=True):
            recs[i].ref_nll, recs[i].ref_tokens = sc_.mean, len(sc_.nll)
    return recs


def aggregate(records: Iterable[EvalRecord]) -> list[CategoryMetrics]:
    """Per-(suite, category) metrics with Wilson CIs for rates and t CIs for NLL."""
    groups: dict[tuple[str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        groups[(r.suite, r.category)].append(r)
    out = []
    for (suite, cat), rs in groups.items():
        m = CategoryMetrics(suite=suite, category=cat, mode=rs[0].mode, n=len(rs))
        scored = [r for r in rs if r.correct is not None]
        if scored:
            k = sum(is_solved(r, "correct") for r in scored)
            m.accuracy, m.accuracy_ci = k / len(scored), wilson_ci(k, len(scored))
            f = sum(bool(r.format_ok) for r in scored)
            m.format_rate, m.format_ci = f / len(scored), wilson_ci(f, len(scored))
            st = sum(is_solved(r, "strict") for r in scored)
            m.strict_accuracy, m.strict_ci = st / len(scored), wilson_ci(st, len(scored))
        nll = [r.ref_nll for r in rs if r.ref_nll is not None and math.isfinite(r.ref_nll)]
        if nll:
            m.ref_nll, m.ref_nll_ci = mean_ci(nll)
        ent = [r.entropy for r in rs if r.entropy is not None]
        if ent:
            m.entropy = sum(ent) / len(ent)
        out.append(m)
    return out


# --------------------------------------------------------------------------- orchestration


class ProgressHook:
    """Receives progress from long library calls; the CLI renders it. Default: silent."""

    def phase(self, text: str) -> None:  # a new phase starts (e.g. "Loading model")
        log.info(text)

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


class EvalRun(BaseModel):
    """What :func:`run_evaluation` returns."""

    run_id: str
    run_dir: str
    model: str
    metrics: list[CategoryMetrics]
    n_records: int
    seconds: float
    runtime: dict[str, Any]


def evaluate_to_store(
    engine: Engine,
    items: Sequence[Item],
    store: RunStore,
    run_id: str,
    fname: str,
    gen: Any,
    *,
    seed: int,
    reference_nll: bool = True,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Evaluate ``items`` and append their records to ``fname`` of the run, chunk by chunk.

    Chunks span tasks (full batches) yet stay small enough that Ctrl-C or a kill loses little;
    ``gen`` is a :class:`~selfimprove.config.GenerationConfig`.
    """
    chunk = gen.batch_size * 2
    for start in range(0, len(items), chunk):
        recs = evaluate_items(
            engine,
            items[start : start + chunk],
            max_new_tokens=gen.max_new_tokens,
            batch_size=gen.batch_size,
            temperature=gen.temperature,
            top_p=gen.top_p,
            seed=seed,
            stop_after_answer_line=gen.stop_after_answer_line,
            reference_nll=reference_nll,
            progress=progress,
        )
        store.append_records(run_id, fname, [r.model_dump(mode="json") for r in recs])
        fault("eval:batch")


def evaluate_resumable(
    engine: Engine,
    items: Sequence[Item],
    store: RunStore,
    run_id: str,
    fname: str,
    gen: Any,
    *,
    seed: int,
    hook: ProgressHook,
    reference_nll: bool = True,
    planned: Sequence[Item] | None = None,
) -> list[EvalRecord]:
    """Evaluate ``items`` into the run's ``fname`` in chunks, skipping items already stored.

    The one resumable evaluation step of the loop's and the curriculum's phases: records
    already in the file (a killed run's finished chunks) are checked against the planned
    items (``planned``, default ``items``; :func:`check_unchanged_items`) and kept; only the
    rest is evaluated. Returns every record in the file.
    """
    path = store.run_dir(run_id) / fname
    have = store.read_records(run_id, fname, skip_corrupt=True) if path.is_file() else []
    check_unchanged_items(have, items if planned is None else planned, f"run {run_id}, {fname}")
    done = {(str(r["suite"]), str(r["sample_id"])) for r in have}
    todo = [it for it in items if (it[0], it[2].id) not in done]
    hook.start(len(todo), fname.removesuffix(".jsonl"))
    evaluate_to_store(
        engine,
        todo,
        store,
        run_id,
        fname,
        gen,
        seed=seed,
        reference_nll=reference_nll,
        progress=hook.advance,
    )
    return [
        EvalRecord.model_validate(r) for r in store.read_records(run_id, fname, skip_corrupt=True)
    ]


def register_eval_items(store: RunStore, plan: Sequence[Any]) -> NeverTrainRegistry:
    """Add every planned evaluation item to ``<store>/never_train.json`` (atomic, locked against
    runs registering at the same time) and return the registry, which training code checks so no evaluation item is ever trained on."""
    return NeverTrainRegistry.register(
        store.root / "never_train.json",
        [(samples, f"eval:{suite.name}") for suite, _task, samples in plan],
    )


def check_unchanged_items(
    stored: Iterable[EvalRecord | Mapping[str, Any]], items: Sequence[Item], where: str
) -> None:
    """A resumed run's finished records must be of the items it plans now, unchanged.

    Records are matched to planned items by ``(suite, sample_id)``; a record whose
    ``input_hash`` differs from the planned item's means the task data or its generator
    changed since the run started, and mixing the two would compare different questions.

    Raises:
        DataError: naming the changed items and the fix (start a new run).
    """
    from selfimprove.errors import DataError

    planned = {(su, x.id): x.input_hash() for su, _t, x in items}
    changed = []
    for r in stored:
        k = (str(record_field(r, "suite")), str(record_field(r, "sample_id")))
        h = record_field(r, "input_hash")
        if k in planned and h is not None and h != planned[k]:
            changed.append(f"{k[0]}/{k[1]}")
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
        )
        raise DataError(
            f"{where}: {len(changed)} finished item(s) no longer match the run's items "
            f"({shown}: different input than when the run started). The task data or its "
            "generator changed; start a new run instead of resuming this one."
        )


def check_resumed_model(prev: Any, loaded: Any, hook: ProgressHook) -> None:
    """Resuming with other weights than the run started with is refused; other code is
    reported (it may be a bug fix, but results can differ from the finished part).

    Raises:
        ConfigError: the model's weight hash differs from the run's ``provenance.model_hash``.
    """
    from selfimprove.errors import ConfigError
    from selfimprove.store import collect_provenance

    was = prev.provenance.get("model_hash")
    if was and not loaded.hash_matches(was):
        raise ConfigError(
            f"run {prev.id} started with model weights {was}, but {prev.model} now has "
            f"{loaded.weights_hash}; its finished records are of another model. Resume with the "
            "same model files, or start a new run."
        )
    now = collect_provenance()
    then_v = (prev.provenance.get("packages") or {}).get("selfimprove")
    now_v = (now.get("packages") or {}).get("selfimprove")
    then_g = (prev.provenance.get("git") or {}).get("revision")
    now_g = (now.get("git") or {}).get("revision")
    if (then_v, then_g) != (now_v, now_g):
        hook.phase(
            f"Warning: run {prev.id} was started by selfimprove {then_v} (git {then_g}); this "
            f"is {now_v} (git {now_g}). Finished phases are kept as they are."
        )


def resolve_suites(names: Sequence[str]) -> list[Any]:
    """Built-in suite names or task-file paths -> Suite objects (clear error if unknown).

    ``all``, ``skills`` and ``sentinels`` expand to groups of built-in suites. Task files are
    read and checked here (:func:`selfimprove.tasks.importers.check_suite_data`), before any
    model loads; two sources giving one suite name, or a file named like a built-in suite,
    are a :class:`~selfimprove.errors.DataError` (records are keyed by suite name).
    """
    from pathlib import Path

    from selfimprove.errors import DataError
    from selfimprove.tasks.importers import load_suite_file
    from selfimprove.tasks.suites import get_suite, list_suites

    grouped = [s for s in list_suites() if not s.curriculum]  # curriculum pools: by name
    groups = {
        "all": [s.name for s in grouped],
        "skills": [s.name for s in grouped if not s.sentinel],
        "sentinels": [s.name for s in grouped if s.sentinel],
    }
    expanded = [x for name in names for x in groups.get(name, [name])]
    out = []
    builtin = {s.name for s in list_suites()}
    where: dict[str, str] = {}  # suite name -> what it came from
    for name in dict.fromkeys(expanded):
        p = Path(name).expanduser()
        if p.suffix in {".json", ".jsonl"} or p.exists():
            suite = load_suite_file(p)
            if suite.name in builtin:
                raise DataError(
                    f"{p}: its suite name {suite.name!r} is a built-in suite's; items and "
                    "records are keyed by suite name, so they would collide. Rename the file "
                    "(the name comes from its stem, or a BIG-bench task's 'name')."
                )
        else:
            suite = get_suite(name)
        if suite.name in where:
            raise DataError(
                f"{name} and {where[suite.name]} both give a suite named {suite.name!r}; "
                "items and records are keyed by suite name, so they would collide. Rename "
                "one of the files."
            )
        where[suite.name] = name
        out.append(suite)
    return out


def plan_items(
    suites: Sequence[Any], n_per_suite: int, seed: int
) -> list[tuple[Any, Task, list[Sample]]]:
    """Fixed evaluation items: ``n_per_suite`` split evenly over each suite's tasks."""
    plan = []
    for suite in suites:
        k = len(suite.tasks)
        for j, task in enumerate(suite.tasks):
            n_task = n_per_suite // k + (1 if j < n_per_suite % k else 0)
            if n_task == 0:
                continue
            if task.dataset is not None:
                samples = task.samples(min(n_task, len(task.dataset)), seed)
            else:
                samples = task.samples(n_task, seed)
            plan.append((suite, task, samples))
    return plan


def run_evaluation(
    cfg: Config,
    *,
    resume: str | None = None,
    hook: ProgressHook | None = None,
) -> EvalRun:
    """Evaluate ``cfg.model`` on ``cfg.eval.suites`` and store the run.

    Records are appended to ``records.jsonl`` task by task (so Ctrl-C keeps finished work);
    ``resume`` continues an interrupted run, skipping records already stored. Every item is
    added to the store's never-train registry.
    """
    import time

    from selfimprove.models import load_model
    from selfimprove.runtime import resolve_runtime
    from selfimprove.store import collect_provenance

    hook = hook or ProgressHook()
    t0 = time.time()
    store = RunStore(cfg.store.root)
    store.mark_stale_running()
    suites = resolve_suites(cfg.eval.suites)  # fail fast on an unknown suite, before loading
    plan = plan_items(suites, cfg.eval.n, cfg.eval.seed)

    done: set[tuple[str, str]] = set()
    if resume is not None:
        prev = store.resumable(resume, kind="eval")  # checked before the model loads
        from selfimprove.config import Config

        cfg = Config.model_validate(prev.config)
        suites = resolve_suites(cfg.eval.suites)
        plan = plan_items(suites, cfg.eval.n, cfg.eval.seed)
        stored = _read_existing(store, prev.id)
        check_unchanged_items(stored, [(su.name, t, x) for su, t, xs in plan for x in xs], prev.id)
        done = {(r["suite"], r["sample_id"]) for r in stored}

    hook.phase(f"Loading model {cfg.model.name}")
    runtime = resolve_runtime(cfg.runtime.threads, cfg.runtime.dtype)
    loaded = load_model(
        cfg.model.name, adapter=cfg.model.adapter, trust_remote_code=cfg.model.trust_remote_code
    )
    engine = Engine(
        loaded,
        runtime=runtime,
        system_prompt=cfg.model.system_prompt,
        prompt_format=cfg.model.prompt_format,
    )
    if resume is not None:
        check_resumed_model(prev, loaded, hook)

    register_eval_items(store, plan)

    provenance = collect_provenance(
        {
            "runtime": runtime.describe(),
            "model_source": loaded.source,
            "model_hash": loaded.weights_hash,
            "n_params": loaded.n_params,
        }
    )
    config_dict = cfg.model_dump(mode="json")
    if resume is not None:
        ctx = store.resume(prev.id, kind="eval")
    else:
        ctx = store.track(
            "eval", config=config_dict, seed=cfg.eval.seed, model=loaded.name, provenance=provenance
        )
    with ctx as info:
        run_id = info.id
        todo = [(s, t, [x for x in xs if (s.name, x.id) not in done]) for s, t, xs in plan]
        total = sum(len(xs) for _s, _t, xs in todo)
        hook.phase(f"Evaluating {total} items in {len(suites)} suites")
        hook.start(total, "evaluate")
        g = cfg.generation
        flat: list[Item] = [(su.name, t, x) for su, t, xs in todo for x in xs]
        evaluate_to_store(
            engine,
            flat,
            store,
            run_id,
            "records.jsonl",
            g,
            seed=cfg.eval.seed,
            reference_nll=cfg.eval.reference_nll,
            progress=hook.advance,
        )
        records = [EvalRecord.model_validate(r) for r in _read_existing(store, run_id)]
        metrics = aggregate(records)
        store.write_json(run_id, "metrics.json", [m.model_dump(mode="json") for m in metrics])
        seconds = time.time() - t0
        summary = {
            "n_records": len(records),
            "seconds": round(seconds, 1),
            "accuracy": _overall(records),
        }
        store.set_summary(run_id, summary)
    return EvalRun(
        run_id=run_id,
        run_dir=str(store.run_dir(run_id)),
        model=loaded.name,
        metrics=metrics,
        n_records=len(records),
        seconds=seconds,
        runtime=runtime.describe(),
    )


def _overall(records: Sequence[EvalRecord]) -> float | None:
    scored = [r for r in records if r.correct is not None]
    return sum(is_solved(r, "correct") for r in scored) / len(scored) if scored else None


def _read_existing(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    path = store.run_dir(run_id) / "records.jsonl"
    if not path.is_file():
        return []
    return list(store.read_records(run_id, "records.jsonl", skip_corrupt=True))
