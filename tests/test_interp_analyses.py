"""Interp analyses on tiny random models with planted known truth (and nulls), plus the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from selfimprove.interp import (
    analyze_activations,
    analyze_attention,
    analyze_causal,
    analyze_saliency,
    confirm_heads,
    head_importance,
    layout_for,
    lora_deltas,
    lora_layer_knockout,
    prune_plan,
    run_interp,
)
from selfimprove.interp.common import InterpItem, losses, pad_id_of
from selfimprove.interp.runner import build_items
from selfimprove.models import LoadedModel, load_model
from selfimprove.store import RunStore


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny-llama", n_layers=2, seed=0)


@pytest.fixture(scope="module")
def items(loaded: LoadedModel) -> list[InterpItem]:
    return build_items(loaded, ["arithmetic", "word_sort"], 24, seed=0)


def _planted(loaded: LoadedModel) -> Any:
    """Copy of the model with head L1.H4 dead (o_proj columns 0) and L0.H2 amplified x300."""
    m = copy.deepcopy(loaded.model)
    lay = layout_for(m)
    with torch.no_grad():
        lay.out_proj(m, 1).weight[:, lay.head_slice(4)] = 0.0
        lay.out_proj(m, 0).weight[:, lay.head_slice(2)] *= 300.0
    return m


def test_head_importance_and_ablation_recover_planted_heads(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    m = _planted(loaded)
    pad = pad_id_of(loaded)
    imp = head_importance(m, items[:16], pad)  # (N, L, H)
    assert imp.shape == (16, 2, 9)
    assert np.all(imp[:, 1, 4] == 0.0)  # a dead head has exactly zero gradient
    mean = imp.mean(0)
    assert np.unravel_index(mean.argmax(), mean.shape) == (0, 2)
    res = confirm_heads(
        m,
        items[16:],
        pad,
        category="all",
        shortlist=[(0, 2)],
        random_heads=[(1, 4)],
        importance=mean,
        mode="zero",
    )
    by = {(r.layer, r.head): r.test for r in res}
    # the amplified head moves every prompt's loss; the sign is arbitrary in a random model
    assert by[(0, 2)].p_adj is not None and by[(0, 2)].ci_high - by[(0, 2)].ci_low > 1e-3
    assert by[(1, 4)].mean == 0.0 and by[(1, 4)].p == 1.0 and not by[(1, 4)].significant


def test_prune_plan_removes_dead_heads_first_and_respects_the_bound(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    m = _planted(loaded)
    pad = pad_id_of(loaded)
    steps = prune_plan(
        m, items[:8], items[8:16], pad, max_loss_increase=1e-3, max_steps=3, mode="zero"
    )
    assert steps[0].removed == [(1, 4)] and steps[0].accepted
    assert steps[0].loss_increase == pytest.approx(0.0, abs=1e-6)
    assert all(s.loss_increase <= 1e-3 for s in steps if s.accepted)
    tight = prune_plan(m, items[:8], items[8:16], pad, max_loss_increase=-1.0, max_steps=3)
    assert len(tight) == 1 and not tight[0].accepted  # nothing fits a negative bound


def _lora_one_layer(model: Any, layer: int) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    pm = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n and f".layers.{layer}." not in n:
                p.zero_()
            elif "lora_B" in n:
                p.mul_(20.0)
    return pm.eval()


def test_lora_knockout_names_the_only_adapted_layer(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    pm = _lora_one_layer(loaded.model, 1)
    pad = pad_id_of(loaded)
    ref = losses(pm, items, pad)
    rows, _total = lora_layer_knockout(pm, items[:16], items[16:32], pad)
    by = {(r.layer, r.group): r for r in rows}
    # layer 0's LoRA is the identity: knocking it out changes nothing (a null with known truth)
    assert by[(0, "target")].test.mean == 0.0 and not by[(0, "target")].test.significant
    # layer 1 carries the whole adapter: its knockout equals switching the adapter off
    assert by[(1, "target")].share_of_effect == pytest.approx(1.0, abs=1e-4)
    assert by[(1, "target")].test.significant
    assert np.array_equal(losses(pm, items, pad), ref)  # restored exactly
    d = lora_deltas(pm)
    l1 = [r for r in d if r["layer"] == 1]
    assert l1 and all(0 < r["effective_rank"] <= 4 + 1e-9 for r in l1)
    assert all(r["fro_delta"] == 0.0 for r in d if r["layer"] == 0)
    mod = dict(pm.base_model.model.model.layers[1].self_attn.q_proj.named_modules())
    q = pm.base_model.model.model.layers[1].self_attn.q_proj
    expect = (q.lora_B["default"].weight @ q.lora_A["default"].weight) * q.scaling["default"]
    row = next(r for r in l1 if r["module"] == "self_attn.q_proj")
    assert row["fro_delta"] == pytest.approx(float(expect.norm()), rel=1e-5)
    assert mod  # module tree is intact


def test_band_knockout_of_all_layers_equals_adapter_off(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    from selfimprove.interp.lora import layer_bands, lora_band_knockout

    assert layer_bands(range(30), 3) == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    assert layer_bands([0, 1], 3) == [[0], [1]]
    pm = _lora_one_layer(loaded.model, 1)
    pad = pad_id_of(loaded)
    _rows, total = lora_layer_knockout(pm, items[:16], items[16:32], pad)
    bands = lora_band_knockout(pm, items[:16], items[16:32], pad, total, n_bands=1)
    tgt = next(b for b in bands if b.group == "target")
    assert (tgt.first, tgt.last) == (0, 1)
    assert tgt.share_of_effect == pytest.approx(1.0, abs=1e-4)
    two = lora_band_knockout(pm, items[:16], items[16:32], pad, total, n_bands=2)
    by = {(b.first, b.group): b for b in two}
    assert by[(0, "target")].test.mean == 0.0 and by[(1, "target")].test.significant


def test_activation_probes_null_at_layer_zero_and_stats(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    res = analyze_activations(loaded.model, items, pad_id_of(loaded), label_by="suite", n_perm=100)
    assert len(res.probes) == 3  # embeddings + 2 layers
    # last prompt token at layer 0 is the same chat-template token for every prompt: chance
    p0 = res.probes[0]
    assert p0.accuracy <= p0.chance + 1e-9 and not p0.significant
    assert {r["label"] for r in res.stats} == {"arithmetic", "word_sort"}
    assert all(0 <= r["sparsity"] <= 1 and r["norm"] > 0 for r in res.stats)
    # mean pooling sees the words at layer 0: the categories are separable there
    mean = analyze_activations(
        loaded.model, items, pad_id_of(loaded), label_by="suite", pool="mean", n_perm=100
    )
    assert mean.probes[0].significant and mean.probes[0].accuracy > 0.9


def test_attention_statistics_are_valid(loaded: LoadedModel, items: list[InterpItem]) -> None:
    r = analyze_attention(loaded.model, items[:8], pad_id_of(loaded), label_by="suite")
    lab = next(iter(r["maps"]))
    ent = np.array(r["maps"][lab]["entropy"])
    first = np.array(r["maps"][lab]["first_token_mass"])
    assert ent.shape == (2, 9) and np.all(ent >= 0)
    assert np.all((first >= 0) & (first <= 1))
    assert loaded.model.config._attn_implementation != "eager"  # restored


def test_saliency_reports_tied_embedding_once(loaded: LoadedModel, items: list[InterpItem]) -> None:
    r = analyze_saliency(loaded.model, items[:4], pad_id_of(loaded), label_by="suite")
    mods = [row["module"] for row in r["modules"] if row["label"] == r["summary"]["labels"][0]]
    assert sum("embed_tokens" in m for m in mods) == 1 and not any(
        "lm_head" in m and "tied" not in m for m in mods
    )
    assert any("(tied with lm_head)" in m for m in mods)
    h = np.array(r["heads"][r["summary"]["labels"][0]]["taylor"])
    assert h.shape == (2, 9) and np.all(h >= 0)
    assert all(p.requires_grad for p in loaded.model.parameters())  # flags restored


def test_attention_statistics_equal_uniform_attention_exactly(
    loaded: LoadedModel, items: list[InterpItem]
) -> None:
    """Known answer: with every query projection zeroed all scores are 0, so query t attends
    uniformly to t + 1 tokens: entropy log(t + 1), first-token and previous-token mass
    1 / (t + 1), averaged over t = 1 … T - 1 (a range check passes on wrong numbers; this
    does not)."""
    from selfimprove.interp.attention import attention_stats

    m = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    it = items[0]
    r = attention_stats(m, [it], pad_id_of(loaded))
    t = np.arange(1, len(it.prompt_ids))
    for name, want in (
        ("entropy", np.log(t + 1).mean()),
        ("first_token_mass", (1 / (t + 1)).mean()),
        ("prev_token", (1 / (t + 1)).mean()),
    ):
        np.testing.assert_allclose(r[name][0], want, rtol=1e-5, err_msg=name)
    # Uniform attention cannot tell A[t, t-1] from A[t, t] (both 1/(t+1)); on the unmodified
    # model every statistic must equal a plain per-position loop over the returned patterns
    from selfimprove.interp.hooks import eager_attention

    r0 = attention_stats(loaded.model, [it], pad_id_of(loaded))
    with eager_attention(loaded.model), torch.inference_mode():
        att = loaded.model(input_ids=torch.tensor([it.prompt_ids]), output_attentions=True)
    T = len(it.prompt_ids)
    for ly, A in enumerate(att.attentions):
        A = A[0].double()  # (H, T, T)
        for h in range(A.shape[0]):
            rows = [A[h, q, : q + 1] for q in range(1, T)]
            want = {
                "entropy": np.mean([float(-(r * r.log()).sum()) for r in rows]),
                "first_token_mass": np.mean([float(r[0]) for r in rows]),
                "prev_token": np.mean([float(A[h, q, q - 1]) for q in range(1, T)]),
            }
            for name, w in want.items():
                assert r0[name][0, ly, h] == pytest.approx(w, rel=1e-4, abs=1e-6), (name, ly, h)
    assert not np.allclose(r0["entropy"][0], np.log(t + 1).mean(), rtol=1e-3)


def test_saliency_gives_a_dead_head_zero_importance(loaded: LoadedModel, items) -> None:
    """Known answer: a head whose o_proj columns are zero cannot change the loss, so its
    gradient x activation (Taylor) importance is exactly 0; the amplified head ranks first."""
    m = _planted(loaded)
    r = analyze_saliency(m, items[:4], pad_id_of(loaded), label_by="suite")
    h = np.array(r["heads"][r["summary"]["labels"][0]]["taylor"])
    assert h[1, 4] == 0.0 and np.all(np.delete(h.ravel(), 1 * h.shape[1] + 4) > 0)
    assert np.unravel_index(h.argmax(), h.shape) == (0, 2)


def test_causal_patching_and_steering_run(loaded: LoadedModel) -> None:
    its = build_items(loaded, ["arithmetic", "word_sort"], 40, seed=0)
    r = analyze_causal(loaded.model, its, pad_id_of(loaded), label_by="suite", alphas=(1.0, 4.0))
    assert r["summary"]["n_pairs"] > 0
    patch = [x for x in r["rows"] if x["kind"] == "patch"]
    # patching the last residual point at the last position restores the clean logits
    last = next(x for x in patch if x["layer"] == 2 and x["position"] == "last")
    assert last["recovery"] == pytest.approx(1.0, abs=1e-4)
    steer = [x for x in r["rows"] if x["kind"].startswith("steer")]
    assert {x["kind"] for x in steer} == {"steer:steer", "steer:random", "steer:steer−random"}
    assert all(x["p_adj"] is not None for x in r["rows"])


def test_run_interp_writes_run_folder_and_report(loaded: LoadedModel, tmp_path: Path) -> None:
    res = run_interp(
        "activations",
        loaded,
        suites=["arithmetic", "word_sort"],
        n=8,
        store=RunStore(tmp_path),
        options={"n_perm": 20},
    )
    assert res.run_dir is not None and res.report is not None
    html = res.report.read_text()
    assert "<svg" in html and "<script" not in html
    data = json.loads((res.run_dir / "activations.json").read_text())
    assert len(data["probes"]) == 3
    assert (res.run_dir / "records.jsonl").read_text().count("\n") == 3


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfimprove.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_interp_end_to_end_and_errors(tmp_path: Path) -> None:
    ok = _cli(
        "interp",
        "heads",
        "--model",
        "tiny-llama",
        "--suites",
        "arithmetic",
        "-n",
        "10",
        "--store",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Report:" in ok.stdout and "interp_report.html" in ok.stdout
    bad = _cli("interp", "headz", "--model", "tiny-llama", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "heads" in bad.stderr
    bad_suite = _cli("interp", "heads", "--model", "tiny-llama", "--suites", "nope", cwd=tmp_path)
    assert bad_suite.returncode != 0 and "unknown suite" in bad_suite.stderr
    bad_adapter = _cli(
        "interp", "lora", "--model", "tiny-llama", "--adapter", str(tmp_path / "x"), cwd=tmp_path
    )
    assert bad_adapter.returncode != 0 and "adapter_config.json" in bad_adapter.stderr
    no_adapter = _cli("interp", "lora", "--model", "tiny-llama", cwd=tmp_path)
    assert no_adapter.returncode != 0 and "--adapter" in no_adapter.stderr


def test_run_interp_whose_analysis_fails_is_marked_failed(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run used to be created only after the analysis succeeded: a crash left no trace."""
    from selfimprove.interp import dispatch

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("hook exploded")

    monkeypatch.setattr(dispatch, "run_analysis", boom)
    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError, match="hook exploded"):
        run_interp("heads", loaded, suites=["arithmetic"], n=4, store=store)
    (run,) = store.list_runs()
    assert run.kind == "interp" and run.status == "failed"
    assert run.error == "RuntimeError: hook exploded" and run.finished_at is not None
    assert run.config["analysis"] == "heads" and run.config["n"] == 4


