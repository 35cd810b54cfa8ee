"""Interpretability on any model or adapter: hooks, analyses, statistics, one entry point.

Public API:

* :func:`run_interp` / :func:`load_for_interp` — what the ``selfimprove interp`` command calls.
* Hooks (the only place that registers hooks): :func:`capture`, :func:`ablate_heads`,
  :func:`head_gates`, :func:`patch_residual`, :func:`steer`, :func:`eager_attention`,
  :func:`lora_knockout`, :func:`layout_for`.
* Analyses: :func:`analyze_activations`, :func:`analyze_attention`, :func:`analyze_heads`,
  :func:`analyze_saliency`, :func:`analyze_causal`, :func:`analyze_lora`.
* Statistics: :class:`EffectTest`, :func:`paired_effect`, :func:`bh`.

The names load on first use (PEP 562 ``__getattr__``): the analyses import torch, and
``selfimprove.config`` imports :mod:`selfimprove.interp.runner_config` through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from selfimprove.interp.runner_config import InterpConfig
    from selfimprove.interp.saliency import analyze_saliency
    from selfimprove.interp.stats import EffectTest, bh, paired_effect, permutation_pvalue

#: public name -> the module that defines it
_WHERE = {
    "analyze_activations": "selfimprove.interp.activations",
    "ridge_cv_accuracy": "selfimprove.interp.activations",
    "analyze_attention": "selfimprove.interp.attention",
    "analyze_causal": "selfimprove.interp.causal",
    "InterpItem": "selfimprove.interp.common",
    "items_from_pairs": "selfimprove.interp.common",
    "analyze_heads": "selfimprove.interp.heads",
    "confirm_heads": "selfimprove.interp.heads",
    "head_importance": "selfimprove.interp.heads",
    "prune_plan": "selfimprove.interp.heads",
    "ArchLayout": "selfimprove.interp.hooks",
    "ablate_heads": "selfimprove.interp.hooks",
    "capture": "selfimprove.interp.hooks",
    "eager_attention": "selfimprove.interp.hooks",
    "head_gates": "selfimprove.interp.hooks",
    "layout_for": "selfimprove.interp.hooks",
    "lora_knockout": "selfimprove.interp.hooks",
    "patch_residual": "selfimprove.interp.hooks",
    "steer": "selfimprove.interp.hooks",
    "analyze_lora": "selfimprove.interp.lora",
    "lora_band_knockout": "selfimprove.interp.lora",
    "lora_deltas": "selfimprove.interp.lora",
    "lora_layer_knockout": "selfimprove.interp.lora",
    "ANALYSES": "selfimprove.interp.runner",
    "InterpResult": "selfimprove.interp.runner",
    "load_for_interp": "selfimprove.interp.runner",
    "run_interp": "selfimprove.interp.runner",
    "InterpConfig": "selfimprove.interp.runner_config",
    "analyze_saliency": "selfimprove.interp.saliency",
    "EffectTest": "selfimprove.interp.stats",
    "bh": "selfimprove.interp.stats",
    "paired_effect": "selfimprove.interp.stats",
    "permutation_pvalue": "selfimprove.interp.stats",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'selfimprove.interp' has no attribute {name!r}")


__all__ = [
    "ANALYSES",
    "ArchLayout",
    "EffectTest",
    "InterpConfig",
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
