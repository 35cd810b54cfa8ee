"""``DiffRunConfig``: the ``diff:`` section of ``selfimprove.yaml``.

It is :class:`~selfimprove.diff.detect.DiffConfig` (how one comparison screens, samples and
tests) plus what ``selfimprove diff`` compares the models on: the regions (from suites
and/or a prompt bank), exploration and the null calibration's seed count. The keys are flat,
so ``diff: {q: 0.05, suites: [refusal]}`` sets the false discovery rate and the regions.
Unknown keys are errors. Command-line flags win over the file (see ``selfimprove diff``).

What it does not do: load models or build regions (that is :mod:`selfimprove.diff.run`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from selfimprove.diff.detect import DiffConfig
from selfimprove.diff.regions import ClusterBy

#: Regions compared when neither suites nor a prompt bank are given: the behaviours a
#: fine-tune should not change (the evaluation's default suites are config.DEFAULT_EVAL_SUITES).
DEFAULT_REGION_SUITES = [
    "sentinel_math",
    "sentinel_reasoning",
    "sentinel_format",
    "refusal",
    "benign_control",
]


class DiffRunConfig(DiffConfig):
    """Settings of ``selfimprove diff``: the detector's :class:`DiffConfig` and the regions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    suites: list[str] | None = Field(
        None,
        description="Suites whose categories (or whole suites, see `regions`) are the regions; "
        "None: DEFAULT_REGION_SUITES unless `prompts` is given.",
    )
    prompts: str | None = Field(
        None, description="JSONL prompt bank: {prompt, region?, target?} per line."
    )
    regions: Literal["category", "suite"] = Field(
        "category", description="Regions from suites: 'category' (suite/category) or 'suite'."
    )
    cluster: ClusterBy = Field(
        "auto",
        description="How prompt-bank rows without a region are grouped: 'embedding' "
        "(all-MiniLM-L6-v2, offline), 'tfidf', or 'auto' (embedding if installed).",
    )
    explore: int = Field(
        0, ge=0, description="Contrastive-decoding samples (exploratory, outside the FDR)."
    )
    explore_lambda: float = Field(
        0.5, ge=0, description="Exploration scores log p_B - explore_lambda * log p_A."
    )
    null_seeds: int = Field(10, ge=1, description="`diff --null`: number of seeds compared.")

    def region_suites(self) -> list[str] | None:
        """The suites to build regions from (None: only the prompt bank)."""
        if self.suites:
            return list(self.suites)
        return None if self.prompts else list(DEFAULT_REGION_SUITES)

    def detect_config(self) -> DiffConfig:
        """The detector's part, as a plain :class:`DiffConfig` (what the run stores)."""
        return DiffConfig.model_validate(self.model_dump(include=set(DiffConfig.model_fields)))
