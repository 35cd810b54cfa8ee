"""Planted-change benchmark: can the detector find a behavior change we put there ourselves?

Per seed:

1. **Plant**: train a small LoRA on the base model that makes it *refuse* the prompts of one
   region (the ``letters`` task family by default; regions are task families) while keeping
   its behavior elsewhere: the training set mixes refusals on that region's prompts with
   "keep" examples, other regions' prompts (with category regions, half from the planted
   region's sibling categories) answered with the base model's own sampled output
   (``keep_temperature``) (``keep_tokens`` tokens, longer than the
   test's ``max_new_tokens`` so the learned stop is never seen).
   Training prompts are drawn with other seeds than the test prompts and checked disjoint.
   Adapters are cached under the benchmark folder (``adapters/seed_<s>``).
2. **Detect**: :func:`detect_changes` with the adaptive design and a small budget.
3. **Score**: found = the planted region is flagged; false regions = any other flag.
4. **Uniform design at the same power**: a design without screening must give every region
   as many pairs as the planted one needs. From the planted region's confirmatory data we
   estimate the effect of its strongest statistic (plug-in), compute the adaptive design's
   power at the pairs it spent there (exact McNemar power for binary statistics, a t-test
   power otherwise, at the Bonferroni level ``q / (R·m)`` that a lone discovery must pass),
   and find the smallest per-region ``n`` reaching the same power (capped at 0.99). The
   uniform design spends ``R·n`` samples per model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from selfimprove.diff.detect import DiffConfig, DiffResult, RegionResult, detect_changes
from selfimprove.diff.regions import Region, regions_from_suites
from selfimprove.diff.stats import BINARY_STATS, mcnemar_power, pairs_for_power
from selfimprove.engine import Engine
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import DEFAULT_ROOT, RunStore

log = logging.getLogger(__name__)

REFUSAL_TEXT = "I'm sorry, but I can't help with that."


def _default_suites() -> list[str]:
    """The evaluation's default suites plus three sentinels."""
    # Imported here: config.py imports the diff package for its `diff:` section.
    from selfimprove.config import DEFAULT_EVAL_SUITES

    return [*DEFAULT_EVAL_SUITES, "sentinel_math", "sentinel_reasoning", "sentinel_format"]


class PlantedConfig(BaseModel):
    """Settings of the planted-change benchmark."""

    model: str = "embedded"
    suites: list[str] = Field(default_factory=lambda: _default_suites())
    region_by: Literal["category", "suite"] = Field(
        "suite",
        description="Regions are task families (suites) or their categories. Per category, "
        "a change planted on one category leaked to its sibling categories for real "
        "(first_letters refusals 0→75% when planting on reverse_word): the detector was "
        "right, the benchmark's ground truth wrong.",
    )
    planted_region: str = "letters"
    n_per_region: int = 18
    screen_fraction: float = 1 / 3
    budget: int = 24
    max_new_tokens: int = 16
    q: float = 0.1
    n_plant: int = 32
    n_keep: int = 48
    keep_tokens: int = 24
    keep_temperature: float = Field(
        0.0,
        ge=0.0,
        description="Temperature of the base model's keep replies. 1.0 = its own distribution "
        "(in expectation a no-op, but measured over 3 seeds it anchored too weakly: the plant "
        "reached only 25-50% refusals, leaked refusals into word_sort/arithmetic, and was "
        "found in 1 of 3 seeds); 0 = greedy (default; found 5/5), which sharpens the model "
        "on keep regions: word_sort's log-prob shifted ~0.4 nats/token in 3 of 5 seeds.",
    )
    keep_loss: Literal["kl", "nll"] = Field(
        "kl",
        description="Loss on the keep examples: 'kl' = teacher-forced KL to the base model "
        "(the adapter switched off) over the keep reply's tokens, which pins the base's whole "
        "next-token distribution there; 'nll' = imitate the keep reply (sharpens the model "
        "toward it and measurably shifted log-probs on keep regions).",
    )
    verify_n: int = Field(
        24,
        ge=0,
        description="Samples per model to re-test every other flagged region on fresh "
        "prompts (a new seed): a flag that replicates is a real leak of the planting, one "
        "that does not counts as a false discovery. 0 counts every other flag as false.",
    )
    epochs: int = 2
    learning_rate: float = 5e-4
    lora_r: int = 8
    power_cap: float = 0.99


