"""Evaluation on tiny models: modes, aggregation with CIs, determinism, interrupt + resume."""

from __future__ import annotations

import math
import random

import pytest

from selfimprove.config import load_config
from selfimprove.evaluate import (
    EvalRecord,
    ProgressHook,
    aggregate,
    evaluate_task,
    is_solved,
    run_evaluation,
    wilson_ci,
)
from selfimprove.store import RunStore
from selfimprove.tasks.base import Sample, Score, Task


def _echo_validator(output: str, sample: Sample) -> Score:
    return Score(
        correct=sample.target in output, format_ok=output.startswith("Answer:"), extracted=output
    )


def _gen(rng: random.Random, i: int) -> Sample:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return Sample(
        id=f"add/{i}",
        input=f"What is {a} plus {b}?",
        target=str(a + b),
        metadata={"category": "add"},
    )


TASK = Task(name="add", category="add", validator=_echo_validator, generator=_gen)


def test_generate_mode_records_are_complete_and_deterministic(tiny_llama):
    samples = TASK.samples(6, seed=1)
    a = evaluate_task(tiny_llama, "toy", TASK, samples, max_new_tokens=8, batch_size=4)
    b = evaluate_task(tiny_llama, "toy", TASK, samples, max_new_tokens=8, batch_size=2)
    floats = {"ref_nll", "entropy", "margin"}
    for ra, rb in zip(a, b, strict=True):
        da, db = ra.model_dump(), rb.model_dump()
        assert {k: v for k, v in da.items() if k not in floats} == {
            k: v for k, v in db.items() if k not in floats
        }
        for k in floats:  # batch composition changes float summation order only
            assert da[k] == pytest.approx(db[k], rel=1e-4, abs=1e-6)
    for r, s in zip(a, samples, strict=True):
        assert r.sample_id == s.id and r.input_hash == s.input_hash()
        assert r.output is not None and r.correct is not None and r.format_ok is not None
        assert r.ref_nll is not None and math.isfinite(r.ref_nll) and r.ref_nll > 0
        assert r.ref_tokens and r.entropy is not None


def test_a_task_cap_shortens_only_its_own_items(tiny_llama):
    import dataclasses

    from selfimprove.evaluate import evaluate_items
    from selfimprove.tasks import get_suite
    from selfimprove.tasks.suites import REFUSAL_MAX_NEW_TOKENS

    short = dataclasses.replace(TASK, name="add_short", max_new_tokens=3)
    samples = TASK.samples(4, seed=2)
    items = [("toy", t, s) for t in (TASK, short) for s in samples]
    recs = evaluate_items(tiny_llama, items, max_new_tokens=10, batch_size=8)
    long_, capped = recs[:4], recs[4:]
    assert max(r.n_tokens or 0 for r in capped) <= 3
    assert max(r.n_tokens or 0 for r in long_) > 3  # the tiny model babbles to the run's cap
    for a, b in zip(long_, capped, strict=True):  # greedy: the capped reply is a prefix
        assert (a.output or "").startswith(b.output or "")
    assert all(t.max_new_tokens == REFUSAL_MAX_NEW_TOKENS for t in get_suite("refusal").tasks)


def test_choices_mode_picks_the_likeliest_choice(tiny_llama):
    s = Sample(id="c/0", input="Pick one.", target="apple", choices=["apple", "zebra crossing now"])
    task = Task(name="pick", category="pick", mode="choices", dataset=[s])
    (rec,) = evaluate_task(tiny_llama, "toy", task, [s])
    nll = tiny_llama.continuation_nll([s.messages()] * 2, s.choices)
    best = s.choices[0] if nll[0].logprob >= nll[1].logprob else s.choices[1]
    assert rec.output == best
    assert rec.correct == (best == "apple")


