"""Equivalence tests for selfimprove.interp.hooks on tiny random Llama and GPT-2 models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from selfimprove.interp.hooks import (
    ablate_heads,
    capture,
    eager_attention,
    head_gates,
    layout_for,
    lora_knockout,
    patch_residual,
    steer,
)
from selfimprove.testing import tiny_model

KINDS = ["tiny-llama", "tiny-gpt2"]


@pytest.fixture(scope="module", params=KINDS)
def model(request: pytest.FixtureRequest) -> Any:
    m, _tok = tiny_model(request.param, n_layers=3, seed=1)
    return m


def _ids(seed: int = 0, B: int = 2, T: int = 7, vocab: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (B, T), generator=g)


def _logits(m: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(input_ids=ids).logits  # type: ignore[no-any-return]


def _lora(m: Any, *, random_b: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "o_proj"] if hasattr(m, "model") else ["c_attn", "c_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=not random_b)
    torch.manual_seed(3)
    pm = get_peft_model(copy.deepcopy(m), cfg)
    pm.eval()
    return pm


def test_layout_geometry() -> None:
    m, _ = tiny_model("tiny-llama", n_layers=2)
    lay = layout_for(m)
    assert (lay.n_layers, lay.n_heads, lay.n_kv_heads, lay.d_head, lay.d_model) == (
        2,
        9,
        3,
        64,
        576,
    )
    g, _ = tiny_model("tiny-gpt2", n_layers=2)
    lg = layout_for(g)
    assert (lg.family, lg.n_heads, lg.d_head, lg.d_model) == ("gpt2", 4, 32, 128)


@pytest.mark.parametrize("heads", [[(0, 1)], [(1, 0), (1, 3), (2, 2)]])
def test_zero_ablation_equals_zeroing_out_proj_columns(
    model: Any, heads: list[tuple[int, int]]
) -> None:
    lay = layout_for(model)
    ids = _ids()
    with ablate_heads(model, heads, mode="zero"):
        hooked = _logits(model, ids)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for ly, hd in heads:
            w = lay.out_proj(edited, ly).weight
            sl = lay.head_slice(hd)
            if lay.family == "gpt2":
                w[sl, :] = 0.0  # Conv1D weight is (in, out)
            else:
                w[:, sl] = 0.0  # Linear weight is (out, in)
    torch.testing.assert_close(hooked, _logits(edited, ids), rtol=0, atol=1e-5)
    assert not torch.allclose(hooked, _logits(model, ids), atol=1e-4)  # it did something


def test_mean_and_resample_ablation_match_zero_when_values_are_zero(model: Any) -> None:
    lay = layout_for(model)
    ids = _ids()
    heads = [(1, 1), (2, 0)]
    zeros = {ly: torch.zeros(lay.n_heads, lay.d_head) for ly in (1, 2)}
    pool = {ly: torch.zeros(5, lay.n_heads, lay.d_head) for ly in (1, 2)}
    with ablate_heads(model, heads, mode="zero"):
        z = _logits(model, ids)
    with ablate_heads(model, heads, mode="mean", means=zeros):
        mm = _logits(model, ids)
    with ablate_heads(model, heads, mode="resample", pool=pool):
        rs = _logits(model, ids)
    assert torch.equal(z, mm) and torch.equal(z, rs)
    # a one-vector pool is the same as mean ablation with that vector
    v = torch.randn(lay.n_heads, lay.d_head)
    with ablate_heads(model, heads, mode="mean", means={1: v, 2: v}):
        a = _logits(model, ids)
    with ablate_heads(model, heads, mode="resample", pool={1: v[None], 2: v[None]}):
        b = _logits(model, ids)
    assert torch.equal(a, b)


def test_gate_at_one_is_bit_identical_and_gate_zero_is_ablation(model: Any) -> None:
    lay = layout_for(model)
    ids = _ids()
    ref = _logits(model, ids)
    with head_gates(model, torch.ones(lay.n_layers, lay.n_heads)):
        assert torch.equal(_logits(model, ids), ref)
    g = torch.ones(lay.n_layers, lay.n_heads)
    g[1, 2] = 0.0
    with head_gates(model, g):
        gated = _logits(model, ids)
    with ablate_heads(model, [(1, 2)], mode="zero"):
        torch.testing.assert_close(gated, _logits(model, ids), rtol=0, atol=1e-6)


def test_per_example_gates_give_per_example_gradients(model: Any) -> None:
    lay = layout_for(model)
    ids = _ids(B=3)

    def grad_for(x: torch.Tensor) -> torch.Tensor:
        g = torch.ones(x.shape[0], lay.n_layers, lay.n_heads, requires_grad=True)
        with head_gates(model, g):
            out = model(input_ids=x).logits  # (B, T, V)
            loss = out[:, -1].logsumexp(-1)  # (B,) one scalar per example
            (grad,) = torch.autograd.grad(loss.sum(), g)
        return grad

    batched = grad_for(ids)
    for b in range(ids.shape[0]):
        torch.testing.assert_close(batched[b], grad_for(ids[b : b + 1])[0], rtol=1e-4, atol=1e-6)
    assert batched.abs().sum() > 0


def test_patching_all_positions_reproduces_the_source_run(model: Any) -> None:
    lay = layout_for(model)
    clean, corrupt = _ids(0), _ids(1)
    clean_logits = _logits(model, clean)
    for layer in range(1, lay.n_layers + 1):
        with capture(model, resid=[layer]) as acts:
            _logits(model, clean)
        mask = torch.ones(clean.shape, dtype=torch.bool)
        with patch_residual(model, layer, acts[f"resid.{layer}"], mask):
            torch.testing.assert_close(_logits(model, corrupt), clean_logits, rtol=0, atol=1e-5)
    # patching nowhere changes nothing
    with patch_residual(model, 1, acts[f"resid.{lay.n_layers}"], torch.zeros_like(mask)):
        assert torch.equal(_logits(model, corrupt), _logits(model, corrupt))


def test_steering_adds_exactly_alpha_v(model: Any) -> None:
    lay = layout_for(model)
    ids = _ids()
    v = torch.randn(lay.d_model)
    with capture(model, resid=[2]) as a:
        _logits(model, ids)
    clean = a["resid.2"].clone()
    with steer(model, 2, v, alpha=0.5), capture(model, resid=[2]) as b:
        _logits(model, ids)
    torch.testing.assert_close(b["resid.2"] - clean, (0.5 * v).expand_as(clean), rtol=0, atol=1e-5)
    with steer(model, 2, v, alpha=0.0):
        assert torch.equal(_logits(model, ids), _logits(model, ids))


def test_capture_shapes_and_z_matches_out_proj_input(model: Any) -> None:
    lay = layout_for(model)
    ids = _ids()
    with capture(model, resid=None, z=None) as acts:
        _logits(model, ids)
    assert sorted(acts) == sorted(
        [f"resid.{p}" for p in range(lay.n_layers + 1)] + [f"z.{ly}" for ly in range(lay.n_layers)]
    )
    assert acts["resid.0"].shape == (2, 7, lay.d_model)
    assert acts["z.0"].shape == (2, 7, lay.n_heads * lay.d_head)
    # the last residual point feeds the final norm: output_hidden_states agrees before it
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for p in range(lay.n_layers):
        torch.testing.assert_close(acts[f"resid.{p}"], hs[p], rtol=0, atol=0)


def _all_contexts(model: Any) -> list[Callable[[], Any]]:
    lay = layout_for(model)
    v = torch.ones(lay.d_model)
    means = {1: torch.ones(lay.n_heads, lay.d_head)}
    return [
        lambda: capture(model, resid=None, z=None),
        lambda: ablate_heads(model, [(0, 0), (1, 1)]),
        lambda: ablate_heads(model, [(1, 1)], mode="mean", means=means),
        lambda: head_gates(model, torch.zeros(lay.n_layers, lay.n_heads)),
        lambda: patch_residual(
            model, 1, torch.zeros(2, 7, lay.d_model), torch.ones(2, 7, dtype=torch.bool)
        ),
        lambda: steer(model, 1, v, alpha=3.0),
        lambda: eager_attention(model),
    ]


def test_logits_bit_identical_after_every_context_exits_even_on_error(model: Any) -> None:
    ids = _ids()
    ref = _logits(model, ids)
    impl = model.config._attn_implementation
    n_hooks = _count_hooks(model)
    for make in _all_contexts(model):
        with make():
            _logits(model, ids)
        assert torch.equal(_logits(model, ids), ref)
        with pytest.raises(RuntimeError, match="boom"), make():
            _logits(model, ids)
            raise RuntimeError("boom")
        assert torch.equal(_logits(model, ids), ref)
    assert model.config._attn_implementation == impl
    assert _count_hooks(model) == n_hooks


def _count_hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_eager_attention_returns_patterns_and_restores(model: Any) -> None:
    ids = _ids()
    impl = model.config._attn_implementation
    with eager_attention(model), torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
        assert out.attentions[0].shape[-2:] == (7, 7)
        torch.testing.assert_close(
            out.attentions[0].sum(-1), torch.ones_like(out.attentions[0][..., 0])
        )
    assert model.config._attn_implementation == impl


def test_peft_wrapped_and_plain_models_give_the_same_captures(model: Any) -> None:
    ids = _ids()
    # identity adapter (B = 0): captures equal the plain model's bit for bit
    pm = _lora(model, random_b=False)
    with capture(model, resid=None, z=None) as a:
        _logits(model, ids)
    with capture(pm, resid=None, z=None) as b:
        _logits(pm, ids)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # non-trivial adapter: captures and ablations equal those of the merged plain model
    pr = _lora(model, random_b=True)
    merged = copy.deepcopy(pr).merge_and_unload()
    with capture(pr, resid=None, z=None) as c, ablate_heads(pr, [(1, 1)]):
        _logits(pr, ids)
    with capture(merged, resid=None, z=None) as d, ablate_heads(merged, [(1, 1)]):
        _logits(merged, ids)
    for k in c:
        torch.testing.assert_close(c[k], d[k], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(c["resid.3"], a["resid.3"], atol=1e-3)  # the adapter matters


def test_lora_knockout_restores_exactly_and_matches_disable(model: Any) -> None:
    pm = _lora(model, random_b=True)
    lay = layout_for(pm)
    ids = _ids()
    ref = _logits(pm, ids)
    scal = [
        dict(m.scaling)
        for m in pm.modules()
        if hasattr(m, "scaling") and isinstance(m.scaling, dict)
    ]
    with lora_knockout(pm, range(lay.n_layers)):
        all_off = _logits(pm, ids)
    with pm.disable_adapter():
        base = _logits(pm, ids)
    torch.testing.assert_close(all_off, base, rtol=0, atol=1e-5)
    assert torch.equal(_logits(pm, ids), ref)
    assert scal == [
        dict(m.scaling)
        for m in pm.modules()
        if hasattr(m, "scaling") and isinstance(m.scaling, dict)
    ]
    # knocking out one layer == zeroing that layer's lora_B
    with lora_knockout(pm, [1]):
        one = _logits(pm, ids)
    edited = copy.deepcopy(pm)
    with torch.no_grad():
        for name, p in edited.named_parameters():
            if "lora_B" in name and (".layers.1." in name or ".h.1." in name):
                p.zero_()
    torch.testing.assert_close(one, _logits(edited, ids), rtol=0, atol=1e-5)
    assert not torch.allclose(one, ref, atol=1e-5)
    with pytest.raises(RuntimeError), lora_knockout(pm, [0, 1]):
        raise RuntimeError("x")
    assert torch.equal(_logits(pm, ids), ref)
