"""Tests for the confidence weights and the weighted LoRA trainer (method: its docstring).

The equivalence tests compare *parameter updates* after one optimizer step of plain SGD
(constant lr, no clipping), so the update is ``-lr · grad`` and any change in how the loss
is normalised shows up in it (Adam's first step is ~``lr · sign(grad)`` and would hide a
wrong scale). LoRA B is initialised randomly in these tests so every LoRA parameter has a
gradient on the first step.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from selfimprove.engine import Engine
from selfimprove.errors import NeverTrainViolation
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import Runtime
from selfimprove.tasks.base import ChatMessage, Sample
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.train import (
    LengthGroupedSampler,
    TrainConfig,
    TrainExample,
    WeightedCollator,
    WeightedTrainer,
    apply_weight_policy,
    build_dataset,
    compute_weights,
    count_label_tokens,
    make_trainer,
    make_training_args,
    packing_is_exact,
    train_lora,
    wrap_lora,
)

TOL = 1e-6
HERE = Path(__file__).parent

EXAMPLES = [
    TrainExample(prompt="What is 7 plus 5?", completion="Answer: 12"),
    TrainExample(
        prompt="Sort these words alphabetically: pear apple mango.",
        completion="apple mango pear. Answer: apple mango pear",
    ),
    TrainExample(prompt="How many times does the word cat appear?", completion="3"),
    TrainExample(
        prompt="Monday Tuesday?", completion="Wednesday Thursday Friday Saturday Sunday 2024"
    ),
]


# ---------------------------------------------------------------------------- weights
def test_uniform_weights_are_one() -> None:
    assert compute_weights([0.1, 3.0, 9.0], "uniform") == [1.0, 1.0, 1.0]
    assert compute_weights([], "confidence") == []


def test_confidence_increases_and_inverse_decreases_with_nll() -> None:
    nll = [1.0, 1.2, 1.5, 2.0, 2.1, 2.6]  # small spread: nothing clipped
    conf = compute_weights(nll, "confidence", alpha=0.5)
    inv = compute_weights(nll, "inverse", alpha=0.5)
    assert all(a < b for a, b in itertools.pairwise(conf))
    assert all(a > b for a, b in itertools.pairwise(inv))
    # Before renormalisation w = (ppl/median)^alpha: ratios between examples are exact.
    assert conf[3] / conf[0] == pytest.approx(math.exp(0.5 * (2.0 - 1.0)), rel=1e-9)
    assert inv[0] / inv[3] == pytest.approx(math.exp(0.5 * (2.0 - 1.0)), rel=1e-9)
    assert sum(conf) / len(conf) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("policy", ["confidence", "inverse"])
def test_weights_within_bounds_with_mean_one(policy: str) -> None:
    # Wide spread: several weights hit the bounds, renormalising then re-clipping must converge.
    nll = [0.01, 0.5, 1.0, 1.1, 1.2, 4.0, 9.0, 15.0, 800.0]
    w = compute_weights(nll, policy, alpha=1.0, clip=(0.25, 4.0))  # type: ignore[arg-type]
    assert min(w) >= 0.25 and max(w) <= 4.0
    assert sum(w) / len(w) == pytest.approx(1.0, abs=1e-9)
    assert max(w) == 4.0 if policy == "confidence" else min(w) == 0.25
    order = sorted(range(len(nll)), key=lambda i: nll[i])
    ws = [w[i] for i in order]
    if policy == "confidence":
        assert all(a <= b for a, b in itertools.pairwise(ws))
    else:
        assert all(a >= b for a, b in itertools.pairwise(ws))


def test_weights_reject_bad_input() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            compute_weights([1.0, bad], "confidence")
    with pytest.raises(ValueError, match="clip"):
        compute_weights([1.0], "confidence", clip=(1.5, 4.0))
    with pytest.raises(ValueError, match="alpha"):
        compute_weights([1.0], "confidence", alpha=-1.0)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-llama", n_layers=2, seed=0)


@pytest.fixture(scope="module")
def engine(loaded, fp32_runtime):
    return Engine(loaded, runtime=fp32_runtime)


def _dataset(loaded, engine, examples):
    return build_dataset(examples, loaded.tokenizer, engine.format_prompt, max_length=64)


def _lora(loaded, seed: int = 1):
    set_seed(seed)
    model = wrap_lora(copy.deepcopy(loaded.model), TrainConfig(lora_r=4), init_lora_weights=False)
    model.train()
    return model


def _lora_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _sgd_cfg(bs: int, ga: int, lr: float = 0.1) -> TrainConfig:
    return TrainConfig(
        lora_r=4,
        batch_size=bs,
        grad_accum=ga,
        epochs=1,
        learning_rate=lr,  # update = -lr * grad
        optim="sgd",
        lr_scheduler="constant",
        max_grad_norm=0.0,
    )


def _one_step_update(
    loaded, engine, fp32_runtime, tmp_path, examples, bs, ga, trainer_cls=None, lr=0.1, pack=False
):
    """LoRA parameter change after training on ``examples`` (one optimizer step)."""
    dataset = _dataset(loaded, engine, examples)
    model = _lora(loaded)
    before = _lora_params(model)
    args = make_training_args(_sgd_cfg(bs, ga, lr), tmp_path / "trainer", runtime=fp32_runtime)
    trainer = make_trainer(model, dataset, args, engine.pad_id, trainer_cls=trainer_cls, pack=pack)
    trainer.train()
    assert trainer.state.global_step == 1
    after = _lora_params(model)
    loss = trainer.state.log_history[0]["loss"]
    return {k: after[k] - before[k] for k in before}, loss


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _max_abs(a: dict[str, torch.Tensor]) -> float:
    return max(float(v.abs().max()) for v in a.values())


class NaiveMeanTrainer(WeightedTrainer):
    """The old bug: per-micro-batch mean loss × mean weight, divided by GA by the Trainer."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        weights = inputs.pop("weight")
        outputs = model(**inputs)  # built-in loss: mean over this micro-batch's tokens
        loss = outputs.loss * weights.mean()
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------- dataset
def test_build_dataset_masks_prompt_and_appends_eos(loaded, engine) -> None:
    ds = _dataset(loaded, engine, EXAMPLES[:1])
    row = ds[0]
    tok = loaded.tokenizer
    p_ids = tok(engine.format_prompt(EXAMPLES[0].prompt), add_special_tokens=False)["input_ids"]
    c_ids = tok(EXAMPLES[0].completion, add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == [*p_ids, *c_ids, tok.eos_token_id]
    assert row["labels"] == [-100] * len(p_ids) + [*c_ids, tok.eos_token_id]
    assert row["weight"] == 1.0
    assert "<|im_start|>assistant" in tok.decode(row["input_ids"])  # engine's chat template


def test_build_dataset_truncates_prompt_left_and_drops_long_completions(
    loaded, engine, caplog
) -> None:
    long_prompt = TrainExample(prompt="cat " * 100, completion="Answer: 3")
    long_completion = TrainExample(prompt="hi", completion="dog " * 100, id="too-long")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(
            [long_prompt, long_completion], loaded.tokenizer, engine.format_prompt, max_length=32
        )
    assert len(ds) == 1 and ds.n_dropped == 1
    assert "too-long" in caplog.text
    row = ds[0]
    assert len(row["input_ids"]) == 32
    c_ids = loaded.tokenizer("Answer: 3", add_special_tokens=False)["input_ids"]
    assert row["input_ids"][-len(c_ids) - 1 :] == [*c_ids, loaded.tokenizer.eos_token_id]
    # The prompt kept its *end* (the assistant header), not its start.
    assert loaded.tokenizer.decode(row["input_ids"]).endswith(
        "<|im_start|>assistant\nAnswer: 3<|im_end|>"
    )


def test_weight_column_survives_remove_unused_columns(loaded, engine, fp32_runtime, tmp_path):
    ds = _dataset(loaded, engine, [e.model_copy(update={"weight": 2.5}) for e in EXAMPLES])
    args = make_training_args(_sgd_cfg(4, 1), tmp_path, runtime=fp32_runtime)
    assert args.remove_unused_columns  # the default, kept: the weight column must survive it
    trainer = make_trainer(_lora(loaded), ds, args, engine.pad_id)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask", "weight", "anchor"}
    assert batch["weight"].tolist() == [2.5] * 4
    assert batch["anchor"].tolist() == [False] * 4


# ---------------------------------------------------------------------------- equivalence
def test_unit_weights_match_builtin_loss_and_grads(loaded, engine, fp32_runtime, tmp_path):
    ds = _dataset(loaded, engine, EXAMPLES)
    batch = WeightedCollator(engine.pad_id)([ds[i] for i in range(len(ds))])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) >= 3  # mixed lengths: real padding in the batch
    model = _lora(loaded)
    trainer = make_trainer(
        model, ds, make_training_args(_sgd_cfg(4, 1), tmp_path, runtime=fp32_runtime), engine.pad_id
    )
    params = [p for p in model.parameters() if p.requires_grad]

    n = count_label_tokens(batch["labels"])
    ours = trainer.compute_loss(model, batch, num_items_in_batch=n)
    g_ours = torch.autograd.grad(ours, params)
    builtin = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    ).loss
    g_builtin = torch.autograd.grad(builtin, params)
    loss_diff = abs(ours.item() - builtin.item())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(g_ours, g_builtin, strict=True))
    print(f"\nweights≡1 vs built-in: loss diff {loss_diff:.2e}, max grad diff {grad_diff:.2e}")
    assert loss_diff <= TOL
    assert grad_diff <= TOL
    # Without num_items_in_batch (evaluation path) it normalises by the batch alone: same value.
    assert abs(trainer.compute_loss(model, batch).item() - builtin.item()) <= TOL


