"""A loop's result over seeds: one row per run, the difference of gains pooled across them.

Each seed is one loop run (``selfimprove run --seed N``) with the same config otherwise. Its
headline is the **difference of gains** on confirmation items (targeted − random, last
candidates, all targeted categories: :class:`selfimprove.loop.records.Efficiency`), with the
run's own paired-bootstrap interval. Over seeds:

* **mean difference** with a Student-t interval over the per-seed differences (df = S − 1):
  each seed is one observation, so the interval carries the between-seed spread — the
  honest answer to "would another seed give the same?";
* **fixed-effect (inverse-variance) estimate**: per-seed standard errors from the width of
  each run's 95% interval (``(hi − lo) / (2·1.96)``); it assumes one true difference for all
  seeds and so is narrower; shown beside the mean, never instead of it;
* **sign test**: seeds with a positive difference among those with a non-zero one, exact
  one-sided binomial against ½ (H0: a seed is as likely to favour random as targeted).

Runs that predate the selection/confirmation split report gains measured on the items that
chose the targets (biased upward); they are refused rather than pooled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from scipy import stats

from selfimprove.errors import StoreError
from selfimprove.loop.records import ArmRound, LoopSummary
from selfimprove.stats import Z_975

if TYPE_CHECKING:
    from selfimprove.store import RunStore


class SeedRow(BaseModel):
    """One seed's loop run, in points (percentage points on confirmation items)."""

    run_id: str
    seed: int | None
    n_items: int
    gain_targeted: float
    gain_targeted_ci: tuple[float, float] | None
    gain_random: float
    gain_random_ci: tuple[float, float] | None
    difference: float
    difference_ci: tuple[float, float] | None
    accepted: dict[str, int] = Field(default_factory=dict)
    sentinel_worse: list[str] = Field(
        default_factory=list,
        description="Sentinels whose 95% interval lies wholly on the worse side, in a round "
        "that was accepted (the gate's own test or its per-suite harm test).",
    )


class PooledSeeds(BaseModel):
    """The pooled comparison (see the module docstring for each statistic)."""

    rows: list[SeedRow]
    n_seeds: int
    mean_difference: float
    mean_difference_ci: tuple[float, float] | None
    fixed_effect: float | None
    fixed_effect_ci: tuple[float, float] | None
    n_positive: int
    n_nonzero: int
    sign_test_p: float | None
    mean_gain_targeted: float
    mean_gain_random: float
    configs_differ: list[str] = Field(
        default_factory=list, description="Config keys (besides loop.seed) that differ."
    )


def _pts(x: float | None) -> float:
    return 100.0 * float(x) if x is not None else math.nan


def _pts_ci(ci: Sequence[float] | None) -> tuple[float, float] | None:
    return (100.0 * ci[0], 100.0 * ci[1]) if ci is not None else None


def _sentinel_worse(rounds: Sequence[ArmRound]) -> list[str]:
    out: list[str] = []
    for r in rounds:
        if not r.accepted or r.gate is None:
            continue
        for s in r.gate.sentinels:
            # ``estimate``/``ci`` are improvements (better > 0) whatever the metric's direction
            worse = s.test is not None and s.test.ci[1] < 0
            worse |= s.harm is not None and s.harm.delta_ci[1] < 0
            if worse:
                out.append(f"r{r.round} {r.arm}: {s.suite}")
    return out


def seed_row(
    run_id: str, summary: dict[str, Any], rounds: Sequence[dict[str, Any]], config: dict[str, Any]
) -> SeedRow:
    """One run's row; a run without the split or without an efficiency block is refused."""
    s = LoopSummary.model_validate(summary)
    if not s.n_selection:
        raise StoreError(
            f"Run {run_id} has no selection/confirmation split: its gains were measured on the "
            "items that chose the targets (biased upward), so it cannot be pooled.\n"
            "Fix: pool runs made by this version (`selfimprove run --seed N`)."
        )
    e = s.efficiency
    if e is None or e.difference is None or e.gain_targeted is None or e.gain_random is None:
        raise StoreError(
            f"Run {run_id} has no targeted-vs-random comparison (one arm only, or unfinished).\n"
            "Fix: pool finished runs with both arms (`selfimprove runs list`)."
        )
    seed = (config.get("loop") or {}).get("seed")
    return SeedRow(
        run_id=run_id,
        seed=seed,
        n_items=e.n_items,
        gain_targeted=_pts(e.gain_targeted),
        gain_targeted_ci=_pts_ci(e.gain_targeted_ci),
        gain_random=_pts(e.gain_random),
        gain_random_ci=_pts_ci(e.gain_random_ci),
        difference=_pts(e.difference),
        difference_ci=_pts_ci(e.difference_ci),
        accepted=dict(s.accepted_rounds),
        sentinel_worse=_sentinel_worse([ArmRound.model_validate(r) for r in rounds]),
    )


