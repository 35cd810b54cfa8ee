"""Strategy search: an Optuna ask/tell controller over how the loop learns (source 000, §4).

What it does:
  * A **space** of loop strategies (:data:`KNOBS`): learning rate, epochs, LoRA rank and
    target modules, the example-weight policy, how weak areas are ranked (hardest first vs
    most learnable), the self-generated data fraction.
  * **Objective** = the loop's unbiased gain: the targeted arm's last-round candidate on the
    targets' *confirmation* items (``summary.efficiency.gain_targeted``, items the selection
    never saw), **paired against the default strategy on the same seeds** and averaged over
    seeds: ``mean_s [gain(trial, s) − gain(default, s)]`` in points. Optuna has no notion of
    noisy, repeated evaluation, so the controller pairs and repeats itself; the default's
    run per seed is made once and kept in the study.
  * **Successive halving, two rungs**: every trial first runs as a cheap proxy (``proxy``:
    fewer rounds, its own seeds); the ``promote`` best proxies then run at full size on
    *new* seeds (``full_seeds``), each paired against the default on those seeds, with a
    t interval over seeds. A promoted strategy is judged only on the full rung.
  * **Storage**: one Optuna journal file per search (``<store>/search/<name>/journal.log``,
    ``JournalFileBackend``: safe for several processes, unlike SQLite), so a killed search
    resumes where it stopped (finished trials are kept, a trial left RUNNING by a dead
    process is marked FAIL and asked again) and ``optuna-dashboard`` can open it. Every
    trial is also a normal loop run in the store.

What it does not do: run the loop itself (:func:`selfimprove.loop.run_loop`), or claim a win:
the result says whether the best full-rung difference's interval excludes 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from selfimprove.config import Config
from selfimprove.errors import ConfigError
from selfimprove.evaluate import ProgressHook
from selfimprove.loop.config import LoopConfig

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: knob -> (Optuna kind, arguments); how each maps into the loop config is in _apply
KNOBS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "learning_rate": ("float_log", (1e-4, 3e-3)),
    "epochs": ("int", (1, 4)),
    "lora_r": ("categorical", ((4, 8, 16),)),
    "target_modules": ("categorical", (("all-linear", "attention"),)),
    "weight_policy": ("categorical", (("uniform", "confidence", "inverse"),)),
    "rank_by": ("categorical", (("learnable", "error"),)),
    "self_data_fraction": ("float", (0.0, 0.5)),
}


class SearchConfig(BaseModel):
    """One search (``selfimprove search``)."""

    name: str = Field("default", description="Study name; rerunning a name resumes it.")
    trials: int = Field(12, ge=1, description="Proxy trials in total (resumed ones count).")
    knobs: list[str] = Field(default_factory=lambda: list(KNOBS))
    proxy_seeds: list[int] = Field(default_factory=lambda: [100])
    proxy_rounds: int = Field(1, ge=1, description="Loop rounds in a proxy trial.")
    promote: int = Field(2, ge=0, description="Best proxies run again at full size.")
    full_seeds: list[int] = Field(default_factory=lambda: [200, 201])
    sampler_seed: int = Field(0, description="Seed of Optuna's TPE sampler.")


class TrialRow(BaseModel):
    number: int
    rung: str
    params: dict[str, Any]
    objective: float | None  # mean paired difference vs default, points
    per_seed: dict[int, float] = Field(default_factory=dict)
    run_ids: list[str] = Field(default_factory=list)
    ci: tuple[float, float] | None = None  # t interval over seeds (full rung, >= 2 seeds)


class SearchResult(BaseModel):
    name: str
    journal: str
    default: dict[str, dict[int, float]]  # rung -> seed -> default gain (points)
    proxies: list[TrialRow]
    full: list[TrialRow]
    best: TrialRow | None
    verdict: str


def _apply(cfg: Config, params: dict[str, Any], seed: int, rounds: int | None) -> Config:
    """``cfg`` with a strategy's knob values, the seed and the rung's size."""
    d = cfg.loop.model_dump()
    d["seed"] = d["train"]["seed"] = seed  # the run has one seed (LoopConfig checks it)
    if rounds is not None:
        d["rounds"] = rounds
    for k, v in params.items():
        if k == "learning_rate":
            d["train"]["learning_rate"] = float(v)
        elif k == "epochs":
            d["train"]["epochs"] = int(v)
        elif k == "lora_r":
            d["train"]["lora_r"], d["train"]["lora_alpha"] = int(v), 2 * int(v)
        elif k == "target_modules":
            d["train"]["target_modules"] = "all-linear" if v == "all-linear" else ATTENTION_MODULES
        elif k == "weight_policy":
            d["train"]["weight_policy"] = v
        elif k == "rank_by":
            d["weakness"]["rank_by"] = v
        elif k == "self_data_fraction":
            d["self_data"]["fraction"] = float(v)
        else:  # validated in run_search
            raise ConfigError(f"unknown search knob {k!r}")
    out = cfg.model_copy(deep=True)
    out.loop = LoopConfig.model_validate(d)
    return out


def _suggest(trial: Any, knobs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k in knobs:
        kind, args = KNOBS[k]
        if kind == "float_log":
            params[k] = trial.suggest_float(k, *args, log=True)
        elif kind == "float":
            params[k] = trial.suggest_float(k, *args)
        elif kind == "int":
            params[k] = trial.suggest_int(k, *args)
        else:
            params[k] = trial.suggest_categorical(k, list(args[0]))
    return params


def _gain(run_loop: Callable[..., Any], cfg: Config, hook: ProgressHook) -> tuple[float, str]:
    """One loop run: (targeted gain on confirmation items in points, run id)."""
    res = run_loop(cfg, hook=hook)
    e = res.summary.efficiency
    if e is None or e.gain_targeted is None:
        raise ConfigError(
            f"Loop run {res.run_id} scored no target confirmation items, so it has no gain to "
            "search on.\nFix: raise loop.eval_n or lower loop.selection_fraction."
        )
    return 100.0 * e.gain_targeted, res.run_id


def _t_interval(xs: list[float]) -> tuple[float, float] | None:
    if len(xs) < 2:
        return None
    from scipy import stats

    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    h = float(stats.t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return (m - h, m + h)


class _Runner:
    """Runs (and remembers, in the study's user attributes) loops for one search."""

    def __init__(self, study: Any, cfg: Config, scfg: SearchConfig, hook: ProgressHook) -> None:
        from selfimprove.loop import run_loop

        self.study, self.cfg, self.scfg, self.hook, self.run_loop = study, cfg, scfg, hook, run_loop

    def default(self, rung: str, seed: int) -> float:
        key = f"default:{rung}:{seed}"
        got = self.study.user_attrs.get(key)
        if got is None:
            self.hook.phase(f"Search {self.scfg.name}: default strategy, {rung} rung, seed {seed}")
            gain, run_id = _gain(self.run_loop, self._cfg({}, rung, seed), self.hook)
            got = {"gain": gain, "run_id": run_id}
            self.study.set_user_attr(key, got)
        return float(got["gain"])

    def _cfg(self, params: dict[str, Any], rung: str, seed: int) -> Config:
        return _apply(self.cfg, params, seed, self.scfg.proxy_rounds if rung == "proxy" else None)

    def paired(self, params: dict[str, Any], rung: str, seeds: list[int]) -> TrialRow:
        per_seed, run_ids = {}, []
        for s in seeds:
            base = self.default(rung, s)
            self.hook.phase(f"Search {self.scfg.name}: {rung} trial {params}, seed {s}")
            gain, run_id = _gain(self.run_loop, self._cfg(params, rung, s), self.hook)
            per_seed[s], run_ids = gain - base, [*run_ids, run_id]
        diffs = list(per_seed.values())
        return TrialRow(
            number=-1,
            rung=rung,
            params=params,
            objective=sum(diffs) / len(diffs),
            per_seed=per_seed,
            run_ids=run_ids,
            ci=_t_interval(diffs),
        )


def _open_study(journal: Path, name: str, sampler_seed: int) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        load_if_exists=True,
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a search is one process; a RUNNING trial at open was left by a killed one
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return study


def _row(t: Any) -> TrialRow:
    return TrialRow(
        number=t.number,
        rung=t.user_attrs.get("rung", "proxy"),
        params=dict(t.user_attrs.get("params", t.params)),
        objective=t.value,
        per_seed={int(k): v for k, v in t.user_attrs.get("per_seed", {}).items()},
        run_ids=list(t.user_attrs.get("run_ids", [])),
        ci=tuple(t.user_attrs["ci"]) if t.user_attrs.get("ci") else None,  # type: ignore[arg-type]
    )


def _record(trial: Any, row: TrialRow) -> None:
    trial.set_user_attr("rung", row.rung)
    trial.set_user_attr("params", row.params)
    trial.set_user_attr("per_seed", {str(k): v for k, v in row.per_seed.items()})
    trial.set_user_attr("run_ids", row.run_ids)
    trial.set_user_attr("ci", list(row.ci) if row.ci else None)


def run_search(
    cfg: Config, scfg: SearchConfig, *, hook: ProgressHook | None = None
) -> SearchResult:
    """Proxy trials (ask/tell) → promote the best → full-size paired runs on new seeds."""
    try:
        from optuna.trial import TrialState
    except ImportError as e:
        raise ConfigError(
            "`selfimprove search` needs Optuna, which is not installed.\n"
            "Fix: pip install 'selfimprove[search]'   (or: pip install optuna==5.0.0)"
        ) from e

    unknown = sorted(set(scfg.knobs) - set(KNOBS))
    if unknown:
        raise ConfigError(
            f"Unknown search knob(s) {', '.join(unknown)}.\nFix: choose from {', '.join(KNOBS)}."
        )
    if set(scfg.full_seeds) & set(scfg.proxy_seeds):
        raise ConfigError(
            "full_seeds overlap proxy_seeds: promoted strategies must be judged on new seeds.\n"
            "Fix: give the full rung seeds the proxies never used."
        )
    hook = hook or ProgressHook()
    journal = Path(cfg.store.root) / "search" / scfg.name / "journal.log"
    proxy = _open_study(journal, f"{scfg.name}-proxy", scfg.sampler_seed)
    full = _open_study(journal, f"{scfg.name}-full", scfg.sampler_seed)
    runner = _Runner(proxy, cfg, scfg, hook)
    while True:
        done = proxy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) >= scfg.trials:
            break
        trial = proxy.ask()
        params = _suggest(trial, scfg.knobs)
        row = runner.paired(params, "proxy", scfg.proxy_seeds)
        _record(trial, row)
        proxy.tell(trial, row.objective)
    proxies = sorted(
        (_row(t) for t in proxy.get_trials(states=(TrialState.COMPLETE,))),
        key=lambda r: -(r.objective if r.objective is not None else -math.inf),
    )
    full_runner = _Runner(full, cfg, scfg, hook)
    judged = {json.dumps(_row(t).params, sort_keys=True): _row(t) for t in
              full.get_trials(states=(TrialState.COMPLETE,))}  # fmt: skip
    for cand in proxies[: scfg.promote]:
        key = json.dumps(cand.params, sort_keys=True)
        if key in judged:
            continue
        trial = full.ask()
        row = full_runner.paired(cand.params, "full", scfg.full_seeds)
        row.number = trial.number
        _record(trial, row)
        full.tell(trial, row.objective)
        judged[key] = row
    fulls = [_row(t) for t in full.get_trials(states=(TrialState.COMPLETE,))]
    best = max(fulls, key=lambda r: r.objective or -math.inf, default=None)
    return SearchResult(
        name=scfg.name,
        journal=str(journal),
        default={
            rung: {
                int(k.split(":")[2]): float(v["gain"])
                for k, v in study.user_attrs.items()
                if k.startswith(f"default:{rung}:")
            }
            for rung, study in (("proxy", proxy), ("full", full))
        },
        proxies=proxies,
        full=fulls,
        best=best,
        verdict=_verdict(best, scfg),
    )


def _verdict(best: TrialRow | None, scfg: SearchConfig) -> str:
    if best is None or best.objective is None:
        return "no strategy was promoted to the full rung"
    ci = best.ci
    txt = f"best promoted strategy vs default on seeds {scfg.full_seeds}: {best.objective:+.1f} pts"
    if ci is None:
        return txt + " (one seed: no interval; add full_seeds to judge it)"
    txt += f", 95% t interval [{ci[0]:+.1f}, {ci[1]:+.1f}]"
    if ci[0] > 0:
        return txt + ": better than the default"
    return txt + ": not shown better than the default (none found)"
