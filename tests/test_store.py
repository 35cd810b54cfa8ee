"""Tests for the run registry and artifact folders (selfimprove.store)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from selfimprove.errors import StoreError
from selfimprove.store import (
    DTYPE_CPU_FLAGS,
    RunInfo,
    RunStore,
    _cpu_info,
    _git_state,
    atomic_write_bytes,
    atomic_write_text,
    collect_provenance,
    file_sha256,
)

SRC_DIR = Path(__file__).resolve().parents[1] / "src"
CONFIG = {"suite": "arithmetic", "n": 60, "lora": {"r": 8, "alpha": 16.0}, "tags": ["a", "b"]}
PROVENANCE = {"pid": 1, "packages": {"torch": None}, "data_sha256": "ab" * 32}


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs_root")


def new_run(store: RunStore, kind: str = "evaluate", **kwargs: object) -> RunInfo:
    args: dict = {"config": CONFIG, "seed": 7, "model": "tiny-llama", "provenance": PROVENANCE}
    args.update(kwargs)
    return store.create_run(kind, **args)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- runs ------------------------------------------------------------------------------------


def test_create_get_finish_round_trip(store: RunStore) -> None:
    run = new_run(store)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run.id)
    assert run.status == "running" and run.finished_at is None and run.error is None
    assert run.kind == "evaluate" and run.model == "tiny-llama" and run.seed == 7
    assert run.config == CONFIG and run.provenance == PROVENANCE and run.summary is None
    assert run.path == store.root / "runs" / run.id and run.path.is_dir()
    assert json.loads((run.path / "config.json").read_text()) == CONFIG
    assert json.loads((run.path / "provenance.json").read_text()) == PROVENANCE
    assert run.created_at.endswith("+00:00")
    assert run.id[:15] == run.created_at[:19].replace("-", "").replace("T", "-").replace(":", "")

    done = store.finish_run(run.id, "completed", summary={"accuracy": 0.41, "nan": float("nan")})
    assert done.status == "completed" and done.finished_at is not None
    assert done.finished_at >= done.created_at
    got = store.get_run(run.id)
    assert got.status == "completed" and got.summary is not None
    assert got.summary["accuracy"] == 0.41 and got.summary["nan"] != got.summary["nan"]
    assert store.read_json(run.id, "summary.json")["accuracy"] == 0.41
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.status = "failed"  # type: ignore[misc]


def test_finish_twice_and_bad_status(store: RunStore) -> None:
    run = new_run(store)
    with pytest.raises(ValueError, match="status"):
        store.finish_run(run.id, "running")  # type: ignore[arg-type]
    store.finish_run(run.id, "failed", error="boom")
    assert store.get_run(run.id).error == "boom"
    with pytest.raises(StoreError, match="already failed"):
        store.finish_run(run.id, "completed")


def test_set_summary_kept_by_finish_without_summary(store: RunStore) -> None:
    run = new_run(store)
    store.set_summary(run.id, {"n": 3})
    store.finish_run(run.id, "completed")
    assert store.get_run(run.id).summary == {"n": 3}


def test_list_runs_newest_first_limit_and_kind(store: RunStore) -> None:
    assert store.list_runs() == []
    assert not store.registry_path.exists()  # reading an empty root creates nothing
    ids = []
    for i in range(5):
        ids.append(new_run(store, kind="evaluate" if i % 2 == 0 else "train").id)
    listed = [r.id for r in store.list_runs()]
    assert listed == ids[::-1]
    assert [r.id for r in store.list_runs(limit=2)] == ids[::-1][:2]
    assert [r.id for r in store.list_runs(kind="train")] == [ids[3], ids[1]]
    assert len(store.list_runs(limit=None)) == 5


def test_parent_id_is_resolved_and_stored(store: RunStore) -> None:
    parent = new_run(store, kind="loop")
    child = new_run(store, kind="round", parent_id=parent.id[:-2])
    assert child.parent_id == parent.id
    with pytest.raises(StoreError, match="no run"):
        new_run(store, parent_id="19990101-000000-000000")


def test_prefix_lookup_unknown_and_ambiguous(store: RunStore) -> None:
    a = new_run(store)
    b = new_run(store)
    # Rename b so that a and b share a long prefix and differ only in the last hex digit.
    twin = a.id[:-1] + ("0" if a.id[-1] != "0" else "1")
    with sqlite3.connect(store.registry_path) as conn:
        conn.execute("UPDATE runs SET id = ? WHERE id = ?", (twin, b.id))
    conn.close()

    assert store.get_run(a.id).id == a.id
    assert store.get_run(a.id[:-1] + a.id[-1]).id == a.id
    with pytest.raises(StoreError, match="ambiguous") as err:
        store.get_run(a.id[:-1])
    assert a.id in str(err.value) and twin in str(err.value)

    with pytest.raises(StoreError, match="selfimprove runs list") as err:
        store.get_run("19990101")
    assert "19990101" in str(err.value)
    for bad in ["", "../etc", "ZZZ", "%"]:
        with pytest.raises(StoreError, match="no run"):
            store.get_run(bad)
    with pytest.raises(StoreError, match="no run"):
        RunStore(store.root.parent / "empty").get_run(a.id)


def test_two_instances_on_one_root_see_each_others_runs(tmp_path: Path) -> None:
    first, second = RunStore(tmp_path), RunStore(tmp_path)
    r1 = new_run(first)
    r2 = new_run(second)
    second.finish_run(r1.id, "completed", summary={"x": 1})
    assert first.get_run(r1.id).summary == {"x": 1}
    assert {r.id for r in first.list_runs()} == {r1.id, r2.id}
    assert second.get_run(r2.id[:18]).id == r2.id


def test_wal_mode_and_schema_version(store: RunStore) -> None:
    new_run(store)
    conn = sqlite3.connect(store.registry_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == ("1",)
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StoreError, match="schema version 999"):
        RunStore(store.root).list_runs()


def test_writer_waits_for_lock_then_times_out(tmp_path: Path) -> None:
    """busy_timeout: a writer waits for another connection's lock instead of failing."""
    store = RunStore(tmp_path)
    new_run(store)
    holder = sqlite3.connect(store.registry_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        start = time.monotonic()
        run = new_run(store)  # blocks until the holder commits
        assert time.monotonic() - start >= 0.3
        assert store.get_run(run.id).status == "running"
    finally:
        release.join()

    holder.execute("BEGIN IMMEDIATE")
    try:
        impatient = RunStore(tmp_path, busy_timeout_s=0.1)
        with pytest.raises(StoreError, match="locked"):
            new_run(impatient)
        # the failed create leaves no orphan folder behind
        assert len(_files(store.runs_dir)) == 2
    finally:
        holder.execute("COMMIT")
        holder.close()


def test_corrupt_registry_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "registry.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="registry"):
        RunStore(tmp_path).list_runs()


# ---- track -----------------------------------------------------------------------------------


def test_track_completed_with_summary(store: RunStore) -> None:
    with store.track("evaluate", config=CONFIG, seed=1, model="m", provenance={}) as run:
        assert store.get_run(run.id).status == "running"
        store.set_summary(run.id, {"accuracy": 0.5})
    got = store.get_run(run.id)
    assert got.status == "completed" and got.summary == {"accuracy": 0.5} and got.error is None


def test_track_failed_on_exception(store: RunStore) -> None:
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        store.track("train", config=CONFIG, seed=1, model="m", provenance={}) as run,
    ):
        raise RuntimeError("out of memory")
    got = store.get_run(run.id)
    assert got.status == "failed" and got.error == "RuntimeError: out of memory"
    assert got.finished_at is not None


