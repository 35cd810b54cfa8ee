"""Experiment tracking: export stored runs to MLflow behind a small tracker interface.

The run store (:mod:`selfimprove.store`) stays the source of truth; a tracker is a read-only
mirror of one finished (or stopped) run, written after the fact so that a crash of the tracker
can never lose or corrupt a run. :func:`export_run` reads a run's registry row and folder and
sends, through any :class:`Tracker`:

* **params**: the resolved config, flattened to dotted keys (``loop.train.learning_rate``),
  plus ``kind``, ``model`` and ``seed``;
* **metrics**: every numeric leaf of the run's summary (step 0), and for loop runs one step
  per round and arm (``targeted/gate.…``, ``targeted/train.final_loss``, ``targeted/accepted``)
  and each round's training-loss curve (``targeted/r2/train_loss`` by optimizer step);
* **artifacts**: the HTML report and the run's JSON files, and the LoRA adapters
  (``adapters/rN_arm``) unless ``adapters=False``;
* **tags**: ``selfimprove.run_id`` (how a second export of the same run is found and refused),
  ``selfimprove.kind``, ``selfimprove.status`` and the git revision.

:class:`MlflowTracker` is the MLflow implementation (``pip install 'selfimprove[tracking]'``):
an SQLite backend by default (``sqlite:///<store>/mlflow.db``, artifacts beside it in
``<store>/mlflow-artifacts``), MLflow's telemetry off (``MLFLOW_DISABLE_TELEMETRY=true``).
Browse it with ``mlflow ui --backend-store-uri sqlite:///<store>/mlflow.db`` (the ``mlflow``
package, not ``mlflow-skinny``, ships the UI).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from selfimprove.errors import ConfigError, StoreError
from selfimprove.store import RunInfo, RunStore

log = logging.getLogger(__name__)

#: JSON files of a run folder that are sent as artifacts when present.
ARTIFACT_FILES = (
    "report.html",
    "summary.json",
    "summary_rounds.json",
    "metrics.json",
    "config.json",
    "provenance.json",
    "split.json",
    "state.json",
)
_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_KEY_BAD = re.compile(r"[^\w\-./ ]")
_PARAM_MAX = 6000  # MLflow's limit on a param value


class Tracker(Protocol):
    """What an exporter needs from a tracking backend (MLflow, or a test double)."""

    def find(self, run_id: str) -> str | None:
        """The backend's id of an earlier export of store run ``run_id``, or None."""
        ...

    def delete(self, backend_id: str) -> None:
        """Remove an earlier export (``--replace``)."""
        ...

    def start(self, name: str, tags: Mapping[str, str]) -> str:
        """Open a new tracked run; returns its backend id."""
        ...

    def log_params(self, params: Mapping[str, str]) -> None: ...

    def log_metrics(self, metrics: Sequence[tuple[str, float, int]]) -> None:
        """``(key, value, step)`` triples."""
        ...

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """A file, or a folder with everything under it."""
        ...

    def finish(self, status: str) -> None:
        """Close the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        ...


@dataclass
class ExportResult:
    """What :func:`export_run` sent."""

    run_id: str
    backend_id: str
    n_params: int
    n_metrics: int
    artifacts: list[str] = field(default_factory=list)
    replaced: str | None = None


def metric_key(key: str) -> str:
    """A key MLflow accepts (alphanumerics, ``_ - . / space``): other characters become ``_``."""
    return _KEY_BAD.sub("_", key)[:250]


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


def flatten_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Dotted keys -> strings; lists as JSON; values clipped to MLflow's 6,000 characters."""
    out: dict[str, str] = {}
    for k, v in _leaves(config):
        s = v if isinstance(v, str) else json.dumps(v, default=str)
        out[metric_key(k)] = s if len(s) <= _PARAM_MAX else s[: _PARAM_MAX - 1] + "…"
    return out


def numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every finite int/float/bool leaf under dotted keys (lists and strings are skipped)."""
    out: dict[str, float] = {}
    for k, v in _leaves(obj, prefix):
        if isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(float(v))):
            out[metric_key(k)] = float(v)
    return out


def run_metrics(info: RunInfo) -> list[tuple[str, float, int]]:
    """Metrics of a stored run as ``(key, value, step)``: summary leaves at step 0, then the
    loop's per-round records (step = round) and training-loss curves (step = optimizer step)."""
    folder = Path(info.path)
    rows = [(k, v, 0) for k, v in numeric_leaves(info.summary or {}).items()]
    path = folder / "summary_rounds.json"
    if not path.is_file():
        return rows
    try:
        rounds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"{path} is unreadable ({exc}); the run's per-round metrics cannot be exported.\n"
            "Fix: restore the file, or re-run the last phase with `selfimprove run --resume`."
        ) from exc
    for r in rounds if isinstance(rounds, list) else []:
        step, arm = int(r.get("round", 0)), str(r.get("arm", "arm"))
        for part in ("gate", "train", "diff"):
            sub = r.get(part)
            if isinstance(sub, Mapping):
                rows += [(k, v, step) for k, v in numeric_leaves(sub, f"{arm}/{part}").items()]
        for k in ("accepted", "n_train", "seconds"):
            v = r.get(k)
            if isinstance(v, bool | int | float) and math.isfinite(float(v)):
                rows.append((metric_key(f"{arm}/{k}"), float(v), step))
        losses = (r.get("train") or {}).get("losses") or []
        rows += [
            (metric_key(f"{arm}/r{step}/train_loss"), float(x), i)
            for i, x in enumerate(losses)
            if isinstance(x, int | float) and math.isfinite(float(x))
        ]
    return rows


