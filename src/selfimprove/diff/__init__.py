"""Behavior-change detector: ``selfimprove diff A B`` as a library (pipeline: selfimprove.diff.detect's module docstring).

Curated API:

* :func:`detect_changes` — regions → KL screen → adaptive allocation → paired tests →
  BH (or SAFFRON/ADDIS) → named, validated flagged regions (:class:`DiffResult`).
* :func:`regions_from_suites`, :func:`regions_from_jsonl`, :func:`split_region` — the fixed
  family of prompt regions and the screening/confirmatory split.
* :func:`saffron`, :func:`addis` — online FDR control (BH is :mod:`selfimprove.stats`).
* :func:`contrastive_decode` — exploratory search for extreme differences (outside FDR).
* :func:`lora_delta_summary` — per-module ΔW norms and spectra of a LoRA candidate.
* :func:`null_calibration`, :func:`run_planted_benchmark` — calibration and power checks.
* :func:`write_diff_run`, :func:`render_diff_report` — JSON records and the HTML page.
"""

from selfimprove.diff.allocate import allocate_budget
from selfimprove.diff.detect import (
    DiffConfig,
    DiffCost,
    DiffResult,
    RegionResult,
    check_same_tokenizer,
    detect_changes,
)
from selfimprove.diff.regions import (
    PromptItem,
    Region,
    cluster_texts,
    regions_from_jsonl,
    regions_from_suites,
    split_region,
)
from selfimprove.diff.screen import RegionScreen
from selfimprove.diff.stats import StatTest, addis, saffron

__all__ = [
    "DiffConfig",
    "DiffCost",
    "DiffResult",
    "PromptItem",
    "Region",
    "RegionResult",
    "RegionScreen",
    "StatTest",
    "addis",
    "allocate_budget",
    "check_same_tokenizer",
    "cluster_texts",
    "detect_changes",
    "regions_from_jsonl",
    "regions_from_suites",
    "saffron",
    "split_region",
]
