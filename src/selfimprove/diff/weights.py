"""Where the weights changed: per-module LoRA ΔW norms and spectra.

For a PEFT LoRA module, ``ΔW = s·B·A`` with ``B`` (d_out, r), ``A`` (r, d_in) and scale
``s = alpha/r``. Its singular values are those of the small r×r matrix ``R_B·R_Aᵀ`` from the
QR factorisations ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (exact, and cheap for any d).
Reported per module: Frobenius norm, norm relative to the frozen weight, top singular
values and effective rank (exp of the entropy of the normalised singular values);
aggregated per layer. This describes the weight change; tying it causally to behavior is
``interp``'s adapter-knockout analysis.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


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
    """Per-module ΔW of the LoRA adapter on ``model`` (empty when it has none), largest first."""
    import torch

    out: list[ModuleDelta] = []
    with torch.no_grad():
        for name, mod in model.named_modules():
            la = getattr(mod, "lora_A", None)
            lb = getattr(mod, "lora_B", None)
            if la is None or lb is None or not hasattr(la, "keys") or not len(la):
                continue
            key = adapter or next(iter(la.keys()))
            if key not in la:
                continue
            a = la[key].weight.float()  # (r, d_in)
            b = lb[key].weight.float()  # (d_out, r)
            scale = float(mod.scaling[key]) if hasattr(mod, "scaling") else 1.0
            _, rb = torch.linalg.qr(b)
            _, ra = torch.linalg.qr(a.T)
            sv = torch.linalg.svdvals(scale * rb @ ra.T)  # (r,)
            norm = float(torch.linalg.vector_norm(sv))
            base = getattr(mod, "base_layer", None)
            wnorm = float(base.weight.float().norm()) if base is not None else float("nan")
            p = sv / sv.sum() if float(sv.sum()) > 0 else sv
            ent = -float((p[p > 0] * p[p > 0].log()).sum())
            m = _LAYER_RE.search(name + ".")
            out.append(
                ModuleDelta(
                    module=name.replace("base_model.model.", ""),
                    layer=int(m.group(1)) if m else None,
                    norm=norm,
                    relative_norm=norm / wnorm if wnorm and math.isfinite(wnorm) else float("nan"),
                    singular_values=[float(x) for x in sv[:top]],
                    effective_rank=math.exp(ent) if norm > 0 else 0.0,
                )
            )
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
