"""Templated variations: fresh items from the generator of a weak category, at the
difficulty where the model fails, plus the random-control draw.

Gold answers come from the generator's own solver (verified by construction; the task's
validator is re-run on the gold reference as a check). Items whose input is in the
never-train registry (any evaluation item) or already drawn are dropped. Each stage's counts
go into a :class:`Funnel`.

Training seeds live in their own namespace (``train:<round>:<arm>``) so that a training draw
never replays the evaluation stream; the registry check catches the collisions that remain
in small problem spaces (1-digit addition has only 100 problems).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, Field

from selfimprove.errors import TaskError
from selfimprove.evaluate import is_solved
from selfimprove.tasks.base import Sample, Task
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.tasks.suites import get_suite, list_suites


class Funnel(BaseModel):
    """How many items each stage produced and kept."""

    drawn: int = 0
    dropped_eval_overlap: int = 0
    dropped_duplicate: int = 0
    dropped_unverified: int = 0
    kept: int = 0
    per_category: dict[str, int] = Field(default_factory=dict)

    def merge(self, other: Funnel) -> Funnel:
        per = dict(self.per_category)
        for k, v in other.per_category.items():
            per[k] = per.get(k, 0) + v
        return Funnel(
            drawn=self.drawn + other.drawn,
            dropped_eval_overlap=self.dropped_eval_overlap + other.dropped_eval_overlap,
            dropped_duplicate=self.dropped_duplicate + other.dropped_duplicate,
            dropped_unverified=self.dropped_unverified + other.dropped_unverified,
            kept=self.kept + other.kept,
            per_category=per,
        )


def find_task(suite: str, category: str) -> Task:
    """The generator task of ``category`` in a built-in ``suite``."""
    s = get_suite(suite)
    for t in s.tasks:
        if t.category == category:
            return t
    raise TaskError(f"Suite {suite!r} has no category {category!r}; see `selfimprove suites list`.")


def _draw(
    task: Task,
    n: int,
    seed_key: str,
    registry: NeverTrainRegistry,
    seen: set[str],
    funnel: Funnel,
) -> list[Sample]:
    """Draw up to ``n`` verified, unseen, non-evaluation items from ``task``'s generator."""
    if task.generator is None:
        raise TaskError(f"Task {task.name!r} has a fixed dataset; only generator tasks can vary.")
    rng = random.Random(f"{task.name}:{seed_key}")
    out: list[Sample] = []
    attempts = 0
    while len(out) < n and attempts < 50 * n:
        attempts += 1
        s = task.generator(rng, 0)
        funnel.drawn += 1
        if s in registry:
            funnel.dropped_eval_overlap += 1
            continue
        h = s.input_hash()
        if h in seen:
            funnel.dropped_duplicate += 1
            continue
        gold = task.reference(s)
        if task.validator is not None and not is_solved(task.score(gold, s), "correct"):
            funnel.dropped_unverified += 1  # the gold reference must pass its own validator
            continue
        seen.add(h)
        out.append(s.model_copy(update={"id": f"{task.name}/train-{seed_key}-{len(out)}"}))
    funnel.kept += len(out)
    funnel.per_category[task.category] = funnel.per_category.get(task.category, 0) + len(out)
    return out


def templated_variations(
    areas: Sequence[tuple[str, str]],
    n_total: int,
    *,
    seed_key: str,
    registry: NeverTrainRegistry,
    seen: set[str] | None = None,
) -> tuple[list[tuple[str, Task, Sample]], Funnel]:
    """``n_total`` items split evenly over the weak ``(suite, category)`` areas, as
    ``(suite, task, sample)`` triples."""
    funnel = Funnel()
    seen = set() if seen is None else seen
    out: list[tuple[str, Task, Sample]] = []
    for j, (suite, cat) in enumerate(areas):
        n = n_total // len(areas) + (1 if j < n_total % len(areas) else 0)
        task = find_task(suite, cat)
        out.extend((suite, task, s) for s in _draw(task, n, seed_key, registry, seen, funnel))
    return out, funnel


def random_control_samples(
    n_total: int,
    *,
    seed_key: str,
    registry: NeverTrainRegistry,
    seen: set[str] | None = None,
    suites: Sequence[str] | None = None,
) -> tuple[list[tuple[str, Task, Sample]], Funnel]:
    """The control arm: the same budget drawn uniformly across all skill categories."""
    tasks = [
        (s.name, t)
        for s in list_suites()
        if not s.sentinel and not s.curriculum and (suites is None or s.name in suites)
        for t in s.tasks
        if t.generator is not None
    ]
    rng = random.Random(f"control:{seed_key}")
    counts: dict[tuple[str, str], int] = {}
    for _ in range(n_total):
        su, t = rng.choice(tasks)
        counts[(su, t.name)] = counts.get((su, t.name), 0) + 1
    funnel = Funnel()
    seen = set() if seen is None else seen
    out: list[tuple[str, Task, Sample]] = []
    for su, t in tasks:
        if n := counts.get((su, t.name)):
            out.extend((su, t, s) for s in _draw(t, n, seed_key, registry, seen, funnel))
    random.Random(f"shuffle:{seed_key}").shuffle(out)
    return out, funnel
