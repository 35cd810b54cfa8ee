"""Run registry and artifact folders: where every stage's records and provenance are kept.

A :class:`RunStore` owns one root folder::

    <root>/registry.sqlite      one row per run (SQLite, WAL mode, schema-versioned)
    <root>/runs/<run_id>/       that run's artifacts: config.json, provenance.json,
                                summary.json, JSONL records, adapters, reports ...

Run ids look like ``20261123-141503-a3f9c2`` (UTC time + 6 random hex digits), so they sort
by creation time and a short unique prefix is enough to name one on the command line.

What it does:

- registers runs (kind, status, model, seed, resolved config, provenance, summary, parent run)
  and moves them through ``running`` → ``completed`` | ``failed`` | ``interrupted``.
  Every stage opens and closes its runs the same way: :meth:`RunStore.track` creates a run
  around a ``with`` block and records how the block ended; :meth:`RunStore.resume`
  re-opens an interrupted or failed one the same way (:meth:`RunStore.resumable` checks it
  first, before a model is loaded);
- writes artifacts crash-safely: whole files atomically (temp file in the same folder,
  fsync, ``os.replace``), streamed JSONL by appending and fsyncing per batch so an
  interrupted evaluation keeps the records it finished;
- reads them back with errors that name the file and line, and can skip the truncated last
  line a killed writer leaves behind;
- marks runs whose writer process died as ``interrupted`` (:meth:`RunStore.mark_stale_running`);
- collects provenance (:func:`collect_provenance`): Python, platform, host, pid, package
  versions, git revision and dirtiness, CPU model and the dtype-relevant CPU flags.

What it does not do: it never imports torch or reads ``sys.argv``, never prints, keeps no
module-level state, and does not lock artifact files — one writer per file is the caller's
contract (many processes may share the registry itself). SQLite's WAL mode needs a local
filesystem; do not put the root on NFS/SMB.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, Literal, get_args

from selfimprove.errors import StoreError

logger = logging.getLogger(__name__)

RunStatus = Literal["running", "completed", "failed", "interrupted"]
FinalStatus = Literal["completed", "failed", "interrupted"]

#: The store folder when neither ``--store`` nor ``store.root`` in selfimprove.yaml names one
#: (relative: resolved against the working directory). The one place this name is written.
DEFAULT_ROOT = Path("selfimprove_runs")
REGISTRY_NAME = "registry.sqlite"
RUNS_DIRNAME = "runs"
#: Bump when the ``runs`` table changes; :class:`RunStore` refuses newer registries.
SCHEMA_VERSION = 1

#: Packages whose versions go into every run's provenance (looked up, never imported).
PROVENANCE_PACKAGES = ("selfimprove", "torch", "transformers", "peft", "numpy", "tokenizers")
#: CPU flags that decide the run-time dtype policy (selfimprove.runtime: bf16 autocast is
#: ~1.4–3× faster with AVX512-BF16/AMX and 4–5× slower with AVX2 only).
DTYPE_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

_RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
_RUN_ID_PREFIX_RE = re.compile(r"^[0-9a-f-]+$")
_FINAL_STATUSES: tuple[str, ...] = get_args(FinalStatus)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    finished_at     TEXT,
    model           TEXT NOT NULL,
    seed            INTEGER NOT NULL,
    config_json     TEXT NOT NULL,
    provenance_json TEXT NOT NULL,
    summary_json    TEXT,
    parent_id       TEXT,
    error           TEXT,
    writer_pid      INTEGER,
    writer_host     TEXT
);
CREATE INDEX IF NOT EXISTS runs_created_at ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
"""

_RUN_COLUMNS = (
    "id, kind, status, created_at, finished_at, model, seed, config_json, provenance_json, "
    "summary_json, parent_id, error"
)


@dataclass(frozen=True)
class RunInfo:
    """One row of the registry, with its JSON columns decoded and its artifact folder."""

    id: str
    kind: str
    status: RunStatus
    created_at: str
    finished_at: str | None
    model: str
    seed: int
    config: dict[str, Any]
    provenance: dict[str, Any]
    summary: dict[str, Any] | None
    parent_id: str | None
    error: str | None
    path: Path


