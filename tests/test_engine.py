"""Engine equivalence tests on tiny random models: batching, prefix sharing, NLL, KL."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from selfimprove.engine import Engine, _apply_stops
from selfimprove.models import LoadedModel

PROMPTS = [
    "What is 7 plus 5?",
    "Sort these words: pear apple mango.",
    "How many times does the word cat appear in: cat dog cat?",
    "Hi",
    "The quick brown fox jumps over the lazy dog. What is 3 times 4? Answer: ",
    "Monday",
]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize(
    ("share_prefix", "prefill_rows"), [(True, 8), (False, 8), (True, 2), (False, 1)]
)
def test_batched_greedy_equals_per_item(request, name, share_prefix, prefill_rows):
    """Left padding, shared-prefix prefill and length-grouped prefill (merged caches) must not
    change any row's greedy tokens."""
    eng: Engine = request.getfixturevalue(name)
    eng.share_prefix, eng.prefill_rows = share_prefix, prefill_rows
    try:
        batched = eng.generate(PROMPTS, max_new_tokens=12, batch_size=len(PROMPTS))
        single = [eng.generate([p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    finally:
        eng.share_prefix, eng.prefill_rows = True, 8
    for b, s in zip(batched, single, strict=True):
        assert b.token_ids == s.token_ids
        assert b.text == s.text
        assert b.mean_entropy == pytest.approx(s.mean_entropy, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_greedy_equals_hf_generate(request, name):
    eng: Engine = request.getfixturevalue(name)
    for p in PROMPTS[:3]:
        ours = eng.generate([p], max_new_tokens=10)[0]
        enc = eng.tokenizer(eng.format_prompt(p), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ref = eng.model.generate(
                **enc,
                max_new_tokens=10,
                do_sample=False,
                eos_token_id=eng.eos_ids,
                pad_token_id=eng.pad_id,
            )
        ref_ids = [t for t in ref[0, enc.input_ids.shape[1] :].tolist() if t not in eng.eos_ids]
        assert ours.token_ids == ref_ids[: len(ours.token_ids)]
        assert len(ours.token_ids) == len(ref_ids)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_continuation_nll_equals_model_loss(request, name):
    eng: Engine = request.getfixturevalue(name)
    prompts = PROMPTS[:4]
    conts = ["Answer: 12", " apple mango pear", "2", "Hello there, friend"]
    ours = eng.continuation_nll(prompts, conts, batch_size=3)
    for p, c, sc in zip(prompts, conts, ours, strict=True):
        p_ids = eng.encode_prompts([p])[0]
        c_ids = eng.tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        labels = ids.clone()
        labels[0, : len(p_ids)] = -100
        with torch.inference_mode():
            loss = eng.model(input_ids=ids, labels=labels).loss.item()
        assert len(sc.nll) == len(c_ids)
        assert sc.mean == pytest.approx(loss, rel=1e-5, abs=1e-5)


def test_next_token_logprobs_match_generation_choice(tiny_llama):
    lp = tiny_llama.next_token_logprobs(PROMPTS, batch_size=4)
    assert lp.shape == (len(PROMPTS), tiny_llama.model.config.vocab_size)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(PROMPTS)), atol=1e-4)
    gens = tiny_llama.generate(PROMPTS, max_new_tokens=1)
    for row, g in zip(lp, gens, strict=True):
        top = int(row.argmax())
        assert g.token_ids == ([] if top in tiny_llama.eos_ids else [top])


def test_kl_zero_for_identical_and_positive_for_perturbed(tiny_llama, fp32_runtime):
    same = tiny_llama.continuation_kl(tiny_llama, PROMPTS[:3], ["a b c d", "x y", "1 2 3"], k=3)
    for item in same:
        assert max(item["kl_ab"] + item["kl_ba"]) < 1e-6
    model2 = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        model2.model.layers[0].mlp.down_proj.weight.add_(
            0.05 * torch.randn_like(model2.model.layers[0].mlp.down_proj.weight)
        )
    other = Engine(
        LoadedModel(model2, tiny_llama.tokenizer, "perturbed", "test", "x"), runtime=fp32_runtime
    )
    diff = tiny_llama.continuation_kl(other, PROMPTS[:3], ["a b c d", "x y", "1 2 3"], k=3)
    for item in diff:
        assert len(item["kl_ab"]) == 3 or len(item["kl_ab"]) <= 3
        assert min(item["kl_ab"]) > 1e-6 and min(item["kl_ba"]) > 1e-6


def test_sampling_is_seeded_and_batch_independent(tiny_llama):
    a = tiny_llama.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, batch_size=6)
    b = tiny_llama.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, batch_size=2)
    c = tiny_llama.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=4, batch_size=6)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_stops_cut_before_strings_and_after_patterns():
    assert _apply_stops("abc\n\ndef", ["\n\n"]) == "abc"
    pat = re.compile(r"(?m)^Answer:[^\n]*\n")
    assert _apply_stops("think\nAnswer: 12\nmore", [pat]) == "think\nAnswer: 12\n"
    assert _apply_stops("no stop here", ["\n\n", pat]) is None
    # the earliest stop wins
    assert _apply_stops("Answer: 1\nx\n\ny", ["\n\n", pat]) == "Answer: 1\n"


def test_generation_respects_max_new_tokens_and_reports_reason(tiny_llama):
    gens = tiny_llama.generate(PROMPTS, max_new_tokens=5)
    for g in gens:
        assert g.n_tokens <= 5
        assert g.finish_reason in {"eos", "length", "stop"}
        if g.finish_reason == "length":
            assert g.n_tokens == 5


def test_per_prompt_caps_cut_each_row_at_its_own_length(tiny_llama):
    full = tiny_llama.generate(PROMPTS, max_new_tokens=12)
    caps = [1, 12, 3, 12, 7, 2]
    capped = tiny_llama.generate(PROMPTS, max_new_tokens=caps, batch_size=len(PROMPTS))
    for f, c, cap in zip(full, capped, caps, strict=True):
        # greedy: a capped row is the uncapped row's prefix, and the others are untouched
        assert c.token_ids == f.token_ids[:cap]
        if len(f.token_ids) > cap:
            assert (c.n_tokens, c.finish_reason) == (cap, "length")
    with pytest.raises(ValueError, match="6 prompts"):
        tiny_llama.generate(PROMPTS, max_new_tokens=[4, 4])
    with pytest.raises(ValueError, match=">= 1"):
        tiny_llama.generate(PROMPTS[:1], max_new_tokens=[0])
