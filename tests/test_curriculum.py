"""``selfimprove curriculum`` on small models: the stage gate, the provenance guard, resume.

A random tiny model writes nothing a validator accepts, so the end-to-end tests use a tiny
GPT-2 *taught* in seconds (full fine-tuning) to answer stage 1's pool items in the cue
format: a model that writes real, verifiable data, like a base model that already knows
the answers but must be taught to follow instructions zero-shot.
"""

from __future__ import annotations

import copy
import json
import signal

import pytest
import yaml

from conftest import assert_clean_error, run_cli
from selfimprove.config import load_config
from selfimprove.contamination import check_provenance
from selfimprove.curriculum import CurriculumConfig, parse_stages
from selfimprove.curriculum.run import stage_verdict
from selfimprove.curriculum.stages import stage_tasks
from selfimprove.errors import ConfigError, DataError
from selfimprove.evaluate import EvalRecord
from selfimprove.train import TrainExample

CUR = {
    "stages": [1],
    "kinds": ["n_words", "json_list"],
    "pool_n": 6,
    "samples": 2,
    "temperature": 0.3,
    "eval_n": 4,
    "max_new_tokens": 24,
    "baseline_format": "plain",
    "writer_format": "cue",
    "sentinel_suites": ["general_nll"],
    "sentinel_n": 4,
    "anchor_text": 2,
    "replay": 2,
    "train": {"epochs": 1, "batch_size": 4, "max_length": 128},
}


STEPS = 150  # full-batch steps teaching the pool replies (a few seconds)


def _overrides(store, model: str) -> dict:
    return {
        "model": {"name": model},
        "runtime": {"threads": 2, "dtype": "fp32"},
        "generation": {"batch_size": 16},
        "store": {"root": str(store)},
        "curriculum": copy.deepcopy(CUR),
    }


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A tiny GPT-2 folder that answers stage 1's pool items (cue format) correctly."""
    import torch

    from selfimprove.prompts import render
    from selfimprove.testing import tiny_model

    model, tok = tiny_model("tiny-gpt2", n_layers=2, seed=0)
    tok.chat_template = None
    st = stage_tasks(1, CurriculumConfig(**CUR))
    seqs = []
    for _su, _t, x in st.pool:
        p = tok(render("cue", [{"role": "user", "content": x.input}]))["input_ids"]
        c = tok(" " + x.target, add_special_tokens=False)["input_ids"]
        seqs.append(p + c + [tok.eos_token_id])
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.eos_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = tmp_path_factory.mktemp("taught") / "tiny-base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


# --------------------------------------------------------------------------- fast units


def _rec(suite: str, cat: str, i: int, ok: bool, mode: str = "generate", nll=None) -> EvalRecord:
    return EvalRecord(
        suite=suite,
        task=f"{suite}.{cat}",
        category=cat,
        sample_id=f"{cat}/{i}",
        input_hash=f"h{suite}{cat}{i}",
        mode=mode,
        target="t",
        output="o",
        correct=ok if mode == "generate" else None,
        ref_nll=nll,
        finish_reason="stop",
    )


def _stage(n: int, correct: set[int]) -> list[EvalRecord]:
    return [_rec("instructions", "if_n_words", i, i in correct) for i in range(n)]


def _nll(v: float, n: int = 8) -> list[EvalRecord]:
    return [_rec("general_nll", "general_text", i, False, "nll", v + 0.01 * i) for i in range(n)]


def _verdict(base, prev, cand, **kw):
    return stage_verdict(
        base,
        prev,
        cand,
        categories=[("instructions", "if_n_words")],
        sentinel_suites=["general_nll"],
        ccfg=CurriculumConfig(),
        train_losses=[2.0, 1.5, 1.0],
        **kw,
    )


def test_stage_gate_accepts_a_real_gain_and_rejects_planted_failures() -> None:
    n = 30
    base, prev = _stage(n, {0, 1, 2}), _stage(n, {0, 1})
    good = _stage(n, set(range(20)))
    v = _verdict(base, prev + _nll(2.0), good + _nll(2.0))
    assert v.accepted, v.reasons
    assert v.vs_baseline.c == 17 and v.vs_baseline.b == 0
    # planted regression: the candidate loses what the previous model solved
    v = _verdict(base, prev + _nll(2.0), _stage(n, set()) + _nll(2.0))
    assert not v.accepted and v.vs_previous.b == 2
    # better than the previous model, but not than prompting the base in context
    strong_base = _stage(n, set(range(20)))
    v = _verdict(strong_base, prev + _nll(2.0), good + _nll(2.0))
    assert not v.accepted and v.gate.accepted
    assert any(r.startswith("fail: vs the in-context baseline") for r in v.reasons)
    # the task improves but general text is forgotten (sentinel NLL up by 1 nat)
    v = _verdict(base, prev + _nll(2.0), good + _nll(3.0))
    assert not v.accepted and not v.gate.accepted


def test_provenance_guard_refuses_rows_of_a_model_outside_the_chain() -> None:
    def row(i: int, gen: str) -> TrainExample:
        return TrainExample(id=f"r{i}", prompt="p", completion="c", generator=gen)

    allowed = {"basehash": "gemma3-270m-base"}
    check_provenance([row(0, "basehash"), row(1, "")], allowed)  # base-written, code-written
    with pytest.raises(DataError, match="r2 \\(generator instructhash\\)"):
        check_provenance([row(0, "basehash"), row(2, "instructhash")], allowed)


