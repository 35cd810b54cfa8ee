"""Interp on the real embedded model (SmolLM2-135M-Instruct): heads, probes, LoRA knockout.

Small n on purpose (2 busy CPU cores); the printed tables are the numbers reported for issue 6.
Run with ``pytest -m slow -s tests/test_interp_real_model.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfimprove.interp import analyze_activations, analyze_heads, analyze_lora, layout_for
from selfimprove.interp.common import items_from_pairs, losses, pad_id_of
from selfimprove.models import LoadedModel, attach_adapter, load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.tasks import get_suite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real() -> LoadedModel:
    resolve_runtime(2, "fp32")
    torch.manual_seed(0)
    return load_model("embedded")


def _task_items(loaded: LoadedModel, suite: str, category: str, n: int, seed: int = 0) -> list:
    s = get_suite(suite)
    task = next(t for t in s.tasks if t.category == category)
    return items_from_pairs(loaded, [(suite, task, x) for x in task.samples(n, seed)])


def test_head_ablation_family_with_bh_vs_random_heads(real: LoadedModel) -> None:
    items = _task_items(real, "arithmetic", "add_1d", 40)
    res = analyze_heads(
        real.model,
        items,
        pad_id_of(real),
        top_k=6,
        n_random=6,
        max_categories=1,
        prune=False,
        batch_size=10,
    )
    rows = [a.to_dict() for a in res.ablations]
    print(
        "\nHEADS",
        json.dumps(
            {
                "summary": res.summary,
                "rows": [
                    {
                        k: r[k]
                        for k in (
                            "group",
                            "layer",
                            "head",
                            "importance",
                            "n",
                            "mean",
                            "ci_low",
                            "ci_high",
                            "p",
                            "p_adj",
                            "d_z",
                            "significant",
                        )
                    }
                    for r in rows
                ],
            },
            default=float,
        ),
    )
    assert len(rows) == 12 and all(r["p_adj"] is not None for r in rows)
    assert all(r["n"] == 20 for r in rows)
    # the gradient shortlist must find heads that matter more than random ones (measured:
    # mean |effect| 0.155 vs 0.061 nats); an importance score unrelated to ablation fails this
    effect = {
        g: sum(abs(r["mean"]) for r in rows if r["group"] == g) / 6 for g in ("shortlist", "random")
    }
    assert effect["shortlist"] > 1.5 * effect["random"], effect
    top = max(rows, key=lambda r: r["importance"] if r["group"] == "shortlist" else -1)
    assert top["significant"] and top["ci_low"] * top["ci_high"] > 0  # CI excludes 0
    lay = layout_for(real.model)
    assert lay.n_layers == 30 and lay.n_heads == 9 and lay.n_kv_heads == 3


def test_probe_table_with_permutation_control(real: LoadedModel) -> None:
    from selfimprove.interp.runner import build_items

    items = build_items(real, ["arithmetic", "word_sort", "counting"], 16, seed=0)
    res = analyze_activations(real.model, items, pad_id_of(real), label_by="suite", n_perm=200)
    print("\nPROBES", json.dumps([p.to_dict() for p in res.probes], default=float))
    assert len(res.probes) == 31
    # layer 0 reads the same final chat-template token for every prompt: no information
    assert not res.probes[0].significant
    assert any(p.significant for p in res.probes[1:])


def test_lora_knockout_names_layers(real: LoadedModel, tmp_path: Path) -> None:
    from selfimprove.train import TrainConfig, TrainExample, train_lora

    task_items = get_suite("arithmetic").tasks
    add = next(t for t in task_items if t.category == "add_2d")
    train = [
        TrainExample(prompt=s.messages(), completion=add.reference(s))
        for s in add.samples(40, seed=7)
    ]
    cfg = TrainConfig(
        epochs=1,
        batch_size=8,
        learning_rate=2e-3,
        lora_r=8,
        target_modules=["q_proj", "v_proj", "o_proj"],
        lr_scheduler="constant",
    )
    res = train_lora(real, train, cfg, tmp_path / "ad", runtime=resolve_runtime(2, "fp32"))
    adapted = attach_adapter(real, tmp_path / "ad")
    target = _task_items(real, "arithmetic", "add_2d", 16, seed=100)
    control = _task_items(real, "general_nll", "general_text", 16, seed=100)
    pad = pad_id_of(real)
    before = losses(adapted.model, target, pad)
    out = analyze_lora(adapted.model, target, control, pad, deltas=False)
    print(
        "\nLORA",
        json.dumps(
            {
                "train_loss": res.losses,
                "summary": out.summary,
                "rows": [
                    {
                        k: r.to_dict()[k]
                        for k in (
                            "layer",
                            "group",
                            "mean",
                            "p",
                            "p_adj",
                            "significant",
                            "share_of_effect",
                        )
                    }
                    for r in out.knockout
                ],
                "bands": [
                    {
                        k: b.to_dict()[k]
                        for k in (
                            "layers",
                            "group",
                            "mean",
                            "p_adj",
                            "significant",
                            "share_of_effect",
                        )
                    }
                    for b in out.bands
                ],
            },
            default=float,
        ),
    )
    assert len(out.knockout) == 60
    assert (losses(adapted.model, target, pad) == before).all()  # knockout restored exactly
    assert out.total["target"].mean > 0  # the adapter lowered the target NLL
    # the effect is spread over layers: a band of them carries it where single layers do not
    assert len(out.bands) == 6
    assert out.summary["bands_carrying_effect"], out.summary
