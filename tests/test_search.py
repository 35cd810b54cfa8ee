"""Strategy search: pairing, promotion, resume and the verdict, on a planted loop (no model)
and end to end on tiny-llama loops through the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import selfimprove.loop as loop_pkg
from conftest import assert_clean_error, run_cli
from selfimprove.config import load_config
from selfimprove.errors import ConfigError
from selfimprove.search import SearchConfig, run_search


def _planted(calls):
    """A fake loop: targeted gain 10 pts, +20 when learning_rate > 1e-3, +seed/10."""

    def run_loop(cfg, hook=None):
        lr, seed = cfg.loop.train.learning_rate, cfg.loop.seed
        gain = 0.10 + (0.20 if lr > 1e-3 else 0.0) + seed / 1000
        calls.append((lr, seed, cfg.loop.rounds))
        eff = SimpleNamespace(gain_targeted=gain)
        return SimpleNamespace(run_id=f"run{len(calls)}", summary=SimpleNamespace(efficiency=eff))

    return run_loop


def test_search_finds_a_planted_better_strategy_and_resumes(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(loop_pkg, "run_loop", _planted(calls))
    cfg = load_config(None, {"store": {"root": str(tmp_path / "s")}, "loop": {"rounds": 3}})
    assert cfg.loop.train.learning_rate <= 1e-3  # the default is the weaker strategy
    scfg = SearchConfig(
        name="t", trials=8, knobs=["learning_rate"], proxy_seeds=[1, 2], full_seeds=[3, 4, 5],
        promote=2,
    )  # fmt: skip
    res = run_search(cfg, scfg)
    assert len(res.proxies) == 8 and len(res.full) == 2
    # pairing: every proxy objective is its gain minus the default's on the same seeds
    for r in res.proxies:
        lr = r.params["learning_rate"]
        assert r.objective == pytest.approx(20.0 if lr > 1e-3 else 0.0)
        assert set(r.per_seed) == {1, 2}
    assert res.default == {"proxy": {1: pytest.approx(10.1), 2: pytest.approx(10.2)},
                           "full": {3: pytest.approx(10.3), 4: pytest.approx(10.4),
                                    5: pytest.approx(10.5)}}  # fmt: skip
    # proxies use the proxy size, promoted ones the full size, on the new seeds only
    assert {(s, r) for _lr, s, r in calls if s in (1, 2)} == {(1, 1), (2, 1)}
    assert {r for _lr, s, r in calls if s in (3, 4, 5)} == {3}
    assert res.best is not None and res.best.params["learning_rate"] > 1e-3
    assert res.best.objective == pytest.approx(20.0) and res.best.ci is not None
    assert "better than the default" in res.verdict
    assert (tmp_path / "s" / "search" / "t" / "journal.log").is_file()
    # resume: nothing finished is redone; two more trials run only those
    n = len(calls)
    res2 = run_search(cfg, scfg.model_copy(update={"trials": 10}))
    assert len(res2.proxies) == 10 and len(calls) - n in (4, 4 + 3, 4 + 6)
    assert res2.default == res.default  # the default's runs are kept, not redone


def test_a_trial_left_running_by_a_killed_search_is_asked_again(tmp_path, monkeypatch):
    from selfimprove.search import _open_study

    calls: list = []
    monkeypatch.setattr(loop_pkg, "run_loop", _planted(calls))
    cfg = load_config(None, {"store": {"root": str(tmp_path / "s")}})
    journal = tmp_path / "s" / "search" / "k" / "journal.log"
    study = _open_study(journal, "k-proxy", 0)
    study.ask()  # the process dies here: the trial stays RUNNING
    scfg = SearchConfig(name="k", trials=2, knobs=["epochs"], proxy_seeds=[1], full_seeds=[2],
                        promote=1)  # fmt: skip
    res = run_search(cfg, scfg)
    states = [t.state.name for t in _open_study(journal, "k-proxy", 0).get_trials()]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2
    assert len(res.proxies) == 2 and "one seed" in res.verdict


def test_bad_search_settings_are_clear_errors(tmp_path):
    cfg = load_config(None, {"store": {"root": str(tmp_path / "s")}})
    with pytest.raises(ConfigError, match="Unknown search knob"):
        run_search(cfg, SearchConfig(knobs=["warp_drive"]))
    with pytest.raises(ConfigError, match="new seeds"):
        run_search(cfg, SearchConfig(proxy_seeds=[1], full_seeds=[1, 2]))
    res = run_cli("search", "--full-seeds", "a,b", "--store", tmp_path / "s", cwd=tmp_path)
    assert_clean_error(res, "--full-seeds must be comma-separated integers", code=2)


def test_cli_search_on_tiny_loops_end_to_end(tmp_path, small_loop):
    """Real loops (tiny-llama): 1 proxy trial + the default on one seed, the trial promoted
    to one new seed; every trial is a loop run in the store, the journal is Optuna's."""
    import yaml

    small_loop["loop"]["rounds"] = 1
    small_loop["loop"]["arms"] = ["targeted", "random"]
    (tmp_path / "selfimprove.yaml").write_text(yaml.safe_dump(small_loop))
    store = tmp_path / "s"
    res = run_cli(
        "search", "--name", "e2e", "--trials", "1", "--knobs", "learning_rate",
        "--proxy-seeds", "0", "--full-seeds", "1", "--promote", "1", "--store", store, "--json",
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout[res.stdout.index("\n{\n") :])  # after the progress lines
    assert len(out["proxies"]) == 1 and len(out["full"]) == 1
    [p], [f] = out["proxies"], out["full"]
    runs = sorted(x.name for x in (store / "runs").iterdir())
    assert len(runs) == 4 and set(p["run_ids"] + f["run_ids"]) < set(runs)
    for rid, seed, rung in ((p["run_ids"][0], 0, "proxy"), (f["run_ids"][0], 1, "full")):
        summary = json.loads((store / "runs" / rid / "summary.json").read_text())
        gain = 100 * summary["efficiency"]["gain_targeted"]
        default = out["default"][rung][str(seed)]
        per_seed = (p if rung == "proxy" else f)["per_seed"][str(seed)]
        assert per_seed == pytest.approx(gain - default)
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(
        optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(out["journal"])))]  # fmt: skip
    assert sorted(names) == ["e2e-full", "e2e-proxy"]
