"""selfimprove: measured, closed-loop self-improvement of language models.

The public API, one entry point per job:

* evaluate: :func:`run_evaluation` (suites -> records -> per-category metrics);
* improve: :func:`run_loop` (rounds x arms of weak areas -> data -> LoRA -> gate),
  :func:`train_lora` (the weighted LoRA trainer), :func:`decide` (the gate);
* detect behavior changes: :func:`detect_changes` (library), :func:`run_diff` (stored run);
* explain: :func:`run_interp`.

Plus the shared primitives: :func:`load_config`, :func:`load_model`, :class:`Engine`,
:class:`RunStore`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from selfimprove.config import Config, load_config
from selfimprove.diff import detect_changes
from selfimprove.diff.run import run_diff
from selfimprove.engine import Engine, Generation, TokenScores
from selfimprove.errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    NeverTrainViolation,
    SelfImproveError,
    StoreError,
    TaskError,
)
from selfimprove.evaluate import (
    CategoryMetrics,
    EvalRecord,
    aggregate,
    evaluate_task,
    run_evaluation,
)
from selfimprove.gate import GateConfig, GateDecision, decide
from selfimprove.loop import LoopConfig, LoopResult, run_loop, run_sweep
from selfimprove.models import LoadedModel, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import RunInfo, RunStore
from selfimprove.train import TrainConfig, TrainExample, TrainResult

if TYPE_CHECKING:
    from selfimprove.interp.runner import run_interp
    from selfimprove.train.trainer import train_lora

#: entry points whose modules import torch at import time: loaded on first use (PEP 562)
_LAZY = {"run_interp": "selfimprove.interp.runner", "train_lora": "selfimprove.train.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selfimprove' has no attribute {name!r}")


__all__ = [
    "CategoryMetrics",
    "Config",
    "ConfigError",
    "DataError",
    "Engine",
    "EvalRecord",
    "GateConfig",
    "GateDecision",
    "Generation",
    "LoadedModel",
    "LoopConfig",
    "LoopResult",
    "ModelLoadError",
    "NeverTrainViolation",
    "RunInfo",
    "RunStore",
    "Runtime",
    "SelfImproveError",
    "StoreError",
    "TaskError",
    "TokenScores",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "__version__",
    "aggregate",
    "decide",
    "detect_changes",
    "evaluate_task",
    "load_config",
    "load_model",
    "resolve_runtime",
    "run_diff",
    "run_evaluation",
    "run_interp",
    "run_loop",
    "run_sweep",
    "train_lora",
]
