"""``detect_changes``: where does model B behave differently from model A?

Pipeline, one library call (``selfimprove diff A B`` runs it; README, "Behavior-change
detection"):

1. **Regions** (:mod:`.regions`): a fixed family of prompt sets, decided before any model
   output is seen. Each region's prompts are split, seeded and disjoint, into a screening
   half and a confirmatory half.
2. **Screen** (:mod:`.screen`): teacher-forced symmetric KL over the first ``k`` positions of
   reference continuations, on the screening half only (prefills, no sampling).
3. **Allocate** (:mod:`.allocate`): the sampling budget (outputs per model) goes where the
   screen points; regions that get nothing get ``p = 1``.
4. **Test** (:mod:`.stats`): on the confirmatory half only, one sampled output per model per
   prompt; paired tests of accuracy, refusal, format, length and cross-model
   log-probability; Bonferroni within a region, Benjamini–Hochberg over the family
   (or SAFFRON/ADDIS in screening-rank order).
5. **Name** (:mod:`.naming`): contrasting output pairs and a distinctive-n-gram label,
   checked on held-out pairs.
6. Optional **exploration** (:mod:`.explore`, contrastive decoding; outside the FDR family)
   and **weights** (:mod:`.weights`, LoRA ΔW norms and spectra).

Sampling uses common random numbers by default (row ``i`` of both models draws from the
same seeded stream): when the models agree, their samples agree, which makes the paired
tests sharper. It stays valid for the McNemar tests (under equal rates, discordant pairs
are equally likely in both directions for any coupling) and is exactly null for identical
models. ``coupling="independent"`` draws B with another seed; null calibration uses it so
that identical models still produce sampling noise for the tests to be checked against.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from selfimprove.diff.allocate import allocate_budget
from selfimprove.diff.naming import (
    ExamplePair,
    RegionLabel,
    contrast_examples,
    headline_tests,
    label_region,
)
from selfimprove.diff.regions import PromptItem, Region, split_region
from selfimprove.diff.screen import (
    ReferenceKind,
    RegionScreen,
    ScreenCost,
    screen_items,
    summarize_screen,
)
from selfimprove.diff.stats import (
    StatName,
    StatTest,
    addis,
    binary_test,
    combine_bonferroni,
    divergence_test,
    length_test,
    saffron,
    untested,
)
from selfimprove.engine import Engine
from selfimprove.errors import ConfigError
from selfimprove.evaluate import ANSWER_LINE_STOP
from selfimprove.stats import benjamini_hochberg
from selfimprove.tasks.validators import is_refusal

log = logging.getLogger(__name__)

PhaseFn = Callable[[str], None]
ALL_STATS: tuple[StatName, ...] = ("accuracy", "refusal", "format", "length", "logprob")


class DiffConfig(BaseModel):
    """Settings of one comparison (serialised into the run folder)."""

    n_per_region: int = Field(24, ge=2, description="Prompts per region (split in two halves).")
    screen_fraction: float = Field(0.5, gt=0, lt=1, description="Share of prompts used to screen.")
    k: int = Field(8, ge=1, description="Continuation positions compared by the KL screen.")
    reference: ReferenceKind = Field(
        "auto", description="Screen continuations: target, greedy, auto."
    )
    budget: int = Field(200, ge=0, description="Sampled outputs per model for the tests.")
    min_per_region: int = Field(
        0, ge=0, description="Samples every region gets regardless of screen."
    )
    min_test: int = Field(6, ge=1, description="Smallest allocation worth testing.")
    kl_floor: float = Field(
        1e-4, ge=0, description="Screen score (nats) at or below which a region gets no samples."
    )
    q: float = Field(0.1, gt=0, lt=1, description="False discovery rate.")
    fdr: Literal["bh", "saffron", "addis"] = Field(
        "bh", description="Offline BH or online SAFFRON/ADDIS."
    )
    kl_margin: float = Field(
        0.05,
        ge=0,
        description="logprob test: smallest divergence (nats/token) that counts as a change.",
    )
    stats: list[StatName] = Field(default_factory=lambda: list(ALL_STATS))
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the tests.")
    max_new_tokens: int = Field(32, ge=1)
    coupling: Literal["common", "independent"] = Field(
        "common", description="Random numbers shared by both models or not."
    )
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    n_examples: int = Field(
        3, ge=0, description="Contrasting output pairs shown per flagged region."
    )


class RegionResult(BaseModel):
    """Everything about one region: screen, allocation, tests, FDR decision, naming."""

    region: str
    description: str = ""
    n_prompts: int
    n_screen: int
    n_confirm: int
    screen: RegionScreen
    screen_rank: int
    allocated: int
    tests: list[StatTest]
    p_value: float
    q_value: float = 1.0
    flagged: bool = False
    top_stat: str = ""
    changed_stats: list[str] = Field(
        default_factory=list,
        description="Flagged regions: the statistics that changed, the most readable first "
        "(naming.headline_tests); the label and examples follow the first.",
    )
    examples: list[ExamplePair] = Field(default_factory=list)
    label: RegionLabel | None = None
    screen_ids: list[str] = Field(default_factory=list)
    confirm_ids: list[str] = Field(default_factory=list)

    def test(self, stat: str) -> StatTest | None:
        return next((t for t in self.tests if t.stat == stat), None)


class DiffCost(BaseModel):
    """What the comparison spent."""

    samples_per_model: int
    screen_prefills_per_model: int
    screen_greedy_tokens: int
    scoring_prefills_per_model: int
    seconds: float
    seconds_screen: float
    seconds_sample: float


class DiffResult(BaseModel):
    """The outcome of :func:`detect_changes`."""

    base: str
    candidate: str
    config: DiffConfig
    regions: list[RegionResult]
    cost: DiffCost
    identical_weights: bool = False

    @property
    def flagged(self) -> list[RegionResult]:
        return sorted((r for r in self.regions if r.flagged), key=lambda r: r.q_value)

    @property
    def changed(self) -> bool:
        return bool(self.flagged)


def check_same_tokenizer(a: Engine, b: Engine) -> None:
    """Both models must share a tokenizer (paired teacher forcing compares token by token)."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ConfigError(
            f"{a.loaded.name} and {b.loaded.name} use different tokenizers, so their "
            "next-token distributions cannot be compared.\n"
            "Fix: compare models of the same family (a base and its fine-tune or adapter)."
        )


