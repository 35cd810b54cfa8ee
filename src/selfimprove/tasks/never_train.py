"""The never-train registry: hashes of evaluation inputs that no training set may contain.

Evaluation items (imported benchmarks, sentinel suites) are registered once; every training
set is checked against the registry before training and :class:`NeverTrainViolation` is
raised on any overlap. Each item is registered under two keys so that cosmetic variants
still collide:

1. ``Sample.input_hash()``: the whole input (all chat turns with roles), whitespace- and
   case-normalised;
2. the *question key*: the text of the last user turn (or the plain-text input) with the
   ``Answer:`` instruction removed, whitespace/case-normalised and trailing ``.?!`` dropped.
   This catches the same question with another system prompt, without the answer
   instruction, or passed as a raw string.

The target never enters a key. The registry is exact-match on normalised text, not a
near-duplicate detector (paraphrases are not caught).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from selfimprove.errors import DataError, NeverTrainViolation
from selfimprove.tasks.base import ANSWER_INSTRUCTION, Sample, hash_text

__all__ = ["NeverTrainRegistry", "registry_keys"]

_MAX_LISTED = 10


def _question_text(item: Sample | str) -> str:
    if isinstance(item, str):
        text = item
    else:
        users = [m.content for m in item.messages() if m.role == "user"]
        text = users[-1] if users else item.input_text()
    text = text.replace(ANSWER_INSTRUCTION, " ")
    return " ".join(text.split()).rstrip(" .?!")


def registry_keys(item: Sample | str) -> tuple[str, str]:
    """The two registry keys of a sample or raw text: ``(input_hash, question_hash)``."""
    full = item.input_hash() if isinstance(item, Sample) else hash_text(item)
    return full, hash_text(_question_text(item))


class NeverTrainRegistry:
    """A set of evaluation-input hashes, each mapped to the source it was registered from."""

    def __init__(self) -> None:
        self._sources: dict[str, str] = {}

    def add(self, samples: Iterable[Sample | str], source: str) -> int:
        """Register evaluation items under ``source`` (e.g. a suite name or file path).

        Returns:
            The number of items given.
        """
        n = 0
        for item in samples:
            for key in registry_keys(item):
                self._sources.setdefault(key, source)
            n += 1
        return n

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, Sample | str):
            return False
        return any(key in self._sources for key in registry_keys(item))

    def __len__(self) -> int:
        """Number of stored hashes (two per distinct item, fewer when keys coincide)."""
        return len(self._sources)

    def source_of(self, item: Sample | str) -> str | None:
        """The source an overlapping item was registered from, else ``None``."""
        for key in registry_keys(item):
            if key in self._sources:
                return self._sources[key]
        return None

    def overlaps(self, items: Iterable[Sample | str]) -> list[tuple[str, str]]:
        """``(id, source)`` for every item found in the registry (raw texts: ``text[i]``)."""
        hits = []
        for i, item in enumerate(items):
            source = self.source_of(item)
            if source is not None:
                hits.append((item.id if isinstance(item, Sample) else f"text[{i}]", source))
        return hits

    def check(self, samples_or_texts: Iterable[Sample | str]) -> None:
        """Raise if any training item is a registered evaluation item.

        Raises:
            NeverTrainViolation: Names how many items overlap, which (up to 10 ids), and
                their sources.
        """
        items = list(samples_or_texts)
        hits = self.overlaps(items)
        if not hits:
            return
        listed = ", ".join(f"{item_id} (from {source})" for item_id, source in hits[:_MAX_LISTED])
        more = f" and {len(hits) - _MAX_LISTED} more" if len(hits) > _MAX_LISTED else ""
        raise NeverTrainViolation(
            f"{len(hits)} of {len(items)} training items are evaluation items: {listed}{more}. "
            "Evaluation items must never be trained on; remove them from the training set "
            "(or generate training data with a different seed or source)."
        )

    def save(self, path: str | Path) -> None:
        """Write ``{hash: source}`` as JSON, atomically (a killed writer leaves the old file)."""
        from selfimprove.store import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self._sources, indent=0, sort_keys=True))

    @classmethod
    def register(
        cls, path: str | Path, batches: Iterable[tuple[Iterable[Sample | str], str]]
    ) -> NeverTrainRegistry:
        """Add ``(samples, source)`` batches to the registry file and return the merged registry.

        Read, merge and write happen under an exclusive lock on ``<path>.lock`` (``flock``),
        so runs that share a store and register at the same time never drop each other's
        entries (a plain load -> add -> save lost all of one writer's items).
        """
        import fcntl

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            registry = cls.load(path) if path.is_file() else cls()
            for samples, source in batches:
                registry.add(samples, source=source)
            registry.save(path)
        return registry

    @classmethod
    def load(cls, path: str | Path) -> NeverTrainRegistry:
        """Read a registry written by :meth:`save`.

        Raises:
            DataError: The file is missing, not JSON, or not a ``{hash: source}`` object.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: never-train registry not found; check the path")
        try:
            data = json.loads(path.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(
                f"{path}: never-train registry is not valid JSON ({err}); rebuild it from the "
                "evaluation suites"
            ) from err
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and len(k) == 64 and isinstance(v, str) for k, v in data.items()
        ):
            raise DataError(
                f"{path}: expected a JSON object mapping SHA-256 hex hashes to source names; "
                "rebuild the registry from the evaluation suites"
            )
        registry = cls()
        registry._sources.update(data)
        return registry
