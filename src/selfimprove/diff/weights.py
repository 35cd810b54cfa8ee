"""Where the weights changed: per-module LoRA ΔW norms and spectra.

For a PEFT LoRA module, ``ΔW = s·B·A`` (peft's ``get_delta_weight``), computed by
:func:`selfimprove.interp.lora.lora_deltas`, the package's one ΔW implementation.
Reported per module: Frobenius norm, norm relative to the frozen weight, top singular
values and effective rank (exp of the entropy of the normalised singular values);
aggregated per layer. This describes the weight change; tying it causally to behavior is
``interp``'s adapter-knockout analysis.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel


class ModuleDelta(BaseModel):
    """ΔW summary of one adapted module."""

    module: str
    layer: int | None
    norm: float
    relative_norm: float
    singular_values: list[float]
    effective_rank: float


class LayerDelta(BaseModel):
    """Sum over a layer's modules: ``norm = sqrt(Σ ||ΔW||²)``."""

    layer: int
    norm: float
    n_modules: int


def lora_delta_summary(
    model: Any, *, adapter: str | None = None, top: int = 4
) -> list[ModuleDelta]:
    """Per-module ΔW of the LoRA adapter on ``model`` (empty when it has none), largest first.

    Computed by :func:`selfimprove.interp.lora.lora_deltas` (the one ΔW implementation),
    without intruder dimensions.
    """
    from selfimprove.interp.lora import lora_deltas

    if not hasattr(model, "peft_config"):
        return []
    out = [
        ModuleDelta(
            module=r["path"],
            layer=r["layer"],
            norm=r["fro_delta"],
            relative_norm=r["relative_change"],
            singular_values=r["spectrum"][:top],
            effective_rank=r["effective_rank"] if r["fro_delta"] > 0 else 0.0,
        )
        for r in lora_deltas(model, intruders=False)
        if adapter is None or r["adapter"] == adapter
    ]
    out.sort(key=lambda d: -d.norm)
    return out


def per_layer(deltas: list[ModuleDelta]) -> list[LayerDelta]:
    """Aggregate module deltas by layer index (modules outside layers are skipped)."""
    acc: dict[int, list[float]] = {}
    for d in deltas:
        if d.layer is not None:
            acc.setdefault(d.layer, []).append(d.norm**2)
    return [
        LayerDelta(layer=k, norm=math.sqrt(sum(v)), n_modules=len(v))
        for k, v in sorted(acc.items())
    ]