def _sample_outputs(
    engine: Engine, items: Sequence[PromptItem], cfg: DiffConfig, seed: int
) -> list[Any]:
    stop = [ANSWER_LINE_STOP] if any(it.has_validator for it in items) else []
    return engine.generate(
        [it.prompt for it in items],
        max_new_tokens=cfg.max_new_tokens,
        stop=stop,
        temperature=cfg.temperature,
        seed=seed,
        batch_size=cfg.batch_size,
    )


def _per_token(nll: Sequence[float]) -> float:
    return float(sum(nll) / len(nll)) if nll else 0.0


def _region_tests(
    region: Region,
    items: Sequence[PromptItem],
    out_a: Sequence[Any],
    out_b: Sequence[Any],
    divergence: Sequence[float],
    cfg: DiffConfig,
) -> list[StatTest]:
    wanted = [s for s in cfg.stats if s not in ("accuracy", "format") or region.has_validator]
    if not items:
        return [untested(s) for s in wanted]
    tests: list[StatTest] = []
    for stat in wanted:
        if stat in ("accuracy", "format"):
            sa = [
                it.task.score(o.text, it.sample)
                for it, o in zip(items, out_a, strict=True)
                if it.task
            ]
            sb = [
                it.task.score(o.text, it.sample)
                for it, o in zip(items, out_b, strict=True)
                if it.task
            ]
            key = "correct" if stat == "accuracy" else "format_ok"
            tests.append(
                binary_test(stat, [getattr(s, key) for s in sa], [getattr(s, key) for s in sb])
            )
        elif stat == "refusal":
            tests.append(
                binary_test(
                    "refusal",
                    [is_refusal(o.text) for o in out_a],
                    [is_refusal(o.text) for o in out_b],
                )
            )
        elif stat == "length":
            tests.append(length_test([o.n_tokens for o in out_a], [o.n_tokens for o in out_b]))
        elif stat == "logprob":
            tests.append(divergence_test(divergence, cfg.kl_margin))
    return tests