def test_track_interrupted_on_keyboard_interrupt(store: RunStore) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        store.track("evaluate", config=CONFIG, seed=1, model="m", provenance={}) as run,
    ):
        store.append_records(run.id, "records.jsonl", [{"i": 0}, {"i": 1}])
        raise KeyboardInterrupt
    got = store.get_run(run.id)
    assert got.status == "interrupted"
    assert got.error == "KeyboardInterrupt"
    assert store.read_records(run.id, "records.jsonl") == [{"i": 0}, {"i": 1}]


def test_track_keeps_status_set_by_the_block(store: RunStore) -> None:
    with store.track("evaluate", config=CONFIG, seed=1, model="m", provenance={}) as run:
        store.finish_run(run.id, "failed", error="validator crashed")
    got = store.get_run(run.id)
    assert got.status == "failed" and got.error == "validator crashed"


def test_track_collects_provenance_when_none_given(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with store.track("evaluate", config={}, seed=0, model="m") as run:
        pass
    assert store.get_run(run.id).provenance["pid"] == os.getpid()


# ---- resume ----------------------------------------------------------------------------------


def _interrupted(store: RunStore, kind: str = "eval") -> RunInfo:
    with (
        pytest.raises(KeyboardInterrupt),
        store.track(kind, config=CONFIG, seed=1, model="m", provenance={}) as run,
    ):
        raise KeyboardInterrupt
    return run


def test_resume_reopens_an_interrupted_run_and_records_how_it_ends(store: RunStore) -> None:
    run = _interrupted(store)
    with store.resume(run.id[:15], kind="eval") as again:
        assert again.id == run.id and store.get_run(run.id).status == "running"
        assert store.get_run(run.id).error is None
    assert store.get_run(run.id).status == "completed"
    with pytest.raises(RuntimeError), store.resume(_interrupted(store).id) as other:
        raise RuntimeError("still broken")
    got = store.get_run(other.id)
    assert got.status == "failed" and got.error == "RuntimeError: still broken"


def test_resumable_refuses_another_kind_and_finished_runs_before_any_work(
    store: RunStore,
) -> None:
    run = _interrupted(store, kind="run")
    with pytest.raises(StoreError, match=r"kind 'run', not 'eval'.*runs list --kind eval"):
        store.resumable(run.id, kind="eval")
    with pytest.raises(StoreError, match="kind 'run'"), store.resume(run.id, kind="eval"):
        pytest.fail("the block must not run")
    assert store.get_run(run.id).status == "interrupted"  # refused, left as it was
    assert store.resumable(run.id, kind="run").id == run.id
    with store.track("eval", config=CONFIG, seed=1, model="m", provenance={}) as done:
        pass
    with pytest.raises(StoreError, match="is completed; only an interrupted or failed"):
        store.resumable(done.id)


# ---- stale runs ------------------------------------------------------------------------------

_CHILD = """
import os, sys
from selfimprove.store import RunStore
run = RunStore(sys.argv[1]).create_run(
    "evaluate", config={}, seed=0, model="m", provenance={"child": True})
print(run.id, flush=True)
os._exit(0)  # die without finishing the run, like a killed process
"""


def test_mark_stale_running_marks_dead_writer_only(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    alive = new_run(store)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    dead_id = child.stdout.strip()
    assert store.get_run(dead_id).status == "running"

    foreign = new_run(store)
    with sqlite3.connect(store.registry_path) as conn:
        conn.execute(
            "UPDATE runs SET writer_host = 'another-host', writer_pid = 999999999 WHERE id = ?",
            (foreign.id,),
        )
    conn.close()

    assert store.mark_stale_running() == [dead_id]
    dead = store.get_run(dead_id)
    assert dead.status == "interrupted" and dead.finished_at is not None
    assert dead.error is not None and "exited" in dead.error
    assert store.get_run(alive.id).status == "running"  # this process is alive
    assert store.get_run(foreign.id).status == "running"  # cannot check another host
    assert store.mark_stale_running() == []
    # its writer was alive after all (say, a pid namespace): finishing still works
    assert store.finish_run(dead_id, "completed").status == "completed"


_HOLDER = """
import signal, sys, time
from selfimprove.store import RunStore
store = RunStore(sys.argv[1])
mode = sys.argv[2]
try:
    if mode == "track":
        cm = store.track("evaluate", config={}, seed=0, model="m", provenance={})
    else:
        cm = store.resume(sys.argv[3])
    with cm as run:
        print("GOT", run.id, flush=True)
        time.sleep(float(sys.argv[-1]))
except Exception as e:
    print("REFUSED", type(e).__name__, e, flush=True)
"""


def _child_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]),
    }


