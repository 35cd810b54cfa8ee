"""The closed loop on a tiny random model: phases, artifacts, never-train, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove.store import RunStore
from selfimprove.tasks.never_train import NeverTrainRegistry


def _eval_outputs(run_dir: Path) -> dict[str, list[tuple[str, str, bool | None]]]:
    out = {}
    for p in sorted(run_dir.glob("eval_*.jsonl")):
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        out[p.name] = sorted((r["sample_id"], r["output"], r["correct"]) for r in rows)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _data(run_dir: Path) -> dict[str, list[str]]:
    return {
        p.name: [json.loads(x)["input_hash"] for x in p.read_text().splitlines() if x.strip()]
        for p in sorted(run_dir.glob("data_*.jsonl"))
    }


def test_loop_runs_every_phase_and_writes_artifacts(full_run):
    store, res = full_run
    run_dir = Path(res.run_dir)
    assert [(r.round, r.arm) for r in res.rounds] == [
        (1, "targeted"),
        (1, "random"),
        (2, "targeted"),
        (2, "random"),
    ]
    state = json.loads((run_dir / "state.json").read_text())
    for tag in ("r1_targeted", "r1_random", "r2_targeted", "r2_random"):
        for ph in ("data", "train", "gate"):
            assert f"{tag}/{ph}" in state["done"]
        assert (run_dir / "adapters" / tag / "adapter_model.safetensors").is_file()
        assert (run_dir / "adapters" / tag / "train_result.json").is_file()
    # the split: disjoint halves covering every item, sentinels all in confirmation
    split = json.loads((run_dir / "split.json").read_text())
    sel = {tuple(k) for k in split["selection"]}
    conf = {tuple(k) for k in split["confirmation"]}
    base = {(r["suite"], r["sample_id"]) for r in _rows(run_dir / "eval_r0_base.jsonl")}
    assert sel and conf and not sel & conf and sel | conf == base
    assert not {s for s, _ in sel} & {"sentinel_math", "general_nll"}
    # every candidate is scored on the whole confirmation half; the random arm on nothing
    # else, the targeted arm also on its targets' selection items (retirement) and, once
    # accepted and about to choose targets again, on the whole selection half
    outs = _eval_outputs(run_dir)
    assert len(outs) == 5
    for r in res.rounds:
        got = {(x["suite"], x["sample_id"]) for x in _rows(run_dir / f"eval_{r.tag}.jsonl")}
        assert conf <= got, r.tag
        if r.arm == "random":
            assert got == conf
        else:
            cats = {
                (x["suite"], x["category"])
                for x in _rows(run_dir / "eval_r0_base.jsonl")
                if (x["suite"], x["sample_id"]) in got - conf
            }
            assert cats <= set(r.targets) or (r.accepted and got == base), r.tag
        # the gate judged the confirmation half only
        assert r.gate is not None and r.gate.target is not None
        n_conf_targets = sum(
            1
            for x in _rows(run_dir / "eval_r0_base.jsonl")
            if (x["suite"], x["sample_id"]) in conf
            and (x["suite"], x["category"]) in set(r.targets)
        )
        assert r.gate.target.pooled.n == n_conf_targets
    assert res.summary.n_confirmation == len(conf) and res.summary.n_selection == len(sel)
    # accumulated data: round 2 contains round 1's data plus the new budget
    data = _data(run_dir)
    for arm in ("targeted", "random"):
        r1, r2 = data[f"data_r1_{arm}.jsonl"], data[f"data_r2_{arm}.jsonl"]
        assert r2[: len(r1)] == r1 and len(r2) > len(r1) and len(set(r2)) == len(r2)
    # the targeted arm trains only on its weak categories; the control spans all skills
    r1 = res.rounds[0]
    assert r1.targets
    for r in res.rounds:  # the same example budget in both arms, every round
        assert r.n_train == 12 * r.round
        assert r.self_funnel["pool"] == 3  # a quarter of the budget went to self-generation
    rows = [json.loads(x) for x in (run_dir / "data_r1_targeted.jsonl").read_text().splitlines()]
    assert {(r["suite"], r["category"]) for r in rows} <= set(map(tuple, r1.targets))
    # each round is judged by the gate and explained
    for r in res.rounds:
        assert r.gate is not None and r.gate.reasons and isinstance(r.accepted, bool)
        # the detector runs on candidates the gate accepts (tests below); these were rejected
        assert not r.accepted and r.diff is None and r.train is not None
        assert "behavior diff: not run (the gate rejected the round)" in r.gate.reasons
        # + 3 general-text anchors (KL to the base), in both arms
        assert r.train.n_anchor_text == 3
        assert r.train.n_examples + r.train.n_dropped == r.n_train + 3
        assert r.train.n_anchor == r.train.n_examples - r.n_train
        assert r.train.n_earlier == 12 * (r.round - 1)  # rows accumulated before this round
    # learnability: a round-1 target that solved no more items is never targeted again
    r1t, r2t = res.rounds[0], res.rounds[2]

    def solved(name: str) -> dict[str, int]:
        rows = [json.loads(x) for x in (run_dir / name).read_text().splitlines() if x.strip()]
        return {
            f"{s}/{c}": sum(
                bool(r["correct"]) for r in rows if (r["suite"], r["category"]) == (s, c)
            )
            for s, c in r1t.targets
        }

    b, a = solved("eval_r0_base.jsonl"), solved("eval_r1_targeted.jsonl")
    assert set(r1t.stalled) == {k for k in b if a[k] <= b[k]}
    assert r1t.stalled, "the tiny random model should gain nothing in round 1"
    assert not {f"{s}/{c}" for s, c in r2t.targets} & set(r1t.stalled)
    assert not any(r.stalled for r in res.rounds if r.arm == "random")
    assert (run_dir / "report.html").is_file()
    assert res.summary.targets
    info = RunStore(store).get_run(res.run_id)
    assert info.status == "completed" and info.kind == "run"


def test_earlier_rounds_rows_get_fewer_passes_and_a_fixed_sample():
    from selfimprove.synth.assemble import schedule_passes as _schedule_passes
    from selfimprove.train import TrainConfig, TrainExample

    ex = [TrainExample(prompt=f"q{i}", completion="a", id=f"e{i}") for i in range(6)]
    earlier = [True, True, True, False, False, False]
    cfg = TrainConfig(epochs=3)
    out, run_cfg, n_old = _schedule_passes(ex, earlier, cfg, 1)
    assert run_cfg.epochs == 1 and cfg.epochs == 3  # one shuffled epoch over the copies
    counts = {e.id: sum(o.id == e.id for o in out) for e in ex}
    assert counts == {"e0": 1, "e1": 1, "e2": 1, "e3": 3, "e4": 3, "e5": 3} and n_old == 3
    assert _schedule_passes(ex, earlier, cfg, 2)[0].count(ex[0]) == 2
    # a cap on earlier rows: a seeded sample of that many, each with its passes
    capped, _, n_old = _schedule_passes(ex, earlier, cfg, 1, 2, seed_key="s")
    used = {o.id for o in capped} & {"e0", "e1", "e2"}
    assert n_old == 2 and len(used) == 2 and len(capped) == 2 + 9
    assert capped == _schedule_passes(ex, earlier, cfg, 1, 2, seed_key="s")[0]  # seeded
    draws = {
        frozenset({o.id for o in _schedule_passes(ex, earlier, cfg, 1, 2, seed_key=k)[0]})
        for k in "abcdefgh"
    }
    assert len(draws) > 1  # a fresh draw per round key
    # the cap alone (passes = epochs) also applies
    only_cap, c_cfg, _ = _schedule_passes(ex, earlier, cfg, None, 1, seed_key="s")
    assert c_cfg.epochs == 1 and len(only_cap) == 3 + 9
    # nothing to change: unchanged (same objects, epochs kept)
    for args in ((ex, [False] * 6, cfg, 1), (ex, earlier, cfg, 3, 3), (ex, earlier, cfg, None)):
        same, same_cfg, _ = _schedule_passes(*args)
        assert same == ex and same_cfg is cfg


def test_accepted_rounds_rows_are_not_thinned():
    from selfimprove.loop import LoopConfig
    from selfimprove.synth.assemble import earlier_flags
    from selfimprove.train import TrainExample

    rows = [TrainExample(prompt="q", completion="a", round=k) for k in (1, 2, 2, 3, 3)]
    assert earlier_flags(rows, 3) == [True, True, True, False, False]
    # round 2 was accepted: its rows train like round 3's; rejected round 1 stays thinned
    assert earlier_flags(rows, 3, {2}) == [True, False, False, False, False]
    assert LoopConfig().keep_accepted_rows is False  # opt-in (one loop run so far)


def test_no_training_example_is_an_evaluation_item(full_run):
    store, res = full_run
    registry = NeverTrainRegistry.load(store / "never_train.json")
    run_dir = Path(res.run_dir)
    base = _rows(run_dir / "eval_r0_base.jsonl")
    eval_hashes = {r["input_hash"] for r in base}
    assert eval_hashes and eval_hashes <= set(registry._sources)  # every item, not a count
    for name, hashes in _data(run_dir).items():
        assert not set(hashes) & eval_hashes
        rows = [json.loads(x) for x in (run_dir / name).read_text().splitlines()]
        assert all(isinstance(r["prompt"], str) and r["prompt"] not in registry for r in rows)


def test_registered_items_are_never_drawn_for_training(full_run, small_loop, tmp_path):
    """Plant: register, as if evaluation items, exactly the items round 1's targeted draw
    produced in the reference run; a new run on that store must draw none of them, and its
    funnel must count them as dropped (the check above passes on any run that happens not to
    collide; this one collides by construction)."""
    from selfimprove.config import load_config
    from selfimprove.loop import run_loop
    from selfimprove.synth.templated import templated_variations

    _store, ref = full_run
    r1 = ref.rounds[0]
    drawn, _f = templated_variations(
        [tuple(t) for t in r1.targets],
        small_loop["loop"]["budget"],
        seed_key="train:0:1:targeted",
        registry=NeverTrainRegistry(),
    )
    ref_hashes = {r["input_hash"] for r in _rows(Path(ref.run_dir) / "data_r1_targeted.jsonl")}
    drawn = [s for *_, s in drawn if s.input_hash() in ref_hashes]  # what the loop trained on
    assert len(drawn) >= 4
    planted = NeverTrainRegistry()
    planted.add(drawn, "planted")
    store = tmp_path / "s"
    store.mkdir()
    planted.save(store / "never_train.json")
    over = small_loop
    over["store"] = {"root": str(store)}
    over["loop"].update(rounds=1, arms=["targeted"])
    res = run_loop(load_config(None, over))
    (ar,) = res.rounds
    assert [tuple(t) for t in ar.targets] == [tuple(t) for t in r1.targets]
    got = {r["input_hash"] for r in _rows(Path(res.run_dir) / "data_r1_targeted.jsonl")}
    assert got and not got & {s.input_hash() for s in drawn}
    assert ar.funnel.dropped_eval_overlap >= len(drawn)


def test_kill_during_training_then_resume_gives_the_same_records(full_run, small_loop, tmp_path):
    """SIGKILL inside round 1's random-arm training, resume, compare with the uninterrupted run."""
    _store0, ref = full_run
    store = tmp_path / "s"
    cfg_path = tmp_path / "selfimprove.yaml"
    import yaml

    over = small_loop
    over["store"] = {"root": str(store)}
    cfg_path.write_text(yaml.safe_dump(over))
    env = {**os.environ, "COLUMNS": "200", "SELFIMPROVE_FAULT": "kill:r1_random/train"}
    cmd = [sys.executable, "-m", "selfimprove.cli", "run", "--config", str(cfg_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    (run_dir,) = (store / "runs").iterdir()
    state = json.loads((run_dir / "state.json").read_text())
    assert "r1_targeted/gate" in state["done"] and "r1_random/train" not in state["done"]
    targeted_mtime = (run_dir / "adapters/r1_targeted/adapter_model.safetensors").stat().st_mtime

    env.pop("SELFIMPROVE_FAULT")
    res = subprocess.run(
        [*cmd, "--resume", run_dir.name[:12]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Report:" in res.stdout
    # finished work was not redone
    assert (
        run_dir / "adapters/r1_targeted/adapter_model.safetensors"
    ).stat().st_mtime == targeted_mtime
    ref_dir = Path(ref.run_dir)
    assert _data(run_dir) == _data(ref_dir)
    assert _eval_outputs(run_dir) == _eval_outputs(ref_dir)
    got = json.loads((run_dir / "summary_rounds.json").read_text())
    want = json.loads((ref_dir / "summary_rounds.json").read_text())
    assert [(r["round"], r["arm"], r["accepted"], r["n_train"]) for r in got] == [
        (r["round"], r["arm"], r["accepted"], r["n_train"]) for r in want
    ]
    info = RunStore(store).get_run(run_dir.name)
    assert info.status == "completed"


def _recs(correct: list[bool], cat: str = "c") -> list:
    from selfimprove.evaluate import EvalRecord

    return [
        EvalRecord(
            suite="s",
            task=cat,
            category=cat,
            sample_id=f"{cat}/{i}",
            input_hash=str(i),
            mode="generate",
            target="1",
            correct=c,
            format_ok=True,
        )
        for i, c in enumerate(correct)
    ]


def test_efficiency_recovers_planted_gains_with_bootstrap_cis():
    from selfimprove.loop import efficiency

    n = 200
    base = _recs([i % 10 == 0 for i in range(n)])  # 10%
    tgt = _recs([i % 10 in (0, 1, 2, 3, 4) for i in range(n)])  # 50%: +40 pts
    rnd = _recs([i % 10 in (0, 1) for i in range(n)])  # 20%: +10 pts
    other = _recs([True] * n, cat="other")  # not a target: ignored
    e = efficiency(base + other, tgt + other, rnd, [("s", "c")], "correct", seed=1)
    assert e.n_items == n
    assert abs(e.gain_targeted - 0.4) < 1e-9 and abs(e.gain_random - 0.1) < 1e-9
    assert e.ratio == pytest.approx(4.0)
    lo, hi = e.ratio_ci
    assert lo < 4.0 < hi and lo > 2.0
    assert e.difference_ci[0] > 0.2
    # null: both arms equal -> the difference CI covers 0
    e0 = efficiency(base, rnd, rnd, [("s", "c")], "correct")
    assert e0.difference == 0 and e0.difference_ci[0] <= 0 <= e0.difference_ci[1]
    # no random gain -> ratio undefined, said so
    e1 = efficiency(base, tgt, base, [("s", "c")], "correct")
    assert e1.ratio is None and e1.ratio_ci is None and e1.ratio_set.kind != "interval"
    assert "unbounded" in e1.describe() and e.describe().startswith("last round")


def test_replay_keeps_only_verified_base_answers_outside_targets(tmp_path, small_loop, monkeypatch):
    """Replay rows are the base model's correct answers on fresh (never-evaluated) items, and
    a round trains on them minus its target categories, in both arms alike."""
    import selfimprove.loop.phases as phases_mod
    from selfimprove.config import load_config
    from selfimprove.loop import run_loop

    real_eval_phase = phases_mod.evaluate_phase

    def fake_eval_phase(ctx, name, engine, items, **kw):
        recs = real_eval_phase(ctx, name, engine, items, **kw)
        if name != "replay_eval":
            return recs
        # the tiny model never answers correctly: pretend every other answer was right
        return [
            r.model_copy(update={"correct": True, "output": f"Answer: {r.target}"})
            if i % 2 == 0
            else r
            for i, r in enumerate(recs)
        ]

    monkeypatch.setattr(phases_mod, "evaluate_phase", fake_eval_phase)
    small_loop["loop"].update({"rounds": 1, "replay": 6})
    small_loop["store"] = {"root": str(tmp_path / "s")}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(small_loop))
    res = run_loop(load_config(cfg_path))
    run_dir = Path(res.run_dir)
    rows = [json.loads(x) for x in (run_dir / "replay.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["source"] == "replay" for r in rows)
    assert res.summary.replay.model_dump() == {"drawn": 18, "answered": 18, "kept_correct": 6}
    registry = NeverTrainRegistry.load(Path(small_loop["store"]["root"]) / "never_train.json")
    assert all(isinstance(r["prompt"], str) and r["prompt"] not in registry for r in rows)
    targets = {c for _s, c in res.rounds[0].targets}
    expected = sum(r["category"] not in targets for r in rows)
    assert expected > 0
    for ar in res.rounds:
        assert ar.train is not None and ar.train.n_replay == expected
        assert ar.train.n_examples + ar.train.n_dropped == ar.n_train + expected + 3
        assert ar.train.n_anchor == expected + 3  # replay is KL-anchored by default


def test_a_gate_too_small_to_pass_unchanged_warns_and_still_starts(caplog):
    """Below min_noninferiority_n a sentinel test fails every unchanged round but can pass
    when sentinel answers improve, so the loop warns (naming the fix) instead of refusing."""
    from types import SimpleNamespace

    from selfimprove.gate import GateConfig
    from selfimprove.loop import check_gate_power

    gen, nll = SimpleNamespace(mode="generate"), SimpleNamespace(mode="nll")
    plan = [
        (SimpleNamespace(name="math"), gen, [0] * 24),
        (SimpleNamespace(name="fmt"), gen, [0] * 24),
        (SimpleNamespace(name="text"), nll, [0] * 24),
    ]
    names = ["math", "fmt", "text"]
    phases = []
    hook = SimpleNamespace(phase=phases.append)
    power = check_gate_power(
        plan, names, GateConfig(sentinel_mode="per_suite", sentinel_margin=0.05), hook
    )
    assert len(phases) == 2 and all("below 52 it cannot pass unless" in p for p in phases)
    assert "Raise loop.sentinel_n" in phases[0]
    assert 0 < power["math @ 10% discordant"] < 0.2  # passes only when answers improve
    phases.clear()
    power = check_gate_power(plan, names, GateConfig(), hook)  # pooled 48 + each suite's 24
    assert not phases
    assert set(power) == {
        "pooled: math+fmt @ 10% discordant",
        "pooled: math+fmt @ 20% discordant",
        "math @ 10% discordant",
        "math @ 20% discordant",
        "fmt @ 10% discordant",
        "fmt @ 20% discordant",
    }  # text (NLL): not a binary test
    assert 0.5 < power["pooled: math+fmt @ 10% discordant"] <= 1.0


def test_bad_train_or_gate_override_is_a_config_error_at_load_time(tmp_path):
    from selfimprove.config import load_config
    from selfimprove.errors import ConfigError

    for section, bad in (
        ("train", {"group_by_length": "maybe"}),
        ("gate", {"alpha": -1}),
        ("train", {"lora_rank": 4}),  # a typo: unknown key
    ):
        over = {"model": {"name": "tiny-llama"}, "loop": {section: bad}}
        with pytest.raises(ConfigError, match=f"loop\\.{section}\\.{next(iter(bad))}"):
            load_config(None, over)


def test_shared_values_have_one_home():
    """The seed is loop.seed, the weight policy loop.train.weight_policy, the gate's metric
    follows loop.weakness.metric unless set; older spellings still load."""
    from selfimprove.config import Config, dump_config, load_config
    from selfimprove.errors import ConfigError

    cfg = load_config(None, {"loop": {"seed": 7}})
    assert cfg.loop.train.seed == 7 and cfg.loop.gate.metric == "correct"
    strict = load_config(None, {"loop": {"weakness": {"metric": "strict"}}})
    assert strict.loop.gate.metric == "strict"
    assert (
        load_config(
            None, {"loop": {"weakness": {"metric": "strict"}, "gate": {"metric": "correct"}}}
        ).loop.gate.metric
        == "correct"
    )
    old = load_config(None, {"loop": {"weight_policy": "confidence"}})  # stored runs' spelling
    assert old.loop.train.weight_policy == "confidence"
    with pytest.raises(ConfigError, match="weight_policy is set twice"):
        load_config(
            None, {"loop": {"weight_policy": "confidence", "train": {"weight_policy": "inverse"}}}
        )
    with pytest.raises(ConfigError, match="one seed"):
        load_config(None, {"loop": {"seed": 1, "train": {"seed": 2}}})
    # a round trip through the stored form keeps everything (resume validates it again)
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg
    # `config --defaults` leaves out the derived values, so editing loop.seed or
    # weakness.metric in the written file still reaches the trainer and the gate
    import yaml

    dumped = yaml.safe_load(dump_config(load_config(None, {})))
    assert "seed" not in dumped["loop"]["train"] and "metric" not in dumped["loop"]["gate"]
    dumped["loop"]["seed"] = 3
    dumped["loop"]["weakness"]["metric"] = "strict"
    again = Config.model_validate(dumped)
    assert again.loop.train.seed == 3 and again.loop.gate.metric == "strict"


def _fingerprint(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*.jsonl"))}


def test_same_seed_gives_byte_identical_data_and_records(tmp_path, small_loop):
    """A 1-round loop, run twice with one seed: every data file and evaluation record file is
    byte-identical (the refactoring of the loop into phases was checked this way against the
    code before it); a different seed changes them."""
    from selfimprove.config import load_config
    from selfimprove.loop import run_loop

    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        over = {**small_loop, "store": {"root": str(tmp_path / name)}}
        over["loop"] = {**small_loop["loop"], "rounds": 1, "behavior_diff": 0, "seed": seed}
        runs.append(_fingerprint(Path(run_loop(load_config(None, over)).run_dir)))
    a, b, c = runs
    assert {"data_r1_targeted.jsonl", "data_r1_random.jsonl", "eval_r0_base.jsonl"} <= set(a)
    assert a == b
    assert a["data_r1_random.jsonl"] != c["data_r1_random.jsonl"]


def test_accepted_adapter_resolves_under_the_run_folder_from_any_directory(tmp_path, monkeypatch):
    """state.json names an accepted adapter relative to its run, so a resume from another
    working directory (or a moved store) finds it; older runs' cwd-relative paths still work."""
    from selfimprove.loop.context import LoopContext, PhaseState

    store = RunStore(tmp_path / "store")
    run = store.create_run("run", config={}, seed=0, model="m")
    run_dir = store.run_dir(run.id)
    ctx = LoopContext(
        cfg=None,  # type: ignore[arg-type]
        store=store,
        run_id=run.id,
        phases=PhaseState(run_dir),
        base=None,  # type: ignore[arg-type]
        runtime=None,  # type: ignore[arg-type]
        registry=NeverTrainRegistry(),
        items=[],
        skill_names=[],
        sentinel_names=[],
        sentinels=[],
        hook=None,  # type: ignore[arg-type]
    )
    ctx.phases.state.current = {
        "targeted": "adapters/r1_targeted",  # as written now
        "random": f"selfimprove_runs/runs/{run.id}/adapters/r2_random",  # an older run's
        "base": None,
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert ctx.current_adapter("targeted") == str(run_dir / "adapters" / "r1_targeted")
    assert ctx.current_adapter("random") == str(run_dir / "adapters" / "r2_random")
    assert ctx.current_adapter("base") is None and ctx.current_adapter("other") is None
    assert Path(ctx.current_adapter("targeted")).is_absolute()


def test_accepted_model_is_scored_on_the_selection_half_and_checked_by_the_detector(
    tmp_path, small_loop, monkeypatch
):
    """An accepted targeted candidate: the detector runs on it (flag), it is scored on the
    rest of the selection half before it picks round 2's targets, and round 2's gate compares
    against its confirmation records; a flagged change rejects round 2 (behavior_action)."""
    from selfimprove.config import load_config
    from selfimprove.loop import phases, run_loop
    from selfimprove.loop.records import BehaviorDiff, FlaggedRegion

    real = phases.behavior_diff
    calls = []

    def diff(ctx, a, b):
        calls.append(len(calls))
        if len(calls) == 1:
            return real(ctx, a, b)
        flagged = [FlaggedRegion(region="sentinel_math", q=0.01, stat="accuracy")]
        return BehaviorDiff(flagged=flagged, line="behavior diff: planted", samples_per_model=8)

    monkeypatch.setattr(phases, "behavior_diff", diff)
    over = small_loop
    over["store"] = {"root": str(tmp_path / "s")}
    over["loop"] = {
        **over["loop"],
        "arms": ["targeted"],
        "behavior_action": "reject",
        "gate": {
            "sentinel_margin": 0.5,
            "sentinel_mode": "pooled",
            "require_target_gain": False,
            "max_loss_ratio": 1e6,
            "nll_margin": 1e3,
        },
    }
    res = run_loop(load_config(None, over))
    r1, r2 = res.rounds
    assert (
        r1.accepted and r1.diff is not None and r1.diff.samples_per_model == 8
    )  # loop.behavior_diff
    assert any(x.startswith(("ok: behavior diff", "warning: behavior diff")) for x in r1.reasons)
    assert not r2.accepted and "rejected: behavior diff: planted" in r2.reasons
    run_dir = Path(res.run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    everything = {tuple(k) for k in split["selection"] + split["confirmation"]}
    got = {(x["suite"], x["sample_id"]) for x in _rows(run_dir / "eval_r1_targeted.jsonl")}
    assert got == everything  # scored on the whole selection half once accepted
    conf = {tuple(k) for k in split["confirmation"]}
    r1_conf = {
        (x["suite"], x["sample_id"]): x["correct"]
        for x in _rows(run_dir / "eval_r1_targeted.jsonl")
        if (x["suite"], x["sample_id"]) in conf and (x["suite"], x["category"]) in set(r2.targets)
    }
    assert r2.gate.target.pooled.n == len(r1_conf)
    assert r2.gate.target.pooled.before_rate == pytest.approx(
        sum(bool(v) for v in r1_conf.values()) / len(r1_conf)
    )
    assert len(calls) == 2
