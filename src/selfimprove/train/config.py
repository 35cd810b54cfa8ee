"""Training config and records: :class:`TrainConfig`, :class:`TrainExample`, :class:`TrainResult`.

Pydantic only: importing this module (and so ``selfimprove.config``) does not import torch,
transformers or peft; :mod:`selfimprove.train.trainer` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfimprove.tasks.base import ChatMessage
from selfimprove.train.weights import WeightPolicy


class TrainExample(BaseModel):
    """One supervised example: the model should answer ``prompt`` with ``completion``.

    The one training-row type of the project: the loop's ``data_*.jsonl`` / ``replay.jsonl``
    files hold these rows (their provenance fields, :data:`selfimprove.synth.assemble.DATA_FIELDS`),
    the data generators return them and :func:`train_lora` trains on them. The provenance
    fields (``suite`` … ``round``, ``rejected``) do not change training.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)
    prompt: str | list[ChatMessage] = Field(description="Plain text (one user turn) or chat.")
    completion: str = Field(description="Target reply; the loss covers it plus the EOS token.")
    weight: float = Field(1.0, ge=0.0, description="Example weight (0 mutes the example).")
    source: str = Field("", description="Where the example came from (provenance).")
    id: str = Field("", description="Stable id, used in error messages.")
    anchor: bool = Field(
        False,
        description="Anchor example: its loss is the teacher-forced KL(base || model) over the "
        "completion tokens (the frozen base model = the adapter switched off) instead of the "
        "NLL of the completion. It pins the base model's whole next-token distribution on "
        "this text, not only its top token; use it for behavior that must not move.",
    )
    suite: str = Field("", description="Suite of the item the row was made from.")
    category: str = Field("", description="Category of that item.")
    input_hash: str = Field("", description="Never-train key of that item's input.")
    round: int = Field(0, description="Loop round that added the row (0 = before round 1).")
    rejected: str | None = Field(
        None, description="A worse reply to the same prompt (self-critique: the original)."
    )
    generator: str = Field(
        "",
        description="Weights hash of the model that wrote the completion ('' = written by "
        "code: a generator's reference or a verified template). The curriculum's provenance "
        "guard (selfimprove.contamination.check_provenance) reads it.",
    )


class TrainConfig(BaseModel):
    """Hyper-parameters of one LoRA fine-tuning run (serialised into ``train_result.json``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha/r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' (every linear layer but the output head) "
        "or a list of module-name suffixes such as ['q_proj', 'v_proj'].",
    )
    learning_rate: float = Field(
        1e-3,
        gt=0,
        description="Peak learning rate. 1e-3 (was 2e-4): on the embedded model one round of "
        "128 targeted rows lifted 4 weak categories 3 -> 29 of 96 fresh items at 1e-3 and "
        "3 -> 10 at 2e-4 (bench/targeted_vs_uniform.py); in the seed-0 loop run at 1e-3 no "
        "sentinel got worse and general-text NLL fell (README, 'A higher learning rate').",
    )
    epochs: int = Field(2, ge=1, description="Passes over the training set.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(
        256, ge=2, description="Max tokens per example; the prompt is cut from the left."
    )
    seed: int = Field(0, description="Seed for LoRA init and data order.")
    weight_policy: WeightPolicy = Field(
        "uniform",
        description="Per-example weights from reference NLL: uniform, confidence (hard "
        "examples weigh more) or inverse (easy examples weigh more). Applied by "
        "apply_weight_policy(), not by train_lora().",
    )
    weight_alpha: float = Field(
        0.5, ge=0, le=1, description="Tempering exponent on the perplexity ratio."
    )
    weight_clip: tuple[float, float] = Field(
        (0.25, 4.0), description="Bounds (lo <= 1 <= hi) of the policy weights."
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps warming up.")
    logging_steps: int = Field(1, ge=1, description="Record the loss every this many steps.")
    optim: Literal["adamw_torch", "sgd"] = Field(
        "adamw_torch", description="Optimizer (plain SGD makes updates linear in the gradient)."
    )
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    group_by_length: bool = Field(
        False,
        description="Fill each optimizer step with examples of similar length (random "
        "windows of 16 steps sorted by length, then the steps shuffled): less padding "
        "(loop training 25-45% faster), same examples per epoch. Off by default: when "
        "examples of different kinds differ in length (KL anchors vs supervised rows) they "
        "land in separate steps, and that learned less (planted benchmark seed 0 not found; "
        "seed-1 loop round 1 +2.3 vs +10.2 pts in random order). Off: uniformly random order.",
    )

    pack: bool = Field(
        True,
        description="Concatenate each micro-batch's examples into one row without padding "
        "(position ids restart per example; transformers then masks attention "
        "block-diagonally): the same examples in the same steps and the same loss up to float "
        "rounding, with no compute spent on pad tokens (1.35x faster on loop-like data, "
        "bench/train_packing.py). Checked before every training run against one-at-a-time "
        "forwards on the model itself (packing_is_exact); a model whose "
        "attention ignores packed position ids falls back to padding with a warning.",
    )

    @field_validator("weight_clip")
    @classmethod
    def _check_clip(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0 < lo <= 1 <= hi):
            raise ValueError(f"weight_clip must satisfy 0 < lo <= 1 <= hi, got {v}")
        return v

    @model_validator(mode="after")
    def _check_targets(self) -> TrainConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules must be 'all-linear' or a non-empty list")
        return self


class TrainResult(BaseModel):
    """What a training run produced (also written as ``train_result.json`` in the adapter)."""

    adapter_dir: Path
    n_examples: int = Field(description="Examples trained on (after dropping over-long ones).")
    n_anchor: int = Field(0, description="Of which anchor (KL-to-base) examples.")
    n_dropped: int = Field(0, description="Examples dropped: completion longer than max_length.")
    n_tokens: int = Field(description="Completion (label) tokens per epoch, EOS included.")
    losses: list[float] = Field(description="Training loss at each logging step.")
    final_loss: float
    diverged: bool = Field(
        description="No loss, a non-finite loss, or last loss > 3x the first non-zero one "
        "(selfimprove.gate.check_losses at its default max_loss_ratio)."
    )
    seconds: float
    weights_summary: dict[str, float] = Field(description="min / mean / max example weight.")
    config: TrainConfig
    base_model: str = ""
    base_weights_hash: str = ""
    runtime: dict[str, Any] = Field(default_factory=dict)
    packed: bool = Field(False, description="Micro-batches were packed (TrainConfig.pack).")