def test_anchor_rows_cost_kl_to_the_adapter_off_model(loaded, engine, fp32_runtime, tmp_path):
    """Anchor rows: Σ_t KL(p_base ‖ p_model) over completion tokens, from an independent
    computation (adapter switched off by hand); other rows keep their NLL; one normaliser."""
    anchors = (False, True, False, True)
    weights = (1.0, 2.0, 0.5, 1.0)
    ex = [
        e.model_copy(update={"anchor": a, "weight": w})
        for e, a, w in zip(EXAMPLES, anchors, weights, strict=True)
    ]
    ds = _dataset(loaded, engine, ex)
    batch = WeightedCollator(engine.pad_id)([ds[i] for i in range(len(ds))])
    assert batch["anchor"].tolist() == list(anchors)
    model = _lora(loaded)  # random A and B: the adapter changes the outputs
    trainer = make_trainer(
        model, ds, make_training_args(_sgd_cfg(4, 1), tmp_path, runtime=fp32_runtime), engine.pad_id
    )
    n = count_label_tokens(batch["labels"])
    ours = trainer.compute_loss(model, batch, num_items_in_batch=n)

    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
        with model.disable_adapter():
            lq = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    total = 0.0
    for r in range(len(ex)):
        for t in range(ids.shape[1] - 1):
            y = int(labels[r, t + 1])
            if y == -100:
                continue
            if anchors[r]:
                q = lq[r, t].exp()
                term = float((q * (lq[r, t] - lp[r, t])).sum())
                assert term > 0  # a real divergence: the adapter is not a no-op here
            else:
                term = -float(lp[r, t, y])
            total += weights[r] * term
    expected = total / int(n)
    print(f"\nanchored loss {ours.item():.6f} vs by hand {expected:.6f}")
    assert abs(ours.item() - expected) <= 1e-5
    # the anchor gradient flows into the adapter only through the adapted model
    grads = torch.autograd.grad(ours, [p for p in model.parameters() if p.requires_grad])
    assert all(torch.isfinite(g).all() for g in grads)