# --------------------------------------------------------------------------------------------
# Files: atomic writes, JSON, hashing
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where dirs cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows, or no permission: the rename is still atomic, just not durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only if the ``with`` block succeeds.

    The temp file sits in the same folder (``os.replace`` is atomic only within one
    filesystem) and is created with mode 0o666 & ~umask, not mkstemp's 0o600, so the final
    file gets ordinary permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    with _atomic_writer(Path(path)) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder in it (itself included), so that
    what a later ``os.replace`` publishes is on disk, not only in the page cache."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def publish_dir(tmp: Path, target: Path) -> None:
    """Durably move the finished folder ``tmp`` to ``target`` (a sibling of it): its files
    are fsynced first, an existing ``target`` is moved aside and deleted only after the swap,
    and the parent folder is fsynced. A reader sees the old folder or the new one; a process
    killed midway leaves ``target`` intact or absent plus hidden siblings that
    :func:`remove_orphans` clears."""
    fsync_tree(tmp)
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old / "x", target)  # put the previous folder back
        raise
    finally:
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_orphans(parent: Path, patterns: Iterable[str]) -> list[Path]:
    """Delete the temp siblings (``patterns``, globs) a killed :func:`publish_dir` writer left
    in ``parent``. Only call it while no other process can be writing there (under the
    run's writer lock, or a lock of the folder's own)."""
    removed = []
    for pat in patterns:
        for p in sorted(parent.glob(pat)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def file_sha256(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (model weights can be gigabytes)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                digest.update(chunk)
    except FileNotFoundError:
        raise StoreError(f"cannot hash {path}: no such file") from None
    except IsADirectoryError:
        raise StoreError(f"cannot hash {path}: it is a directory, not a file") from None
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    """Encode the non-JSON types that configs and records commonly carry."""
    if hasattr(obj, "model_dump"):  # pydantic v2 models (configs, records)
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if callable(getattr(obj, "tolist", None)):  # numpy / torch arrays and scalars, unimported
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON: {obj!r}")


def _dumps(obj: Any, *, indent: int | None = None) -> str:
    # NaN/Infinity stay allowed: metrics of empty categories are NaN and must round-trip.
    return json.dumps(obj, default=_json_default, ensure_ascii=False, indent=indent)


def _record_line(record: Any) -> bytes:
    """One JSONL line (with its newline) for a mapping, pydantic model or dataclass."""
    if isinstance(record, Mapping):
        obj: Any = dict(record)
    else:
        obj = _json_default(record)  # raises TypeError for anything that is not a record
        if not isinstance(obj, dict):
            raise TypeError(f"a record must be a mapping, got {type(record).__name__}")
    # json.dumps escapes newlines inside strings, so one record is exactly one line.
    return (_dumps(obj) + "\n").encode("utf-8")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(ts: dt.datetime) -> str:
    # Fixed width (microseconds, +00:00) so that string order is time order in SQL.
    return ts.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _new_run_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state(cwd: str | Path | None = None, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """``{"revision": sha | None, "dirty": bool | None}`` for the repo containing ``cwd``."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                # --no-optional-locks: `git status` would otherwise refresh the index and take
                # index.lock, racing with a user's concurrent `git commit`.
                ["git", "--no-optional-locks", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):  # no git, timeout, bad cwd
            return None
        return done.stdout if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if revision is None:  # not a repo, or a repo without commits
        return {"revision": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "revision": revision.strip(),
        "dirty": None if status is None else bool(status.strip()),
    }


def _cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model and the dtype-relevant flags; flags are None where /proc/cpuinfo is absent."""
    model: str | None = None
    flags: set[str] | None = None
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "processor") and value.strip():
            # "processor" is an index on x86 but the model name on some ARM kernels.
            if key != "processor" or not value.strip().isdigit():
                model = value.strip()
        elif flags is None and key in ("flags", "features"):  # "Features" on ARM
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return {
        "model": model or platform.processor() or None,
        "flags": None if flags is None else {flag: flag in flags for flag in DTYPE_CPU_FLAGS},
    }


def collect_provenance(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe the environment a run executes in, for reproducibility.

    Args:
        extra: Entries to add (model and data hashes, the chosen dtype, thread count ...);
            they override collected keys of the same name.

    Returns:
        A JSON-serialisable dict: ``timestamp_utc``, ``python``, ``platform``, ``hostname``,
        ``pid``, ``packages`` (name → version or None), ``git`` (revision and dirtiness of
        the current working directory's repository, None when there is none) and ``cpu``
        (model and :data:`DTYPE_CPU_FLAGS`). The command line is deliberately absent: the
        library never reads ``sys.argv``; the CLI may pass it in ``extra``.
    """
    provenance: dict[str, Any] = {
        "timestamp_utc": _iso(_utc_now()),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "description": platform.platform(),
        },
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "packages": {name: _package_version(name) for name in PROVENANCE_PACKAGES},
        "git": _git_state(),
        "cpu": _cpu_info(),
    }
    if extra:
        provenance.update(extra)
    return provenance


WRITER_LOCK = ".writer.lock"


def _try_lock(path: Path) -> IO[bytes] | None:
    """An exclusive ``flock`` on ``path`` without waiting: the open file, or None if another
    open file (any process, any pid namespace on this disk) holds it. The kernel releases
    it when the holder exits, however it exits (SIGKILL included)."""
    import fcntl

    fh = open(path, "ab")  # noqa: SIM115  # held open as the lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # e.g. Windows: cannot tell; assume alive rather than mislabel a run
        return True
    return True


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class RunStore:
    """Registry of runs (SQLite) plus one artifact folder per run.

    Each method opens its own short-lived SQLite connection, so one store may be used from
    several threads and many processes may share a root; writers wait up to
    ``busy_timeout_s`` for each other. The registry is created on the first write; reading an
    empty root finds no runs and creates nothing.

    Args:
        root: The store's folder (the CLI's default is :data:`DEFAULT_ROOT`).
        busy_timeout_s: How long a write waits for another process's lock before failing.
    """

    def __init__(self, root: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.root = Path(root)
        self.registry_path = self.root / REGISTRY_NAME
        self.runs_dir = self.root / RUNS_DIRNAME
        self.busy_timeout_s = busy_timeout_s
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # ---- registry ------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode; SQLite's operational errors become StoreError."""
        if not self._schema_ready:
            self._init_registry()
        try:
            conn = sqlite3.connect(self.registry_path, timeout=self.busy_timeout_s)
        except sqlite3.Error as exc:
            raise self._store_error(exc) from exc
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction
        # takes the lock up front and waits on busy_timeout instead of failing on upgrade.
        conn.isolation_level = None
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            yield conn
        except sqlite3.DatabaseError as exc:  # locked, disk I/O, "file is not a database" ...
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise  # our bugs or handled by the caller, not the user's to fix
            raise self._store_error(exc) from exc
        finally:
            conn.close()

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        message = str(exc)
        if "locked" in message or "busy" in message:
            hint = (
                f"another process held it for more than {self.busy_timeout_s:g} s; retry, or "
                "raise busy_timeout_s"
            )
        else:
            hint = "check that the file is a selfimprove registry on a local disk and not damaged"
        return StoreError(f"run registry {self.registry_path}: {message} ({hint})")

    def _init_registry(self) -> None:
        """Create the root, registry (WAL) and schema if missing; check the schema version."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.registry_path, timeout=self.busy_timeout_s)
            conn.isolation_level = None
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                # WAL lets readers run while a writer commits; the mode is stored in the file.
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    logger.warning(
                        "registry %s: journal_mode is %s, not wal", self.registry_path, mode
                    )
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                    version = SCHEMA_VERSION
                else:
                    version = int(row[0])
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._store_error(exc) from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run registry {self.registry_path} has schema version {version}, but this "
                f"selfimprove understands up to {SCHEMA_VERSION}; upgrade selfimprove or use "
                "another --root"
            )
        self._schema_ready = True

    def _row_to_info(self, row: sqlite3.Row) -> RunInfo:
        summary_json = row["summary_json"]
        return RunInfo(
            id=row["id"],
            kind=row["kind"],
            status=row["status"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            model=row["model"],
            seed=row["seed"],
            config=json.loads(row["config_json"]),
            provenance=json.loads(row["provenance_json"]),
            summary=None if summary_json is None else json.loads(summary_json),
            parent_id=row["parent_id"],
            error=row["error"],
            path=self.runs_dir / row["id"],
        )

    def _resolve_id(self, run_id: str) -> str:
        """Full id for an exact id or a unique prefix; StoreError otherwise."""
        run_id = run_id.strip()
        not_found = StoreError(
            f"no run {run_id!r} in {self.root}; run `selfimprove runs list` to see run ids"
        )
        if not run_id or not _RUN_ID_PREFIX_RE.match(run_id):
            raise not_found
        if not self.registry_path.exists():
            raise not_found
        with self._connect() as conn:
            # The prefix has only [0-9a-f-], so it cannot contain LIKE wildcards.
            rows = conn.execute(
                "SELECT id FROM runs WHERE id LIKE ? ORDER BY id LIMIT 6", (run_id + "%",)
            ).fetchall()
        ids = [r[0] for r in rows]
        if run_id in ids:
            return run_id
        if not ids:
            raise not_found
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise StoreError(
                f"run id prefix {run_id!r} is ambiguous in {self.root}: it matches {shown}; "
                "give more characters"
            )
        return ids[0]

    # ---- runs ----------------------------------------------------------------------------

    def create_run(
        self,
        kind: str,
        *,
        config: Mapping[str, Any],
        seed: int,
        model: str,
        provenance: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
    ) -> RunInfo:
        """Register a new ``running`` run and create its folder with config and provenance.

        Args:
            kind: What the run is (``evaluate``, ``loop``, ``diff`` ...).
            config: The resolved config; written to ``config.json`` and the registry.
            seed: The run's seed.
            model: Model id or path.
            provenance: From :func:`collect_provenance`; collected here when None.
            parent_id: Run this one belongs to (a loop's round, a resumed run), id or prefix.

        Returns:
            The new run.
        """
        if not kind:
            raise ValueError("kind must be a non-empty string")
        if provenance is None:
            provenance = collect_provenance()
        if parent_id is not None:
            parent_id = self._resolve_id(parent_id)
        config_json = _dumps(config)
        provenance_json = _dumps(provenance)
        if not self._schema_ready:
            self._init_registry()
        for _attempt in range(10):
            now = _utc_now()
            run_id = _new_run_id(now)
            run_path = self.runs_dir / run_id
            try:
                run_path.mkdir(parents=True)
            except FileExistsError:  # same second and same 6 hex digits: draw again
                continue
            try:
                atomic_write_text(run_path / "config.json", _dumps(config, indent=2) + "\n")
                atomic_write_text(run_path / "provenance.json", _dumps(provenance, indent=2) + "\n")
                with self._connect() as conn:
                    conn.execute(
                        "INSERT INTO runs (id, kind, status, created_at, model, seed, "
                        "config_json, provenance_json, parent_id, writer_pid, writer_host) "
                        "VALUES (:id, :kind, 'running', :created_at, :model, :seed, :config_json, "
                        ":provenance_json, :parent_id, :writer_pid, :writer_host)",
                        {
                            "id": run_id,
                            "kind": kind,
                            "created_at": _iso(now),
                            "model": model,
                            "seed": int(seed),
                            "config_json": config_json,
                            "provenance_json": provenance_json,
                            "parent_id": parent_id,
                            "writer_pid": os.getpid(),
                            "writer_host": socket.gethostname(),
                        },
                    )
            except sqlite3.IntegrityError:  # id taken by a run whose folder was deleted
                shutil.rmtree(run_path, ignore_errors=True)
                continue
            except BaseException:
                shutil.rmtree(run_path, ignore_errors=True)
                raise
            logger.info("created run %s (%s) in %s", run_id, kind, run_path)
            return self.get_run(run_id)
        raise StoreError(f"could not allocate a new run id in {self.root} after 10 attempts")

    def get_run(self, run_id: str) -> RunInfo:
        """The run with this id or unique id prefix."""
        full_id = self._resolve_id(run_id)
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (full_id,)
            ).fetchone()
        if row is None:  # deleted between resolve and select
            raise StoreError(
                f"no run {run_id!r} in {self.root}; run `selfimprove runs list` to see run ids"
            )
        return self._row_to_info(row)

    def list_runs(self, limit: int | None = 20, kind: str | None = None) -> list[RunInfo]:
        """Runs newest first, at most ``limit`` (None: all), optionally of one ``kind``."""
        if not self.registry_path.exists():
            return []
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind = ?"
            params.append(kind)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(int(limit), 0))
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._row_to_info(r) for r in rows]

    def finish_run(
        self,
        run_id: str,
        status: FinalStatus,
        *,
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> RunInfo:
        """Set a run's final status, finish time, and optionally summary and error message.

        A summary given here replaces one set with :meth:`set_summary`; without one, that
        summary is kept. Finishing a run that :meth:`mark_stale_running` marked
        ``interrupted`` is allowed (its writer was alive after all) and logged; finishing a
        ``completed`` or ``failed`` run raises StoreError.
        """
        if status not in _FINAL_STATUSES:
            raise ValueError(f"status must be one of {_FINAL_STATUSES}, got {status!r}")
        full_id = self._resolve_id(run_id)
        summary_json = None if summary is None else _dumps(summary)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (full_id,)).fetchone()
                current = row[0] if row else None
                if current in ("completed", "failed"):
                    raise StoreError(
                        f"run {full_id} is already {current}; a run is finished only once"
                    )
                if current == "interrupted":
                    logger.warning(
                        "run %s was marked interrupted but its writer finished it as %s",
                        full_id,
                        status,
                    )
                conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, error = ?, "
                    "summary_json = COALESCE(?, summary_json) WHERE id = ?",
                    (status, _iso(_utc_now()), error, summary_json, full_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if summary is not None:
            self.write_json(full_id, "summary.json", summary)
        logger.info("run %s %s%s", full_id, status, f": {error}" if error else "")
        return self.get_run(full_id)

    def set_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """Store a run's summary (registry and ``summary.json``), e.g. before :meth:`track` exits."""
        full_id = self._resolve_id(run_id)
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET summary_json = ? WHERE id = ?", (_dumps(summary), full_id)
            )
        self.write_json(full_id, "summary.json", summary)

    @contextmanager
    def track(
        self,
        kind: str,
        *,
        config: Mapping[str, Any],
        seed: int,
        model: str,
        provenance: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
    ) -> Iterator[RunInfo]:
        """Create a run for the ``with`` block and record how the block ended.

        Normal exit → ``completed``; ``KeyboardInterrupt`` (or another non-``Exception``
        such as ``SystemExit``) → ``interrupted``; any other exception → ``failed`` with
        ``"<Type>: <message>"`` as the error. Exceptions are always re-raised. If the block
        already finished the run itself, the block's status is kept.

        Example::

            with store.track("evaluate", config=cfg, seed=0, model=name) as run:
                store.append_records(run.id, "records.jsonl", batch)
                store.set_summary(run.id, {"accuracy": 0.41})
        """
        run = self.create_run(
            kind,
            config=config,
            seed=seed,
            model=model,
            provenance=provenance,
            parent_id=parent_id,
        )
        lock = _try_lock(self.run_dir(run.id) / WRITER_LOCK)  # a new run: nobody else has it
        try:
            with self._finishing(run):
                yield run
        finally:
            if lock is not None:
                lock.close()

    def resumable(self, run_id: str, *, kind: str | None = None) -> RunInfo:
        """The run :meth:`resume` would re-open, checked now (before any expensive setup).

        Args:
            run_id: Run id or unique prefix.
            kind: The kind the caller can continue (``eval``, ``run`` ...); None: any.

        Raises:
            StoreError: No such run, a run of another kind, or one that is ``completed`` or
                still running in a live process.
        """
        self.mark_stale_running()
        run = self.get_run(run_id)
        if kind is not None and run.kind != kind:
            raise StoreError(
                f"run {run.id} is of kind {run.kind!r}, not {kind!r}, so it cannot be resumed "
                f"here; `selfimprove runs list --kind {kind}` lists the runs that can"
            )
        if run.status not in ("interrupted", "failed"):
            raise StoreError(
                f"run {run.id} is {run.status}; only an interrupted or failed run can be resumed"
            )
        return run

    @contextmanager
    def resume(self, run_id: str, *, kind: str | None = None) -> Iterator[RunInfo]:
        """Re-open an ``interrupted`` or ``failed`` run for the ``with`` block (like :meth:`track`).

        The run becomes ``running`` again under this process; how the block ends is
        recorded as in :meth:`track`. The checks are :meth:`resumable`'s: resuming a run of
        another ``kind``, a ``completed`` run, or one still running in a live process raises
        StoreError. Two processes resuming one run at once cannot both get it: the writer
        holds the run folder's ``.writer.lock`` for the whole block, and the status moves to
        ``running`` only from ``interrupted`` / ``failed`` (compare-and-set); the loser gets
        a StoreError.
        """
        run = self.resumable(run_id, kind=kind)
        lock = _try_lock(self.run_dir(run.id) / WRITER_LOCK)
        if lock is None:
            raise StoreError(
                f"run {run.id} is being written by another process (it holds "
                f"{self.run_dir(run.id) / WRITER_LOCK}); wait for it to finish or stop it"
            )
        try:
            with self._connect() as conn:
                cur = conn.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, "
                    "writer_pid = ?, writer_host = ? WHERE id = ? "
                    "AND status IN ('interrupted', 'failed')",
                    (os.getpid(), socket.gethostname(), run.id),
                )
            if cur.rowcount != 1:
                raise StoreError(
                    f"run {run.id} was resumed by another process first; "
                    "`selfimprove runs show` says where it stands"
                )
            logger.info("resumed run %s", run.id)
            with self._finishing(run):
                yield self.get_run(run.id)
        finally:
            lock.close()

    @contextmanager
    def _finishing(self, run: RunInfo) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._finish_quietly(run.id, "failed", _describe(exc))
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, GeneratorExit
            self._finish_quietly(run.id, "interrupted", _describe(exc))
            raise
        if self.get_run(run.id).status not in ("completed", "failed"):
            self.finish_run(run.id, "completed")

    def _finish_quietly(self, run_id: str, status: FinalStatus, error: str) -> None:
        """Finish a run on an exception path without masking the exception being raised."""
        try:
            if self.get_run(run_id).status not in ("completed", "failed"):
                self.finish_run(run_id, status, error=error)
        except Exception:
            logger.exception("could not mark run %s as %s", run_id, status)

    def mark_stale_running(self) -> list[str]:
        """Mark ``running`` runs whose writer process no longer exists as ``interrupted``.

        A writer of :meth:`track` / :meth:`resume` holds its run folder's ``.writer.lock``
        (an ``flock``) while it runs; the kernel drops it when the process dies, however it
        dies. So a run whose lock can be taken has no writer — from any host name or pid
        namespace sharing this disk (containers) — and a run whose lock is held is alive,
        whatever its recorded pid says. Runs without a lock file (older runs, or made by
        :meth:`create_run` alone) fall back to the pid: only those from this host can be
        checked, and a recycled pid makes a dead writer look alive, never the reverse.

        Returns:
            The ids of the runs marked.
        """
        if not self.registry_path.exists():
            return []
        host = socket.gethostname()
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, writer_pid, writer_host FROM runs WHERE status = 'running'"
            ).fetchall()
            now = _iso(_utc_now())
            marked = []
            for run_id, pid, whost in rows:
                lock_path = self.runs_dir / run_id / WRITER_LOCK
                held = None
                if lock_path.is_file():
                    held = _try_lock(lock_path)
                    if held is None:
                        continue  # the writer is alive
                    why = f"its writer (pid {pid} on {whost}) released {WRITER_LOCK}: it exited"
                elif whost == host and pid is not None and not _pid_alive(pid):
                    why = f"writer process {pid} on {host} exited without finishing the run"
                else:
                    continue
                try:
                    cur = conn.execute(
                        "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? "
                        "WHERE id = ? AND status = 'running'",
                        (now, why, run_id),
                    )
                finally:
                    if held is not None:
                        held.close()
                if cur.rowcount:
                    marked.append(run_id)
        for run_id in marked:
            logger.warning("run %s was left running by a dead process; marked interrupted", run_id)
        return marked

    # ---- artifacts -----------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The artifact folder of a run (id or unique prefix)."""
        if _RUN_ID_RE.match(run_id) and (self.runs_dir / run_id).is_dir():
            return self.runs_dir / run_id  # fast path: no registry query per artifact write
        return self.runs_dir / self._resolve_id(run_id)

    def _artifact_path(self, run_id: str, name: str) -> Path:
        rel = PurePath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or rel.anchor:
            raise ValueError(f"artifact name must be a relative path inside the run, got {name!r}")
        return self.run_dir(run_id) / rel

    def write_json(self, run_id: str, name: str, obj: Any) -> Path:
        """Write ``obj`` as indented JSON to the run's folder atomically; returns the path."""
        path = self._artifact_path(run_id, name)
        atomic_write_text(path, _dumps(obj, indent=2) + "\n")
        return path

    def read_json(self, run_id: str, name: str) -> Any:
        """Read a JSON artifact; a missing or corrupt file raises StoreError naming it."""
        path = self._artifact_path(run_id, name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreError(f"run {path.parent.name} has no artifact {name!r} ({path})") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"{path}:{exc.lineno}: corrupt JSON ({exc.msg}); re-create the file or the run"
            ) from None

    def write_records(self, run_id: str, name: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Write records as JSONL, replacing the file atomically; returns the count.

        Records may also be pydantic models or dataclasses. If iterating ``records`` raises,
        the previous file (if any) is left untouched and no temp file remains.
        """
        path = self._artifact_path(run_id, name)
        count = 0
        with _atomic_writer(path) as fh:
            for record in records:
                fh.write(_record_line(record))
                count += 1
        return count

    def append_records(self, run_id: str, name: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Append one batch of records to a JSONL file and fsync it; returns the count.

        The whole batch is serialised before anything is written, so a batch that fails to
        serialise appends nothing. A partial last line left by a killed writer is cut off
        first (with a warning) so the new records do not glue onto it.
        """
        path = self._artifact_path(run_id, name)
        lines = [_record_line(record) for record in records]
        if not lines:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            _truncate_partial_last_line(fh, path)
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        return len(lines)

    def read_records(
        self, run_id: str, name: str, *, skip_corrupt: bool = False
    ) -> list[dict[str, Any]]:
        """Read a JSONL artifact into a list of dicts.

        Args:
            run_id: Run id or unique prefix.
            name: File name inside the run folder.
            skip_corrupt: Skip a corrupt *last* line (what a killed writer leaves) with a
                warning. A corrupt line elsewhere always raises.

        Raises:
            StoreError: The file is missing, or a line is not a JSON object (names file
                and 1-based line number).
        """
        path = self._artifact_path(run_id, name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"run {path.parent.name} has no artifact {name!r} ({path})") from None
        lines = data.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records: list[dict[str, Any]] = []
        for index, raw in enumerate(lines):
            if not raw.strip():
                continue
            problem: str | None = None
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "not valid UTF-8"
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON: {exc.msg} at column {exc.colno}"
            else:
                if isinstance(obj, dict):
                    records.append(obj)
                    continue
                problem = f"a JSON {type(obj).__name__}, not an object"
            lineno = index + 1
            if skip_corrupt and index == last:
                logger.warning(
                    "%s:%d: skipping corrupt last line (%s); a writer was probably killed",
                    path,
                    lineno,
                    problem,
                )
                break
            hint = (
                "the last line of a file whose writer was killed can be skipped with "
                "skip_corrupt=True"
                if index == last
                else "fix or delete that line"
            )
            raise StoreError(f"{path}:{lineno}: corrupt record ({problem}); {hint}")
        return records


def _describe(exc: BaseException) -> str:
    """``"<Type>: <message>"``, or just the type when the message is empty."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _truncate_partial_last_line(fh: IO[bytes], path: Path) -> None:
    """Cut a file opened 'a+b' back to its last newline if it does not end with one."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    # Scan backwards in blocks for the last newline; records are short, so this is quick.
    pos = size
    keep = 0
    while pos > 0:
        start = max(0, pos - 65536)
        fh.seek(start)
        block = fh.read(pos - start)
        idx = block.rfind(b"\n")
        if idx >= 0:
            keep = start + idx + 1
            break
        pos = start
    logger.warning(
        "%s: dropping %d bytes of a partial last line before appending", path, size - keep
    )
    fh.truncate(keep)
    fh.seek(keep)
