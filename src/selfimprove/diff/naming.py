"""Naming flagged regions: contrasting output pairs and a short, validated label.

* **Contrasting pairs**: the prompts where the two models' outputs differ most on the
  region's strongest statistic (e.g. B refuses and A does not; the largest length gap; the
  largest cross-model divergence).
* **Label**: distinctive n-grams (unigrams and bigrams) of B's outputs versus A's, scored by
  the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008):
  ``δ_w = log((y_Bw+a_w)/(n_B+a_0−y_Bw−a_w)) − log((y_Aw+a_w)/(n_A+a_0−y_Aw−a_w))``,
  ``z_w = δ_w / sqrt(1/(y_Bw+a_w) + 1/(y_Aw+a_w))`` with the prior ``a_w`` proportional to
  the pooled counts. The label names each statistic that changed in counts ("B refuses
  10/12 vs A 0/12 (p=0.002)", behavioral statistics before the divergence) plus the top
  terms each way.
* **Validation**: the terms are derived from half of the region's pairs and checked on the
  other half: a pair is classified right when the term score
  (``#B-terms − #A-terms`` present) is higher for B's output than for A's. A one-sided exact
  binomial test against chance (ties excluded) says whether the label tells the models'
  outputs apart.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from scipy import stats

from selfimprove.diff.regions import PromptItem
from selfimprove.diff.stats import StatTest
from selfimprove.tasks.validators import is_refusal

_WORD_RE = re.compile(r"[a-z0-9']+")


class ExamplePair(BaseModel):
    """One prompt with both models' sampled outputs."""

    prompt: str
    a_output: str
    b_output: str
    note: str = ""


class RegionLabel(BaseModel):
    """A short description of what changed, with its held-out check."""

    text: str
    b_terms: list[str] = Field(default_factory=list)
    a_terms: list[str] = Field(default_factory=list)
    heldout_n: int = 0
    heldout_accuracy: float | None = None
    heldout_p: float | None = None
    validated: bool = False


def _terms(text: str) -> list[str]:
    toks = _WORD_RE.findall(text.lower())
    return toks + [f"{a} {b}" for a, b in itertools.pairwise(toks)]


