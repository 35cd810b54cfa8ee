"""``InterpConfig``: the ``interp:`` section of ``selfimprove.yaml``.

What :func:`~selfimprove.interp.runner.run_interp` analyses besides the model: the suites
the items come from, how many per suite, how rows are labelled, the seed, and the control
suites of the ``lora`` analysis. The analysis itself is named on the command line
(``selfimprove interp heads``); the model and adapter come from the ``model:`` section.
Unknown keys are errors. Command-line flags win over the file.

Only pydantic is imported here: no torch, no models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InterpConfig(BaseModel):
    """Settings of ``selfimprove interp`` (the ``interp:`` section of selfimprove.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    suites: list[str] = Field(
        default_factory=lambda: ["arithmetic", "word_sort"],
        description="Suites the items come from (the target suites of `lora`).",
    )
    control_suites: list[str] = Field(
        default_factory=lambda: ["general_nll"],
        description="`lora` only: the prompts the adapter should not change.",
    )
    n: int | None = Field(
        None, ge=1, description="Items per suite; None: the analysis's own default (DEFAULT_N)."
    )
    label_by: Literal["suite", "category"] | None = Field(
        None, description="Row labels; None: suite when several suites are given, else category."
    )
    seed: int = Field(0, description="Seed for items, splits and permutations.")