def pool(rows: Sequence[SeedRow], configs_differ: Sequence[str] = ()) -> PooledSeeds:
    """Mean difference with a t interval, the fixed-effect estimate, the sign test."""
    if not rows:
        raise StoreError("No runs to pool.\nFix: give the ids of finished loop runs.")
    d = [r.difference for r in rows]
    n = len(d)
    mean = sum(d) / n
    ci = None
    if n >= 2:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
    fe = fe_ci = None
    ses = [
        (r.difference_ci[1] - r.difference_ci[0]) / (2 * Z_975) if r.difference_ci else 0.0
        for r in rows
    ]
    if all(se > 0 for se in ses):
        w = [1 / se**2 for se in ses]
        fe = sum(wi * x for wi, x in zip(w, d, strict=True)) / sum(w)
        se = math.sqrt(1 / sum(w))
        fe_ci = (fe - Z_975 * se, fe + Z_975 * se)
    pos = sum(x > 0 for x in d)
    nz = sum(x != 0 for x in d)
    p = float(stats.binomtest(pos, nz, 0.5, alternative="greater").pvalue) if nz else None
    return PooledSeeds(
        rows=list(rows),
        n_seeds=n,
        mean_difference=mean,
        mean_difference_ci=ci,
        fixed_effect=fe,
        fixed_effect_ci=fe_ci,
        n_positive=pos,
        n_nonzero=nz,
        sign_test_p=p,
        mean_gain_targeted=sum(r.gain_targeted for r in rows) / n,
        mean_gain_random=sum(r.gain_random for r in rows) / n,
        configs_differ=list(configs_differ),
    )


def config_differences(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between the runs' stored configs, except seeds."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    flats = [flat(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    skip = {"store.root", "runtime.threads"}  # and every seed: they are meant to differ
    return [
        k
        for k in keys
        if k not in skip
        and k.rsplit(".", 1)[-1] != "seed"
        and len({repr(f.get(k)) for f in flats}) > 1
    ]


def pool_runs(store: RunStore, run_ids: Sequence[str]) -> PooledSeeds:
    """Read each run (ids or unique prefixes) from ``store`` and pool them.

    Refuses a run that is not a finished loop run, one given twice, and runs whose configs
    differ in anything but their seeds (they are not seeds of one experiment).
    """
    from pydantic import ValidationError

    rows: list[SeedRow] = []
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rid in run_ids:
        info = store.get_run(rid)
        if info.id in seen:
            raise StoreError(f"Run {info.id} is given twice.\nFix: give each seed's run once.")
        seen.add(info.id)
        if info.kind != "run" or info.status != "completed":
            raise StoreError(
                f"Run {info.id} is a {info.status} {info.kind!r} run; only finished loop runs "
                "(`selfimprove run`) can be pooled.\n"
                f"Fix: finish it with `selfimprove run --resume {info.id}`, or leave it out."
            )
        summary = info.summary or {}
        try:
            rounds = store.read_json(info.id, "summary_rounds.json")
            rows.append(seed_row(info.id, summary, rounds, info.config))
        except ValidationError as e:
            raise StoreError(
                f"Run {info.id}'s summary does not match this version's schema "
                f"({str(e).splitlines()[0]}).\nFix: pool runs made by this version."
            ) from None
        configs.append(info.config)
    differ = config_differences(configs)
    if differ:
        raise StoreError(
            "These runs are not seeds of one experiment: their configs differ in "
            + ", ".join(differ[:8])
            + ("…" if len(differ) > 8 else "")
            + ".\nFix: pool runs that differ only in --seed."
        )
    return pool(rows)
