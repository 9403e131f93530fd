"""MLflow helpers: one SQLite store per workspace by default, explicit run ids, no network.

Everything goes through ``MlflowClient`` with explicit run ids rather than the fluent
``mlflow.start_run`` API, whose active-run stack is per thread and breaks under Prefect's
thread/process task runners.

Default (no ``MLFLOW_TRACKING_URI`` in the environment): ``sqlite:///<workspace>/mlflow.db``,
artifacts under ``<workspace>/mlartifacts/<experiment>/``. Call :func:`init_tracking` once in
the flow process before any fan-out: creating the SQLite schema runs Alembic migrations, which
fail if several processes run them at once. It also exports ``MLFLOW_TRACKING_URI`` so
subprocess workers inherit the store.
"""

from __future__ import annotations

import os

# Before importing mlflow: no telemetry, no GitPython warning when git is absent.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import fcntl  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sqlite3  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator, Mapping  # noqa: E402

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: E402

try:  # MLflow's own limits (6000 / 250 / 100 / 1000 in MLflow 3.x)
    from mlflow.utils.validation import (MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH,
                                         MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH)
except ImportError:  # pragma: no cover
    MAX_PARAM_VAL_LENGTH, MAX_ENTITY_KEY_LENGTH = 6000, 250
    MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH = 100, 1000

ENV_URI = "MLFLOW_TRACKING_URI"
_state: dict[str, Any] = {"uri": None, "artifact_root": None, "exported": None}
_clients: dict[str, MlflowClient] = {}
_clients_guard = threading.Lock()
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def _client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or _state["uri"] or mlflow.get_tracking_uri()
    with _clients_guard:
        if uri not in _clients:
            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


def tracking_uri() -> str:
    """The URI set by the last :func:`init_tracking` (or MLflow's own default)."""
    return _state["uri"] or mlflow.get_tracking_uri()


def init_tracking(workspace: str | os.PathLike, experiment: str | None = None,
                  export_env: bool = True) -> str:
    """Choose and initialise the tracking store; returns its URI.

    A ``MLFLOW_TRACKING_URI`` set by the user wins (one exported by an earlier call of this
    function does not count). Otherwise a SQLite file in ``workspace`` is created and migrated
    here, under a file lock, and ``experiment`` (if given) is created.
    """
    ws = Path(workspace).expanduser().absolute()
    ws.mkdir(parents=True, exist_ok=True)
    env = os.environ.get(ENV_URI)
    if env and env != _state["exported"]:
        uri, artifact_root = env, None
    else:
        uri = f"sqlite:///{ws / 'mlflow.db'}"
        artifact_root = (ws / "mlartifacts").as_uri()
    _state.update(uri=uri, artifact_root=artifact_root)
    lock_cm = _file_lock(ws / ".mlflow-init.lock") if uri.startswith("sqlite:") \
        else contextlib.nullcontext()
    with lock_cm:
        _check_sqlite(uri)
        client = _client(uri)
        client.search_experiments(max_results=1)  # creates + migrates the DB
        if experiment:
            get_or_create_experiment(experiment, uri)
    if export_env:
        mlflow.set_tracking_uri(uri)  # also sets os.environ[MLFLOW_TRACKING_URI]
        os.environ[ENV_URI] = uri
        _state["exported"] = uri
    return uri


def _check_sqlite(uri: str) -> None:
    """Raise at once, naming the file, where a SQLite store cannot be opened or is not a database
    (a folder in its place, a file of something else): MLflow retries opening it for ~100 s first."""
    if not uri.startswith("sqlite:///"):
        return
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if path in ("", ":memory:"):
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=20)) as con:
            con.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as e:
        raise RuntimeError(f"MLflow's tracking store {path} cannot be opened: {e}") from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def get_or_create_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Experiment id for ``name``; creates it (artifacts under the workspace) or restores a
    deleted one (MLflow refuses to create a name that a deleted experiment still holds)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if _state["artifact_root"] and (tracking_uri in (None, _state["uri"])):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "experiment"
        location = f"{_state['artifact_root']}/{safe}"
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name(name)  # created concurrently by another process
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------- params / metrics
def _clean_key(key: str) -> str:
    return _KEY_BAD.sub("_", key)[:MAX_ENTITY_KEY_LENGTH]


