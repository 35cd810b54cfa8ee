"""Kill -9 at every phase boundary, and bad input around stored runs (issue 19, items 7-8).

The loop test SIGKILLs ``selfimprove run`` (a real signal: no cleanup code runs) at each
phase boundary in turn — after a phase is marked done, just before (its artifact written,
not yet marked), while an adapter is half-published, and after the summary — resuming each
time, and checks that the finished run equals an uninterrupted one: same training data, same
evaluation outputs, same verdicts, no duplicate records, no orphan folders.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from conftest import assert_clean_error, run_cli
from selfimprove.store import RunStore

# every phase boundary of a 2-round, 2-arm run, in the order the run reaches them
KILL_POINTS = [
    "phase:r0/baseline:before",
    "phase:r0/baseline",
    "eval:batch",  # inside the replay evaluation (after its first batch of records)
    "phase:r0/replay",
    "phase:r1_targeted/data:before",
    "phase:r1_targeted/data",
    "train:saved",  # adapter written, not yet published: leaves a temp folder
    "phase:r1_targeted/train:before",
    "phase:r1_targeted/train",
    "phase:r1_targeted/gate:before",
    "phase:r1_targeted/gate",
    "phase:r1_random/data",
    "phase:r1_random/train",
    "phase:r1_random/gate",
    "phase:r2_targeted/data",
    "phase:r2_targeted/train",
    "phase:r2_targeted/gate",
    "phase:r2_random/data",
    "phase:r2_random/train",
    "phase:r2_random/gate",
    "loop:summary",
]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _outputs(run_dir: Path) -> dict[str, list]:
    return {
        p.name: sorted((r["suite"], r["sample_id"], r["output"], r["correct"]) for r in _rows(p))
        for p in [*sorted(run_dir.glob("eval_*.jsonl")), run_dir / "replay_eval.jsonl"]
    }


def _orphans(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.startswith((".convert-", ".r")) and "-" in p.name]


def test_sigkill_at_every_loop_phase_boundary_then_resume_matches_uninterrupted(
    full_run, small_loop, tmp_path
):
    _store0, ref = full_run
    store = tmp_path / "s"
    cfg = tmp_path / "selfimprove.yaml"
    cfg.write_text(yaml.safe_dump({**small_loop, "store": {"root": str(store)}}))
    run_id = None
    for point in KILL_POINTS:
        args = ["run", "--config", cfg] + (["--resume", run_id] if run_id else [])
        res = run_cli(*args, cwd=tmp_path, env={"SELFIMPROVE_FAULT": f"kill:{point}"})
        assert res.returncode == -signal.SIGKILL, (point, res.stdout + res.stderr)
        (run_dir,) = (store / "runs").iterdir()
        run_id = run_dir.name
        state = run_dir / "state.json"  # written by the first mark
        done = json.loads(state.read_text())["done"] if state.is_file() else []
        if point.startswith("phase:"):  # marked done exactly when the mark was written
            name = point.removeprefix("phase:")
            assert (name.removesuffix(":before") in done) != name.endswith(":before"), point
        if point == "train:saved":  # the half-published adapter is there, until the resume
            assert list((run_dir / "adapters").glob(".r1_targeted.tmp-*")), point
    final = run_cli("run", "--config", cfg, "--resume", run_id, cwd=tmp_path)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Removed the unfinished .r1_targeted.tmp-" not in final.stdout  # cleaned earlier

    ref_dir = Path(ref.run_dir)
    assert _outputs(run_dir) == _outputs(ref_dir)
    for p in sorted(run_dir.glob("eval_*.jsonl")):  # resumed evaluations wrote no item twice
        keys = [(r["suite"], r["sample_id"]) for r in _rows(p)]
        assert len(keys) == len(set(keys)), p.name
    for p in sorted(ref_dir.glob("data_*.jsonl")):
        got = [r["input_hash"] for r in _rows(run_dir / p.name)]
        assert got == [r["input_hash"] for r in _rows(p)], p.name
    got = json.loads((run_dir / "summary_rounds.json").read_text())
    want = json.loads((ref_dir / "summary_rounds.json").read_text())
    keys = ("round", "arm", "accepted", "n_train", "targets")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]
    assert not _orphans(store), _orphans(store)
    assert RunStore(store).get_run(run_id).status == "completed"
    assert (run_dir / "report.html").is_file()


def test_eval_sigkill_mid_evaluation_then_resume_keeps_every_record_once(tmp_path):
    store = tmp_path / "s"
    base = ["eval", "-m", "tiny-llama", "--suites", "arithmetic,logic", "-n", "24"]
    base += ["--batch-size", "4", "--max-new-tokens", "4", "--dtype", "fp32", "--store", store]
    killed = run_cli(*base, cwd=tmp_path, env={"SELFIMPROVE_FAULT": "kill:eval:batch"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run_dir,) = (store / "runs").iterdir()
    partial = _rows(run_dir / "records.jsonl")
    assert 0 < len(partial) < 48
    listed = run_cli("runs", "list", "--store", store, cwd=tmp_path)
    assert "interrupted" in listed.stdout  # its writer is dead: not "running"
    resumed = run_cli("eval", "--resume", run_dir.name, "--store", store, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    recs = _rows(run_dir / "records.jsonl")
    assert len(recs) == 48 and len({(r["suite"], r["sample_id"]) for r in recs}) == 48
    assert [r["output"] for r in recs[: len(partial)]] == [r["output"] for r in partial]
    fresh = run_cli(*base[:-1], tmp_path / "s2", cwd=tmp_path)  # uninterrupted, same items
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    (fresh_dir,) = (tmp_path / "s2" / "runs").iterdir()
    want = sorted((r["sample_id"], r["output"]) for r in _rows(fresh_dir / "records.jsonl"))
    assert sorted((r["sample_id"], r["output"]) for r in recs) == want


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory):
    """A store with one finished tiny evaluation run: ``(cwd, store, run_id)``."""
    cwd = tmp_path_factory.mktemp("st")
    store = cwd / "s"
    res = run_cli(
        "eval", "-m", "tiny-llama", "--suites", "arithmetic", "-n", "2", "--max-new-tokens",
        "2", "--store", store, cwd=cwd,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (run_dir,) = (store / "runs").iterdir()
    return cwd, store, run_dir.name


def test_runs_show_with_a_corrupt_metrics_file_names_it(eval_store, tmp_path):
    cwd, store, run_id = eval_store
    metrics = store / "runs" / run_id / "metrics.json"
    good = metrics.read_text()
    try:
        metrics.write_text(good[: len(good) // 2])  # cut mid-write
        for extra in ([], ["--markdown"]):
            res = run_cli("runs", "show", run_id, "--store", store, *extra, cwd=cwd)
            assert_clean_error(res, "metrics.json is corrupt", "Fix:", code=2)
        metrics.write_text('[{"suite": 3}]')  # valid JSON, wrong shape
        res = run_cli("runs", "show", run_id, "--store", store, cwd=cwd)
        assert_clean_error(res, "metrics.json is corrupt", code=2)
    finally:
        metrics.write_text(good)
    assert run_cli("runs", "show", run_id, "--store", store, cwd=cwd).returncode == 0


def test_runs_show_with_its_folder_deleted_says_so(eval_store, tmp_path):
    cwd, store, run_id = eval_store
    folder = store / "runs" / run_id
    moved = tmp_path / "moved"
    folder.rename(moved)
    try:
        res = run_cli("runs", "show", run_id, "--store", store, cwd=cwd)
        assert_clean_error(res, "folder", "is missing", code=2)
    finally:
        moved.rename(folder)


def test_runs_show_markdown_on_a_non_eval_run(eval_store):
    cwd, store, run_id = eval_store
    with sqlite3.connect(store / "registry.sqlite") as conn:
        conn.execute("UPDATE runs SET kind = 'run' WHERE id = ?", (run_id,))
    conn.close()
    metrics = store / "runs" / run_id / "metrics.json"
    good = metrics.read_text()
    metrics.unlink()
    try:
        res = run_cli("runs", "show", run_id, "--store", store, "--markdown", cwd=cwd)
        assert_clean_error(res, "has no metrics.json", "evaluation run", code=2)
    finally:
        metrics.write_text(good)
        with sqlite3.connect(store / "registry.sqlite") as conn:
            conn.execute("UPDATE runs SET kind = 'eval' WHERE id = ?", (run_id,))
        conn.close()


def test_runs_list_and_show_read_store_root_from_the_config_file(eval_store):
    cwd, store, run_id = eval_store
    (cwd / "selfimprove.yaml").write_text(yaml.safe_dump({"store": {"root": str(store)}}))
    try:
        listed = run_cli("runs", "list", cwd=cwd)
        assert listed.returncode == 0 and run_id in listed.stdout, listed.stdout
        shown = run_cli("runs", "show", run_id[:16], cwd=cwd)
        assert shown.returncode == 0 and run_id in shown.stdout, shown.stdout
    finally:
        (cwd / "selfimprove.yaml").unlink()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["runs", "list", "--limit", "-1"], ["--limit", "greater than or equal to 1"]),
        (["suites", "export", "arithmetic", "-o", "x.jsonl", "-n", "0"], ["--n"]),
        (["suites", "export", "arithmetic", "-o", "afile/x.jsonl"], ["afile is a file"]),
        (["config", "-c", "latin1.yaml"], ["not UTF-8", "line 2", "Fix:"]),
        (["config", "-c", "keys.yaml"], ["loop.train.bogus", "loop.gate.nope", "unknown key"]),
    ],
    ids=["limit-negative", "export-n-0", "export-under-file", "config-not-utf8", "config-keys"],
)
def test_bad_arguments_are_clear_errors(args, needles, tmp_path):
    (tmp_path / "afile").write_text("I am a file")
    (tmp_path / "latin1.yaml").write_bytes(b"eval:\n  n: 3 # caf\xe9\n")
    (tmp_path / "keys.yaml").write_text("loop:\n  train: {bogus: 1}\n  gate: {nope: 2}\n")
    store = ["--store", tmp_path / "s"] if args[0] == "runs" else []
    res = run_cli(*args, *store, cwd=tmp_path)
    assert_clean_error(res, *needles, code=2)
    assert not (tmp_path / "x.jsonl").exists()
