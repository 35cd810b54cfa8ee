"""Multiple-testing corrections shared by the gate, the detector and interp.

One home for the adjustments every stage uses, so that "BH" means the same thing in a
diff table, an interp family and the loop's report. Both wrap ``statsmodels``
(``multipletests``): Benjamini–Hochberg (``fdr_bh``: ``q_(i) = min_{j ≥ i} m·p_(j)/j``,
capped at 1) for false-discovery-rate families, Holm (step-down, family-wise) for the
gate's per-category report. Paired tests that are specific to a stage stay with it
(exact McNemar and Tango in :mod:`selfimprove.gate`, region statistics in
:mod:`selfimprove.diff.stats`, sign-flip effects in :mod:`selfimprove.interp.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _checked(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be finite and lie in [0, 1]")
    return p


def benjamini_hochberg(p_values: Sequence[float], q: float = 0.1) -> tuple[list[bool], list[float]]:
    """Benjamini–Hochberg step-up at level ``q``: (rejected, adjusted p-values).

    Hypothesis i is rejected iff its adjusted value is ≤ ``q`` (statsmodels ``fdr_bh``).
    """
    from statsmodels.stats.multitest import multipletests

    p = _checked(p_values)
    if p.size == 0:
        return [], []
    _rej, adj, _a, _b = multipletests(p, alpha=q, method="fdr_bh")
    return [bool(x <= q) for x in adj], [float(x) for x in adj]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (statsmodels ``holm``)."""
    from statsmodels.stats.multitest import multipletests

    p = _checked(p_values)
    if p.size == 0:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]