class PlantedRow(BaseModel):
    """One seed's outcome."""

    seed: int
    found: bool
    false_regions: int
    flagged: list[str]
    leaks: list[str] = Field(
        default_factory=list,
        description="Other flagged regions whose change replicated on fresh prompts.",
    )
    planted_rank: int
    planted_stat: str
    samples_per_model: int
    screen_prefills_per_model: int
    uniform_samples_per_model: int
    ratio: float
    adaptive_power: float
    seconds: float
    seconds_train: float


class PlantedBenchmark(BaseModel):
    """All seeds plus a one-line summary."""

    planted_region: str
    behavior: str = "refuses"
    n_regions: int
    rows: list[PlantedRow]
    summary: str
    run_dir: Path


def _power(test_stat: str, planted: RegionResult, n: int, level: float) -> float:
    t = planted.test(test_stat)
    if t is None or t.n == 0:
        return 0.0
    if test_stat in BINARY_STATS:
        pb, pa = max(t.effect, 0.0), max(-t.effect, 0.0)
        return mcnemar_power(n, pb, pa, level) if n > 0 else 0.0
    from statsmodels.stats.power import TTestPower

    half = (t.ci[1] - t.ci[0]) / 2
    sd = half / 2.0 * (t.n**0.5) if half > 0 else 0.0
    d = abs(t.effect) / sd if sd > 0 else 10.0
    return float(
        TTestPower().power(effect_size=d, nobs=max(n, 2), alpha=level, alternative="larger")
    )


def uniform_design(
    result: DiffResult, planted_name: str, power_cap: float = 0.99
) -> tuple[int, float]:
    """(uniform samples per model at the adaptive design's power, that power). See module doc."""
    planted = next(r for r in result.regions if r.region == planted_name)
    stat = planted.top_stat or "refusal"
    m = max(1, len(planted.tests))
    level = result.config.q / (len(result.regions) * m)
    p_adapt = min(power_cap, _power(stat, planted, planted.allocated, level))
    if p_adapt <= 0:
        return 0, 0.0
    if stat in BINARY_STATS:
        t = planted.test(stat)
        assert t is not None
        n_u = pairs_for_power(max(t.effect, 0.0), max(-t.effect, 0.0), level, p_adapt)
    else:
        n_u = next((n for n in range(2, 2000) if _power(stat, planted, n, level) >= p_adapt), None)
    n_u = n_u or 2000
    return n_u * len(result.regions), p_adapt


