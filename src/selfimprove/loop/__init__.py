"""The closed loop: evaluate -> weak areas -> targeted data -> LoRA -> re-evaluate -> gate.

One ``selfimprove run`` is R rounds x two arms with the same example budget:

* ``targeted``: data from the weak categories of the arm's current accepted model;
* ``random``: the same number of examples drawn uniformly across all skill categories
  (the control that turns "error-driven works" from an assumption into a measurement).

Each round re-trains from the *base* model on the arm's *accumulated* verified data (STaR /
ReST-EM: accumulate, do not replace), evaluates the candidate on the same fixed items as
the baseline, and asks the gate (:mod:`selfimprove.gate`) for a paired decision. Accepted
adapters become the arm's current model; rejected ones are kept for inspection only.

Layout: :mod:`~selfimprove.loop.config` (``LoopConfig``), :mod:`~selfimprove.loop.records`
(typed round/state/summary records), :mod:`~selfimprove.loop.context` (the state phases
share, ``state.json``), :mod:`~selfimprove.loop.phases` (one function per phase),
:mod:`~selfimprove.loop.summary` (headline numbers), :mod:`~selfimprove.loop.run`
(``run_loop``, ``run_sweep``). Training rows are assembled in
:mod:`selfimprove.synth.assemble`.
"""

from selfimprove.loop.config import ARMS, Arm, LoopConfig
from selfimprove.loop.context import LoopContext, PhaseState, with_adapter
from selfimprove.loop.records import (
    ArmRound,
    BehaviorDiff,
    CategoryChange,
    Efficiency,
    LoopResult,
    LoopState,
    LoopSummary,
    RoundPoint,
    SweepPoint,
    TrainRound,
)
from selfimprove.loop.run import (
    SWEEP_KNOBS,
    check_gate_power,
    evaluation_plan,
    run_loop,
    run_sweep,
)
from selfimprove.loop.summary import efficiency, summarize, target_accuracy

__all__ = [
    "ARMS",
    "SWEEP_KNOBS",
    "Arm",
    "ArmRound",
    "BehaviorDiff",
    "CategoryChange",
    "Efficiency",
    "LoopConfig",
    "LoopContext",
    "LoopResult",
    "LoopState",
    "LoopSummary",
    "PhaseState",
    "RoundPoint",
    "SweepPoint",
    "TrainRound",
    "check_gate_power",
    "efficiency",
    "evaluation_plan",
    "run_loop",
    "run_sweep",
    "summarize",
    "target_accuracy",
    "with_adapter",
]