def test_two_processes_resuming_one_run_cannot_both_own_it(tmp_path: Path) -> None:
    """Issue 19 item 3: the old resume checked the status, then updated it (no compare-and-set,
    no lock), so two `--resume ID` both got in and wrote the same files."""
    store = RunStore(tmp_path)
    run = new_run(store)
    store.finish_run(run.id, "interrupted")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(tmp_path), "resume", run.id, "3"],
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    got = [o for o in outs if o.startswith("GOT")]
    refused = [o for o in outs if o.startswith("REFUSED StoreError")]
    assert len(got) == 1 and len(refused) == 1, outs
    # whichever check it met first: the status (already running), the lock or the CAS
    assert any(m in refused[0] for m in ("is running", "another process")), refused
    assert store.get_run(run.id).status == "completed"


def test_liveness_follows_the_writer_lock_not_the_pid_or_host(tmp_path: Path) -> None:
    """A writer in another container has another host name and pid namespace: the old pid +
    host check could not judge it (left "running" forever once dead) and misjudges a live one
    whose pid means something else here. The run folder's flock says the truth either way."""
    store = RunStore(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "track", "60"],
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("GOT"), line
    run_id = line.split()[1]
    with sqlite3.connect(store.registry_path) as conn:  # as if written from a container
        conn.execute(
            "UPDATE runs SET writer_host = 'container-7f3a', writer_pid = 999999999 WHERE id = ?",
            (run_id,),
        )
    conn.close()
    try:
        assert store.mark_stale_running() == []  # the lock is held: alive, whatever the pid
        assert store.get_run(run_id).status == "running"
        with pytest.raises(StoreError, match="only an interrupted or failed run"):
            store.resumable(run_id)
    finally:
        child.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        child.wait(timeout=30)
    assert store.mark_stale_running() == [run_id]  # another host name, judged all the same
    info = store.get_run(run_id)
    assert info.status == "interrupted" and "released .writer.lock" in (info.error or "")
    with store.resume(run_id) as again:  # and it can be resumed now
        assert again.status == "running"


