"""`selfimprove runs export --to mlflow`: a stored loop run appears in a local MLflow store with
its params, per-round metrics, loss curves and artifacts; a second export is refused; bad
input (running run, missing extra) is a clean error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is installed by install.sh")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str) -> list:
    c = _client(uri)
    exp = c.get_experiment_by_name("selfimprove")
    return c.search_runs([exp.experiment_id]) if exp else []


def _all_artifacts(c, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in c.list_artifacts(run_id, path):
        out += _all_artifacts(c, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_loop_run_exported_to_mlflow_matches_the_store(full_run, tmp_path: Path) -> None:
    store, res = full_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli(
        "runs", "export", res.run_id, "--store", store, "--tracking-uri", uri, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = _runs(uri)
    c = _client(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["selfimprove.run_id"] == res.run_id
    assert run.data.tags["selfimprove.kind"] == "run"
    # params: the resolved config, flattened
    cfg = json.loads((Path(res.run_dir) / "config.json").read_text())
    p = run.data.params
    assert p["loop.rounds"] == str(cfg["loop"]["rounds"])
    assert p["loop.arms"] == json.dumps(cfg["loop"]["arms"])
    assert p["eval.seed"] == str(cfg["eval"]["seed"])
    # metrics: one step per round for each arm, values as in summary_rounds.json
    rounds = json.loads((Path(res.run_dir) / "summary_rounds.json").read_text())
    for arm in ("targeted", "random"):
        hist = c.get_metric_history(run.info.run_id, f"{arm}/accepted")
        want = {r["round"]: float(r["accepted"]) for r in rounds if r["arm"] == arm}
        assert {m.step: m.value for m in hist} == want
        r1 = next(r for r in rounds if r["arm"] == arm and r["round"] == 1)
        curve = c.get_metric_history(run.info.run_id, f"{arm}/r1/train_loss")
        assert [m.value for m in sorted(curve, key=lambda m: m.step)] == pytest.approx(
            r1["train"]["losses"]
        )
    summ = json.loads((Path(res.run_dir) / "summary.json").read_text())
    d = summ["efficiency"]["difference"]
    assert run.data.metrics["efficiency.difference"] == pytest.approx(d)
    # artifacts: report, JSON files and every adapter, byte-identical
    arts = _all_artifacts(c, run.info.run_id)
    assert {"report.html", "summary.json", "summary_rounds.json", "config.json"} <= set(arts)
    for tag in ("r1_targeted", "r1_random", "r2_targeted", "r2_random"):
        assert f"adapters/{tag}/adapter_model.safetensors" in arts
    local = Path(c.download_artifacts(run.info.run_id, "adapters/r2_targeted", str(tmp_path)))
    src = Path(res.run_dir) / "adapters" / "r2_targeted" / "adapter_model.safetensors"
    assert (local / "adapter_model.safetensors").read_bytes() == src.read_bytes()

    # a second export is refused (no silent duplicate); --replace leaves exactly one
    again = run_cli(
        "runs", "export", res.run_id, "--store", store, "--tracking-uri", uri, cwd=tmp_path
    )
    assert_clean_error(again, "already exported", "--replace", code=2)
    assert len(_runs(uri)) == 1
    rep = run_cli(
        "runs",
        "export",
        res.run_id,
        "--store",
        store,
        "--tracking-uri",
        uri,
        "--replace",
        "--no-adapters",
        cwd=tmp_path,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    (new,) = _runs(uri)
    assert new.info.run_id != run.info.run_id
    assert not [a for a in _all_artifacts(c, new.info.run_id) if a.startswith("adapters/")]


def test_export_refuses_a_running_run_and_a_missing_extra(tmp_path: Path) -> None:
    from selfimprove.store import RunStore

    st = RunStore(tmp_path / "s")
    info = st.create_run("loop", config={"loop": {"rounds": 1}}, seed=0, model="m")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli(
        "runs", "export", info.id, "--store", tmp_path / "s", "--tracking-uri", uri, cwd=tmp_path
    )
    assert_clean_error(out, "still running", code=2)
    st.finish_run(info.id, "completed", summary={"gain": 0.25, "nested": {"x": 1}})
    # an mlflow that cannot be imported (the extra not installed) -> the install command
    fake = tmp_path / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    out = run_cli(
        "runs",
        "export",
        info.id,
        "--store",
        tmp_path / "s",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
        env={"PYTHONPATH": str(fake)},
    )
    assert_clean_error(out, "pip install 'selfimprove[tracking]'", code=2)
    out = run_cli(
        "runs", "export", info.id, "--store", tmp_path / "s", "--to", "wandb", cwd=tmp_path
    )
    assert_clean_error(out, "--to mlflow", code=2)
    # with the extra: a minimal run exports, summary leaves become metrics
    out = run_cli(
        "runs", "export", info.id, "--store", tmp_path / "s", "--tracking-uri", uri, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = _runs(uri)
    assert run.data.metrics == {"gain": 0.25, "nested.x": 1.0}
    assert run.data.params["loop.rounds"] == "1"
