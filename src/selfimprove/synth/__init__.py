"""Targeted training data, each item verified against the task's own solver/validator and
filtered against the never-train registry, with a per-stage funnel.

* :mod:`~selfimprove.synth.templated`: fresh generator items at the failing difficulty, and
  the random-control draw;
* :mod:`~selfimprove.synth.self_generated`: STaR (with rationalization), self-critique and
  revision (also as preference pairs), model-written variations re-solved by our solvers.
"""

from selfimprove.synth.self_generated import (
    SelfDataConfig,
    parse_variation,
    self_generated_data,
)
from selfimprove.synth.templated import (
    Funnel,
    find_task,
    random_control_samples,
    templated_variations,
)

__all__ = [
    "Funnel",
    "SelfDataConfig",
    "find_task",
    "parse_variation",
    "random_control_samples",
    "self_generated_data",
    "templated_variations",
]