def test_stage_lists_and_unbuilt_stages_are_clear_errors() -> None:
    assert parse_stages("1-2") == [1, 2] and parse_stages("2") == [2]
    with pytest.raises(ConfigError, match=r"stage 3 .*not built yet"):
        parse_stages("1-4")
    with pytest.raises(ConfigError, match="no curriculum stage 9"):
        parse_stages("9")
    with pytest.raises(ConfigError, match="not a stage list"):
        parse_stages("one")
    with pytest.raises(ConfigError, match=r"curriculum\.kinds"):
        stage_tasks(1, CurriculumConfig(kinds=["haiku"]))


def test_stage_items_are_held_out_from_the_pool() -> None:
    for k in (1, 2):
        st = stage_tasks(k, CurriculumConfig(pool_n=8, eval_n=4))
        held = {x.input_hash() for _s, _t, x in st.heldout}
        assert held and st.pool
        assert not held & {x.input_hash() for _s, _t, x in st.pool}


# --------------------------------------------------------------------------- end to end


def test_stage_one_on_a_taught_tiny_model_writes_trains_and_judges(taught, tmp_path) -> None:
    from selfimprove.curriculum import run_curriculum

    res = run_curriculum(load_config(None, _overrides(tmp_path / "s", taught)))
    (s1,) = res["stages"]
    f = s1["funnel"]
    assert f["sampled"] == 2 * f["pool_items"] == 2 * 12
    assert 0 < f["kept"] <= f["distinct"] <= f["verified"] <= f["ended"] <= f["sampled"]
    run_dir = tmp_path / "s" / "runs" / res["run_id"]
    rows = [json.loads(x) for x in (run_dir / "data_s1.jsonl").read_text().splitlines()]
    assert len(rows) == f["kept"] == s1["n_train"]
    writer_hash = s1["writer_hash"]
    assert writer_hash and all(r["generator"] == writer_hash for r in rows)
    assert (run_dir / "adapters" / "s1" / "adapter_model.safetensors").is_file()
    assert [m["n"] for m in s1["scores"]] == [8, 8, 8]  # baseline, previous, candidate
    assert s1["accepted"] == (res["chain"] == ["adapters/s1"])
    assert any("in-context baseline" in r for r in s1["reasons"])
    assert "Stage 1" in (run_dir / "report.html").read_text()


def test_sigkill_between_stages_then_resume_redoes_nothing(taught, tmp_path) -> None:
    store = tmp_path / "s"
    over = _overrides(store, taught)
    over["curriculum"]["stages"] = [1, 2]
    over["curriculum"]["stage2_suites"] = ["arithmetic"]
    over["curriculum"]["pool_n"] = 2
    cfg = tmp_path / "selfimprove.yaml"
    cfg.write_text(yaml.safe_dump(over))
    res = run_cli(
        "curriculum", "--config", cfg, cwd=tmp_path, env={"SELFIMPROVE_FAULT": "kill:phase:s1/gate"}
    )
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    (run_dir,) = (store / "runs").iterdir()
    done = json.loads((run_dir / "state.json").read_text())["done"]
    assert done[-1] == "s1/gate" and "s2/baselines" not in done
    finished = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    final = run_cli("curriculum", "--config", cfg, "--resume", run_dir.name, "--json", cwd=tmp_path)
    assert final.returncode == 0, final.stdout + final.stderr
    for p in run_dir.rglob("*"):  # stage 1's writing, training and evaluations were kept
        if p.name.endswith("_s1.jsonl") or p.name == "adapter_model.safetensors":
            assert p.stat().st_mtime_ns == finished[p.name], p.name
    summary = json.loads(final.stdout[final.stdout.index("\n{\n") :])
    assert [s["number"] for s in summary["stages"]] == [1, 2]
    assert all(s["accepted"] is not None for s in summary["stages"])


def test_a_planted_row_of_another_model_stops_training_with_a_clear_error(taught, tmp_path):
    store = tmp_path / "s"
    cfg = tmp_path / "selfimprove.yaml"
    cfg.write_text(yaml.safe_dump(_overrides(store, taught)))
    res = run_cli(
        "curriculum", "--config", cfg, cwd=tmp_path, env={"SELFIMPROVE_FAULT": "kill:phase:s1/data"}
    )
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    (run_dir,) = (store / "runs").iterdir()
    data = run_dir / "data_s1.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    planted = {**rows[0], "id": "planted", "generator": "0123abcd-instruct"}
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows, planted]))
    res = run_cli("curriculum", "--config", cfg, "--resume", run_dir.name, cwd=tmp_path)
    assert_clean_error(res, "planted (generator 0123abcd-instruct)", "outside this run's chain")
    assert not (run_dir / "adapters" / "s1").exists()


def test_cli_curriculum_bad_input_is_a_clear_error(tmp_path) -> None:
    res = run_cli("curriculum", "--stages", "1-6", "--store", tmp_path / "s", cwd=tmp_path)
    assert_clean_error(res, "stage 3", "not built yet")
    res = run_cli("curriculum", "--kinds", "haiku", "--store", tmp_path / "s", cwd=tmp_path)
    assert_clean_error(res, "curriculum.kinds", "haiku")
    res = run_cli("curriculum", "--resume", "nope", "--store", tmp_path / "s", cwd=tmp_path)
    assert_clean_error(res, "nope")
