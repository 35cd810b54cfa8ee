"""The CLI end to end in subprocesses: bad input gives one clear message and no traceback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "selfimprove.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _assert_clean_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, out


def test_missing_model_path(tmp_path):
    res = _run(
        "eval",
        "--model",
        str(tmp_path / "no_such_model"),
        "--store",
        str(tmp_path / "s"),
        cwd=tmp_path,
    )
    _assert_clean_error(res, "does not exist", "Fix:")


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "m").mkdir()
    res = _run("eval", "--model", str(tmp_path / "m"), cwd=tmp_path)
    _assert_clean_error(res, "no config.json")


def test_model_that_does_not_fit(tmp_path):
    m = tmp_path / "huge"
    m.mkdir()
    cfg = {
        "model_type": "llama",
        "hidden_size": 65536,
        "intermediate_size": 262144,
        "num_hidden_layers": 400,
        "num_attention_heads": 64,
        "vocab_size": 256000,
    }
    (m / "config.json").write_text(json.dumps(cfg))
    res = _run("eval", "--model", str(m), cwd=tmp_path)
    _assert_clean_error(res, "GiB", "smaller model")


def test_unknown_suite(tmp_path):
    res = _run("eval", "--model", "tiny-llama", "--suites", "arithmetik", cwd=tmp_path)
    _assert_clean_error(res, "arithmetik", "arithmetic")


def test_malformed_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("eval:\n  n: [1, 2\n  suites: x\n")
    res = _run("eval", "--config", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    _assert_clean_error(res, "Malformed YAML", "bad.yaml", "line")


def test_unknown_config_key_and_bad_value(tmp_path):
    (tmp_path / "c.yaml").write_text("eval:\n  n: -3\n  suitez: [arithmetic]\n")
    res = _run("eval", "--config", str(tmp_path / "c.yaml"), cwd=tmp_path)
    _assert_clean_error(res, "eval.suitez", "unknown key", "eval.n")


def test_missing_config_file(tmp_path):
    res = _run("eval", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    _assert_clean_error(res, "Config file not found")


def test_corrupt_jsonl_suite_row(tmp_path):
    f = tmp_path / "suite.jsonl"
    good = {"id": "a", "input": "What is 1+1?", "target": "2", "metadata": {"category": "x"}}
    f.write_text(json.dumps(good) + "\n{not json\n")
    res = _run("eval", "--model", "tiny-llama", "--suites", str(f), cwd=tmp_path)
    _assert_clean_error(res, "suite.jsonl", "line 2")


def test_unknown_run_id(tmp_path):
    res = _run("runs", "show", "12345", "--store", str(tmp_path / "s"), cwd=tmp_path)
    _assert_clean_error(res, "12345", "runs list")


def test_eval_list_show_round_trip(tmp_path):
    store = str(tmp_path / "s")
    res = _run(
        "eval",
        "--model",
        "tiny-llama",
        "--suites",
        "arithmetic,refusal",
        "-n",
        "4",
        "--max-new-tokens",
        "4",
        "--dtype",
        "fp32",
        "--store",
        store,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "add_1d" in res.stdout and "Run " in res.stdout
    listed = _run("runs", "list", "--store", store, cwd=tmp_path)
    assert listed.returncode == 0 and "completed" in listed.stdout
    run_id = next(p.name for p in (tmp_path / "s" / "runs").iterdir())
    shown = _run("runs", "show", run_id[:15], "--store", store, cwd=tmp_path)
    assert shown.returncode == 0 and run_id in shown.stdout and "add_1d" in shown.stdout
    md = _run("runs", "show", run_id, "--store", store, "--markdown", cwd=tmp_path)
    assert md.returncode == 0 and md.stdout.startswith("| suite | category | n |")
    assert "| arithmetic | add_1d |" in md.stdout
    recs = (tmp_path / "s" / "runs" / run_id / "records.jsonl").read_text().splitlines()
    assert len(recs) == 8
    assert (tmp_path / "s" / "never_train.json").is_file()


def test_ctrl_c_marks_run_interrupted_and_keeps_records(tmp_path):
    store = tmp_path / "s"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selfimprove.cli",
            "eval",
            "--model",
            "tiny-llama",
            "--suites",
            "all",
            "-n",
            "64",
            "--max-new-tokens",
            "24",
            "--batch-size",
            "4",
            "--dtype",
            "fp32",
            "--store",
            str(store),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 240
    runs_dir = store / "runs"
    # wait until at least one chunk of records is on disk, then press Ctrl-C
    while time.time() < deadline:
        files = list(runs_dir.glob("*/records.jsonl")) if runs_dir.exists() else []
        if files and files[0].stat().st_size > 0:
            break
        if proc.poll() is not None:
            pytest.fail("eval finished before it could be interrupted: " + proc.stderr.read())
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "resume" in err
    con = sqlite3.connect(store / "registry.sqlite")
    (status,) = con.execute("SELECT status FROM runs").fetchone()
    assert status == "interrupted"
    lines = files[0].read_text().splitlines()
    assert lines and all(json.loads(x)["sample_id"] for x in lines)


def test_runs_list_and_show_find_the_store_the_config_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runs list/show` resolve the store like every command: --store > store.root > default."""
    from typer.testing import CliRunner

    from selfimprove.cli import app
    from selfimprove.cli.app import console
    from selfimprove.store import RunStore

    with RunStore(tmp_path / "yaml_store").track(
        "eval", config={}, seed=0, model="m", provenance={}
    ) as run:
        pass
    (tmp_path / "selfimprove.yaml").write_text("store:\n  root: yaml_store\n")
    (tmp_path / "other.yaml").write_text("store:\n  root: other_store\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(console, "width", 200)
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list"])
    assert listed.exit_code == 0 and "Runs in yaml_store" in listed.output, listed.output
    assert run.id in listed.output and "completed" in listed.output
    shown = runner.invoke(app, ["runs", "show", run.id[:15]])
    assert shown.exit_code == 0 and run.id in shown.output, shown.output
    elsewhere = runner.invoke(app, ["runs", "list", "--store", "elsewhere"])
    assert "No runs in elsewhere" in elsewhere.output  # the flag wins over the file
    other = runner.invoke(app, ["runs", "list", "--config", "other.yaml"])
    assert "No runs in other_store" in other.output
    (tmp_path / "selfimprove.yaml").unlink()
    default = runner.invoke(app, ["runs", "list"])
    assert "No runs in selfimprove_runs" in default.output


@pytest.mark.parametrize(
    "args",
    [["eval", "-n", "abc"], ["eval", "--bogus"], ["runs", "show"], ["sweep"]],
    ids=["bad-int", "unknown-option", "missing-argument", "missing-option"],
)
def test_usage_errors_through_the_real_entry_point_say_what_without_a_traceback(args, tmp_path):
    """Through ``main()`` as installed (CliRunner skips it): typer raises its bundled click's
    exceptions, which ``main()`` must render as a usage message with exit code 2."""
    out = subprocess.run(
        [sys.executable, "-c", "from selfimprove.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Error" in out.stderr
