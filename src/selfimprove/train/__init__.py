"""Training: confidence-weighted LoRA fine-tuning (DESIGN §5).

Importing this package imports torch, transformers and peft.
"""

from selfimprove.train.trainer import (
    LengthGroupedSampler,
    TokenizedDataset,
    TrainConfig,
    TrainExample,
    TrainResult,
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
from selfimprove.train.weights import WeightPolicy, compute_weights

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
