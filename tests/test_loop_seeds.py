"""Pooling a loop's result over seeds (`selfimprove runs pool`): known answers for every
statistic, and refusals for runs that are not seeds of one experiment."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from conftest import assert_clean_error, run_cli
from selfimprove.errors import StoreError
from selfimprove.loop.records import Efficiency, LoopSummary
from selfimprove.loop.seeds import SeedRow, config_differences, pool, pool_runs, seed_row
from selfimprove.store import RunStore


def _row(d: float, half: float | None = 1.959963984540054, seed: int = 0) -> SeedRow:
    return SeedRow(run_id=f"r{seed}", seed=seed, n_items=100, gain_targeted=d + 5,
                   gain_targeted_ci=None, gain_random=5.0, gain_random_ci=None, difference=d,
                   difference_ci=(d - half, d + half) if half is not None else None)  # fmt: skip


def test_pooled_statistics_equal_their_formulas() -> None:
    res = pool([_row(2, seed=0), _row(4, seed=1), _row(6, seed=2)])  # every SE = 1
    assert res.mean_difference == pytest.approx(4.0)
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # sd of (2, 4, 6) is 2
    assert res.mean_difference_ci == pytest.approx((4 - half, 4 + half))
    assert res.fixed_effect == pytest.approx(4.0)
    assert res.fixed_effect_ci == pytest.approx(
        (4 - 1.96 / math.sqrt(3), 4 + 1.96 / math.sqrt(3)), abs=1e-3
    )
    assert (res.n_positive, res.n_nonzero, res.sign_test_p) == (3, 3, pytest.approx(0.125))
    assert res.mean_gain_targeted == pytest.approx(9.0) and res.mean_gain_random == 5.0
    # inverse-variance weights: a precise seed pulls the fixed effect toward it
    res = pool([_row(0, half=1.96 * 3, seed=0), _row(10, half=1.96, seed=1)])
    assert res.fixed_effect == pytest.approx((0 / 9 + 10 / 1) / (1 / 9 + 1), abs=1e-3)
    # ties are dropped from the sign test; one seed has no t interval
    res = pool([_row(1, seed=0), _row(-1, seed=1), _row(2, seed=2), _row(0, seed=3)])
    assert (res.n_positive, res.n_nonzero, res.sign_test_p) == (2, 3, pytest.approx(0.5))
    one = pool([_row(3, half=None)])
    assert one.mean_difference_ci is None and one.fixed_effect is None


def test_config_differences_ignore_seeds_only() -> None:
    a = {"loop": {"seed": 0, "train": {"seed": 0, "lr": 1e-3}}, "store": {"root": "/a"}}
    b = {"loop": {"seed": 1, "train": {"seed": 1, "lr": 1e-3}}, "store": {"root": "/b"}}
    assert config_differences([a, b]) == []
    b["loop"]["train"]["lr"] = 2e-4
    assert config_differences([a, b]) == ["loop.train.lr"]


def _summary(diff: float, *, split: bool = True) -> dict:
    eff = Efficiency(n_items=100, gain_targeted=0.1 + diff, gain_targeted_ci=(0.0, 0.3),
                     gain_random=0.1, gain_random_ci=(0.0, 0.2), difference=diff,
                     difference_ci=(diff - 0.1, diff + 0.1))  # fmt: skip
    s = LoopSummary(targets=["a/b"], metric="extracted", target_acc_before=0.1,
                    accepted_rounds={"targeted": 1, "random": 0}, efficiency=eff,
                    n_selection=50 if split else 0, n_confirmation=100)  # fmt: skip
    return s.model_dump(mode="json")


def _stored_run(st: RunStore, seed: int, diff: float, *, lr: float = 1e-3, split: bool = True,
                status: str = "completed") -> str:  # fmt: skip
    cfg = {"loop": {"seed": seed, "train": {"lr": lr}}}
    info = st.create_run("run", config=cfg, seed=seed, model="embedded", provenance={})
    st.write_json(info.id, "summary_rounds.json", [])
    st.finish_run(info.id, status, summary=_summary(diff, split=split))  # type: ignore[arg-type]
    return info.id


def test_pool_runs_reads_the_store_and_the_cli_prints_it(tmp_path) -> None:
    st = RunStore(tmp_path / "s")
    ids = [_stored_run(st, s, d) for s, d in ((0, 0.05), (1, 0.02), (2, -0.01))]
    res = pool_runs(st, ids)
    assert [r.seed for r in res.rows] == [0, 1, 2]
    assert res.mean_difference == pytest.approx(2.0) and res.n_positive == 2
    out = run_cli("runs", "pool", *ids, "--store", tmp_path / "s", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    flat = " ".join(out.stdout.split())
    assert "Mean difference over 3 seed(s): +2.0 points" in flat
    assert "Sign test: 2 of 3 seeds favour targeted" in flat and "not met" in flat
    js = run_cli("runs", "pool", *ids, "--store", tmp_path / "s", "--json", cwd=tmp_path)
    assert json.loads(js.stdout)["n_seeds"] == 3


def test_pool_refuses_what_is_not_seeds_of_one_experiment(tmp_path) -> None:
    st = RunStore(tmp_path / "s")
    a = _stored_run(st, 0, 0.05)
    other_lr = _stored_run(st, 1, 0.02, lr=2e-4)
    legacy = _stored_run(st, 2, 0.02, split=False)
    failed = _stored_run(st, 3, 0.02, status="failed")
    with pytest.raises(StoreError, match=r"loop\.train\.lr"):
        pool_runs(st, [a, other_lr])
    with pytest.raises(StoreError, match="no selection/confirmation split"):
        pool_runs(st, [a, legacy])
    with pytest.raises(StoreError, match="failed 'run' run"):
        pool_runs(st, [a, failed])
    with pytest.raises(StoreError, match="given twice"):
        pool_runs(st, [a, a])
    with pytest.raises(StoreError, match="no targeted-vs-random"):
        seed_row("x", {**_summary(0.0), "efficiency": None}, [], {})
    res = run_cli("runs", "pool", a, other_lr, "--store", tmp_path / "s", cwd=tmp_path)
    assert_clean_error(res, "not seeds of one experiment", "loop.train.lr", code=2)
