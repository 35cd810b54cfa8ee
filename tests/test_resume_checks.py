"""A resume must continue the same experiment (issue 19, item 4): the run's own config (flags
that would change it are refused, not dropped), the same items (input hashes) and the same
model weights; another code version is reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest

from selfimprove.errors import ConfigError
from selfimprove.evaluate import ProgressHook, check_resumed_model
from selfimprove.models import LoadedModel


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-c", "from selfimprove.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args",
    [["run", "--resume", "x", "--rounds", "5"], ["eval", "--resume", "x", "--n", "3"]],
    ids=["run", "eval"],
)
def test_flags_that_would_change_a_resumed_run_are_refused(args, tmp_path):
    out = _cli([*args, "--store", str(tmp_path / "s")], tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    assert "would be ignored" in err and ("--rounds" in err or "--n" in err), err
    assert "Traceback" not in out.stderr


def test_a_resumed_eval_whose_task_file_changed_is_refused(tmp_path):
    rows = [
        {"id": f"t/{i}", "input": f"What is {i} plus 1?", "target": str(i + 1), "metadata": {}}
        for i in range(4)
    ]
    task = tmp_path / "mine.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "s"
    base = ["eval", "-m", "tiny-llama", "--suites", str(task), "--store", str(store)]
    first = _cli([*base, "--max-new-tokens", "4"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_id,) = [p.name for p in (store / "runs").iterdir()]
    with sqlite3.connect(store / "registry.sqlite") as conn:  # as if it had been killed
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", (run_id,))
    conn.close()
    rows[2]["input"] = "What is 2 plus 2?"  # same id, another question
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _cli(["eval", "--resume", run_id, "--store", str(store)], tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    assert "no longer match" in err and "mine/t/2" in err and "start a new run" in err, err
    assert "Traceback" not in out.stderr


def test_resuming_with_other_weights_is_refused_and_other_code_reported():
    prev = SimpleNamespace(
        id="r1",
        model="embedded",
        provenance={"model_hash": "aaaa", "packages": {"selfimprove": "0.0.1"}, "git": {}},
    )

    def model(h, legacy=()):
        return LoadedModel(None, None, "embedded", "gguf:x", h, legacy)

    with pytest.raises(ConfigError, match="started with model weights aaaa"):
        check_resumed_model(prev, model("bbbb"), ProgressHook())
    with pytest.raises(ConfigError, match="started with model weights aaaa"):
        check_resumed_model(prev, model("bbbb", ("cccc",)), ProgressHook())
    said = []
    hook = ProgressHook()
    hook.phase = said.append  # type: ignore[method-assign]
    check_resumed_model(prev, model("aaaa"), hook)
    assert said and "was started by selfimprove 0.0.1" in said[0]
    # a run recorded under the older fingerprint of the same files resumes
    check_resumed_model(prev, model("dddd", ("aaaa",)), hook)