def _as_mapping(obj: Any) -> Mapping | None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return obj
    return None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/dataclasses -> ``{"a.b.c": leaf}``; lists and other leaves kept as-is."""
    m = _as_mapping(obj)
    if m is None:
        return {prefix or "value": obj}
    out: dict[str, Any] = {}
    for k, v in m.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if _as_mapping(v) is not None and len(_as_mapping(v)) > 0:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _param_value(v: Any) -> str:
    if isinstance(v, str):
        s = v
    elif isinstance(v, (list, tuple, dict)) or _as_mapping(v) is not None:
        try:
            from tasks.cachekey import to_jsonable
            s = json.dumps(to_jsonable(v), sort_keys=True)
        except (TypeError, ValueError):
            s = str(v)
    else:
        s = str(v)
    if len(s) > MAX_PARAM_VAL_LENGTH:
        digest = hashlib.sha256(s.encode()).hexdigest()[:12]
        tail = f"...[truncated, sha256:{digest}]"
        s = s[: MAX_PARAM_VAL_LENGTH - len(tail)] + tail
    return s


def flatten_params(params: Any) -> dict[str, str]:
    """MLflow-ready params: dotted keys (sanitised, <=250 chars, unique), string values
    truncated to MLflow's limit with a hash of the full value."""
    out: dict[str, str] = {}
    for k, v in flatten(params).items():
        key = _clean_key(k)
        if key in out:  # collision after truncation/sanitising: disambiguate
            key = key[: MAX_ENTITY_KEY_LENGTH - 9] + "_" + hashlib.sha256(k.encode()).hexdigest()[:8]
        out[key] = _param_value(v)
    return out


def log_params(run_id: str, params: Any, tracking_uri: str | None = None) -> None:
    items = [Param(k, v) for k, v in flatten_params(params).items()]
    client = _client(tracking_uri)
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_TAGS_PER_BATCH])


def log_metrics_by_step(run_id: str, metrics: Mapping[str, Any], step: int,
                        tracking_uri: str | None = None, timestamp_ms: int | None = None) -> int:
    """Log ``metrics`` (nested dicts flattened to dotted names) at ``step`` (= training step).
    ``None`` values are skipped; returns the number of metrics logged."""
    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = []
    for k, v in flatten(metrics).items():
        if v is None:
            continue
        fv = float(v)  # bool/int/numpy scalars; NaN/inf are stored as such
        if math.isnan(fv) and isinstance(v, str):
            raise ValueError(f"metric {k!r}: not a number: {v!r}")
        items.append(Metric(_clean_key(k), fv, ts, int(step)))
    client = _client(tracking_uri)
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])
    return len(items)


# ---------------------------------------------------------------- runs
def start_parent_run(experiment: str, run_name: str, params: Any = None,
                     tags: Mapping[str, str] | None = None,
                     tracking_uri: str | None = None) -> str:
    """Create a top-level run in ``experiment`` with flattened ``params``; returns its run id.
    The run stays RUNNING until :func:`finish_run` (or use :func:`run_scope`)."""
    client = _client(tracking_uri)
    exp_id = get_or_create_experiment(experiment, tracking_uri)
    run = client.create_run(exp_id, run_name=run_name,
                            tags={k: str(v) for k, v in (tags or {}).items()})
    if params:
        log_params(run.info.run_id, params, tracking_uri)
    return run.info.run_id


def nested_run(parent_run_id: str, name: str, params: Any = None,
               tags: Mapping[str, str] | None = None, tracking_uri: str | None = None) -> str:
    """Create a child run of ``parent_run_id`` (same experiment, ``mlflow.parentRunId`` tag,
    which is what the MLflow UI nests by); returns its run id."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    all_tags.update({MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name})
    run = client.create_run(parent.info.experiment_id, run_name=name, tags=all_tags)
    if params:
        log_params(run.info.run_id, params, tracking_uri)
    return run.info.run_id


def run_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The tags of a run."""
    return dict(_client(tracking_uri).get_run(run_id).data.tags)


def finish_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    """End a run: status is FINISHED, FAILED or KILLED."""
    RunStatus.from_string(status)  # validates
    _client(tracking_uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def run_scope(run_id: str, tracking_uri: str | None = None) -> Iterator[str]:
    """``with run_scope(nested_run(...)) as rid:`` -> FINISHED, or FAILED/KILLED on error."""
    try:
        yield run_id
    except KeyboardInterrupt:
        finish_run(run_id, "KILLED", tracking_uri)
        raise
    except BaseException:
        finish_run(run_id, "FAILED", tracking_uri)
        raise
    else:
        finish_run(run_id, "FINISHED", tracking_uri)


def set_tags(run_id: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> None:
    client = _client(tracking_uri)
    for k, v in tags.items():
        client.set_tag(run_id, _clean_key(k), str(v))


def log_artifact(run_id: str, path: str | os.PathLike, artifact_path: str | None = None,
                 tracking_uri: str | None = None) -> None:
    """Copy a file, or a folder's contents, into the run's artifacts (under ``artifact_path``)."""
    p = Path(path)
    client = _client(tracking_uri)
    if p.is_dir():
        client.log_artifacts(run_id, str(p), artifact_path)
    elif p.is_file():
        client.log_artifact(run_id, str(p), artifact_path)
    else:
        raise FileNotFoundError(f"log_artifact: no such file or folder: {p}")