def export_run(
    store: RunStore,
    run_id: str,
    tracker: Tracker,
    *,
    adapters: bool = True,
    replace: bool = False,
) -> ExportResult:
    """Mirror one stored run into ``tracker`` (see the module docstring for what is sent).

    Raises:
        StoreError: the run is still running, its folder is gone, or it was exported before
            (pass ``replace=True`` to delete that export and write a new one).
    """
    info = store.get_run(run_id)
    folder = Path(info.path)
    if info.status == "running":
        raise StoreError(
            f"Run {info.id} is still running; an export now would be incomplete.\n"
            "Fix: wait for it to finish (or stop it and export the stopped run)."
        )
    if not folder.is_dir():
        raise StoreError(
            f"Run {info.id} is in the registry but its folder {folder} is missing; there is "
            "nothing to export.\nFix: restore the folder."
        )
    earlier = tracker.find(info.id)
    if earlier is not None and not replace:
        raise StoreError(
            f"Run {info.id} was already exported (tracking run {earlier}).\n"
            "Fix: pass --replace to delete that export and write it again."
        )
    metrics = run_metrics(info)
    params = {
        "kind": info.kind,
        "model": info.model,
        "seed": str(info.seed),
        **flatten_params(info.config or {}),
    }
    git = (info.provenance or {}).get("git")
    rev = git.get("revision") if isinstance(git, Mapping) else git
    tags = {
        "selfimprove.run_id": info.id,
        "selfimprove.kind": info.kind,
        "selfimprove.status": info.status,
        "selfimprove.created_at": info.created_at,
    }
    if rev:
        tags["mlflow.source.git.commit"] = str(rev)
    if earlier is not None:
        tracker.delete(earlier)
    backend_id = tracker.start(info.id, tags)
    status = _STATUS.get(info.status, "FINISHED")
    sent: list[str] = []
    try:
        tracker.log_params(params)
        tracker.log_metrics(metrics)
        for name in ARTIFACT_FILES:
            if (folder / name).is_file():
                tracker.log_artifact(folder / name)
                sent.append(name)
        ad = folder / "adapters"
        if adapters and ad.is_dir():
            for sub in sorted(p for p in ad.iterdir() if p.is_dir()):
                tracker.log_artifact(sub, f"adapters/{sub.name}")
                sent.append(f"adapters/{sub.name}")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish(status)
    return ExportResult(info.id, backend_id, len(params), len(metrics), sent, earlier)


# ------------------------------------------------------------------------------------- MLflow
def default_tracking_uri(store_root: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an SQLite file in the run store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(store_root) / 'mlflow.db').resolve()}"


class MlflowTracker:
    """:class:`Tracker` over ``mlflow.MlflowClient`` (no global "active run" state).

    Args:
        tracking_uri: e.g. ``sqlite:///path/mlflow.db``, ``http://host:5000``.
        experiment: experiment name; created on first use with its artifacts in
            ``artifact_root`` (default: ``mlflow-artifacts`` beside an SQLite file).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "selfimprove",
        *,
        artifact_root: str | Path | None = None,
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(
                "Exporting to MLflow needs the tracking extra (mlflow-skinny, SQLAlchemy, "
                "alembic), which is not installed.\nFix: pip install 'selfimprove[tracking]' "
                "(scripts/install.sh installs it)."
            ) from exc
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = tracking_uri
        if artifact_root is None and tracking_uri.startswith("sqlite:///"):
            artifact_root = Path(tracking_uri[len("sqlite:///") :]).parent / "mlflow-artifacts"
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                loc = Path(artifact_root).resolve().as_uri() if artifact_root else None
                self.experiment_id = self.client.create_experiment(experiment, loc)
            else:
                self.experiment_id = exp.experiment_id
        except Exception as exc:  # mlflow raises many types (MlflowException, SQLAlchemy...)
            raise ConfigError(
                f"Cannot open the MLflow tracking store {tracking_uri!r}: {exc}\n"
                "Fix: pass a writable --tracking-uri (e.g. sqlite:///mlflow.db) or a "
                "reachable MLflow server."
            ) from exc
        self._run: str | None = None

    def find(self, run_id: str) -> str | None:
        hits = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`selfimprove.run_id` = '{run_id}'",
            max_results=1,
        )
        return hits[0].info.run_id if hits else None

    def delete(self, backend_id: str) -> None:
        self.client.delete_run(backend_id)

    def start(self, name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, tags=dict(tags), run_name=name)
        self._run = run.info.run_id
        return self._run

    def _active(self) -> str:
        if self._run is None:
            raise RuntimeError("MlflowTracker: start() a run first")
        return self._run

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self._active(), params=items[i : i + 100])

    def log_metrics(self, metrics: Sequence[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, s) for k, v, s in metrics]
        for i in range(0, len(items), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self._active(), metrics=items[i : i + 1000])

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self._active(), str(path), subdir)
        else:
            self.client.log_artifact(self._active(), str(path), subdir)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self._active(), status)
        self._run = None
