"""Paired comparison of evaluation runs on the same items.

What it does:
  * ``compare_runs(store, [A, B, ...])``: A is the reference; for every other run, per suite,
    the items both runs scored (matched by ``(suite, sample_id)`` and required to have the
    same ``input_hash``, so a changed generator or data file is an error, not a silent
    mismatch) are compared with an exact McNemar test and a Newcombe paired interval for
    the difference in accuracy; Holm adjusts the per-suite p-values within each comparison;
    an "all" row pools the suites' items. Also per run: the share of replies that ended
    before the length cap (a base model that never stops is visible here).
  * The use it was made for: a base model under three prompt formats (plain, cue, urial) —
    which in-context baseline is best, and is the difference real?

Null and test: per suite, H0 P(A right, B wrong) = P(A wrong, B right) (two-sided exact
binomial on the discordant pairs). The items are the runs' own: when the runs chose the
format or model *after* looking at these items, confirm on fresh items (another ``--seed``).

What it does not do: run models (``selfimprove eval`` makes the runs).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from selfimprove.errors import StoreError
from selfimprove.evaluate import Metric, is_solved
from selfimprove.stats import holm, mcnemar_exact
from selfimprove.store import RunStore


class SuiteComparison(BaseModel):
    suite: str
    n: int
    acc_a: float
    acc_b: float
    delta: float
    delta_ci: tuple[float, float]
    b_wins: int  # A wrong, B right
    a_wins: int  # A right, B wrong
    p_value: float
    p_holm: float | None = None  # None for the pooled row


class RunComparison(BaseModel):
    reference: str
    other: str
    metric: str
    suites: list[SuiteComparison]
    overall: SuiteComparison | None


class RunInfo(BaseModel):
    id: str
    model: str
    prompt_format: str
    n_records: int
    ended_rate: float | None  # generate-mode replies that ended before the length cap


class Comparison(BaseModel):
    runs: list[RunInfo]
    comparisons: list[RunComparison]


def _records(store: RunStore, run_id: str) -> tuple[Any, list[dict[str, Any]]]:
    r = store.get_run(run_id)
    if r.kind != "eval":
        raise StoreError(
            f"Run {r.id} is a {r.kind} run; `runs compare` compares evaluation runs "
            "(`selfimprove eval`).\nFix: pass the ids of eval runs."
        )
    path = Path(r.path) / "records.jsonl"
    if not path.is_file():
        raise StoreError(
            f"Run {r.id} has no records.jsonl ({path}).\nFix: finish it with "
            f"`selfimprove eval --resume {r.id}`, or pass another run."
        )
    rows = []
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise StoreError(f"{path}:{i} is not valid JSON ({e}).") from e
    return r, rows


def _info(run: Any, rows: list[dict[str, Any]]) -> RunInfo:
    gen = [x for x in rows if x.get("mode") == "generate" and x.get("finish_reason")]
    fmt = ((run.config or {}).get("model") or {}).get("prompt_format", "auto")
    return RunInfo(
        id=run.id,
        model=run.model or "?",
        prompt_format=fmt,
        n_records=len(rows),
        ended_rate=sum(x["finish_reason"] != "length" for x in gen) / len(gen) if gen else None,
    )


def _suite_row(suite: str, pairs: list[tuple[bool, bool]]) -> SuiteComparison:
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    t = mcnemar_exact(a, b)
    return SuiteComparison(
        suite=suite,
        n=t.n,
        acc_a=t.before_rate,
        acc_b=t.after_rate,
        delta=t.delta,
        delta_ci=t.delta_ci,
        b_wins=t.c,
        a_wins=t.b,
        p_value=t.p_two_sided,
    )


def compare_pair(
    ref_id: str,
    ref_rows: list[dict[str, Any]],
    other_id: str,
    rows: list[dict[str, Any]],
    metric: Metric = "correct",
) -> RunComparison:
    """Paired per-suite comparison of two runs' records (scored items only)."""
    ref = {(x["suite"], x["sample_id"]): x for x in ref_rows if x.get("correct") is not None}
    by_suite: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for x in rows:
        key = (x["suite"], x["sample_id"])
        if x.get("correct") is None or key not in ref:
            continue
        if ref[key]["input_hash"] != x["input_hash"]:
            raise StoreError(
                f"Item {key[0]}/{key[1]} has different inputs in runs {ref_id} and {other_id} "
                "(a changed generator or task file), so the runs are not paired.\nFix: "
                "compare runs made with the same suites, --n and --seed on the same code."
            )
        by_suite[key[0]].append((is_solved(ref[key], metric), is_solved(x, metric)))
    if not by_suite:
        raise StoreError(
            f"Runs {ref_id} and {other_id} share no scored item.\nFix: evaluate both with the "
            "same --suites, --n and --seed."
        )
    suites = [_suite_row(s, pairs) for s, pairs in sorted(by_suite.items())]
    for row, p in zip(suites, holm([r.p_value for r in suites]), strict=True):
        row.p_holm = p
    pooled = [p for s in sorted(by_suite) for p in by_suite[s]]
    overall = _suite_row("all", pooled) if len(suites) > 1 else None
    return RunComparison(
        reference=ref_id, other=other_id, metric=metric, suites=suites, overall=overall
    )


def compare_runs(store: RunStore, run_ids: list[str], metric: Metric = "correct") -> Comparison:
    """Compare eval runs ``run_ids[1:]`` against ``run_ids[0]`` (see the module doc)."""
    if len(run_ids) < 2:
        raise StoreError("`runs compare` needs at least two eval runs: a reference and another.")
    loaded = [_records(store, i) for i in run_ids]
    (ref_run, ref_rows), rest = loaded[0], loaded[1:]
    return Comparison(
        runs=[_info(r, rows) for r, rows in loaded],
        comparisons=[compare_pair(ref_run.id, ref_rows, r.id, rows, metric) for r, rows in rest],
    )
