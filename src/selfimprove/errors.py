"""Exception types for errors a user can cause.

Every error a user can fix (bad config, missing model, unknown suite, corrupt data row)
raises a subclass of :class:`SelfImproveError` whose message says *what* was wrong, *where*,
and *how to fix it*. The CLI prints the message without a traceback and exits non-zero.
Programming errors stay ordinary Python exceptions.
"""

from __future__ import annotations


class SelfImproveError(Exception):
    """Base class for user-facing errors; ``str(err)`` is the message shown to the user."""

    exit_code: int = 2


class ConfigError(SelfImproveError):
    """The config file or a CLI option is malformed or inconsistent."""


class ModelLoadError(SelfImproveError):
    """A model could not be found, converted or loaded (or does not fit in memory)."""


class TaskError(SelfImproveError):
    """Unknown suite/task, or a task definition that cannot be built."""


class DataError(SelfImproveError):
    """A data file (JSONL, task.json, samples.jsonl) is missing or has a corrupt row."""


class StoreError(SelfImproveError):
    """The run store is missing, locked, or a run id does not exist."""


class NeverTrainViolation(SelfImproveError):
    """A training set contains an item from the never-train (evaluation) registry."""
