"""The state one loop run carries from phase to phase, and its bookkeeping on disk.

:class:`LoopContext` is what every phase function of :mod:`selfimprove.loop.phases` takes:
the resolved config, the store and run, the base model, the fixed evaluation items, and what
earlier phases produced (baseline records, replay rows, each arm's accepted model).
:class:`PhaseState` is ``state.json``: phase names (``r0/baseline``, ``r1_targeted/data`` …)
are marked done only after their artifact is written, so a resumed run skips them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfimprove.engine import Engine
from selfimprove.evaluate import EvalRecord, Item, ProgressHook
from selfimprove.faults import fault
from selfimprove.loop.records import ArmRound, LoopState
from selfimprove.loop.split import ItemSplit
from selfimprove.models import LoadedModel, attach_adapter
from selfimprove.runtime import Runtime
from selfimprove.store import RunStore, atomic_write_text
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.train import TrainExample

if TYPE_CHECKING:
    from selfimprove.config import Config
    from selfimprove.loop.config import LoopConfig


class PhaseState:
    """Phase bookkeeping in ``state.json`` (atomic rewrite after every phase).

    ``model`` is the state's pydantic class (the loop's :class:`LoopState`, the curriculum's
    own); it needs a ``done: list[str]`` field.
    """

    def __init__(self, run_dir: Path, model: type[Any] = LoopState) -> None:
        self.path = run_dir / "state.json"
        self.state = (
            model.model_validate_json(self.path.read_text()) if self.path.is_file() else model()
        )

    def done(self, name: str) -> bool:
        return name in self.state.done

    def mark(self, name: str) -> None:
        fault(f"phase:{name}:before")
        if name not in self.state.done:
            self.state.done.append(name)
        self.save()
        fault(f"phase:{name}")

    def save(self) -> None:
        atomic_write_text(self.path, self.state.model_dump_json(indent=1))


def with_adapter(base: LoadedModel, adapter: str | None) -> LoadedModel:
    """``base`` with the LoRA ``adapter`` merged in, on a copy (``None``: ``base`` itself)."""
    if adapter is None:
        return base
    # PEFT injects LoRA layers into the wrapped modules: work on a copy, keep the base clean.
    # Merged: every forward pass of the loop (evaluation, data, reference NLL) runs a plain
    # dense model, like the base's, instead of paying LoRA's per-layer overhead.
    clone = dataclasses.replace(base, model=copy.deepcopy(base.model))  # keeps .base
    return attach_adapter(clone, adapter, merge=True)


@dataclass
class LoopContext:
    """Everything a phase needs; phases read it and add what they produce."""

    cfg: Config
    store: RunStore
    run_id: str
    phases: PhaseState
    base: LoadedModel
    runtime: Runtime
    registry: NeverTrainRegistry
    items: list[Item]
    skill_names: list[str]
    sentinel_names: list[str]
    sentinels: list[Any]
    hook: ProgressHook
    #: which items choose targets and which judge them (set by the baseline phase)
    split: ItemSplit = field(default_factory=lambda: ItemSplit(frozenset(), frozenset()))
    baseline: list[EvalRecord] = field(default_factory=list)
    baseline_seconds: float = 0.0
    replay_rows: list[TrainExample] = field(default_factory=list)
    #: arm -> records of the arm's current (accepted) model on ``items`` (confirmation half,
    #: plus the selection half once the arm ranks weak areas on it)
    evals: dict[str, list[EvalRecord]] = field(default_factory=dict)

    @property
    def lcfg(self) -> LoopConfig:
        return self.cfg.loop

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    def engine_for(self, adapter: str | None) -> Engine:
        """An engine on the base model, or on the base with an accepted/candidate adapter."""
        return Engine(
            with_adapter(self.base, adapter),
            runtime=self.runtime,
            system_prompt=self.cfg.model.system_prompt,
            prompt_format=self.cfg.model.prompt_format,
        )

    def arm_round(self, rnd: int, arm: str) -> ArmRound:
        """The round's record in ``state.json`` (created on first use)."""
        for r in self.phases.state.rounds:
            if (r.round, r.arm) == (rnd, arm):
                return r
        ar = ArmRound(round=rnd, arm=arm)  # type: ignore[arg-type]
        self.phases.state.rounds.append(ar)
        return ar

    def find_round(self, rnd: int, arm: str) -> ArmRound | None:
        return next((r for r in self.phases.state.rounds if (r.round, r.arm) == (rnd, arm)), None)

    def adapter_dir(self, ar: ArmRound) -> Path:
        return self.run_dir / "adapters" / ar.tag

    def current_adapter(self, arm: str) -> str | None:
        """The arm's accepted adapter folder (``None``: the base model), under this run's
        folder wherever the store is now: state.json names it relative to the run
        (``adapters/r1_targeted``; older runs stored a cwd-relative path, read by its name)."""
        cur = self.phases.state.current.get(arm)
        return None if cur is None else str(self.run_dir / "adapters" / Path(cur).name)


def step_progress(
    hook: ProgressHook, name: str, fault_point: str | None = None
) -> Callable[[int, int], None]:
    """Adapt ``progress(step, total)`` callbacks to the hook's start/advance protocol."""
    last = [0]

    def cb(step: int, total: int) -> None:
        if fault_point is not None:
            fault(fault_point)
        if last[0] == 0:
            hook.start(total, name)
        hook.advance(step - last[0])
        last[0] = step

    return cb