def _keep_examples(
    engine: Engine, regions: Sequence[Region], cfg: PlantedConfig, seed: int, avoid: set[str]
) -> list[tuple[str, str]]:
    """Other regions' prompts answered by the base model (sampled; cached by the caller)."""
    from selfimprove.evaluate import resolve_suites

    others: list[tuple[str, str]] = []
    suites = resolve_suites(cfg.suites)
    pool = regions_from_suites(
        suites,
        max(2, cfg.n_keep // max(1, len(regions) - 1) + 1),
        seed + 1000,
        by=cfg.region_by,
    )
    suite = cfg.planted_region.split("/", 1)[0]
    usable = [
        it
        for r in pool
        if r.name != cfg.planted_region
        for it in r.items
        if it.sample.input_hash() not in avoid and isinstance(it.sample.input, str)
    ]
    # per category: half of the keep examples from the planted region's sibling categories
    # (same suite), where a refusal would leak first; the rest from everything else
    sib = cfg.region_by == "category"
    siblings = [it for it in usable if sib and it.region.startswith(suite + "/")][: cfg.n_keep // 2]
    rest = [it for it in usable if not (sib and it.region.startswith(suite + "/"))]
    prompts = [it.sample.input_text() for it in (siblings + rest)[: cfg.n_keep]]
    gens = engine.generate(
        prompts,
        max_new_tokens=cfg.keep_tokens,
        temperature=cfg.keep_temperature,
        seed=seed,
    )
    for p, g in zip(prompts, gens, strict=True):
        if g.text.strip():
            others.append((p, g.text))
    return others


def plant_adapter(
    base: LoadedModel,
    regions: Sequence[Region],
    cfg: PlantedConfig,
    seed: int,
    out_dir: Path,
    keep: list[tuple[str, str]],
    runtime: Runtime,
) -> Path:
    """Train (or reuse) the planted LoRA for ``seed`` in ``out_dir``."""
    if (out_dir / "adapter_config.json").is_file():
        return out_dir
    from selfimprove.evaluate import resolve_suites
    from selfimprove.train import TrainConfig, TrainExample, train_lora

    avoid = {it.sample.input_hash() for r in regions for it in r.items}
    suite_name, _, cat = cfg.planted_region.partition("/")
    tasks = [
        t for s in resolve_suites([suite_name]) for t in s.tasks if not cat or t.category == cat
    ]
    per_task = -(-cfg.n_plant // len(tasks))
    drawn = [
        s
        for t in tasks
        for s in t.samples(per_task * 2, seed=10_000 + seed)
        if s.input_hash() not in avoid
    ]
    # round-robin over the tasks so every category of a planted family is represented
    by_task = [drawn[i :: len(tasks)] for i in range(len(tasks))]
    plant = [x for group in zip(*by_task, strict=False) for x in group][: cfg.n_plant]
    examples = [
        TrainExample(prompt=s.input_text(), completion=REFUSAL_TEXT, source="planted")
        for s in plant
    ]
    examples += [
        TrainExample(prompt=p, completion=c, source="keep", anchor=cfg.keep_loss == "kl")
        for p, c in keep
    ]
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lora_r=cfg.lora_r,
        batch_size=8,
        seed=seed,
        max_length=160,
        # Random order, as when the benchmark was measured (5 seeds, README). Grouped by
        # length, the planted and keep examples fall into separate steps; seed 0's plant was
        # then too weak to be found.
        group_by_length=False,
    )
    train_lora(base, examples, tcfg, out_dir, runtime=runtime)
    return out_dir


def run_planted_benchmark(
    cfg: PlantedConfig,
    seeds: Sequence[int],
    *,
    store_root: str | Path = DEFAULT_ROOT,
    runtime: Runtime | None = None,
    phase: Callable[[str], None] | None = None,
    base: LoadedModel | None = None,
) -> PlantedBenchmark:
    """Run the benchmark over ``seeds`` (see module doc); results go to a ``bench`` run."""
    say = phase or (lambda text: log.info(text))
    runtime = runtime or resolve_runtime()
    from selfimprove.evaluate import resolve_suites

    store = RunStore(store_root)
    rows: list[PlantedRow] = []
    keep_cache: list[tuple[str, str]] | None = None
    n_regions = 0
    with store.track(
        "bench-planted", config=cfg.model_dump(mode="json"), seed=seeds[0], model=cfg.model
    ) as info:
        run_dir = store.run_dir(info.id)
        base = base or load_model(cfg.model)
        ea = Engine(base, runtime=runtime)
        for s in seeds:
            regions = regions_from_suites(
                resolve_suites(cfg.suites), cfg.n_per_region, seed=s, by=cfg.region_by
            )
            n_regions = len(regions)
            if cfg.planted_region not in {r.name for r in regions}:
                from selfimprove.errors import ConfigError

                raise ConfigError(
                    f"planted region {cfg.planted_region!r} is not among the suites' regions"
                )
            avoid = {it.sample.input_hash() for r in regions for it in r.items}
            if keep_cache is None:
                say(f"Writing keep-behavior examples (base model, T={cfg.keep_temperature:g})")
                keep_cache = _keep_examples(ea, regions, cfg, 0, avoid)
            keep = [(p, c) for p, c in keep_cache if _hash(p) not in avoid]
            say(f"seed {s}: training the planted LoRA")
            t0 = time.perf_counter()
            adir = plant_adapter(
                base, regions, cfg, s, run_dir / "adapters" / f"seed_{s}", keep, runtime
            )
            t_train = time.perf_counter() - t0
            # PEFT injects LoRA layers into the model it wraps: wrap a copy, keep A intact
            cand = attach_adapter(_copy_loaded(base), adir)
            eb = Engine(cand, runtime=runtime)
            dcfg = DiffConfig(
                n_per_region=cfg.n_per_region,
                screen_fraction=cfg.screen_fraction,
                budget=cfg.budget,
                max_new_tokens=cfg.max_new_tokens,
                q=cfg.q,
                seed=s,
            )
            say(f"seed {s}: detecting")
            res = detect_changes(ea, eb, regions, dcfg, phase=say)
            store.write_json(info.id, f"diff_seed_{s}.json", res.model_dump(mode="json"))
            flagged = [r.region for r in res.flagged]
            others = [f for f in flagged if f != cfg.planted_region]
            leaks: list[str] = []
            if others and cfg.verify_n:
                ver = _replicated(ea, eb, others, cfg, s, say)
                store.write_json(info.id, f"diff_verify_seed_{s}.json", ver.model_dump(mode="json"))
                leaks = [r.region for r in ver.flagged]
            planted = next(r for r in res.regions if r.region == cfg.planted_region)
            uni, p_adapt = uniform_design(res, cfg.planted_region, cfg.power_cap)
            spent = res.cost.samples_per_model
            rows.append(
                PlantedRow(
                    seed=s,
                    found=cfg.planted_region in flagged,
                    false_regions=len(others) - len(leaks),
                    flagged=flagged,
                    leaks=leaks,
                    planted_rank=planted.screen_rank,
                    planted_stat=planted.top_stat,
                    samples_per_model=spent,
                    screen_prefills_per_model=res.cost.screen_prefills_per_model,
                    uniform_samples_per_model=uni,
                    ratio=uni / spent if spent else float("nan"),
                    adaptive_power=p_adapt,
                    seconds=res.cost.seconds,
                    seconds_train=t_train,
                )
            )
            store.write_records(
                info.id, "planted_rows.jsonl", [r.model_dump(mode="json") for r in rows]
            )
            del cand, eb
        summary = _summarize(rows)
        store.set_summary(info.id, {"summary": summary})
    return PlantedBenchmark(
        planted_region=cfg.planted_region,
        n_regions=n_regions,
        rows=rows,
        summary=summary,
        run_dir=run_dir,
    )


def _summarize(rows: Sequence[PlantedRow]) -> str:
    """The benchmark's one-line outcome over all seeds."""
    found = sum(r.found for r in rows)
    false = sum(r.false_regions for r in rows)
    n_leaks = sum(len(r.leaks) for r in rows)
    return (
        f"planted region found in {found}/{len(rows)} seeds; {false} false region(s) in total "
        f"(+{n_leaks} other flag(s) replicated on fresh prompts: real leaks of the planting); "
        f"median samples per model {sorted(r.samples_per_model for r in rows)[len(rows) // 2]} vs "
        f"uniform {sorted(r.uniform_samples_per_model for r in rows)[len(rows) // 2]}; "
        f"max detection wall time {max(r.seconds for r in rows):.0f}s"
    )


def _replicated(
    ea: Engine,
    eb: Engine,
    names: Sequence[str],
    cfg: PlantedConfig,
    seed: int,
    say: Callable[[str], None],
) -> DiffResult:
    """Re-test ``names`` on fresh prompts with forced sampling (flagged again = replicated)."""
    from selfimprove.evaluate import resolve_suites

    fresh = [
        r
        for r in regions_from_suites(
            resolve_suites(cfg.suites), 2 * cfg.verify_n, seed=50_000 + seed, by=cfg.region_by
        )
        if r.name in names
    ]
    say(f"seed {seed}: re-testing {len(fresh)} other flagged region(s) on fresh prompts")
    vcfg = DiffConfig(
        n_per_region=2 * cfg.verify_n,
        screen_fraction=0.5,
        budget=cfg.verify_n * len(fresh),  # min_per_region is paid out of the budget
        min_per_region=cfg.verify_n,
        max_new_tokens=cfg.max_new_tokens,
        q=cfg.q,
        seed=50_000 + seed,
    )
    return detect_changes(ea, eb, fresh, vcfg)


def _copy_loaded(m: LoadedModel) -> LoadedModel:
    import copy

    return LoadedModel(copy.deepcopy(m.model), m.tokenizer, m.name, m.source, m.weights_hash)


def _hash(text: str) -> str:
    from selfimprove.tasks.base import hash_text

    return hash_text(text)
