"""selfimprove: measured, closed-loop self-improvement of language models.

The public API: load a model, wrap it in the engine, evaluate suites, store runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from selfimprove.config import Config, load_config
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
from selfimprove.models import LoadedModel, load_model
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import RunInfo, RunStore

__all__ = [
    "CategoryMetrics",
    "Config",
    "ConfigError",
    "DataError",
    "Engine",
    "EvalRecord",
    "Generation",
    "LoadedModel",
    "ModelLoadError",
    "NeverTrainViolation",
    "RunInfo",
    "RunStore",
    "Runtime",
    "SelfImproveError",
    "StoreError",
    "TaskError",
    "TokenScores",
    "__version__",
    "aggregate",
    "evaluate_task",
    "load_config",
    "load_model",
    "resolve_runtime",
    "run_evaluation",
]
