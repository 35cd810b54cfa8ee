"""The curriculum's ``state.json`` and per-stage results (pydantic, JSON on disk)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from selfimprove.gate import GateDecision
from selfimprove.stats import PairedBinaryTest


class StageFunnel(BaseModel):
    """How a stage's training rows were obtained from what its writer wrote."""

    pool_items: int = 0
    sampled: int = Field(0, description="replies sampled (pool items x samples)")
    ended: int = Field(0, description="replies that ended before the length cap")
    verified: int = Field(0, description="ended and accepted by the item's validator")
    distinct: int = Field(0, description="verified and not a repeat for the same item")
    kept: int = Field(0, description="training rows (at most max_per_item per item)")
    items_with_a_row: int = 0


class ModelScore(BaseModel):
    """One model (and prompt format) on a stage's held-out items."""

    name: str
    accuracy: float
    ci: tuple[float, float]
    ended: float = Field(description="share of replies that ended before the length cap")
    n: int


class StageResult(BaseModel):
    number: int
    name: str
    writer: str = ""
    writer_hash: str = ""
    funnel: StageFunnel = Field(default_factory=StageFunnel)
    n_train: int = 0
    train: dict[str, Any] | None = None
    scores: list[ModelScore] = Field(default_factory=list)
    per_category: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="category -> model name -> accuracy"
    )
    vs_previous: PairedBinaryTest | None = None
    vs_baseline: PairedBinaryTest | None = None
    gate: GateDecision | None = None
    accepted: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    samples: list[dict[str, str]] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)


class CurriculumState(BaseModel):
    """``state.json`` of a curriculum run: finished phases, stage results, the model chain."""

    done: list[str] = Field(default_factory=list)
    stages: list[StageResult] = Field(default_factory=list)
    #: accepted stages' adapter folders, relative to the run folder, in merge order
    chain: list[str] = Field(default_factory=list)
    #: weights hash -> name of every model allowed to write data (base + accepted stages)
    writers: dict[str, str] = Field(default_factory=dict)

    def stage(self, number: int, name: str) -> StageResult:
        for s in self.stages:
            if s.number == number:
                return s
        res = StageResult(number=number, name=name)
        self.stages.append(res)
        return res