def log_odds_terms(
    b_texts: Sequence[str],
    a_texts: Sequence[str],
    *,
    top: int = 3,
    z_min: float = 1.96,
    prior: float = 10.0,
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Terms over-represented in B's texts and in A's texts: ``[(term, z), ...]`` each way.

    Counts are document frequencies (a term counts once per output), so one long rambling
    output cannot dominate.
    """
    cb: Counter[str] = Counter()
    ca: Counter[str] = Counter()
    for t in b_texts:
        cb.update(set(_terms(t)))
    for t in a_texts:
        ca.update(set(_terms(t)))
    pooled = cb + ca
    total = sum(pooled.values())
    if total == 0:
        return [], []
    nb, na = sum(cb.values()), sum(ca.values())
    a0 = prior * len(pooled)
    scored = []
    for w, c in pooled.items():
        aw = a0 * c / total
        yb, ya = cb[w], ca[w]
        if nb + a0 - yb - aw <= 0 or na + a0 - ya - aw <= 0:
            continue
        delta = math.log((yb + aw) / (nb + a0 - yb - aw)) - math.log(
            (ya + aw) / (na + a0 - ya - aw)
        )
        z = delta / math.sqrt(1 / (yb + aw) + 1 / (ya + aw))
        scored.append((w, z))
    scored.sort(key=lambda x: -x[1])
    b_side = [(w, z) for w, z in scored if z >= z_min][:top]
    a_side = [(w, -z) for w, z in reversed(scored) if -z >= z_min][:top]
    return b_side, a_side


def _score(text: str, b_terms: Sequence[str], a_terms: Sequence[str]) -> int:
    present = set(_terms(text))
    return sum(t in present for t in b_terms) - sum(t in present for t in a_terms)


def validate_terms(
    b_texts: Sequence[str], a_texts: Sequence[str], b_terms: Sequence[str], a_terms: Sequence[str]
) -> tuple[int, float | None, float | None]:
    """Held-out check: (pairs, accuracy with ties as ½, one-sided binomial p vs chance)."""
    right = wrong = ties = 0
    for tb, ta in zip(b_texts, a_texts, strict=True):
        sb, sa = _score(tb, b_terms, a_terms), _score(ta, b_terms, a_terms)
        if sb > sa:
            right += 1
        elif sb < sa:
            wrong += 1
        else:
            ties += 1
    n = right + wrong + ties
    if n == 0:
        return 0, None, None
    acc = (right + 0.5 * ties) / n
    p = (
        float(stats.binomtest(right, right + wrong, 0.5, alternative="greater").pvalue)
        if right + wrong
        else 1.0
    )
    return n, acc, p


_BINARY_PHRASE = {
    "refusal": "refuses",
    "accuracy": "is correct",
    "format": "follows the format",
}


def describe_test(test: StatTest | None, *, with_p: bool = True) -> str:
    """What one statistic says, in counts a person can check: "B refuses 10/12 vs A 0/12".

    Binary statistics give counts out of the paired prompts tested, length the mean token
    counts, ``logprob`` the mean per-token divergence; ``with_p`` appends the test's p-value.
    """
    if test is None or test.n == 0:
        return "changed"
    if test.stat in _BINARY_PHRASE:
        kb, ka = round(test.b_value * test.n), round(test.a_value * test.n)
        text = f"B {_BINARY_PHRASE[test.stat]} {kb}/{test.n} vs A {ka}/{test.n}"
    elif test.stat == "length":
        text = f"B {test.b_value:.0f} vs A {test.a_value:.0f} tokens on average"
    elif test.stat == "logprob":
        text = f"outputs diverge {test.effect:.2f} nats/token"
    else:
        text = f"{test.stat} {test.a_value:.3g} → {test.b_value:.3g}"
    return f"{text} (p={test.p_value:.2g})" if with_p else text


def headline_tests(tests: Sequence[StatTest], level: float) -> list[StatTest]:
    """The statistics that changed in a flagged region, the most readable first.

    A statistic counts when its own Bonferroni-adjusted p-value (``p × m`` over the region's
    ``m`` tested statistics, the rule the region's p-value uses) is ≤ ``level``. Behavioral
    statistics (refusal, accuracy, format, length) come before the cross-model divergence,
    which says only *that* outputs moved; ties go to the smaller p-value. When none passes on
    its own (possible under online FDR levels), the smallest p-value is returned.
    """
    tested = [t for t in tests if t.n > 0]
    if not tested:
        return []
    m = len(tested)
    fired = [t for t in tested if t.p_value * m <= level]
    if not fired:
        fired = [min(tested, key=lambda t: (t.p_value, -abs(t.effect)))]
    return sorted(fired, key=lambda t: (t.stat == "logprob", t.p_value, -abs(t.effect)))


def label_region(
    a_texts: Sequence[str],
    b_texts: Sequence[str],
    changed: Sequence[StatTest],
    *,
    top: int = 3,
) -> RegionLabel:
    """Label from the statistics that changed (see :func:`headline_tests`) plus distinctive
    terms (derived on even pairs, validated on odd pairs)."""
    derive_b, derive_a = list(b_texts[0::2]), list(a_texts[0::2])
    hold_b, hold_a = list(b_texts[1::2]), list(a_texts[1::2])
    b_side, a_side = log_odds_terms(derive_b, derive_a, top=top)
    b_terms, a_terms = [w for w, _ in b_side], [w for w, _ in a_side]
    n, acc, p = (
        validate_terms(hold_b, hold_a, b_terms, a_terms)
        if (b_terms or a_terms)
        else (0, None, None)
    )
    text = "; ".join(describe_test(t) for t in changed) or "changed"
    if b_terms:
        text += "; B says " + ", ".join(f"'{w}'" for w in b_terms)
    if a_terms:
        text += "; A says " + ", ".join(f"'{w}'" for w in a_terms)
    return RegionLabel(
        text=text,
        b_terms=b_terms,
        a_terms=a_terms,
        heldout_n=n,
        heldout_accuracy=acc,
        heldout_p=p,
        validated=p is not None and p < 0.05,
    )


def _prompt_text(item: PromptItem) -> str:
    return item.sample.input_text()


def contrast_examples(
    items: Sequence[PromptItem],
    out_a: Sequence[Any],
    out_b: Sequence[Any],
    divergence: Sequence[float],
    stat: str,
    n: int,
) -> list[ExamplePair]:
    """The ``n`` prompts whose outputs differ most on ``stat``."""
    if n <= 0 or not items:
        return []

    def gap(i: int) -> float:
        a, b = out_a[i], out_b[i]
        it = items[i]
        if stat == "refusal":
            return float(is_refusal(b.text) != is_refusal(a.text))
        if stat in ("accuracy", "format") and it.task is not None:
            sa, sb = it.task.score(a.text, it.sample), it.task.score(b.text, it.sample)
            key = "correct" if stat == "accuracy" else "format_ok"
            return float(getattr(sa, key) != getattr(sb, key))
        if stat == "length":
            return abs(b.n_tokens - a.n_tokens)
        return divergence[i] if i < len(divergence) else 0.0

    order = sorted(range(len(items)), key=lambda i: -gap(i))[:n]
    return [
        ExamplePair(
            prompt=_prompt_text(items[i]),
            a_output=out_a[i].text,
            b_output=out_b[i].text,
            note=f"{stat} gap {gap(i):.3g}",
        )
        for i in order
    ]
