"""Training-set assembly: items and model outputs -> :class:`TrainExample` rows -> a round.

The one home of the loop's data plumbing (curriculum stages and controller trials reuse it):

* rows from generator items (templated), from the base model's verified answers (replay),
  from the general-text anchors, and the preference pairs of critique revisions;
* the on-disk form of a row (``data_*.jsonl``: :data:`DATA_FIELDS`, in that order);
* a round's training schedule: which rows are "earlier" and how many passes each gets.

It draws nothing and runs no model: :mod:`selfimprove.synth.templated` and
:mod:`selfimprove.synth.self_generated` produce the items and replies.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from selfimprove.synth.self_generated import near_duplicate_key
from selfimprove.synth.worked import training_completion
from selfimprove.tasks.base import Sample, Task
from selfimprove.tasks.suites import anchor_passages
from selfimprove.train import TrainConfig, TrainExample

#: The fields of a row in ``data_*.jsonl`` and ``replay.jsonl``, in file order.
DATA_FIELDS = (
    "id",
    "suite",
    "category",
    "input_hash",
    "prompt",
    "completion",
    "source",
    "round",
    "generator",
)

Item = tuple[str, Task, Sample]


def sample_row(
    suite: str, sample: Sample, completion: str, source: str, rnd: int, *, row_id: str | None = None
) -> TrainExample:
    """The row that teaches ``completion`` for generator item ``sample`` of ``suite``."""
    return TrainExample(
        id=row_id or sample.id,
        suite=suite,
        category=sample.category,
        input_hash=sample.input_hash(),
        prompt=sample.input,
        completion=completion,
        source=source,
        round=rnd,
    )


def to_record(row: TrainExample) -> dict[str, Any]:
    """The row as written to a data file (:data:`DATA_FIELDS`)."""
    d = row.model_dump(mode="json")
    return {k: d[k] for k in DATA_FIELDS}


def from_records(records: Iterable[Mapping[str, Any]]) -> list[TrainExample]:
    return [TrainExample.model_validate(r) for r in records]


def prompt_text(row: TrainExample) -> str:
    """The row's prompt as text (the last turn of a chat prompt)."""
    return row.prompt if isinstance(row.prompt, str) else row.prompt[-1].content


def text_key(row: TrainExample) -> str:
    """Near-duplicate key of a row: normalized prompt + completion."""
    return near_duplicate_key(prompt_text(row) + " " + row.completion)


def templated_rows(items: Sequence[Item], rnd: int, *, worked: bool) -> list[TrainExample]:
    """Rows that teach the generator's reference (with a verified derivation if ``worked``)."""
    return [
        sample_row(su, s, training_completion(t, s, worked=worked), "templated", rnd)
        for su, t, s in items
    ]


def replay_rows(records: Sequence[Any], items: Sequence[Item], n: int) -> list[TrainExample]:
    """Up to ``n`` rows of the base model's own verified-correct answers on ``items``.

    ``records`` are the base model's evaluation records of ``items`` (in order); an answer
    becomes a row only when the validator marked it correct.
    """
    by_id = {(su, s.id): (su, s) for su, _t, s in items}
    rows: list[TrainExample] = []
    for r in records:
        if len(rows) >= n:
            break
        if not r.correct or not r.output or (r.suite, r.sample_id) not in by_id:
            continue
        su, s = by_id[(r.suite, r.sample_id)]
        rows.append(sample_row(su, s, r.output, "replay", 0, row_id=f"replay/{s.id}"))
    return rows


def anchor_rows(n: int) -> list[TrainExample]:
    """The first ``n`` general-text anchors (KL-to-base loss)."""
    return [
        TrainExample(prompt=p, completion=c, source="anchor", id=f"anchor/{i}", anchor=True)
        for i, (p, c) in enumerate(anchor_passages()[:n])
    ]


def preference_pairs(rows: Sequence[TrainExample], rnd: int) -> list[dict[str, Any]]:
    """``pairs_*.jsonl`` rows (prompt, chosen, rejected) of the rows that carry a rejected reply."""
    return [
        {
            "prompt": r.model_dump(mode="json")["prompt"],
            "chosen": r.completion,
            "rejected": r.rejected,
            "id": r.id,
            "round": rnd,
        }
        for r in rows
        if r.rejected is not None
    ]


def round_examples(
    rows: Sequence[TrainExample],
    replay: Sequence[TrainExample],
    n_anchor: int,
    *,
    replay_as_anchor: bool,
) -> list[TrainExample]:
    """A round's distinct training examples: its data rows, then replay, then text anchors."""
    return (
        list(rows)
        + [r.model_copy(update={"anchor": replay_as_anchor}) for r in replay]
        + anchor_rows(n_anchor)
    )


def earlier_flags(
    rows: Sequence[TrainExample], rnd: int, keep_rounds: set[int] | frozenset[int] = frozenset()
) -> list[bool]:
    """Which training rows count as "earlier" in round ``rnd`` (thinned by
    :func:`schedule_passes`): rows added before ``rnd``, except rows of ``keep_rounds`` (the
    arm's accepted rounds under ``keep_accepted_rows``), which train like this round's rows."""
    return [r.round < rnd and r.round not in keep_rounds for r in rows]


def schedule_passes(
    examples: list[TrainExample],
    earlier: list[bool],
    cfg: TrainConfig,
    earlier_passes: int | None,
    earlier_rows: int | None = None,
    *,
    seed_key: str = "",
) -> tuple[list[TrainExample], TrainConfig, int]:
    """The examples to train on, the config to train them with, and how many earlier rows.

    Rows not marked ``earlier`` get ``cfg.epochs`` passes. Rows marked ``earlier`` (from
    earlier rounds) get ``earlier_passes`` (``None`` = ``cfg.epochs``), and when there are more
    than ``earlier_rows`` of them only a random ``earlier_rows`` (seeded by ``seed_key``) are
    used. When that changes anything, every example is repeated by its pass count and the
    result is trained for one epoch (one shuffle over all copies, one learning-rate schedule);
    otherwise ``examples`` and ``cfg`` come back unchanged.
    """
    old = [i for i, e in enumerate(earlier) if e]
    keep = set(old)
    if earlier_rows is not None and len(old) > earlier_rows:
        keep = set(random.Random(f"earlier:{seed_key}").sample(old, earlier_rows))
    passes = cfg.epochs if earlier_passes is None else min(earlier_passes, cfg.epochs)
    if not old or (passes == cfg.epochs and len(keep) == len(old)):
        return examples, cfg, len(old)
    out: list[TrainExample] = []
    for i, (ex, is_old) in enumerate(zip(examples, earlier, strict=True)):
        out += [ex] * ((passes if i in keep else 0) if is_old else cfg.epochs)
    return out, cfg.model_copy(update={"epochs": 1}), len(keep)
