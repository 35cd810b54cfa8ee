"""Helper for ``test_train.py``: one weighted LoRA run, under ``torchrun`` or plain ``python``.

Usage: ``python ddp_train_helper.py OUT_DIR BATCH_SIZE GRAD_ACCUM``. Every rank runs
:func:`train_lora` on the same four examples (non-uniform weights, mixed lengths) with plain
SGD, a constant learning rate and no clipping, so the saved adapter is a linear function of
the summed gradients; rank 0 writes the adapter to ``OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfimprove.models import load_model
from selfimprove.runtime import resolve_runtime
from selfimprove.train import TrainConfig, TrainExample, train_lora

EXAMPLES = [
    TrainExample(prompt="What is 7 plus 5?", completion="Answer: 12", weight=2.0),
    TrainExample(
        prompt="Sort these words alphabetically: pear apple mango.",
        completion="apple mango pear. Answer: apple mango pear",
        weight=0.5,
    ),
    TrainExample(prompt="How many times does the word cat appear?", completion="3", weight=1.0),
    TrainExample(
        prompt="Monday Tuesday?",
        completion="Wednesday Thursday Friday Saturday Sunday",
        weight=1.5,
    ),
]


def ddp_config(batch_size: int, grad_accum: int) -> TrainConfig:
    return TrainConfig(
        batch_size=batch_size,
        grad_accum=grad_accum,
        epochs=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler="constant",
        max_grad_norm=0.0,
        seed=0,
    )


def main() -> None:
    out_dir, bs, ga = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    loaded = load_model("tiny-llama", n_layers=2, seed=0)
    train_lora(loaded, EXAMPLES, ddp_config(bs, ga), out_dir, runtime=resolve_runtime(1, "fp32"))


if __name__ == "__main__":
    main()
