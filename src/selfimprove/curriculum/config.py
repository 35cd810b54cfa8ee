"""``CurriculumConfig``: the ``curriculum:`` section of ``selfimprove.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from selfimprove.errors import ConfigError
from selfimprove.gate import GateConfig
from selfimprove.train import TrainConfig

#: stages that exist; the rest of source 003's six are refused with a clear message
BUILT_STAGES: dict[int, str] = {1: "explicit instructions", 2: "implicit instructions"}
PLANNED_STAGES: dict[int, str] = {
    3: "generation tasks (create examples)",
    4: "evaluation tasks (judge quality)",
    5: "revision tasks (improve text)",
    6: "constitutional integration (critique -> revise -> SFT, then DPO)",
}


def _curriculum_gate() -> GateConfig:
    # one-sided exact McNemar on the stage's held-out items; no collateral family (the
    # stage's task is the only skill measured)
    return GateConfig(target_test="mcnemar", collateral="off", metric="correct")


def _curriculum_train() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=8, max_length=256)


class CurriculumConfig(BaseModel):
    """Settings of ``selfimprove curriculum`` (staged post-training of a base model)."""

    model_config = ConfigDict(extra="forbid")
    stages: list[int] = Field(
        default_factory=lambda: [1, 2],
        description="Stages to run, in order (1 explicit instructions, 2 implicit "
        "instructions: questions). Each stage's model writes the next stage's data.",
    )
    seed: int = Field(0, description="Seed of item draws, sampling and training.")
    kinds: list[str] | None = Field(
        None,
        description="Stage 1's instruction kinds (default: all of tasks.instructions; a "
        "subset makes a quick run).",
    )
    stage2_suites: list[str] = Field(
        default_factory=lambda: ["arithmetic", "logic", "counting", "letters"],
        description="Stage 2's task pool: skill suites whose questions carry their instruction "
        "implicitly (answer the question, end with an Answer line).",
    )
    pool_n: int = Field(
        16, ge=1, description="Training-pool items per category the stage's writer answers."
    )
    samples: int = Field(2, ge=1, le=16, description="Sampled replies per pool item.")
    temperature: float = Field(0.7, gt=0.0, description="Sampling temperature of the writer.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_per_item: int = Field(
        1, ge=1, description="Verified replies kept per pool item (distinct ones)."
    )
    eval_n: int = Field(
        12,
        ge=2,
        description="Held-out evaluation items per category of a stage's task (stage 1: on "
        "topics no training item uses, tasks.instructions.topic_split).",
    )
    max_new_tokens: int = Field(64, ge=8, le=1024, description="Reply cap (data and eval).")
    writer_format: Literal["plain", "cue", "urial", "urial_if"] = Field(
        "urial_if",
        description="How the *base* model is prompted when it writes stage 1's data: its best "
        "in-context baseline (trained stages write in stage_format).",
    )
    stage_format: Literal["plain", "cue"] = Field(
        "cue",
        description="The zero-shot format every trained stage is trained and judged in "
        "('Instruction: ... Response:'; no demonstrations, no chat template).",
    )
    baseline_format: Literal["plain", "cue", "urial", "urial_if"] = Field(
        "urial_if",
        description="The in-context baseline every stage must beat: the base model prompted "
        "this way on the same held-out items.",
    )
    anchor_text: int = Field(
        32,
        ge=0,
        description="General-text passages trained as KL anchors to the current model (the "
        "loop's anchor rows): without them stage 1 raised general_nll by +0.74 nats/token.",
    )
    replay: int = Field(
        16,
        ge=0,
        description="The current model's own verified answers on fresh items of "
        "replay_suites, trained as KL anchors (what it already does right must not move).",
    )
    replay_suites: list[str] = Field(default_factory=lambda: ["arithmetic", "logic"])
    sentinel_suites: list[str] = Field(
        default_factory=lambda: ["general_nll", "sentinel_math"],
        description="Suites that must not regress from the previous stage (non-inferiority).",
    )
    sentinel_n: int = Field(32, ge=2, description="Fixed items per sentinel suite.")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Level of each stage test.")
    train: TrainConfig = Field(default_factory=_curriculum_train)
    gate: GateConfig = Field(default_factory=_curriculum_gate)

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one stage")
        if sorted(set(v)) != v:
            raise ValueError("stages must be increasing and distinct, e.g. [1, 2]")
        return v


def parse_stages(text: str) -> list[int]:
    """``"1-2"`` / ``"1,2"`` / ``"2"`` -> ``[1, 2]`` …; unknown or unbuilt stages are a
    :class:`ConfigError` that says which stages exist."""
    out: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out += list(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigError(
            f"--stages {text!r} is not a stage list; write e.g. 1-2, 1,2 or 1."
        ) from None
    check_stages(out)
    return sorted(set(out))


def check_stages(stages: list[int]) -> None:
    """Refuse stages that do not exist or are not built yet, naming what is."""
    built = ", ".join(f"{k} ({v})" for k, v in BUILT_STAGES.items())
    for s in stages:
        if s in PLANNED_STAGES:
            raise ConfigError(
                f"Curriculum stage {s} ({PLANNED_STAGES[s]}) is not built yet. Built stages: "
                f"{built}. Run --stages 1-2."
            )
        if s not in BUILT_STAGES:
            raise ConfigError(f"There is no curriculum stage {s}; stages are 1-6 (built: {built}).")
    if not stages:
        raise ConfigError("Give at least one curriculum stage, e.g. --stages 1-2.")
