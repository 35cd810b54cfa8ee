"""What each curriculum stage is about: its training pool and its held-out items.

* Stage 1, *explicit instructions*: :mod:`selfimprove.tasks.instructions` (verifiable
  constraints on free content). The pool uses one half of the topics and subjects, the
  held-out items the other half (:func:`~selfimprove.tasks.instructions.topic_split`), so
  the stage is judged on instructions about things it never trained on.
* Stage 2, *implicit instructions*: questions of the skill suites (``stage2_suites``), whose
  instruction is implicit (answer the question; end with an ``Answer:`` line). Pool items are
  fresh draws; an item whose question is a registered evaluation item is skipped.

Items are ``(suite, task, sample)`` triples, like the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfimprove.curriculum.config import BUILT_STAGES, CurriculumConfig
from selfimprove.errors import ConfigError
from selfimprove.evaluate import Item, plan_items, resolve_suites
from selfimprove.tasks.instructions import INSTRUCTION_KINDS, instruction_tasks, topic_split
from selfimprove.tasks.never_train import NeverTrainRegistry


@dataclass
class StageTasks:
    """One stage's items: the pool its writer answers and the held-out items it is judged on."""

    number: int
    name: str
    pool: list[Item]
    heldout: list[Item]
    #: ``(suite, task, samples)`` of the held-out items (for the never-train registry)
    heldout_plan: list[tuple[Any, Any, list[Any]]]

    @property
    def categories(self) -> list[tuple[str, str]]:
        return sorted({(su, x.category) for su, _t, x in self.heldout})


@dataclass
class _Named:
    """A suite-like name for the never-train registry's source label."""

    name: str


def _kinds(ccfg: CurriculumConfig) -> list[str]:
    kinds = list(ccfg.kinds) if ccfg.kinds is not None else list(INSTRUCTION_KINDS)
    unknown = sorted(set(kinds) - set(INSTRUCTION_KINDS))
    if unknown or not kinds:
        raise ConfigError(
            f"curriculum.kinds {kinds!r}: unknown kinds {unknown}; "
            f"choose from {list(INSTRUCTION_KINDS)}."
        )
    return kinds


def _stage1(ccfg: CurriculumConfig) -> StageTasks:
    kinds = _kinds(ccfg)
    train_topics, held_topics = topic_split()
    held_tasks = [t for t in instruction_tasks(held_topics, "heldout.") if t.category[3:] in kinds]
    pool_tasks = [t for t in instruction_tasks(train_topics, "pool.") if t.category[3:] in kinds]
    held_plan = [(_Named("instructions"), t, t.samples(ccfg.eval_n, ccfg.seed)) for t in held_tasks]
    heldout = [("instructions", t, x) for _s, t, xs in held_plan for x in xs]
    pool = [
        ("instructions_pool", t, x)
        for t in pool_tasks
        for x in t.samples(ccfg.pool_n, ccfg.seed + 1001)
    ]
    return StageTasks(1, BUILT_STAGES[1], pool, heldout, held_plan)


def _stage2(ccfg: CurriculumConfig, registry: NeverTrainRegistry | None) -> StageTasks:
    suites = resolve_suites(ccfg.stage2_suites)
    plan = []
    for su in suites:
        plan += plan_items([su], ccfg.eval_n * len(su.tasks), ccfg.seed + 2)
    held_keys = {x.input for _s, _t, xs in plan for x in xs}
    heldout = [(su.name, t, x) for su, t, xs in plan for x in xs]
    pool: list[Item] = []
    for su in suites:
        for t in su.tasks:
            draw = t.samples(ccfg.pool_n * 3, ccfg.seed + 2002)
            fresh = [
                x
                for x in draw
                if x.input not in held_keys and (registry is None or x not in registry)
            ]
            pool += [(f"{su.name}_pool", t, x) for x in fresh[: ccfg.pool_n]]
    return StageTasks(2, BUILT_STAGES[2], pool, heldout, plan)


def stage_tasks(
    number: int, ccfg: CurriculumConfig, registry: NeverTrainRegistry | None = None
) -> StageTasks:
    """The items of stage ``number`` (deterministic in ``ccfg.seed``)."""
    if number == 1:
        return _stage1(ccfg)
    if number == 2:
        return _stage2(ccfg, registry)
    raise ConfigError(f"curriculum stage {number} is not built")