def test_run_interp_without_a_store_writes_nothing(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_interp("attention", loaded, suites=["arithmetic"], n=4)
    assert res.rows and res.run_id is None and res.run_dir is None and res.report is None
    assert list(tmp_path.iterdir()) == []


def _interp_cli_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, *flags: str
) -> dict[str, Any]:
    """What `selfimprove interp heads FLAGS` passes on, with `yaml_text` in ./selfimprove.yaml."""
    from typer.testing import CliRunner

    import selfimprove.interp as interp
    from selfimprove.cli import app

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_load(model: str, adapter: str | None) -> Any:
        seen.update(model=model, adapter=adapter)
        return type("Loaded", (), {"name": model})()

    def fake_run(analysis: str, loaded: Any, **kwargs: Any) -> None:
        seen.update(analysis=analysis, **kwargs)
        raise Stop

    monkeypatch.setattr(interp, "load_for_interp", fake_load)
    monkeypatch.setattr(interp, "run_interp", fake_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "selfimprove.yaml").write_text(yaml_text)
    r = CliRunner().invoke(app, ["interp", "heads", *flags])
    assert type(r.exception).__name__ == "Stop", r.output
    return seen


def test_interp_reads_its_section_of_the_config_file_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_text = (
        "model:\n  name: tiny-gpt2\ninterp:\n  suites: [word_sort, logic]\n  n: 5\n"
        "  seed: 3\n  label_by: category\nstore:\n  root: from_yaml\n"
    )
    seen = _interp_cli_arguments(
        tmp_path, monkeypatch, yaml_text, "--seed", "7", "-m", "tiny-llama"
    )
    assert seen["suites"] == ["word_sort", "logic"] and seen["n"] == 5  # from the file
    assert seen["label_by"] == "category" and seen["control_suites"] == ["general_nll"]
    assert seen["seed"] == 7 and seen["model"] == "tiny-llama"  # the flags win
    assert seen["store"].root == Path("from_yaml")


def test_interp_without_a_config_file_keeps_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfimprove.store import DEFAULT_ROOT

    seen = _interp_cli_arguments(tmp_path, monkeypatch, "{}\n", "--suites", "logic")
    assert seen["suites"] == ["logic"] and seen["n"] is None and seen["seed"] == 0
    assert seen["label_by"] is None and seen["model"] == "embedded" and seen["adapter"] is None
    assert seen["store"].root == DEFAULT_ROOT


def test_unknown_or_invalid_interp_key_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from selfimprove.config import load_config
    from selfimprove.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("interp:\n  suites: [logic]\n  analysis: heads\n")
    with pytest.raises(ConfigError, match=r"interp\.analysis: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"interp\.label_by"):
        load_config(None, {"interp": {"label_by": "layer"}})
