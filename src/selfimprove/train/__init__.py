"""Training: confidence-weighted LoRA fine-tuning.

The config and records (:class:`TrainConfig`, :class:`TrainExample`, :class:`TrainResult`)
import without torch; the trainer's names (``train_lora``, ``WeightedTrainer`` …) are loaded
on first use, which imports torch, transformers and peft (PEP 562 ``__getattr__``), so that
``import selfimprove.config`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from selfimprove.train.config import TrainConfig, TrainExample, TrainResult
from selfimprove.train.weights import WeightPolicy, compute_weights

if TYPE_CHECKING:
    from selfimprove.train.trainer import (
        LengthGroupedSampler,
        TokenizedDataset,
        WeightedCollator,
        WeightedTrainer,
        apply_weight_policy,
        build_dataset,
        count_label_tokens,
        make_trainer,
        make_training_args,
        packing_is_exact,
        train_lora,
        weighted_causal_lm_loss,
        wrap_lora,
    )

_TRAINER_NAMES = {
    "LengthGroupedSampler",
    "TokenizedDataset",
    "WeightedCollator",
    "WeightedTrainer",
    "apply_weight_policy",
    "build_dataset",
    "count_label_tokens",
    "make_trainer",
    "make_training_args",
    "packing_is_exact",
    "train_lora",
    "weighted_causal_lm_loss",
    "wrap_lora",
}


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        return getattr(importlib.import_module("selfimprove.train.trainer"), name)
    raise AttributeError(f"module 'selfimprove.train' has no attribute {name!r}")


__all__ = [
    "LengthGroupedSampler",
    "TokenizedDataset",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "WeightPolicy",
    "WeightedCollator",
    "WeightedTrainer",
    "apply_weight_policy",
    "build_dataset",
    "compute_weights",
    "count_label_tokens",
    "make_trainer",
    "make_training_args",
    "packing_is_exact",
    "train_lora",
    "weighted_causal_lm_loss",
    "wrap_lora",
]