def detect_changes(
    engine_a: Engine,
    engine_b: Engine,
    regions: Sequence[Region],
    cfg: DiffConfig | None = None,
    *,
    phase: PhaseFn | None = None,
) -> DiffResult:
    """Compare model B (``engine_b``) with model A (``engine_a``) over a fixed family of regions.

    Returns every region's screening score, allocation, paired tests, region p-value,
    BH (or online) q-value and flag, plus examples and a validated label for flagged regions,
    and the cost. See the module doc for the method and its validity argument.

    Raises:
        ConfigError: the models use different tokenizers, or no region has prompts.
    """
    cfg = cfg or DiffConfig()
    say = phase or (lambda text: log.info(text))
    t0 = time.perf_counter()
    check_same_tokenizer(engine_a, engine_b)
    regions = [r for r in regions if r.items]
    if not regions:
        raise ConfigError(
            "No region has any prompts. Fix: choose suites or a prompt file with prompts."
        )
    identical = engine_a.model is engine_b.model

    # 1. split
    splits = {r.name: split_region(r, cfg.seed, cfg.screen_fraction) for r in regions}
    all_screen = {it.id for s, _ in splits.values() for it in s}
    all_confirm = {it.id for _, c in splits.values() for it in c}
    assert not all_screen & all_confirm, "sample splitting reused a prompt"

    # 2. screen (one batched pass over every region's screening half)
    say(
        f"Screening {len(all_screen)} prompts in {len(regions)} regions (teacher-forced KL, k={cfg.k})"
    )
    screens, scost = _screen_regions(engine_a, engine_b, regions, splits, cfg)
    t_screen = time.perf_counter() - t0
    ranked = sorted(screens, key=lambda name: (-screens[name].score, name))
    rank = {name: i + 1 for i, name in enumerate(ranked)}

    # 3. allocate
    alloc = allocate_budget(
        {n: s.score for n, s in screens.items()},
        {r.name: len(splits[r.name][1]) for r in regions},
        cfg.budget,
        min_per_region=cfg.min_per_region,
        min_test=cfg.min_test,
        floor=cfg.kl_floor,
    )
    chosen: dict[str, list[PromptItem]] = {
        r.name: splits[r.name][1][: alloc[r.name]] for r in regions
    }
    flat = [it for r in regions for it in chosen[r.name]]
    assert not {it.id for it in flat} & all_screen, "a confirmatory prompt was used for screening"

    # 4. sample + score (one batched call per model)
    t1 = time.perf_counter()
    out_a: list[Any] = []
    out_b: list[Any] = []
    divergence: list[float] = []
    if flat:
        say(
            f"Sampling {len(flat)} outputs per model in {sum(1 for v in alloc.values() if v)} regions"
        )
        out_a, out_b, divergence = _sample_and_score(engine_a, engine_b, flat, cfg, say)
    t_sample = time.perf_counter() - t1

    # 5. tests per region
    results: list[RegionResult] = []
    outputs: dict[str, tuple[list[PromptItem], list[Any], list[Any], list[float]]] = {}
    pos = 0
    for r in regions:
        n = alloc[r.name]
        sl = slice(pos, pos + n)
        pos += n
        items = chosen[r.name]
        tests = _region_tests(r, items, out_a[sl], out_b[sl], divergence[sl], cfg)
        results.append(
            _region_result(r, splits[r.name], screens[r.name], rank[r.name], n, items, tests)
        )
        outputs[r.name] = (items, out_a[sl], out_b[sl], divergence[sl])

    # 6. FDR over the fixed family
    flags = _flag_regions(results, cfg)

    # 7. naming of flagged regions
    for res in results:
        items, oa, ob, dv = outputs[res.region]
        if res.flagged and items:
            changed = headline_tests(res.tests, cfg.q)
            res.changed_stats = [t.stat for t in changed]
            stat = res.changed_stats[0] if changed else res.top_stat
            res.examples = contrast_examples(items, oa, ob, dv, stat, cfg.n_examples)
            res.label = label_region([o.text for o in oa], [o.text for o in ob], changed)

    seconds = time.perf_counter() - t0
    n_scored = len(flat) * 2 if "logprob" in cfg.stats else 0
    cost = DiffCost(
        samples_per_model=len(flat),
        screen_prefills_per_model=scost.prefills_per_model,
        screen_greedy_tokens=scost.greedy_tokens,
        scoring_prefills_per_model=n_scored,
        seconds=seconds,
        seconds_screen=t_screen,
        seconds_sample=t_sample,
    )
    log.info("diff done in %.1fs: %d flagged of %d", seconds, sum(flags), len(results))
    return DiffResult(
        base=engine_a.loaded.name,
        candidate=engine_b.loaded.name,
        config=cfg,
        regions=results,
        cost=cost,
        identical_weights=identical,
    )


def _screen_regions(
    engine_a: Engine,
    engine_b: Engine,
    regions: Sequence[Region],
    splits: dict[str, tuple[list[PromptItem], list[PromptItem]]],
    cfg: DiffConfig,
) -> tuple[dict[str, RegionScreen], ScreenCost]:
    """Step 2: one batched KL pass over every region's screening half; per-region summaries."""
    screen_list = [it for r in regions for it in splits[r.name][0]]
    kls, scost = screen_items(
        engine_a, engine_b, screen_list, k=cfg.k, reference=cfg.reference, batch_size=cfg.batch_size
    )
    screens: dict[str, RegionScreen] = {}
    pos = 0
    for r in regions:
        n = len(splits[r.name][0])
        screens[r.name] = summarize_screen(r.name, kls[pos : pos + n], cfg.k)
        pos += n
    return screens, scost


