"""The selection / confirmation split of a loop run's evaluation items.

Why: the loop picks the categories a model is weakest in and then asks whether training made
it better there. If both questions are asked of the same items, categories chosen *because*
they scored low on items X score higher on X next time by regression to the mean alone —
with training that changes nothing (simulated in ``tests/test_loop_validity.py``) the target
test of the old loop was significant up to 20% of the time at a nominal 5%, with a spurious
gain of several points. So every skill category's fixed evaluation items are split once per
run, seeded, into two halves:

* **selection** — weak-area ranking (:func:`selfimprove.weakness.rank_weak_areas`),
  learnability (its gold-answer NLL) and retirement of stalled targets;
* **confirmation** — the gate's before/after records and every gain the run reports.

Sentinel suites are never ranked, so all their items are confirmation items. The split holds
across rounds and arms (it is written to ``split.json`` before the baseline and read back on
resume) and the report shows it. Both halves are in the never-train registry.

Runs started before the split existed have no ``split.json`` and resume with
:meth:`ItemSplit.legacy`, in which both halves are all items (the old, biased behaviour; the
report says so).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from selfimprove.evaluate import Item

Key = tuple[str, str]  # (suite, sample_id)
R = TypeVar("R")

SPLIT_FILE = "split.json"


def _key(r: Any) -> Key:
    if isinstance(r, dict):
        return (str(r["suite"]), str(r["sample_id"]))
    if isinstance(r, tuple):  # an Item: (suite name, task, sample)
        return (r[0], r[2].id)
    return (r.suite, r.sample_id)


@dataclass(frozen=True)
class ItemSplit:
    """Which evaluation items choose targets (selection) and which judge them (confirmation)."""

    selection: frozenset[Key]
    confirmation: frozenset[Key]
    legacy: bool = False

    @classmethod
    def legacy_split(cls, items: Iterable[Any]) -> ItemSplit:
        """Both halves are all items: runs from before the split (biased; kept for resume)."""
        keys = frozenset(_key(it) for it in items)
        return cls(selection=keys, confirmation=keys, legacy=True)

    def select(self, rows: Iterable[R]) -> list[R]:
        """The rows (records or items) of the selection half."""
        return [r for r in rows if _key(r) in self.selection]

    def confirm(self, rows: Iterable[R]) -> list[R]:
        """The rows (records or items) of the confirmation half."""
        return [r for r in rows if _key(r) in self.confirmation]

    def describe(self) -> str:
        if self.legacy:
            return (
                "no selection/confirmation split (run started before it existed): targets "
                "were chosen and judged on the same items, so its gains are biased upward"
            )
        return (
            f"{len(self.selection)} selection items (choose targets) / "
            f"{len(self.confirmation)} confirmation items (gate and reported gains), disjoint"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "selection": sorted(list(k) for k in self.selection),
                "confirmation": sorted(list(k) for k in self.confirmation),
            },
            indent=0,
        )

    @classmethod
    def from_json(cls, text: str) -> ItemSplit:
        d = json.loads(text)
        return cls(
            selection=frozenset((str(s), str(i)) for s, i in d["selection"]),
            confirmation=frozenset((str(s), str(i)) for s, i in d["confirmation"]),
        )


def split_items(
    items: Sequence[Item],
    seed: int,
    *,
    sentinel_suites: Sequence[str],
    selection_fraction: float = 0.5,
) -> ItemSplit:
    """Split every skill category's items into selection and confirmation, seeded.

    Within each (suite, category) the items are ordered by ``sha256(seed, suite, sample_id)``
    and the first ``round(n · selection_fraction)`` (at least 1, at most n − 1 when n ≥ 2)
    go to selection; the order depends only on the items themselves, so the split is the
    same whatever order the plan lists them in. Sentinel items all go to confirmation.
    """
    sentinels = set(sentinel_suites)
    groups: dict[Key, list[Key]] = defaultdict(list)
    confirmation: set[Key] = set()
    for suite, _task, sample in items:
        k = (suite, sample.id)
        if suite in sentinels:
            confirmation.add(k)
        else:
            groups[(suite, sample.category)].append(k)
    selection: set[Key] = set()
    for keys in groups.values():
        keys.sort(key=lambda k: hashlib.sha256(f"{seed}\0{k[0]}\0{k[1]}".encode()).hexdigest())
        n = len(keys)
        m = min(max(round(n * selection_fraction), 1), n - 1) if n >= 2 else 0
        selection.update(keys[:m])
        confirmation.update(keys[m:])
    return ItemSplit(selection=frozenset(selection), confirmation=frozenset(confirmation))


def load_or_make_split(
    run_dir: Path,
    items: Sequence[Item],
    seed: int,
    *,
    sentinel_suites: Sequence[str],
    selection_fraction: float,
    started: bool,
) -> ItemSplit:
    """The run's split: read from ``split.json``, or made and written now.

    ``started``: the run already finished its baseline without a split file (a run from
    before the split existed) — it keeps judging on all items (:meth:`ItemSplit.legacy_split`).
    """
    from selfimprove.errors import StoreError
    from selfimprove.store import atomic_write_text

    path = run_dir / SPLIT_FILE
    if path.is_file():
        try:
            return ItemSplit.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{path} is unreadable ({e}); it records which items chose the targets. "
                "Restore it from a backup, or start a new run (its rounds cannot be judged "
                "without it)."
            ) from None
    if started:
        return ItemSplit.legacy_split(items)
    split = split_items(
        items, seed, sentinel_suites=sentinel_suites, selection_fraction=selection_fraction
    )
    atomic_write_text(path, split.to_json())
    return split