def test_anchor_is_zero_for_an_identity_adapter(loaded, engine, fp32_runtime, tmp_path) -> None:
    ex = [e.model_copy(update={"anchor": True}) for e in EXAMPLES]
    ds = _dataset(loaded, engine, ex)
    batch = WeightedCollator(engine.pad_id)([ds[i] for i in range(len(ds))])
    set_seed(0)
    model = wrap_lora(copy.deepcopy(loaded.model), TrainConfig(lora_r=4))  # B = 0: identity
    trainer = make_trainer(
        model, ds, make_training_args(_sgd_cfg(4, 1), tmp_path, runtime=fp32_runtime), engine.pad_id
    )
    loss = trainer.compute_loss(
        model, batch, num_items_in_batch=count_label_tokens(batch["labels"])
    )
    assert abs(loss.item()) < 1e-6


def test_anchors_keep_the_base_behavior_where_plain_training_moves_it(
    loaded, fp32_runtime, tmp_path
) -> None:
    """Train the same supervised example with and without anchor examples on other prompts:
    the anchored adapter's teacher-forced KL to the base on held-out look-alike prompts is
    smaller, and the supervised example is still learned."""
    base_eng = Engine(loaded, runtime=fp32_runtime)
    target = [TrainExample(prompt=f"What is {a} plus 5?", completion="No.") for a in range(6)]
    keep_prompts = [f"What is {a} times 3?" for a in range(8)]
    held_out = [f"What is {a} times 4?" for a in range(5)]
    keep_text = [g.text or "." for g in base_eng.generate(keep_prompts, max_new_tokens=6)]
    anchors = [
        TrainExample(prompt=p, completion=c, anchor=True)
        for p, c in zip(keep_prompts, keep_text, strict=True)
    ]
    base_nll = base_eng.continuation_nll([target[0].prompt], ["No."])[0].mean
    # random order: with 2 steps per epoch, length grouping would put every target in one
    # step and every anchor in the other (the measurements below predate it)
    cfg = TrainConfig(
        epochs=8, batch_size=7, learning_rate=1e-2, lora_r=4, seed=3, group_by_length=False
    )
    kls = {}
    for name, ex in {"plain": target, "anchored": target + anchors}.items():
        res = train_lora(loaded, ex, cfg, tmp_path / name, runtime=fp32_runtime)
        assert res.n_anchor == (len(anchors) if name == "anchored" else 0)
        tuned = Engine(
            load_model("tiny-llama", n_layers=2, seed=0, adapter=tmp_path / name),
            runtime=fp32_runtime,
        )
        kl = base_eng.continuation_kl(tuned, held_out, ["No."] * len(held_out), k=3)
        kls[name] = sum(sum(d["kl_ab"]) for d in kl) / len(kl)
        nll = tuned.continuation_nll([target[0].prompt], ["No."])[0].mean
        assert nll < 0.25 * base_nll, (name, nll)  # the supervised example is learned either way
    print(f"\nheld-out KL to base: plain {kls['plain']:.3f}, anchored {kls['anchored']:.3f}")
    # measured: plain 4.88, anchored 2.81 nats (a 2-layer random model has little room to
    # tell "plus" from "times"); the supervised NLL fell 6.5 -> 0.63 / 1.09
    assert kls["anchored"] < 0.75 * kls["plain"]