def _region_result(
    region: Region,
    split: tuple[list[PromptItem], list[PromptItem]],
    screen: RegionScreen,
    screen_rank: int,
    allocated: int,
    tested: Sequence[PromptItem],
    tests: list[StatTest],
) -> RegionResult:
    """Step 5's record of one region: Bonferroni over its statistics, the top statistic."""
    top = min(tests, key=lambda t: (t.p_value, -abs(t.effect))) if tests else None
    screen_half, confirm_half = split
    return RegionResult(
        region=region.name,
        description=region.description,
        n_prompts=len(region.items),
        n_screen=len(screen_half),
        n_confirm=len(confirm_half),
        screen=screen,
        screen_rank=screen_rank,
        allocated=allocated,
        tests=tests,
        p_value=combine_bonferroni([t.p_value for t in tests]),
        top_stat=top.stat if top and top.n else "",
        screen_ids=[it.id for it in screen_half],
        confirm_ids=[it.id for it in tested],
    )


def _sample_and_score(
    engine_a: Engine,
    engine_b: Engine,
    items: Sequence[PromptItem],
    cfg: DiffConfig,
    say: PhaseFn,
) -> tuple[list[Any], list[Any], list[float]]:
    """Step 4: one sampled output per model per prompt (common random numbers unless
    ``coupling="independent"``), and the cross-model divergence when ``logprob`` is tested."""
    identical = engine_a.model is engine_b.model
    seed_b = cfg.seed if cfg.coupling == "common" else cfg.seed + 7_777_777
    out_a = _sample_outputs(engine_a, items, cfg, cfg.seed)
    out_b = (
        out_a
        if identical and cfg.coupling == "common"
        else _sample_outputs(engine_b, items, cfg, seed_b)
    )
    divergence: list[float] = []
    if "logprob" in cfg.stats:
        say("Scoring each model's samples under both models")
        divergence = _cross_divergence(engine_a, engine_b, items, out_a, out_b, cfg)
    return out_a, out_b, divergence


def _cross_divergence(
    engine_a: Engine,
    engine_b: Engine,
    items: Sequence[PromptItem],
    out_a: Sequence[Any],
    out_b: Sequence[Any],
    cfg: DiffConfig,
) -> list[float]:
    """Per prompt ``D = [log p_A(y_A) − log p_B(y_A)] + [log p_B(y_B) − log p_A(y_B)]``,
    each term per token (the ``logprob`` statistic; module doc)."""
    prompts = [it.prompt for it in items]
    ta, tb = [o.text for o in out_a], [o.text for o in out_b]
    aa = engine_a.continuation_nll(prompts, ta, batch_size=cfg.batch_size)
    ba = engine_b.continuation_nll(prompts, ta, batch_size=cfg.batch_size)
    ab = engine_a.continuation_nll(prompts, tb, batch_size=cfg.batch_size)
    bb = engine_b.continuation_nll(prompts, tb, batch_size=cfg.batch_size)
    return [
        (_per_token(b_ya.nll) - _per_token(a_ya.nll))
        + (_per_token(a_yb.nll) - _per_token(b_yb.nll))
        for a_ya, b_ya, a_yb, b_yb in zip(aa, ba, ab, bb, strict=True)
    ]


def _flag_regions(results: Sequence[RegionResult], cfg: DiffConfig) -> list[bool]:
    """Step 6: set every region's ``flagged`` and ``q_value`` (BH, or SAFFRON/ADDIS in
    screening-rank order with BH q-values for reference); returns the flags."""
    pvals = [r.p_value for r in results]
    if cfg.fdr == "bh":
        flags, qvals = benjamini_hochberg(pvals, cfg.q)
    else:
        order = sorted(range(len(results)), key=lambda i: results[i].screen_rank)
        decide = saffron if cfg.fdr == "saffron" else addis
        dec = decide([pvals[i] for i in order], cfg.q)
        flags = [False] * len(results)
        for i, d in zip(order, dec, strict=True):
            flags[i] = d
        _, qvals = benjamini_hochberg(pvals, cfg.q)  # reported for reference only
    for res, f, qv in zip(results, flags, qvals, strict=True):
        res.flagged, res.q_value = f, qv
    return flags
