"""``LoopConfig``: the ``loop:`` section of ``selfimprove.yaml``, validated once.

Its ``train`` and ``gate`` sub-sections are the trainer's and the gate's own config classes
(:class:`selfimprove.train.TrainConfig`, :class:`selfimprove.gate.GateConfig`), so a typo
under ``loop.train`` fails when the file is loaded, not after the baseline evaluation.
Values that two components share have one home: the seed is ``loop.seed`` (the trainer gets
it from there) and the weight policy is ``loop.train.weight_policy``. The gate's binary
metric follows ``loop.weakness.metric`` unless ``loop.gate.metric`` is set: the gate measures
the accuracy that picked the weak areas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove.gate import GateConfig
from selfimprove.synth.self_generated import SelfDataConfig
from selfimprove.train import TrainConfig
from selfimprove.weakness import WeaknessConfig

Arm = Literal["targeted", "random"]
ARMS: tuple[Arm, ...] = ("targeted", "random")


class LoopConfig(BaseModel):
    """Settings of ``selfimprove run`` (the ``loop:`` section of selfimprove.yaml)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(3, ge=1, le=20, description="Improvement rounds per arm.")
    budget: int = Field(128, ge=4, description="New training examples per round per arm.")
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    skill_suites: list[str] = Field(default_factory=lambda: ["skills"])
    sentinel_suites: list[str] = Field(default_factory=lambda: ["sentinels"])
    eval_n: int = Field(
        64,
        ge=4,
        description="Fixed evaluation items per skill suite (split over its categories, then "
        "each category into a selection and a confirmation half: selfimprove.loop.split).",
    )
    selection_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Share of every skill category's evaluation items that choose the targets "
        "(weak areas, learnability, retirement); the rest confirm them (the gate and every "
        "reported gain). Disjoint, so a gain is never measured on the items that chose it.",
    )
    sentinel_n: int = Field(
        48,
        ge=4,
        description="Fixed evaluation items per sentinel suite (all of them confirmation "
        "items). At 48 a suite's own non-inferiority test (gate.suite_margin 0.20) passes an "
        "unchanged round 98.6% of the time with 10% of answers flipping, 91% at 20% (at 32: "
        "91% / 75%); five such suites and the pooled test all pass 92% / 63% of unchanged "
        "rounds (at 32: 59% / 23%; bench/sentinel_gate_power.py).",
    )
    weakness: WeaknessConfig = Field(default_factory=WeaknessConfig)
    self_data: SelfDataConfig = Field(default_factory=SelfDataConfig)
    replay: int = Field(
        32,
        ge=0,
        description="Self-distillation replay: fresh items from the skill suites answered "
        "correctly by the base model (its own verified outputs), added to every round's "
        "training data in both arms, minus the round's target categories, so that behavior the "
        "round does not target stays in place. 0 turns it off.",
    )
    replay_loss: Literal["kl", "nll"] = Field(
        "kl",
        description="Loss on the replay rows: 'kl' = teacher-forced KL to the base model over "
        "its own answer (pins its whole next-token distribution there), 'nll' = imitate the "
        "answer (also sharpens the model toward it).",
    )
    anchor_text: int = Field(
        40,
        ge=0,
        description="General-text anchors: this many short original passages "
        "(tasks.suites.anchor_passages, disjoint from general_nll's items, same format) added "
        "to every round's training data in both arms with a KL-to-base loss, against the "
        "forgetting that general_nll measures (+0.12 nats/token by round 3 without them). "
        "0 turns it off.",
    )
    worked_solutions: bool = Field(
        True,
        description="Templated completions carry a short verified derivation before the "
        "'Answer:' line (selfimprove.synth.worked) where the family has one; off: 'Answer: X' "
        "only, which taught the model to drop its working and cost sentinel_math accuracy.",
    )
    earlier_data_passes: int | None = Field(
        1,
        ge=1,
        description="Passes over earlier rounds' rows in a round's training. Every round "
        "retrains from the base model on all accumulated data; this round's new rows, the "
        "replay rows and the text anchors get train.epochs passes, rows from earlier rounds "
        "this many (in one shuffled epoch), so training time grows with the new data "
        "rather than with the round number. null = train.epochs passes for every row.",
    )
    earlier_data_rows: int | None = Field(
        128,
        ge=0,
        description="At most this many of the earlier rounds' rows in a round's training, "
        "drawn afresh each round (seeded); with earlier_data_passes this keeps the training "
        "cost of every round after the first the same (a fixed step budget). null = all.",
    )
    keep_accepted_rows: bool = Field(
        False,
        description="Rows added by earlier *accepted* rounds of the arm get train.epochs "
        "passes and are never capped by earlier_data_rows; only rejected rounds' rows are "
        "thinned, so a candidate is not trained on less of what the accepted model learned "
        "from. Costs training time once a round is accepted.",
    )
    behavior_diff: int = Field(
        24,
        ge=0,
        description="Samples per model for a behavior-change check (selfimprove.diff."
        "detect_changes, one region per sentinel suite, BH at q=0.1) of every candidate the "
        "statistical gate accepts, against its arm's current model; what it does with a "
        "flagged region is behavior_action. Rejected candidates are not checked (the check "
        "could not change their verdict). 0 turns it off; 24 costs about a minute on 2 cores.",
    )
    behavior_action: Literal["flag", "reject"] = Field(
        "flag",
        description="A candidate with a behavior change that survives FDR control on a "
        "sentinel suite: 'flag' notes it in the gate's reasons and the report; 'reject' "
        "also rejects the round.",
    )
    seed: int = Field(
        0, description="The run's seed: item plan, data draws, LoRA init and data order."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="LoRA training (selfimprove.train.TrainConfig); its seed is loop.seed.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Acceptance tests (selfimprove.gate.GateConfig); metric defaults to "
        "loop.weakness.metric's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_home_per_value(cls, data: Any) -> Any:
        """``loop.weight_policy`` (older configs and stored runs) moves to ``train``."""
        if not isinstance(data, dict) or "weight_policy" not in data:
            return data
        data = dict(data)
        policy = data.pop("weight_policy")
        train = dict(data.get("train") or {})
        if train.get("weight_policy", policy) != policy:
            raise ValueError(
                f"weight_policy is set twice (loop.weight_policy={policy!r}, "
                f"loop.train.weight_policy={train['weight_policy']!r}); keep only "
                "loop.train.weight_policy"
            )
        train["weight_policy"] = policy
        data["train"] = train
        return data

    @model_validator(mode="after")
    def _derive_shared_values(self) -> LoopConfig:
        if "seed" in self.train.model_fields_set and self.train.seed != self.seed:
            raise ValueError(
                f"loop.train.seed ({self.train.seed}) differs from loop.seed ({self.seed}); "
                "the run has one seed: set loop.seed only"
            )
        self.train = self.train.model_copy(update={"seed": self.seed})
        if "metric" not in self.gate.model_fields_set:
            self.gate = self.gate.model_copy(update={"metric": self.weakness.metric})
        return self
