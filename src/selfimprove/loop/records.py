"""Typed records of a loop run: what a round did, the phase state, the summary.

These are what ``state.json``, ``summary_rounds.json`` and ``summary.json`` hold and what the
CLI and the HTML report read; no stage passes untyped dicts with made-up keys to another.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from selfimprove.gate import GateDecision
from selfimprove.loop.config import Arm
from selfimprove.stats import RatioConfidenceSet
from selfimprove.synth import Funnel
from selfimprove.train import TrainResult
from selfimprove.weakness import WeakArea


class TrainRound(TrainResult):
    """A round's training run plus how its data were put together."""

    n_distinct: int = Field(description="Distinct examples (data rows + replay + text anchors).")
    n_earlier: int = Field(0, description="Rows from earlier rounds.")
    n_earlier_used: int = Field(0, description="Of which trained on this round.")
    n_replay: int = 0
    n_anchor_text: int = 0


class FlaggedRegion(BaseModel):
    region: str
    q: float
    stat: str
    label: str = ""


class BehaviorDiff(BaseModel):
    """The behavior-change check of a candidate against its arm's model (report only)."""

    flagged: list[FlaggedRegion] = Field(default_factory=list)
    line: str
    samples_per_model: int


def _empty_is_none(v: Any) -> Any:
    return None if v == {} else v  # older state.json files wrote {} for "not yet"


class ArmRound(BaseModel):
    """What one round of one arm did."""

    round: int
    arm: Arm
    weak_areas: list[WeakArea] = Field(default_factory=list)
    targets: list[tuple[str, str]] = Field(default_factory=list)
    funnel: Funnel = Field(default_factory=Funnel)
    self_funnel: dict[str, int] = Field(
        default_factory=dict, description="Stage -> count (selfimprove.synth.self_generated)."
    )
    n_train: int = 0
    train: TrainRound | None = None
    gate: GateDecision | None = None
    diff: BehaviorDiff | None = None
    accepted: bool = False
    seconds: dict[str, float] = Field(default_factory=dict)
    #: targets ("suite/category") whose accuracy did not rise in this round's candidate
    stalled: dict[str, str] = Field(default_factory=dict)

    _none_if_empty = field_validator("train", "gate", "diff", mode="before")(_empty_is_none)

    @property
    def tag(self) -> str:
        """``r<round>_<arm>``: the prefix of the round's phases and artifacts."""
        return f"r{self.round}_{self.arm}"

    @property
    def reasons(self) -> list[str]:
        return self.gate.reasons if self.gate is not None else []


class ReplayFunnel(BaseModel):
    drawn: int = 0
    answered: int = 0
    kept_correct: int = 0


class LoopState(BaseModel):
    """``state.json``: finished phases, the rounds so far, each arm's accepted adapter."""

    done: list[str] = Field(default_factory=list)
    replay_funnel: ReplayFunnel = Field(default_factory=ReplayFunnel)
    rounds: list[ArmRound] = Field(default_factory=list)
    #: arm -> accepted adapter folder relative to the run folder (None: the base model)
    current: dict[str, str | None] = Field(default_factory=dict)

    _none_if_empty = field_validator("replay_funnel", mode="before")(
        lambda v: ReplayFunnel() if v == {} else v
    )


class RoundPoint(BaseModel):
    """One candidate's accuracy on all targets (accepted or not)."""

    round: int
    arm: str
    target_acc: float | None
    n_train: int
    accepted: bool


