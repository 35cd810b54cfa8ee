"""Interpretability on any model or adapter: hooks, analyses, statistics, one entry point.

Public API:

* :func:`run_interp` / :func:`load_for_interp` — what the ``selfimprove interp`` command calls.
* Hooks (the only place that registers hooks): :func:`capture`, :func:`ablate_heads`,
  :func:`head_gates`, :func:`patch_residual`, :func:`steer`, :func:`eager_attention`,
  :func:`lora_knockout`, :func:`layout_for`.
* Analyses: :func:`analyze_activations`, :func:`analyze_attention`, :func:`analyze_heads`,
  :func:`analyze_saliency`, :func:`analyze_causal`, :func:`analyze_lora`.
* Statistics: :class:`EffectTest`, :func:`paired_effect`, :func:`bh`.
"""

from selfimprove.interp.activations import analyze_activations, ridge_cv_accuracy
from selfimprove.interp.attention import analyze_attention
from selfimprove.interp.causal import analyze_causal
from selfimprove.interp.common import InterpItem, items_from_pairs
from selfimprove.interp.heads import analyze_heads, confirm_heads, head_importance, prune_plan
from selfimprove.interp.hooks import (
    ArchLayout,
    ablate_heads,
    capture,
    eager_attention,
    head_gates,
    layout_for,
    lora_knockout,
    patch_residual,
    steer,
)
from selfimprove.interp.lora import (
    analyze_lora,
    lora_band_knockout,
    lora_deltas,
    lora_layer_knockout,
)
from selfimprove.interp.runner import ANALYSES, InterpResult, load_for_interp, run_interp
from selfimprove.interp.saliency import analyze_saliency
from selfimprove.interp.stats import EffectTest, bh, paired_effect, permutation_pvalue

__all__ = [
    "ANALYSES",
    "ArchLayout",
    "EffectTest",
    "InterpItem",
    "InterpResult",
    "ablate_heads",
    "analyze_activations",
    "analyze_attention",
    "analyze_causal",
    "analyze_heads",
    "analyze_lora",
    "analyze_saliency",
    "bh",
    "capture",
    "confirm_heads",
    "eager_attention",
    "head_gates",
    "head_importance",
    "items_from_pairs",
    "layout_for",
    "load_for_interp",
    "lora_band_knockout",
    "lora_deltas",
    "lora_knockout",
    "lora_layer_knockout",
    "paired_effect",
    "patch_residual",
    "permutation_pvalue",
    "prune_plan",
    "ridge_cv_accuracy",
    "run_interp",
    "steer",
]
