"""Turn each analysis's result into table rows, JSON records and HTML sections (no model code).

Kept apart from :mod:`selfimprove.interp.runner` so the runner stays about runs and files,
and each analysis module stays about its method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selfimprove.interp.common import InterpItem
from selfimprove.interp.report import heatmap_svg, layer_curve_svg, table_html
from selfimprove.models import LoadedModel

_TEST_COLS = [
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "p",
    "p_adj",
    "d_z",
    "fraction_positive",
    "significant",
]


@dataclass
class AnalysisOutput:
    columns: list[str]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    records: dict[str, Any]
    sections: list[tuple[str, str]] = field(default_factory=list)


def run_analysis(
    analysis: str,
    model: Any,
    items: Sequence[InterpItem],
    pad: int,
    *,
    by: str,
    seed: int,
    opts: dict[str, Any],
    loaded: LoadedModel,
    control: Sequence[InterpItem] = (),
) -> AnalysisOutput:
    if analysis == "activations":
        return _activations(model, items, pad, by, seed, opts)
    if analysis == "heads":
        return _heads(model, items, pad, by, seed, opts)
    if analysis == "lora":
        return _lora(model, items, control, pad, seed, opts)
    if analysis == "attention":
        return _attention(model, items, pad, by, opts)
    if analysis == "saliency":
        return _saliency(model, items, pad, by, opts)
    if analysis == "causal":
        return _causal(model, items, pad, seed, opts)
    raise ValueError(analysis)


def _activations(
    model: Any, items: Sequence[InterpItem], pad: int, by: str, seed: int, opts: dict[str, Any]
) -> AnalysisOutput:
    from selfimprove.interp.activations import analyze_activations

    r = analyze_activations(model, items, pad, label_by=by, seed=seed, **opts)
    rows = [p.to_dict() for p in r.probes]
    cols = ["layer", "accuracy", "chance", "perm_mean", "perm_q95", "p", "p_adj", "significant"]
    curves = layer_curve_svg(
        "held-out probe accuracy by layer (dashed: chance)",
        {
            "probe": [p.accuracy for p in r.probes],
            "perm. mean": [p.perm_mean for p in r.probes],
            "perm. 95%": [p.perm_q95 for p in r.probes],
        },
        hline=r.probes[0].chance if r.probes else None,
    )
    norms = layer_curve_svg(
        "mean token norm by layer (sink excluded)",
        {lab: [s["norm"] for s in r.stats if s["label"] == lab] for lab in r.labels},
    )
    sections = [
        ("Linear probes with a label-permutation control", curves + table_html(rows, cols)),
        (
            "Residual-stream statistics",
            norms + table_html(r.stats, ["label", "layer", "n", "mean", "std", "norm", "sparsity"]),
        ),
    ]
    return AnalysisOutput(
        cols, rows, r.summary, {"probes": rows, "stats": r.stats, "summary": r.summary}, sections
    )


def _heads(
    model: Any, items: Sequence[InterpItem], pad: int, by: str, seed: int, opts: dict[str, Any]
) -> AnalysisOutput:
    from selfimprove.interp.heads import analyze_heads

    r = analyze_heads(model, items, pad, label_by=by, seed=seed, **opts)
    rows = [a.to_dict() for a in r.ablations]
    cols = ["category", "group", "layer", "head", "importance", *_TEST_COLS]
    maps = "".join(heatmap_svg(f"|∂loss/∂gate| — {c}", g) for c, g in r.importance.items())
    prune = [s.to_dict() for s in r.prune]
    sections = [
        ("Gradient head importance (screen, per category)", maps),
        (
            "Ablation on held-out prompts: shortlist vs random heads (BH per category)",
            table_html(rows, cols),
        ),
        (
            "Pruning plan",
            table_html(
                prune, ["step", "n_removed", "mean_loss", "loss_increase", "accepted", "removed"]
            ),
        ),
    ]
    return AnalysisOutput(
        cols,
        rows,
        r.summary,
        {"importance": r.importance, "ablations": rows, "prune": prune, "summary": r.summary},
        sections,
    )


def _lora(
    model: Any,
    items: Sequence[InterpItem],
    control: Sequence[InterpItem],
    pad: int,
    seed: int,
    opts: dict[str, Any],
) -> AnalysisOutput:
    from selfimprove.interp.lora import analyze_lora

    r = analyze_lora(model, items, control, pad, seed=seed, **opts)
    rows = [k.to_dict() for k in r.knockout]
    cols = ["layer", "group", "share_of_effect", *_TEST_COLS]
    tgt = [k for k in r.knockout if k.group == "target"]
    ctl = [k for k in r.knockout if k.group == "control"]
    curve = layer_curve_svg(
        "NLL increase when the layer's LoRA is knocked out",
        {"target": [k.test.mean for k in tgt], "control": [k.test.mean for k in ctl]},
        hline=0.0,
    )
    dcols = [
        "layer",
        "module",
        "rank",
        "fro_delta",
        "relative_change",
        "effective_rank",
        "intruder_dims",
    ]
    band_rows = [b.to_dict() for b in r.bands]
    sections = [
        ("Per-layer adapter knockout", curve + table_html(rows, cols)),
        ("Band knockout (contiguous layers at once)", table_html(band_rows, ["layers", *cols[1:]])),
        ("ΔW per module", table_html(r.deltas, dcols)),
    ]
    return AnalysisOutput(
        cols,
        rows,
        r.summary,
        {"knockout": rows, "bands": band_rows, "deltas": r.deltas, "summary": r.summary},
        sections,
    )


def _attention(
    model: Any, items: Sequence[InterpItem], pad: int, by: str, opts: dict[str, Any]
) -> AnalysisOutput:
    from selfimprove.interp.attention import analyze_attention

    r = analyze_attention(model, items, pad, label_by=by, **opts)
    cols = ["label", "metric", "mean", "top_heads"]
    maps = "".join(
        heatmap_svg(f"{m} — {lab}", g) for lab, ms in r["maps"].items() for m, g in ms.items()
    )
    note = "<p class='note'>Descriptive only: where heads look, not whether they matter (see `heads`).</p>"
    return AnalysisOutput(
        cols,
        r["rows"],
        r["summary"],
        r,
        [("Attention statistics", note + maps + table_html(r["rows"], cols))],
    )


def _saliency(
    model: Any, items: Sequence[InterpItem], pad: int, by: str, opts: dict[str, Any]
) -> AnalysisOutput:
    from selfimprove.interp.saliency import analyze_saliency

    r = analyze_saliency(model, items, pad, label_by=by, **opts)
    rows = sorted(r["modules"], key=lambda x: -x["taylor"])
    cols = ["label", "module", "taylor", "fisher", "n"]
    maps = "".join(
        heatmap_svg(f"{k} per head — {lab}", g)
        for lab, d in r["heads"].items()
        for k, g in d.items()
    )
    return AnalysisOutput(
        cols,
        rows[:40],
        r["summary"],
        r,
        [("Saliency per head", maps), ("Saliency per module", table_html(rows, cols, limit=100))],
    )


def _causal(
    model: Any, items: Sequence[InterpItem], pad: int, seed: int, opts: dict[str, Any]
) -> AnalysisOutput:
    from selfimprove.interp.causal import analyze_causal

    r = analyze_causal(model, items, pad, seed=seed, **opts)
    cols = ["kind", "name", *_TEST_COLS]
    curve = layer_curve_svg(
        "patching: logit-difference recovery by layer",
        {
            pos: [x["mean"] for x in r["rows"] if x["kind"] == "patch" and x["position"] == pos]
            for pos in ("diff", "last")
        },
        hline=0.0,
    )
    return AnalysisOutput(
        cols,
        r["rows"],
        r["summary"],
        r,
        [("Activation patching and steering", curve + table_html(r["rows"], cols))],
    )