# ---- artifacts -------------------------------------------------------------------------------


def test_records_round_trip_write_and_append(store: RunStore) -> None:
    run = new_run(store)
    records = [
        {"id": i, "text": f"line\n{i} ünï", "ok": i % 2 == 0, "nll": 0.5 * i} for i in range(4)
    ]
    assert store.write_records(run.id, "records.jsonl", iter(records)) == 4
    assert store.read_records(run.id, "records.jsonl") == records
    assert len((run.path / "records.jsonl").read_bytes().splitlines()) == 4

    assert store.append_records(run.id, "partial.jsonl", records[:2]) == 2
    assert store.append_records(run.id, "partial.jsonl", []) == 0
    assert store.append_records(run.id, "partial.jsonl", records[2:]) == 2
    assert store.read_records(run.id[:17], "partial.jsonl") == records

    store.write_json(run.id, "sub/metrics.json", {"a": [1, 2]})
    assert store.read_json(run.id, "sub/metrics.json") == {"a": [1, 2]}
    assert store.run_dir(run.id[:17]) == run.path


def test_records_accept_dataclasses_and_paths(store: RunStore) -> None:
    from dataclasses import dataclass

    @dataclass
    class Rec:
        path: Path
        tags: set[str]

    run = new_run(store)
    store.write_records(run.id, "r.jsonl", [Rec(Path("/x/y"), {"b", "a"})])  # type: ignore[list-item]
    assert store.read_records(run.id, "r.jsonl") == [{"path": "/x/y", "tags": ["a", "b"]}]
    with pytest.raises(TypeError, match="object"):
        store.write_records(run.id, "r.jsonl", [{"x": object()}])
    assert store.read_records(run.id, "r.jsonl") == [{"path": "/x/y", "tags": ["a", "b"]}]


def test_records_accept_numpy_values(store: RunStore) -> None:
    np = pytest.importorskip("numpy")
    run = new_run(store)
    store.write_records(run.id, "r.jsonl", [{"v": np.array([1, 2]), "x": np.float32(0.5)}])
    assert store.read_records(run.id, "r.jsonl") == [{"v": [1, 2], "x": 0.5}]


def test_write_records_is_atomic_when_the_writer_raises(store: RunStore) -> None:
    run = new_run(store)
    store.write_records(run.id, "records.jsonl", [{"old": 1}, {"old": 2}])
    before = (run.path / "records.jsonl").read_bytes()
    files_before = _files(run.path)

    def failing() -> object:
        for i in range(1000):
            yield {"new": i, "pad": "x" * 1000}  # enough bytes to reach the temp file
            if i == 500:
                raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        store.write_records(run.id, "records.jsonl", failing())  # type: ignore[arg-type]
    assert (run.path / "records.jsonl").read_bytes() == before
    assert _files(run.path) == files_before  # no temp file left

    with pytest.raises(RuntimeError, match="generator died"):
        store.append_records(run.id, "records.jsonl", failing())  # type: ignore[arg-type]
    assert (run.path / "records.jsonl").read_bytes() == before