@pytest.mark.parametrize("weights", [None, (2.0, 0.5, 1.0, 1.5)], ids=["w=1", "w=mixed"])
def test_bs1_ga4_equals_bs4(loaded, engine, fp32_runtime, tmp_path, weights) -> None:
    examples = EXAMPLES
    if weights is not None:
        examples = [
            e.model_copy(update={"weight": w}) for e, w in zip(EXAMPLES, weights, strict=True)
        ]
    run = _one_step_update
    big, loss_big = run(loaded, engine, fp32_runtime, tmp_path / "a", examples, 4, 1)
    ga, loss_ga = run(loaded, engine, fp32_runtime, tmp_path / "b", examples, 1, 4)
    two, _ = run(loaded, engine, fp32_runtime, tmp_path / "c", examples, 2, 2)
    naive, _ = run(loaded, engine, fp32_runtime, tmp_path / "d", examples, 1, 4, NaiveMeanTrainer)
    d_ga, d_two, d_naive = _max_diff(big, ga), _max_diff(big, two), _max_diff(big, naive)
    print(
        f"\nfp32 {weights}: |update| max {_max_abs(big):.3e}; bs1xGA4 vs bs4 {d_ga:.2e}; "
        f"bs2xGA2 vs bs4 {d_two:.2e}; naive bs1xGA4 vs bs4 {d_naive:.2e}"
    )
    assert _max_abs(big) > 1e-2  # a real update
    assert d_ga <= TOL
    assert d_two <= TOL
    assert loss_ga == pytest.approx(loss_big, abs=TOL)  # the logged step loss agrees too
    # The per-micro-batch mean is measurably wrong: this comparison can fail.
    assert d_naive > 1000 * TOL


def test_bs1_ga4_equals_bs4_float64(loaded, engine, fp32_runtime, tmp_path) -> None:
    """In float64 the agreement is exact to rounding: the fp32 residue above is rounding."""
    loaded64 = LoadedModel(
        copy.deepcopy(loaded.model).double(),
        loaded.tokenizer,
        loaded.name,
        loaded.source,
        loaded.weights_hash,
    )
    examples = [
        e.model_copy(update={"weight": w}) for e, w in zip(EXAMPLES, (2, 0.5, 1, 1.5), strict=True)
    ]
    run = _one_step_update
    big, _ = run(loaded64, engine, fp32_runtime, tmp_path / "a", examples, 4, 1, lr=1.0)
    ga, _ = run(loaded64, engine, fp32_runtime, tmp_path / "b", examples, 1, 4, lr=1.0)
    naive, _ = run(
        loaded64, engine, fp32_runtime, tmp_path / "c", examples, 1, 4, NaiveMeanTrainer, lr=1.0
    )
    assert next(iter(big.values())).dtype == torch.float64
    d_ga, d_naive = _max_diff(big, ga), _max_diff(big, naive)
    print(
        f"\nfp64: |update| max {_max_abs(big):.3e}; bs1xGA4 vs bs4 {d_ga:.2e}; naive {d_naive:.2e}"
    )
    assert d_ga <= 1e-12
    assert d_naive > 1e-2


def test_weights_change_the_update_and_zero_equals_dropping(
    loaded, engine, fp32_runtime, tmp_path
) -> None:
    run = _one_step_update
    base, _ = run(loaded, engine, fp32_runtime, tmp_path / "a", EXAMPLES, 4, 1)
    doubled = [EXAMPLES[0].model_copy(update={"weight": 2.0}), *EXAMPLES[1:]]
    dbl, _ = run(loaded, engine, fp32_runtime, tmp_path / "b", doubled, 4, 1)
    muted = [EXAMPLES[0], EXAMPLES[1].model_copy(update={"weight": 0.0}), *EXAMPLES[2:]]
    zero, _ = run(loaded, engine, fp32_runtime, tmp_path / "c", muted, 4, 1)
    dropped = [EXAMPLES[0], *EXAMPLES[2:]]
    drop, _ = run(loaded, engine, fp32_runtime, tmp_path / "d", dropped, 3, 1)
    # Weight 0 inside a GA window equals dropping too (it still occupies a micro-batch).
    zero_ga, _ = run(loaded, engine, fp32_runtime, tmp_path / "e", muted, 1, 4)
    d_dbl, d_zero, d_zero_ga = _max_diff(base, dbl), _max_diff(zero, drop), _max_diff(zero_ga, drop)
    print(
        f"\ndoubling changes update by {d_dbl:.2e}; w=0 vs dropped {d_zero:.2e} / {d_zero_ga:.2e}"
    )
    assert d_dbl > 1000 * TOL
    assert d_zero <= TOL
    assert d_zero_ga <= TOL
    assert _max_diff(base, drop) > 1000 * TOL  # dropping an example matters at all


