"""Targeted training data: templated variations (and, next, model-written variations, STaR and
self-critique), each verified against the task's own solver/validator, filtered against the
never-train registry, with a per-stage funnel."""

from selfimprove.synth.templated import (
    Funnel,
    find_task,
    random_control_samples,
    templated_variations,
)

__all__ = ["Funnel", "find_task", "random_control_samples", "templated_variations"]