def test_atomic_write_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "deep" / "f.txt"
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _files(target.parent) == ["f.txt"]
    # permissions follow the umask, not mkstemp's 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_bytes() == b"\x00\x01"
    assert _files(target.parent) == ["f.txt"]


def test_corrupt_line_names_file_and_line(store: RunStore) -> None:
    run = new_run(store)
    path = run.path / "records.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n')
    for skip in (False, True):  # a corrupt middle line is never skipped
        with pytest.raises(StoreError) as err:
            store.read_records(run.id, "records.jsonl", skip_corrupt=skip)
        assert f"{path}:3:" in str(err.value)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(StoreError, match=r":2: corrupt record \(a JSON list"):
        store.read_records(run.id, "records.jsonl")


def test_truncated_last_line_skipped_only_on_request(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    run = new_run(store)
    store.append_records(run.id, "records.jsonl", [{"a": 1}, {"a": 2}])
    with open(run.path / "records.jsonl", "ab") as fh:
        fh.write(b'{"a": 3, "text": "cut off mid-wri')  # a killed writer
    with pytest.raises(StoreError, match=r"records\.jsonl:3:.*skip_corrupt=True"):
        store.read_records(run.id, "records.jsonl")
    with caplog.at_level(logging.WARNING, logger="selfimprove.store"):
        assert store.read_records(run.id, "records.jsonl", skip_corrupt=True) == [
            {"a": 1},
            {"a": 2},
        ]
    assert any("records.jsonl:3" in r.getMessage() for r in caplog.records)

    # resuming: appending after the partial line drops it instead of gluing onto it
    store.append_records(run.id, "records.jsonl", [{"a": 3}])
    assert store.read_records(run.id, "records.jsonl") == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_missing_artifacts_and_bad_names(store: RunStore) -> None:
    run = new_run(store)
    with pytest.raises(StoreError, match=r"nope\.jsonl"):
        store.read_records(run.id, "nope.jsonl")
    with pytest.raises(StoreError, match=r"nope\.json'"):
        store.read_json(run.id, "nope.json")
    (run.path / "bad.json").write_text("{")
    with pytest.raises(StoreError, match=r"bad\.json:1: corrupt JSON"):
        store.read_json(run.id, "bad.json")
    for bad in ["../escape.json", "/abs.json", ""]:
        with pytest.raises(ValueError, match="relative path"):
            store.write_json(run.id, bad, {})
    with pytest.raises(StoreError, match="no run"):
        store.write_json("19990101-000000-000000", "x.json", {})


# ---- provenance and hashing ------------------------------------------------------------------


def test_collect_provenance_outside_a_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prov = collect_provenance({"dtype": "float32", "pid": "overridden"})
    json.dumps(prov)  # serialisable as is
    assert prov["git"] == {"revision": None, "dirty": None}
    assert prov["pid"] == "overridden" and prov["dtype"] == "float32"
    assert prov["hostname"] and prov["python"]["version"].startswith(f"{sys.version_info[0]}.")
    assert set(prov["packages"]) == {
        "selfimprove",
        "torch",
        "transformers",
        "peft",
        "numpy",
        "tokenizers",
    }
    assert "argv" not in json.dumps(prov)
    assert prov["timestamp_utc"].endswith("+00:00")


def test_collect_provenance_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from selfimprove.store import collect_provenance; collect_provenance(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


def test_git_state_parses_revision_and_dirtiness(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"rev-parse": "0123abcd\n", "status": " M src/x.py\n"}

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[:2] == ["git", "--no-optional-locks"] and kwargs["timeout"]
        return subprocess.CompletedProcess(cmd, 0, stdout=answers[cmd[2]], stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert _git_state() == {"revision": "0123abcd", "dirty": True}
    answers["status"] = ""
    assert _git_state() == {"revision": "0123abcd", "dirty": False}

    def timeout(cmd: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd, 5)

    monkeypatch.setattr(subprocess, "run", timeout)
    assert _git_state() == {"revision": None, "dirty": None}


def test_cpu_info_reads_dtype_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    info = _cpu_info(cpuinfo)
    assert info["model"] == "AMD EPYC 9R14"
    assert info["flags"] == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False}
    assert set(info["flags"]) == set(DTYPE_CPU_FLAGS)
    assert _cpu_info(tmp_path / "missing")["flags"] is None


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path, chunk_size=1) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(StoreError, match="no such file"):
        file_sha256(tmp_path / "missing.bin")
