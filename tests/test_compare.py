"""`runs compare`: paired comparison of eval runs (planted differences, nulls, bad input)."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, run_cli
from selfimprove.compare import compare_pair
from selfimprove.errors import StoreError


def _rows(solved: list[bool], suite: str = "s", salt: str = "") -> list[dict]:
    return [
        {
            "suite": suite,
            "sample_id": f"{suite}-{i}",
            "input_hash": f"h{i}{salt}",
            "mode": "generate",
            "correct": ok,
            "format_ok": ok,
            "finish_reason": "stop",
        }
        for i, ok in enumerate(solved)
    ]


def test_planted_gain_is_found_and_its_null_is_not():
    a = _rows([False] * 30 + [True] * 10)
    b = _rows([True] * 20 + [False] * 10 + [True] * 10)  # 20 wrong->right, 0 right->wrong
    c = compare_pair("A", a, "B", b)
    [row] = c.suites
    assert (row.n, row.b_wins, row.a_wins) == (40, 20, 0)
    assert row.delta == pytest.approx(0.5)
    assert row.delta_ci[0] > 0.3 and row.p_value < 1e-5
    assert c.overall is None  # one suite: no pooled row
    null = compare_pair("A", a, "A2", _rows([False] * 30 + [True] * 10))
    assert null.suites[0].p_value == 1.0 and null.suites[0].delta == 0.0


def test_holm_over_suites_and_pooled_row():
    a = _rows([False] * 20, "x") + _rows([False] * 20, "y")
    b = _rows([True] * 10 + [False] * 10, "x") + _rows([True] * 2 + [False] * 18, "y")
    c = compare_pair("A", a, "B", b)
    x, y = c.suites
    assert x.p_holm == pytest.approx(min(1.0, 2 * min(x.p_value, y.p_value)))
    assert y.p_holm >= y.p_value
    assert c.overall is not None and c.overall.n == 40 and c.overall.b_wins == 12


def test_unpaired_runs_are_refused():
    with pytest.raises(StoreError, match="different inputs"):
        compare_pair("A", _rows([True] * 3), "B", _rows([True] * 3, salt="x"))
    with pytest.raises(StoreError, match="share no scored item"):
        compare_pair("A", _rows([True] * 3, "s"), "B", _rows([True] * 3, "t"))


def test_cli_compares_two_tiny_eval_runs(tmp_path):
    store = tmp_path / "s"
    base = ["eval", "-m", "tiny-llama", "-s", "arithmetic,logic", "-n", "6",
            "--max-new-tokens", "4", "--store", store]  # fmt: skip
    for fmt in ("chat", "cue"):
        res = run_cli(*base, "--prompt-format", fmt, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
    ids = sorted(p.name for p in (store / "runs").iterdir())
    res = run_cli("runs", "compare", *ids, "--store", store, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert [r["prompt_format"] for r in out["runs"]] == ["chat", "cue"]
    [cmp] = out["comparisons"]
    assert {s["suite"] for s in cmp["suites"]} == {"arithmetic", "logic"}
    assert sum(s["n"] for s in cmp["suites"]) == 12 == cmp["overall"]["n"]
    table = run_cli("runs", "compare", *ids, "--store", store, cwd=tmp_path)
    assert table.returncode == 0 and "McNemar" in table.stdout
    assert_clean_error(
        run_cli("runs", "compare", ids[0], "--store", store, cwd=tmp_path), "at least two", code=2
    )
    assert_clean_error(
        run_cli("runs", "compare", *ids, "--metric", "fuzzy", "--store", store, cwd=tmp_path),
        "correct or strict",
        code=2,
    )