# ---------------------------------------------------------------------------- packing
def _mixed_examples() -> list[TrainExample]:
    """Different lengths, weights (one muted) and two KL anchors."""
    spec = ((1.0, False), (2.0, True), (0.0, False), (0.5, True))
    return [
        e.model_copy(update={"weight": w, "anchor": a})
        for e, (w, a) in zip(EXAMPLES, spec, strict=True)
    ]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_packed_batch_equals_padded_loss_and_grads(name, fp32_runtime, tmp_path) -> None:
    """One packed row (no padding) gives the padded batch's loss and gradients, with
    weights, a muted example and KL anchors (whose reference forward is packed too)."""
    lm = load_model(name, n_layers=2, seed=0)
    eng = Engine(lm, runtime=fp32_runtime)
    ds = build_dataset(_mixed_examples(), lm.tokenizer, eng.format_prompt, max_length=64)
    feats = [ds[i] for i in range(len(ds))]
    padded = WeightedCollator(eng.pad_id)(feats)
    packed = WeightedCollator(eng.pad_id, pack=True)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert padded["input_ids"].numel() > sum(lengths)  # the padded batch does carry padding
    assert int(count_label_tokens(packed["labels"])) == int(count_label_tokens(padded["labels"]))
    model = _lora(lm)  # random B: anchors have a non-zero KL
    model.eval()  # GPT-2 has dropout: compare the deterministic forward (grads still flow)
    trainer = make_trainer(
        model, ds, make_training_args(_sgd_cfg(4, 1), tmp_path, runtime=fp32_runtime), eng.pad_id
    )
    params = [p for p in model.parameters() if p.requires_grad]
    n = count_label_tokens(padded["labels"])
    a = trainer.compute_loss(model, padded, num_items_in_batch=n)
    g_a = torch.autograd.grad(a, params)
    b = trainer.compute_loss(model, packed, num_items_in_batch=n)
    g_b = torch.autograd.grad(b, params)
    grad_diff = max(float((x - y).abs().max()) for x, y in zip(g_a, g_b, strict=True))
    print(f"\n{name} packed vs padded: loss {b.item():.6f} vs {a.item():.6f}, grad {grad_diff:.1e}")
    assert a.item() > 0.1
    assert abs(a.item() - b.item()) <= 1e-5
    assert grad_diff <= 1e-5
    # the control: without restarting position ids the rows see each other and it differs
    leaky = {**packed, "position_ids": torch.arange(sum(lengths)).unsqueeze(0)}
    c = trainer.compute_loss(model, leaky, num_items_in_batch=n)
    assert abs(c.item() - a.item()) > 1e-3


def test_packed_bs1_ga4_and_bs4_equal_padded_bs4(loaded, engine, fp32_runtime, tmp_path) -> None:
    ex = _mixed_examples()
    run = _one_step_update
    padded, loss_padded = run(loaded, engine, fp32_runtime, tmp_path / "a", ex, 4, 1)
    packed, loss_packed = run(loaded, engine, fp32_runtime, tmp_path / "b", ex, 4, 1, pack=True)
    ga, _ = run(loaded, engine, fp32_runtime, tmp_path / "c", ex, 1, 4, pack=True)
    d_pack, d_ga = _max_diff(padded, packed), _max_diff(padded, ga)
    print(f"\npacked bs4 vs padded bs4 {d_pack:.1e}; packed bs1xGA4 vs padded bs4 {d_ga:.1e}")
    assert _max_abs(padded) > 1e-2
    assert d_pack <= 1e-5
    assert d_ga <= 1e-5
    assert loss_packed == pytest.approx(loss_padded, abs=1e-5)