def test_nll_mode_matches_engine(tiny_llama):
    s = Sample(id="t/0", input="Continue the text:", target="The fox jumps.")
    task = Task(name="text", category="text", mode="nll", dataset=[s])
    (rec,) = evaluate_task(tiny_llama, "toy", task, [s])
    assert rec.correct is None
    assert rec.ref_nll == pytest.approx(
        tiny_llama.continuation_nll([s.messages()], [s.target])[0].mean
    )


def test_aggregate_counts_and_intervals():
    recs = [
        EvalRecord(
            suite="s",
            task="t",
            category="c",
            sample_id=str(i),
            input_hash="h",
            mode="generate",
            target="1",
            correct=i < 3,
            format_ok=i < 1,
            ref_nll=float(i),
        )
        for i in range(10)
    ]
    (m,) = aggregate(recs)
    assert m.n == 10 and m.accuracy == pytest.approx(0.3) and m.format_rate == pytest.approx(0.1)
    assert m.strict_accuracy == pytest.approx(0.1)
    assert m.accuracy_ci == pytest.approx(wilson_ci(3, 10))
    assert m.ref_nll == pytest.approx(4.5)
    assert m.ref_nll_ci[0] < 4.5 < m.ref_nll_ci[1]


@pytest.mark.parametrize(
    ("correct", "format_ok", "solved_correct", "solved_strict"),
    [
        (True, True, True, True),
        (True, False, True, False),
        (True, None, True, True),  # no format to check: counts on `correct` alone
        (False, True, False, False),
        (None, True, False, False),  # unscored is never solved
        (None, None, False, False),
    ],
)
def test_is_solved_on_records_dict_rows_and_scores(
    correct, format_ok, solved_correct, solved_strict
):
    rec = EvalRecord(
        suite="s",
        task="t",
        category="c",
        sample_id="0",
        input_hash="h",
        mode="generate",
        target="1",
        correct=correct,
        format_ok=format_ok,
    )
    row = rec.model_dump(mode="json")
    for r in (rec, row):
        assert is_solved(r, "correct") is solved_correct
        assert is_solved(r, "strict") is solved_strict
    if correct is not None and format_ok is not None:
        score = Score(correct=correct, format_ok=format_ok, extracted=None)
        assert (is_solved(score, "correct"), is_solved(score, "strict")) == (
            solved_correct,
            solved_strict,
        )
    with pytest.raises(ValueError, match="unknown metric"):
        is_solved(rec, "extracted")  # type: ignore[arg-type]


class _InterruptAfter(ProgressHook):
    def __init__(self, n: int) -> None:
        self.left = n

    def advance(self, n: int = 1) -> None:
        self.left -= n
        if self.left <= 0:
            raise KeyboardInterrupt


def test_interrupt_marks_run_and_resume_completes(tmp_path):
    cfg = load_config(
        None,
        {
            "model": {"name": "tiny-llama"},
            "eval": {"suites": ["arithmetic", "counting"], "n": 8},
            "generation": {"max_new_tokens": 4, "batch_size": 2},
            "runtime": {"dtype": "fp32", "threads": 2},
            "store": {"root": str(tmp_path)},
        },
    )
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(cfg, hook=_InterruptAfter(9))
    store = RunStore(tmp_path)
    (run,) = store.list_runs()
    assert run.status == "interrupted"
    partial = store.read_records(run.id, "records.jsonl")
    assert 0 < len(partial) < 16
    done = run_evaluation(cfg, resume=run.id)
    assert done.run_id == run.id
    recs = store.read_records(run.id, "records.jsonl")
    keys = [(r["suite"], r["sample_id"]) for r in recs]
    assert len(keys) == len(set(keys)) == 16
    assert store.get_run(run.id).status == "completed"
    # the resumed records equal a fresh uninterrupted run's
    fresh = run_evaluation(cfg)
    fresh_recs = store.read_records(fresh.run_id, "records.jsonl")
    key = lambda r: (r["suite"], r["sample_id"])  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k not in {"ref_nll", "entropy", "margin"}}  # noqa: E731
    assert [strip(r) for r in sorted(recs, key=key)] == [
        strip(r) for r in sorted(fresh_recs, key=key)
    ]