class Efficiency(BaseModel):
    """Targeted vs random gain on the target items (paired-bootstrap 95% CIs), their
    difference, and the ratio with its Fieller confidence set (``ratio_ci`` is ``None`` when
    that set is unbounded: the random arm's gain is not significantly ≠ 0)."""

    n_items: int
    gain_targeted: float | None = None
    gain_targeted_ci: tuple[float, float] | None = None
    gain_random: float | None = None
    gain_random_ci: tuple[float, float] | None = None
    difference: float | None = None
    difference_ci: tuple[float, float] | None = None
    ratio: float | None = None
    ratio_ci: tuple[float, float] | None = None
    ratio_defined_fraction: float | None = Field(
        None, description="Older runs only (the biased percentile interval it went with)."
    )
    ratio_set: RatioConfidenceSet | None = None

    def describe(self) -> str:
        """One line: the difference of gains first, then each gain, then the ratio."""
        if not self.n_items or self.gain_targeted is None or self.gain_random is None:
            return "no target items scored by both arms' last candidates"

        def pts(v: float, ci: tuple[float, float] | None) -> str:
            return f"{100 * v:+.1f} pts" + (
                f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci is not None else ""
            )

        line = (
            f"last round's candidates on {self.n_items} target confirmation items: "
            f"targeted − random {pts(self.difference or 0.0, self.difference_ci)} "
            f"(targeted {pts(self.gain_targeted, self.gain_targeted_ci)}, "
            f"random {pts(self.gain_random, self.gain_random_ci)}); ratio "
        )
        rs = self.ratio_set
        if self.ratio is None:
            line += "undefined (random gain ≤ 0)"
        else:
            line += f"{self.ratio:.2f}"
        if self.ratio_ci is not None:
            line += f" [{self.ratio_ci[0]:.2f}, {self.ratio_ci[1]:.2f}] (Fieller 95%)"
        elif rs is not None:
            line += " (Fieller 95% set unbounded: random gain not significantly ≠ 0"
            if rs.kind == "two_rays" and rs.gap is not None:
                line += f"; excludes ({rs.gap[0]:.2f}, {rs.gap[1]:.2f})"
            line += ")"
        return line


class CategoryChange(BaseModel):
    """A category's accuracy before and after (each arm's accepted model), Wilson 95% CIs."""

    suite: str
    category: str
    target: bool
    n: int
    before: float
    before_ci: tuple[float, float] | None
    after: dict[str, float | None] = Field(default_factory=dict)
    after_ci: dict[str, tuple[float, float] | None] = Field(default_factory=dict)


class LoopSummary(BaseModel):
    """The headline numbers of a loop run (``summary.json``)."""

    targets: list[str] = Field(description="Every category the targeted arm chose, suite/cat.")
    metric: str
    target_acc_before: float | None
    target_acc_after: dict[str, float | None] = Field(
        default_factory=dict,
        description="Arm -> its accepted model's accuracy on the targets' confirmation items. "
        "The gate accepted that model on these very items, so after an accepted round this is "
        "biased upward; `efficiency` (the last round's candidates, accepted or not) is the "
        "unbiased comparison.",
    )
    retired_targets: dict[str, str] = Field(default_factory=dict)
    accepted_rounds: dict[str, int] = Field(default_factory=dict)
    efficiency_ratio: float | None = Field(
        None, description="efficiency.ratio (kept for older readers of summary.json)."
    )
    baseline_eval_seconds: float = 0.0
    per_round: list[RoundPoint] = Field(default_factory=list)
    efficiency: Efficiency | None = None
    per_category: list[CategoryChange] = Field(default_factory=list)
    replay: ReplayFunnel = Field(default_factory=ReplayFunnel)
    report: str | None = None
    split: str = Field(
        "", description="Which items chose the targets and which judged them (loop.split)."
    )
    n_selection: int = 0
    n_confirmation: int = 0


class LoopResult(BaseModel):
    run_id: str
    run_dir: str
    rounds: list[ArmRound]
    summary: LoopSummary


class SweepPoint(BaseModel):
    """One loop run of a sweep."""

    knob: str
    value: Any
    run_id: str
    targets: list[str]
    target_acc_before: float | None
    target_acc_after: dict[str, float | None]
    accepted_rounds: dict[str, int]
    efficiency_ratio: float | None = Field(
        description="Targeted over random gain of the last round's candidates on the targets' "
        "confirmation items (efficiency.ratio)."
    )
    efficiency: Efficiency | None = Field(
        None, description="The unbiased comparison of the arms (LoopSummary.efficiency)."
    )
    examples: dict[str, int]