class _IgnoresPositions(torch.nn.Module):
    """A model whose forward drops ``position_ids`` (packed rows would attend to each other)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kw):
        return self.inner(input_ids=input_ids, **kw)


def test_packing_check_passes_real_attention_and_fails_one_that_ignores_positions(loaded):
    assert packing_is_exact(loaded.model)
    lora = _lora(loaded)  # in training mode
    assert packing_is_exact(lora)
    assert lora.training  # the check restored the mode
    assert not packing_is_exact(_IgnoresPositions(loaded.model))


def test_train_lora_packs_by_default_and_falls_back(loaded, fp32_runtime, tmp_path, monkeypatch):
    res = train_lora(loaded, EXAMPLES, TrainConfig(epochs=1, batch_size=4), tmp_path / "a")
    assert res.packed
    import selfimprove.train.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "packing_is_exact", lambda model: False)
    res = train_lora(loaded, EXAMPLES, TrainConfig(epochs=1, batch_size=4), tmp_path / "b")
    assert not res.packed
    res = train_lora(
        loaded, EXAMPLES, TrainConfig(epochs=1, batch_size=4, pack=False), tmp_path / "c"
    )
    assert not res.packed


# ---------------------------------------------------------------------------- end to end
def test_train_lora_end_to_end(loaded, fp32_runtime, tmp_path) -> None:
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    steps: list[tuple[int, int]] = []
    examples = [
        TrainExample(prompt="What is 7 plus 5?", completion="Answer: 12", id="a"),
        TrainExample(
            prompt=[ChatMessage(role="user", content="Name a weekday.")],
            completion="Answer: Monday",
            id="b",
        ),
    ]
    cfg = TrainConfig(epochs=10, batch_size=2, learning_rate=5e-3, lora_r=4)
    out = tmp_path / "adapter"
    res = train_lora(
        loaded,
        examples,
        cfg,
        out,
        runtime=fp32_runtime,
        progress=lambda s, n: steps.append((s, n)),
    )
    assert steps[-1] == (10, 10) and len(steps) == 10
    assert len(res.losses) == 10
    assert res.losses[-1] < 0.25 * res.losses[0], res.losses
    assert not res.diverged and res.final_loss == res.losses[-1]
    assert res.n_examples == 2 and res.n_tokens > 0
    assert res.weights_summary == {"min": 1.0, "mean": 1.0, "max": 1.0}
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    saved = json.loads((out / "train_result.json").read_text())
    assert saved["config"]["epochs"] == 10 and saved["losses"] == res.losses
    assert not list(tmp_path.glob(".adapter.*"))  # no temp folders left behind
    # The base model is untouched (bit-identical, not wrapped).
    after = loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(loaded.model, "peft_config")
    # The adapter loads with models.attach_adapter and lowers the NLL of the training targets.
    base_eng = Engine(load_model("tiny-llama", n_layers=2, seed=0), runtime=fp32_runtime)
    tuned = Engine(load_model("tiny-llama", n_layers=2, seed=0, adapter=out), runtime=fp32_runtime)
    prompts, targets = [e.prompt for e in examples], [e.completion for e in examples]
    nll_base = [s.mean for s in base_eng.continuation_nll(prompts, targets)]
    nll_tuned = [s.mean for s in tuned.continuation_nll(prompts, targets)]
    assert all(t < 0.5 * b for t, b in zip(nll_tuned, nll_base, strict=True))
    # Merged into the weights it is the same model up to float rounding (fp32 here).
    merged_lm = attach_adapter(load_model("tiny-llama", n_layers=2, seed=0), out, merge=True)
    assert not hasattr(merged_lm.model, "peft_config")  # a plain model, no LoRA layers left
    merged = Engine(merged_lm, runtime=fp32_runtime)
    nll_merged = [s.mean for s in merged.continuation_nll(prompts, targets)]
    assert nll_merged == pytest.approx(nll_tuned, rel=1e-5)
    assert [g.token_ids for g in merged.generate(prompts, max_new_tokens=8)] == [
        g.token_ids for g in tuned.generate(prompts, max_new_tokens=8)
    ]
    # Re-training into the same folder replaces it atomically.
    train_lora(loaded, examples, cfg.model_copy(update={"epochs": 1}), out, runtime=fp32_runtime)
    assert json.loads((out / "train_result.json").read_text())["config"]["epochs"] == 1


def test_apply_weight_policy_then_train_records_weights(
    loaded, engine, fp32_runtime, tmp_path
) -> None:
    cfg = TrainConfig(epochs=1, batch_size=4, lora_r=2, weight_policy="confidence", weight_alpha=1)
    examples = [*EXAMPLES[:3], EXAMPLES[3].model_copy(update={"weight": 0.5})]
    weighted = apply_weight_policy(loaded, examples, cfg, runtime=fp32_runtime)
    nll = [
        s.mean
        for s in engine.continuation_nll(
            [e.prompt for e in examples], [e.completion for e in examples]
        )
    ]
    policy = compute_weights(nll, "confidence", alpha=1.0)
    assert [e.weight for e in weighted] == pytest.approx(
        [w * e.weight for w, e in zip(policy, examples, strict=True)], rel=1e-6
    )
    assert apply_weight_policy(loaded, examples, TrainConfig()) == examples  # uniform: as is
    # train_lora trains with the weights as given: the policy is not applied a second time.
    res = train_lora(loaded, weighted, cfg, tmp_path / "ad", runtime=fp32_runtime)
    ws = [e.weight for e in weighted]
    assert res.weights_summary["min"] == pytest.approx(min(ws))
    assert res.weights_summary["max"] == pytest.approx(max(ws))
    assert res.weights_summary["mean"] == pytest.approx(sum(ws) / 4)


def test_train_lora_bf16_runtime_uses_autocast(loaded, fp32_runtime, tmp_path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=4, lora_r=2)
    bf16 = Runtime(threads=fp32_runtime.threads, dtype="bf16")
    r16 = train_lora(loaded, EXAMPLES, cfg, tmp_path / "b", runtime=bf16)
    r32 = train_lora(loaded, EXAMPLES, cfg, tmp_path / "f", runtime=fp32_runtime)
    assert r16.runtime["dtype"] == "bf16"
    # Same first-step loss up to bf16 rounding, but not bit-identical: autocast was on.
    assert r16.losses[0] != r32.losses[0]
    assert r16.losses[0] == pytest.approx(r32.losses[0], abs=0.05)
    tensors = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in tensors.values())  # weights stay fp32


def test_train_lora_refuses_never_train_items(loaded, fp32_runtime, tmp_path) -> None:
    registry = NeverTrainRegistry()
    registry.add([Sample(id="eval/1", input="What is 7 plus 5?", target="12")], "arith-suite")
    with pytest.raises(NeverTrainViolation, match="arith-suite"):
        train_lora(loaded, EXAMPLES, TrainConfig(epochs=1), tmp_path / "x", never_train=registry)
    assert not (tmp_path / "x").exists()


def test_train_config_validation() -> None:
    with pytest.raises(ValueError):
        TrainConfig(learning_rate=1e-3, batch_sise=4)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        TrainConfig(weight_clip=(2.0, 4.0))
    with pytest.raises(ValueError):
        TrainExample(prompt="x", completion="y", weight=-1.0)


# ---------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_length_grouped_sampler_orders_steps_by_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(10, 300) for _ in range(203)]
    s = LengthGroupedSampler(lengths, group=8, seed=3)
    e0, e1 = list(s), list(s)  # two epochs
    assert sorted(e0) == sorted(e1) == list(range(203))  # every example once per epoch
    assert e0 != e1 and e0 == LengthGroupedSampler(lengths, group=8, seed=3).order(0)
    assert LengthGroupedSampler(lengths, group=8, seed=4).order(0) != e0

    def pad_efficiency(order: list[int]) -> float:
        steps = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(lengths[i] for i in order) / sum(
            max(lengths[i] for i in st) * len(st) for st in steps
        )

    shuffled = list(range(203))
    random.Random(1).shuffle(shuffled)
    assert pad_efficiency(e0) > 0.9 > 0.7 > pad_efficiency(shuffled)
    windows = [sorted(e0[i : i + 8], key=lengths.__getitem__) for i in range(0, 200, 8)]
    assert all(len(w) == 8 for w in windows)
    # the steps are shuffled, not left in descending length order
    firsts = [lengths[w[0]] for w in windows]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    with pytest.raises(ValueError):
        LengthGroupedSampler(lengths, group=0, seed=0)


def test_trainer_batches_follow_the_length_grouped_order(loaded, engine, fp32_runtime, tmp_path):
    examples = [
        TrainExample(prompt=f"q{i}", completion="word " * (1 + (7 * i) % 13), id=f"e{i}")
        for i in range(12)
    ]
    ds = _dataset(loaded, engine, examples)
    args = make_training_args(_sgd_cfg(2, 2), tmp_path, runtime=fp32_runtime)
    trainer = make_trainer(_lora(loaded), ds, args, engine.pad_id, group_by_length=True)
    dl = trainer.get_train_dataloader()
    sampler = LengthGroupedSampler([len(r["input_ids"]) for r in ds.rows], group=4, seed=0)
    want = sampler.order(0)
    got = [row for b in dl for row in b["input_ids"].tolist()]
    pad = engine.pad_id
    assert [[t for t in r if t != pad] for r in got] == [
        [t for t in ds.rows[i]["input_ids"] if t != pad] for i in want
    ]


def _steps_update(loaded, engine, fp32_runtime, tmp_path, examples, bs, ga, grouped=True):
    """LoRA change after one epoch (several SGD steps), length-grouped order by default."""
    dataset = _dataset(loaded, engine, examples)
    model = _lora(loaded)
    before = _lora_params(model)
    args = make_training_args(_sgd_cfg(bs, ga), tmp_path, runtime=fp32_runtime)
    trainer = make_trainer(model, dataset, args, engine.pad_id, group_by_length=grouped)
    trainer.train()
    after = _lora_params(model)
    return {k: after[k] - before[k] for k in before}, trainer.state.global_step


def test_length_grouping_keeps_bs1_ga4_equal_to_bs4(loaded, engine, fp32_runtime, tmp_path):
    examples = [
        TrainExample(prompt=f"q{i} ?", completion="a b " * (1 + (5 * i) % 7), weight=0.5 + i % 3)
        for i in range(8)
    ]
    big, n_big = _steps_update(loaded, engine, fp32_runtime, tmp_path / "a", examples, 4, 1)
    ga, n_ga = _steps_update(loaded, engine, fp32_runtime, tmp_path / "b", examples, 1, 4)
    # control: the same examples in the default random order form other steps
    other, _ = _steps_update(
        loaded, engine, fp32_runtime, tmp_path / "c", examples, 4, 1, grouped=False
    )
    d, d_other = _max_diff(big, ga), _max_diff(big, other)
    print(f"\n2 grouped steps: bs1xGA4 vs bs4 {d:.2e}; other order {d_other:.2e}")
    assert n_big == n_ga == 2
    assert _max_abs(big) > 1e-2
    # fp32 rounding compounds over the 2 steps (9e-6 measured); other steps differ far more
    assert d <= 1e-4
    assert d_other > 100 * d


def test_ddp_two_processes_equal_single_process(tmp_path) -> None:
    """2-process gloo DDP (bs1 x GA2 per rank) equals one process (bs2 x GA2), 2 SGD steps."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    helper = str(HERE / "ddp_train_helper.py")
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        helper,
        str(ddp_out),
        "1",
        "2",
    ]
    # One retry for a crash in gloo's teardown ("terminate called without an active exception",
    # SIGABRT of a rank at exit; seen once in ~10 clean-clone suites on this 2-core box). The
    # retry runs the same training from scratch; the equivalence checks below are unchanged.
    for _attempt in range(2):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:  # a hang is a failure (a deadlock), not a skip
            pytest.fail(f"torchrun did not finish within 600 s (hung ranks?):\n{e.stderr!s:.3000}")
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "terminate called without an active exception" not in out:
            break
        cmd[cmd.index("--master_port") + 1] = str(_free_port())
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        env_markers = (
            "Address already in use",
            "Connection refused",
            "RendezvousConnectionError",
            "DistNetworkError",
        )
        if any(m in tail for m in env_markers) and not (ddp_out / "train_result.json").exists():
            pytest.skip(f"torchrun could not start 2 gloo processes here:\n{tail}")
        pytest.fail(f"DDP run failed (rc {proc.returncode}):\n{tail}")
    single = subprocess.run(
        [sys.executable, helper, str(single_out), "2", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    ddp_res = json.loads((ddp_out / "train_result.json").read_text())
    single_res = json.loads((single_out / "train_result.json").read_text())
    assert ddp_res["runtime"]["world_size"] == 2 and single_res["runtime"]["world_size"] == 1
    a = load_file(str(ddp_out / "adapter_model.safetensors"))
    b = load_file(str(single_out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # LoRA B starts at 0, so after training max|B| is the size of the update.
    update = max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k)
    print(f"\nDDP vs single: max adapter diff {diff:.2e} (max |lora_B| {update:.2e})")
    assert update > 1e-3
    assert diff <= TOL
    assert ddp_res["losses"] == pytest.approx(single_res["losses"], abs=TOL)


def test_a_first_step_of_zero_kl_anchors_is_not_divergence(loaded, fp32_runtime, tmp_path) -> None:
    """Regression: with the anchors in the first step their KL is exactly 0 (LoRA B = 0, the
    policy is still the base model), and ``last > 3 × 0`` flagged every such run diverged
    ("Training diverged (losses [0.0, 0.92, 0.46])"). The reference is now the first
    non-zero loss (selfimprove.gate.check_losses)."""
    long = "The river ran slowly past the old mill, and the children watched the boats go by."
    examples = [
        TrainExample(prompt="What is 7 plus 5?", completion="Answer: 12", id="a"),
        TrainExample(prompt="What is 2 plus 2?", completion="Answer: 4", id="b"),
        TrainExample(prompt="Continue:", completion=long, anchor=True, id="c"),
        TrainExample(prompt="Continue the text:", completion=long + " Then", anchor=True, id="d"),
    ]
    # Grouped by length, one step holds the two anchors; pick a seed that puts it first.
    seed = next(
        s for s in range(50) if set(LengthGroupedSampler([1, 1, 9, 9], 2, s).order(0)[:2]) == {2, 3}
    )
    cfg = TrainConfig(epochs=1, batch_size=2, lora_r=4, group_by_length=True, pack=False, seed=seed)
    res = train_lora(loaded, examples, cfg, tmp_path / "adapter", runtime=fp32_runtime)
    assert len(res.losses) == 2 and res.losses[0] == 0.0 and res.losses[1] > 0.0, res.losses
    assert not res.diverged
