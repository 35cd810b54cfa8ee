"""One diff run end to end: load models, build regions, detect, store records, write the page.

This is what ``selfimprove diff`` calls, with the ``diff:`` section of selfimprove.yaml
(:class:`~selfimprove.diff.run_config.DiffRunConfig`). The loop's gate calls
:func:`detect_changes` directly with engines it already holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from selfimprove.diff.detect import DiffConfig, DiffResult, detect_changes
from selfimprove.diff.explore import ExploreSample, contrastive_decode
from selfimprove.diff.regions import (
    ClusterBy,
    Region,
    regions_from_jsonl,
    regions_from_suites,
    split_region,
)
from selfimprove.diff.report import render_diff_report
from selfimprove.diff.weights import ModuleDelta, lora_delta_summary
from selfimprove.engine import Engine
from selfimprove.errors import ModelLoadError
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import DEFAULT_ROOT, RunStore

log = logging.getLogger(__name__)


class DiffRun(BaseModel):
    """A stored diff run."""

    model_config = {"arbitrary_types_allowed": True}
    result: DiffResult
    run_id: str
    run_dir: Path
    report: Path
    weights: list[ModuleDelta] = Field(default_factory=list)
    exploration: list[ExploreSample] = Field(default_factory=list)


def build_regions(
    suites: Sequence[str] | None,
    prompts: str | Path | None,
    n_per_region: int,
    seed: int,
    by: Literal["category", "suite"] = "category",
    cluster_by: ClusterBy = "auto",
) -> list[Region]:
    """Regions from suite names (``suite/category`` or whole suites) and/or a JSONL bank
    (its rows without a region are clustered ``cluster_by``: embedding or TF-IDF)."""
    from selfimprove.evaluate import resolve_suites

    regions: list[Region] = []
    if suites:
        regions += regions_from_suites(resolve_suites(list(suites)), n_per_region, seed, by=by)
    if prompts:
        regions += regions_from_jsonl(prompts, seed=seed, cluster_by=cluster_by)
    return regions


def load_pair(
    base: str, candidate: str | None, adapter: str | None
) -> tuple[LoadedModel, LoadedModel]:
    """Load A and B. ``candidate=None`` with an adapter means base + adapter."""
    a = load_model(base)
    b = a if candidate is None or candidate == base else load_model(candidate)
    if adapter:
        try:
            if b is a:  # PEFT injects LoRA layers in place: wrap a copy so A stays the base
                from selfimprove.diff.planted import _copy_loaded

                b = _copy_loaded(a)
            b = attach_adapter(b, adapter)
        except ModelLoadError:
            raise
        except Exception as e:  # shape mismatch: adapter trained on another base
            raise ModelLoadError(
                f"The adapter {adapter} does not fit {b.name}: {str(e)[:300]}\n"
                "Fix: pass the base model the adapter was trained on."
            ) from e
    return a, b


def run_diff(
    a: LoadedModel,
    b: LoadedModel,
    regions: Sequence[Region],
    cfg: DiffConfig,
    *,
    store_root: str | Path = DEFAULT_ROOT,
    runtime: Runtime | None = None,
    explore: int = 0,
    explore_lambda: float = 0.5,
    phase: Callable[[str], None] | None = None,
    kind: str = "diff",
) -> DiffRun:
    """Detect changes of B vs A and store everything in a new run folder."""
    runtime = runtime or resolve_runtime()
    ea = Engine(a, runtime=runtime)
    eb = ea if b is a else Engine(b, runtime=runtime)
    store = RunStore(store_root)
    with store.track(
        kind,
        config={"diff": cfg.model_dump(mode="json"), "base": a.name, "candidate": b.name},
        seed=cfg.seed,
        model=f"{a.name} vs {b.name}",
    ) as info:
        result = detect_changes(ea, eb, regions, cfg, phase=phase)
        weights = lora_delta_summary(b.model) if hasattr(b.model, "peft_config") else []
        exploration: list[ExploreSample] = []
        if explore > 0:
            top = (result.flagged or sorted(result.regions, key=lambda r: r.screen_rank))[:1]
            if top:
                reg = next(r for r in regions if r.name == top[0].region)
                screen_items, _ = split_region(reg, cfg.seed, cfg.screen_fraction)
                t0 = time.perf_counter()
                exploration = contrastive_decode(
                    ea, eb, [it.prompt for it in screen_items[:explore]], lam=explore_lambda
                )
                log.info("exploration took %.1fs", time.perf_counter() - t0)
        store.write_json(info.id, "diff_result.json", result.model_dump(mode="json"))
        store.write_records(
            info.id,
            "diff_regions.jsonl",
            [r.model_dump(mode="json") for r in result.regions],
        )
        if weights:
            store.write_records(info.id, "diff_weights.jsonl", [w.model_dump() for w in weights])
        if exploration:
            store.write_records(
                info.id, "diff_explore.jsonl", [x.model_dump() for x in exploration]
            )
        report = render_diff_report(
            result,
            store.run_dir(info.id) / "diff_report.html",
            exploration=exploration,
            weights=weights,
        )
        store.set_summary(
            info.id,
            {
                "flagged": [r.region for r in result.flagged],
                "samples_per_model": result.cost.samples_per_model,
                "seconds": result.cost.seconds,
            },
        )
    return DiffRun(
        result=result,
        run_id=info.id,
        run_dir=store.run_dir(info.id),
        report=report,
        weights=weights,
        exploration=exploration,
    )


class NullCalibration(BaseModel):
    """A-vs-A comparisons over several seeds: how often is anything flagged?"""

    model: str
    seeds: list[int]
    n_flagged_regions: list[int]
    fraction_with_any_flag: float
    q: float
    samples_per_model: list[int]
    seconds: list[float]


def null_calibration(
    engine: Engine,
    regions_for_seed: Callable[[int], Sequence[Region]],
    cfg: DiffConfig,
    seeds: Sequence[int],
    *,
    other: Engine | None = None,
    phase: Callable[[str], None] | None = None,
) -> tuple[NullCalibration, list[DiffResult]]:
    """Compare a model with itself (or ``other``, e.g. a same-data fine-tune) per seed.

    With identical weights the KL screen is exactly 0 and nothing would be sampled, so the
    calibration forces ``min_per_region`` samples everywhere and draws the two sides with
    independent random numbers: the tests then see pure sampling noise, and any flag is a
    false discovery.
    """
    results = []
    for s in seeds:
        c = cfg.model_copy(update={"seed": s, "coupling": "independent"})
        results.append(detect_changes(engine, other or engine, regions_for_seed(s), c, phase=phase))
    n_flag = [len(r.flagged) for r in results]
    return (
        NullCalibration(
            model=engine.loaded.name,
            seeds=list(seeds),
            n_flagged_regions=n_flag,
            fraction_with_any_flag=sum(1 for n in n_flag if n) / max(1, len(n_flag)),
            q=cfg.q,
            samples_per_model=[r.cost.samples_per_model for r in results],
            seconds=[r.cost.seconds for r in results],
        ),
        results,
    )


def describe(result: DiffResult) -> dict[str, Any]:
    """A short dict summary (for logs and JSON output)."""
    return {
        "changed": result.changed,
        "flagged": [
            {
                "region": r.region,
                "stat": r.top_stat,
                "changed_stats": r.changed_stats,
                "q": r.q_value,
                "label": r.label.text if r.label else "",
            }
            for r in result.flagged
        ],
        "samples_per_model": result.cost.samples_per_model,
        "seconds": round(result.cost.seconds, 1),
    }
