"""Writing what finished: DuckDB rows (the record) and MLflow runs (the view for people).

Only the flow process uses this module: it is the single DuckDB writer. Every row comes from a
stage artifact, so a cached rerun writes identical rows again (upserts are idempotent).

A process that must not write (a sweep point or a deployment unit on a worker) records into a
:class:`Journal` instead: the same calls, as JSON, written to ``<workspace>/journals/<run_id>.json``
on the shared storage. The sweep or fan-out flow, the single writer, replays a journal into a
Recorder (:func:`replay`); the rows still come from the artifacts the journal points to.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks import tracking
from tasks.results import ResultsDB
from tasks.stage_configs import MEAN_LAYER


MLFLOW_PAUSE_S = 300.0  # after a refused MLflow write, how long its writes are skipped


class MlflowWrites:
    """MLflow writes that warn instead of raising. DuckDB is the record, MLflow the view: an MLflow
    write that fails is passed to ``warn`` and skipped, where it stopped the run, and with it a
    training of hours. MLflow's SQLite store refuses writes after 20 s while another process holds
    a transaction open on it (a notebook's sqlite3 connection, a database browser), and for a run
    deleted in its UI. After a refusal, MLflow writes are skipped for MLFLOW_PAUSE_S, so a held
    store does not stall the flow 20 s a write; the next write that MLflow takes says how many were
    skipped."""

    def __init__(self, warn=None):
        self._warn = warn or logging.getLogger(__name__).warning
        self._paused_until = 0.0
        self._skipped = 0

    def __call__(self, what: str, action, always: bool = False):
        """``action()``, the MLflow writes (or reads) of ``what``; its result, or None where it
        raised or MLflow is paused. ``always``: tried while paused too (ending a run: skipped, it
        would stay RUNNING)."""
        if not always and time.monotonic() < self._paused_until:
            self._skipped += 1
            return None
        try:
            out = action()
        except Exception as e:
            self._paused_until = time.monotonic() + MLFLOW_PAUSE_S
            self._warn("MLflow did not take %s: %s; MLflow is skipped for the next %.0f minutes (DuckDB, the "
                       "record, is written as before)", what, e, MLFLOW_PAUSE_S / 60)
            return None
        if self._skipped:
            self._warn("MLflow takes writes again; it lacks the %d skipped before (DuckDB has them)", self._skipped)
            self._skipped = 0
        return out


class Recorder:
    """Writes DuckDB rows and, when ``mlflow_parent`` is a run id, MLflow runs (``None``: DuckDB
    only, e.g. when a sweep re-records a point that MLflow already holds). MLflow errors are
    warned about and skipped (:class:`MlflowWrites`; ``mlflow`` shares one between recorders)."""

    def __init__(self, db: ResultsDB, run_id: str, mlflow_parent: str | None, warn=None,
                 mlflow: MlflowWrites | None = None):
        self.db, self.run_id, self.parent = db, run_id, mlflow_parent
        self._warn = warn or logging.getLogger(__name__).warning
        self._mlflow_writes = mlflow or MlflowWrites(self._warn)
        self._metrics: dict[int, dict] = {}

    def _mlflow(self, what: str, action) -> None:
        """``action()``, the MLflow writes of ``what``, where the run has an MLflow parent."""
        if self.parent:
            self._mlflow_writes(what, action)

    def _log(self, metrics: dict, step: int) -> None:
        self._mlflow(f"the run's metrics at step {step}",
                     lambda: tracking.log_metrics_by_step(self.parent, metrics, step))

    def _child(self, name: str, params: dict, metrics: dict, step: int) -> None:
        def write():  # a child whose metrics are refused ends FAILED, not RUNNING beside a later, complete one
            with tracking.run_scope(tracking.nested_run(self.parent, name, params)) as child:
                tracking.log_metrics_by_step(child, metrics, step)

        self._mlflow(f"its child run {name}", write)

    def _remember(self, ckpt: dict, ev: dict) -> None:
        step = int(ckpt["step"])
        self._metrics[step] = {"step": step, "checkpoint_key": ckpt["key"], "eval_key": ev["key"],
                               "tokens_seen": ckpt["tokens_seen"], **ev["metrics"]}

    def stage(self, out: dict) -> None:
        self.db.upsert("stage_runs", [{
            "run_id": self.run_id, "stage": out["stage"], "key": out["key"], "status": out["status"],
            "seconds": out["seconds"],
            "finished_at": datetime.fromisoformat(out["finished_at"]) if out.get("finished_at") else datetime.now(timezone.utc),
            "machine": (out.get("meta") or {}).get("machine"),  # None for an artifact from before the stamp
        }])

    def run(self, preset, cfg, data_key, train_key, started, status, finished_at=None) -> None:
        config = cfg if isinstance(cfg, dict) else cfg.as_dict()
        row = {"run_id": self.run_id, "preset": preset, "config": config, "data_key": data_key,
               "train_key": train_key, "started_at": started, "status": status}
        if status != "running":
            row["finished_at"] = finished_at or datetime.now(timezone.utc)
        self.db.upsert("runs", [row])

    def dataset(self, ds: dict, cfg) -> None:
        self.stage(ds)
        config = cfg if isinstance(cfg, dict) else asdict(cfg)
        self.db.upsert("datasets", [{"key": ds["key"], "config": config, "stats": ds["meta"]["stats"]}])
        stats = {f"data.{s}.{k}": v for s, st in ds["meta"]["stats"].items() for k, v in st.items()
                 if isinstance(v, (int, float))}
        self._log(stats, 0)

    def checkpoint(self, ckpt: dict, ev: dict) -> None:
        self.stage(ev)
        step = int(ckpt["step"])
        self.db.upsert("checkpoints", [{"key": ckpt["key"], "train_key": ckpt["train_key"], "step": step,
                                        "tokens_seen": ckpt["tokens_seen"], "path": ckpt["path"]}])
        metrics = ev["metrics"]
        self.db.upsert("checkpoint_metrics", [
            {"checkpoint_key": ckpt["key"], "eval_key": ev["key"], "train_key": ckpt["train_key"], "step": step,
             "metric": k, "value": v}
            for k, v in metrics.items()])
        self._remember(ckpt, ev)
        self._log(metrics, step)
        self._child(f"checkpoint-{step}", {"step": step, "key": ckpt["key"]}, metrics, step)

    def checkpoint_rows(self) -> list[dict]:
        return [self._metrics[s] for s in sorted(self._metrics)]

    def probes(self, out: dict) -> None:
        """Rows of one probe grid (checkpoint x semantics) from its artifact files."""
        self.stage(out)
        folder = Path(out["path"])
        for table in ("probe_results", "probe_summary", "controls"):
            path = folder / f"{table}.parquet"
            if path.exists():
                self.db.upsert(table, pd.read_parquet(path))
        meta = out["meta"]
        if not (folder / "probe_summary.parquet").exists():  # nothing was probed (no action pairs)
            return
        summary = pd.read_parquet(folder / "probe_summary.parquet")
        test = summary[(summary["split"] == "test") & (summary["layer"] == MEAN_LAYER)]
        metrics = {f"probe.{meta['semantics']}.{r.feature}.o{r.offset}.{r.probe}": r.mean for r in test.itertuples()}
        self._child(f"probes-{meta['step']}-{meta['semantics']}",
                    {"step": meta["step"], "semantics": meta["semantics"], "key": out["key"]}, metrics, int(meta["step"]))
        self._log(metrics, int(meta["step"]))

    def phases(self, out: dict, train_key: str) -> None:
        from tasks.phases import CONTENT_METRICS, content_rows

        self.stage(out)
        folder = Path(out["path"])
        for table in ("interventions", "interventions_vs_init", "phases"):
            path = folder / f"{table}.parquet"
            if path.exists():
                rows = pd.read_parquet(path)
                self.db.upsert(table, rows.assign(phases_key=out["key"]))
        rows = content_rows(out, train_key)
        self.db.upsert("semantic_content", rows)
        for r in rows:  # the run's own content, under the names of its other per-step metrics
            self._log({name: r[column] for column, name in CONTENT_METRICS.items() if pd.notna(r[column])}, r["step"])
        self._log({k: v for k, v in out["meta"].items() if isinstance(v, (int, float)) and v is not None}, 0)

    def unit(self, kind: str, status: str, info: dict | None = None) -> None:
        """A deployment unit (``flows.units``: train one model, evaluate and probe one
        checkpoint) started, finished or failed. Nothing to write: the study that fanned out
        records its own ``runs`` row; the :class:`Journal` keeps it as the unit's status."""

    def report(self, out: dict) -> None:
        self._mlflow("the report", lambda: tracking.log_artifact(self.parent, out["folder"], "report"))
        try:
            from prefect.artifacts import create_link_artifact, create_table_artifact

            create_table_artifact(key="semprobe-summary", table=out["table"],
                                  description="This run's numbers next to the paper's")
            create_link_artifact(key="semprobe-report", link=Path(out["html"]).as_uri(),
                                 description="Figures and the full report (self-contained HTML)")
        except Exception as e:  # the Prefect artifacts are a convenience: never lose the run for them
            self._warn("could not create Prefect artifacts: %s", e)


class Journal(Recorder):
    """A Recorder that writes nothing: it keeps each call as JSON for a writer to :func:`replay`.

    ``where`` says which process ran the point (host, pid, Prefect worker, pinned device).
    """

    def __init__(self, run_id: str):
        super().__init__(None, run_id, None)
        self.calls: list[list] = []
        self.where = {"host": socket.gethostname(), "pid": os.getpid(),
                      "worker": os.environ.get("PREFECT__WORKER_NAME"),
                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def _keep(self, name: str, *args) -> None:
        # NaN metrics stay NaN (Python's JSON writes and reads them); the replay stores NULL
        self.calls.append([name, json.loads(json.dumps(list(args), default=str))])

    def stage(self, out):
        self._keep("stage", out)

    def run(self, preset, cfg, data_key, train_key, started, status, finished_at=None):
        config = cfg if isinstance(cfg, dict) else cfg.as_dict()
        finished_at = finished_at or (datetime.now(timezone.utc) if status != "running" else None)
        self._keep("run", preset, config, data_key, train_key, _iso(started), status, _iso(finished_at))

    def dataset(self, ds, cfg):
        self._keep("dataset", ds, cfg if isinstance(cfg, dict) else asdict(cfg))

    def checkpoint(self, ckpt, ev):
        self._remember(ckpt, ev)
        self._keep("checkpoint", ckpt, ev)

    def probes(self, out):
        self._keep("probes", out)

    def phases(self, out, train_key):
        self._keep("phases", out, train_key)

    def unit(self, kind, status, info=None):
        self._keep("unit", kind, status, info or {})

    def report(self, out):  # the report reads DuckDB: the writer builds it after replaying
        pass

    def status(self) -> str | None:
        """The last run or unit status recorded ('running', 'finished' or 'failed')."""
        marks = [args[5] if name == "run" else args[1] for name, args in self.calls if name in ("run", "unit")]
        return marks[-1] if marks else None

    def stages(self) -> list[dict]:
        """Every stage summary the journal mentions (for checking they are still complete)."""
        out = []
        for name, args in self.calls:
            if name == "checkpoint":
                out.append(args[1])
            elif name in ("stage", "dataset", "probes", "phases"):
                out.append(args[0])
        return out

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "where": self.where, "calls": self.calls}

    def write(self, ws_root: str | os.PathLike) -> Path:
        """Write atomically to ``<ws_root>/journals/<run_id>.json`` (the shared storage)."""
        path = journal_path(ws_root, self.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.as_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, ws_root: str | os.PathLike, run_id: str) -> "Journal":
        data = json.loads(journal_path(ws_root, run_id).read_text())
        j = cls(data["run_id"])
        j.where, j.calls = data.get("where", {}), data["calls"]
        return j


def journal_path(ws_root: str | os.PathLike, run_id: str) -> Path:
    return Path(ws_root) / "journals" / f"{run_id}.json"


class Replay:
    """One journal's replay into a Recorder (:func:`replay`), resumable where the results file is
    held: every Recorder call writes its DuckDB rows before its MLflow writes, so a
    :class:`~tasks.results.DatabaseLockedError` leaves the call that raised it unwritten in MLflow,
    and ``into`` called again goes on from that call, writing nothing to MLflow twice."""

    def __init__(self, journal: Journal, store=None):
        self.journal, self.store, self.done = journal, store, 0

    def into(self, rec: Recorder) -> None:
        for name, args in self.journal.calls[self.done:]:
            if self.store is not None and name in ("probes", "phases"):
                args = [localized(a, self.store) for a in args]
            getattr(rec, name)(*args)
            self.done += 1


def replay(journal: Journal, rec: Recorder, store=None) -> None:
    """Make ``rec`` (a real Recorder) write what ``journal`` recorded, in the same order.

    With ``store`` (the artifact store), the calls that read artifact files (probes, phases)
    get their ``path`` resolved again on this machine: a worker recorded its own path, which for
    a remote store is its local cache (the other artifacts are not downloaded)."""
    Replay(journal, store).into(rec)


def localized(arg, store):
    """``arg`` with its ``path`` resolved in ``store`` on this machine, where it is a stage summary
    (a worker journalled its own path); anything else as it is."""
    if isinstance(arg, dict) and {"stage", "key", "path"} <= set(arg):
        return {**arg, "path": str(store.path(arg["stage"], arg["key"]))}
    return arg


def _iso(t: datetime | str | None) -> str | None:
    return t.isoformat() if isinstance(t, datetime) else t


def find_mlflow_run(experiment: str, tags: dict[str, str], parent: str | None = None,
                    status: str | None = None) -> str | None:
    """The id of the newest run in ``experiment`` carrying all ``tags`` (under ``parent``; in
    ``status`` only, e.g. "FINISHED", where given), or None. Lets a resubmitted sweep find the runs
    it logged before."""
    found = find_mlflow_runs(experiment, tags, parent, status, max_results=1)
    return found[0] if found else None


def find_mlflow_runs(experiment: str, tags: dict[str, str], parent: str | None = None,
                     status: str | None = None, max_results: int = 1000) -> list[str]:
    """The ids of the runs :func:`find_mlflow_run` chooses from, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if parent:
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")
    if status:
        clauses.append(f"attributes.status = '{status}'")
    runs = client.search_runs([exp.experiment_id], " and ".join(clauses), max_results=max_results,
                              order_by=["attributes.start_time DESC"])
    return [r.info.run_id for r in runs]
