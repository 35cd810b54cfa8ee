"""Bad task data is refused when the file is read, before any model loads (issue 19, item 5).

Each case goes through the installed entry point (``main()``) as a user would run it:
``selfimprove eval --suites <file>`` must exit with the data-error code, name the file and
sample and say what to fix, print no traceback, and not load the model (it is quick).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(i, **kw):
    row = {"id": f"t/{i}", "input": f"question {i}", "target": str(i), "metadata": {}}
    row.update(kw)
    return row


def _cli(args, cwd):
    t = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "from selfimprove.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    return out, time.time() - t


CASES = {
    "choices-without-choices": (
        [_row(0, metadata={"mode": "choices"})],
        "mode 'choices' needs a non-empty 'choices' list",
    ),
    "target-not-a-choice": (
        [_row(0, choices=["a", "b"], metadata={"mode": "choices"})],
        "is not one of its choices",
    ),
    "format-without-n": (
        [_row(0, target="one two", metadata={"validator": "format", "format": "n_words"})],
        "missing metadata key 'n'",
    ),
    "gold-fails-its-validator": (
        [
            _row(
                0,
                target="x",
                metadata={"validator": "format", "format": "n_words", "format_params": {"n": 3}},
            )
        ],
        "fails its own validator",
    ),
    "non-numeric-target": (
        [_row(0, target="banana", metadata={"validator": "numeric"})],
        "the gold answer 'banana' fails its own validator (numeric)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rows_are_a_data_error_before_the_model_loads(case, tmp_path):
    rows, message = CASES[case]
    f = _jsonl(tmp_path / "mine.jsonl", [_row(1), *rows])
    # tiny-llama: should a check miss, the test fails fast instead of evaluating a real model
    args = ["eval", "-m", "tiny-llama", "--suites", str(f), "--store", str(tmp_path / "s")]
    out, _secs = _cli(args, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    assert message in err and "mine.jsonl" in err and "t/0" in err, err
    assert "Traceback" not in out.stderr
    assert "Loading" not in out.stdout and not (tmp_path / "s" / "runs").exists()


def test_good_rows_of_every_kind_pass_the_check(tmp_path):
    from selfimprove.tasks.importers import load_suite_file

    f = _jsonl(
        tmp_path / "good.jsonl",
        [
            _row(0),
            _row(1, target="7", metadata={"validator": "numeric"}),
            _row(2, target="b", choices=["a", "b"], metadata={"mode": "choices"}),
            _row(
                3,
                target="one two",
                metadata={"validator": "format", "format": "n_words", "format_params": {"n": 2}},
            ),
        ],
    )
    suite = load_suite_file(f)
    assert sum(len(t.dataset) for t in suite.tasks) == 4


@pytest.mark.parametrize("clash", ["same-stem", "builtin-name", "skill-and-sentinel"])
def test_colliding_suite_names_are_refused_before_the_model_loads(clash, tmp_path):
    """Records are keyed by suite name: two sources with one name would share keys (resume
    skips items; the gate dies on "duplicate item" after a full round of training)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _jsonl(tmp_path / "a" / "mine.jsonl", [_row(0)])
    two = _jsonl(tmp_path / "b" / "mine.jsonl", [_row(1)])
    arith = _jsonl(tmp_path / "arithmetic.jsonl", [_row(0)])
    store = ["--store", str(tmp_path / "s"), "-m", "tiny-llama"]
    if clash == "same-stem":
        args, message = ["eval", "--suites", f"{one},{two}", *store], "both give a suite named"
    elif clash == "builtin-name":
        args, message = ["eval", "--suites", f"{arith}", *store], "is a built-in suite's"
    else:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "loop:\n  skill_suites: [arithmetic]\n  sentinel_suites: [arithmetic, general_nll]\n"
        )
        args, message = ["run", "--config", str(cfg), *store], "both skill and sentinel"
    out, _secs = _cli(args, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert "Loading" not in out.stdout
