"""Sweeps: many points (a base preset plus ``section.field=value`` overrides) run as pipelines.

A spec (YAML or TOML) names a base preset, overrides every point shares, and a grid (the
cartesian product) and/or a list of points::

    name: seeds            # default: the file's stem
    preset: smoke
    set: {train.steps: 12}
    grid: {train.seed: [0, 1, 2, 3], train.lr: [1e-3, 3e-4]}
    points: [{model.n_layer: 4, train.seed: 9}]

In TOML the same keys are TOML's own dotted keys (``[grid]`` then ``train.seed = [0, 1, 2, 3]``).

Two ways to run the points, one way to record them:

* ``mode="deployment"``: each point is a run of the ``semprobe-pipeline/point`` deployment
  (``run_deployment``), picked up by whichever worker of the ``gpu`` pool is free. The
  idempotency key is the point's cache key (resolved config + all the code it runs + workspace), so a
  resubmitted sweep finds its earlier runs instead of creating new ones. A run that crashed or
  failed is resubmitted under the next key of its chain (``<key>~2``, ``<key>~3``), so a
  resubmission walks the same chain and again creates nothing new.
* ``mode="local"``: the points run one after another as subflows of this process, for one
  machine with no Prefect server or workers. (Not in threads: a failing point stops training in
  its whole process, see ``tasks.training.STOP``; Prefect's process-pool task runner broke
  against the temporary server when tried. For points at once on one machine, run the pool
  there: a local server and one worker per device.)

Either way a point runs with ``record_results=False``: it writes no DuckDB and no MLflow, only
a journal on the shared workspace. This flow is the single writer: it replays each finished
point's journal into DuckDB, builds the point's report, and logs an MLflow parent run for the
sweep whose children are the points (found again by tag when resubmitted, not duplicated).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from flows.deployment_runs import Recordings, Unit, UnitRuns, journal_if_complete
from flows.pipeline import pipeline, until_recorded
from flows.stopping import exit_if_stopped, note_signals, stop_if_signalled, stopping
from flows.presets import PRESETS, load_preset
from tasks import record, tracking
from tasks.cachekey import cache_key
from tasks.report import build_report
from tasks.results import ResultsDB
from tasks.stage import RUN_CODE  # what a point key hashes: same key, same code and artifacts
from tasks.workspace import Workspace

DEPLOYMENT = "semprobe-pipeline/point"
SPEC_KEYS = {"name", "preset", "set", "grid", "points"}
POLL_S = 5.0


@dataclass(frozen=True)
class Point:
    label: str                   # the overrides that vary between points, e.g. "train.seed=3"
    overrides: tuple[str, ...]   # every override, shared ones first
    key: str                     # hash of the resolved config and the library code


@dataclass(frozen=True)
class SweepSpec:
    name: str
    preset: str
    points: tuple[Point, ...]
    source: dict = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.name, self.preset, [p.key for p in self.points]]).encode()).hexdigest()[:16]


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def point_key(preset: str, overrides) -> str:
    """The point's cache key: its resolved config (so spelling a default out changes nothing)
    and the code of the libraries, stages and flows it runs (``RUN_CODE``)."""
    cfg = load_preset(preset, list(overrides))
    return cache_key("point", cfg.as_dict(), [], RUN_CODE)


def _dotted(mapping: dict) -> dict:
    """``{"train": {"seed": x}}`` (TOML's ``train.seed = x``, nested YAML) as ``{"train.seed": x}``;
    keys already dotted stay as they are."""
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update({f"{k}.{field}": value for field, value in v.items()})
        else:
            out[k] = v
    return out


def parse_spec(data: dict, name: str = "sweep") -> SweepSpec:
    """A spec from its parsed YAML/TOML; every point is validated against the preset."""
    if not isinstance(data, dict):
        raise ValueError("sweep spec: expected a mapping with preset, set, grid and/or points")
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ValueError(f"sweep spec: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    preset = str(data.get("preset", "cpu"))
    if preset not in PRESETS:
        raise ValueError(f"sweep spec: preset {preset!r} is not one of {sorted(PRESETS)}")
    for part in ("set", "grid"):
        if not isinstance(data.get(part) or {}, dict):
            raise ValueError(f"sweep spec: {part} must be a mapping of section.field to "
                             f"{'value' if part == 'set' else 'a list of values'}, got {data[part]!r}")
    fixed, grid = _dotted(data.get("set") or {}), _dotted(data.get("grid") or {})
    both = sorted(set(fixed) & set(grid))
    if both:  # the grid's values would replace the set one without a word
        raise ValueError(f"sweep spec: {both} in both set and grid; give each field in one of them")
    shared = [f"{k}={_fmt(v)}" for k, v in fixed.items()]
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep spec: grid {k!r} must be a non-empty list")
    varying = [[f"{k}={_fmt(v)}" for k, v in zip(grid, combo)] for combo in itertools.product(*grid.values())] \
        if grid else []
    for p in data.get("points") or []:
        if not isinstance(p, dict):
            raise ValueError(f"sweep spec: each of points must be a mapping, got {p!r}")
        varying.append([f"{k}={_fmt(v)}" for k, v in _dotted(p).items()])
    if not varying:
        varying = [[]] if shared else []
    if not varying:
        raise ValueError("sweep spec: no points (give a grid, points, or set)")
    points, seen = [], {}
    for vary in varying:
        overrides = tuple(shared + vary)
        key = point_key(preset, overrides)  # raises ValueError naming a bad override
        label = " ".join(vary) or "base"
        if key in seen:
            raise ValueError(f"sweep spec: points {seen[key]!r} and {label!r} are the same config")
        seen[key] = label
        points.append(Point(label, overrides, key))
    return SweepSpec(str(data.get("name") or name), preset, tuple(points), source=data)


class _SpecLoader(yaml.SafeLoader):
    """YAML as ``safe_load`` reads it, but integers in decimal only: YAML 1.1 read ``seed: 010``
    as 8 (octal), ``0x10`` as 16 and ``1:20`` as 80 (base 60), without a word. Those now stay text,
    which the override's own parsing reads as decimal (``010``: 10) or refuses, naming the field."""


_INT = "tag:yaml.org,2002:int"
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    text = p.read_text()
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"sweep spec {p}: not valid YAML: {e}") from None
    return parse_spec(data, name=p.stem)


# ------------------------------------------------------------------ recording (the single writer)
class SweepRecorder:
    """DuckDB rows and MLflow runs of a sweep's points, idempotent across resubmissions.

    MLflow is the view, DuckDB the record, as for a run (``record.MlflowWrites``): an MLflow error
    is warned about and skipped; a point MLflow missed gets its child run when the sweep is
    submitted again. A point's recording stopped by a held results file goes on where it stopped
    at its next call (``point``), so its child run and rows are written once."""

    def __init__(self, ws: Workspace, spec: SweepSpec, flow_run_id: str, warn):
        self.ws, self.spec = ws, spec
        self.db = ResultsDB(ws.db_path)
        self.experiment = f"semprobe-{spec.preset}"
        self.warn, self.mlflow = warn, record.MlflowWrites(warn)
        self._open: dict[str, tuple] = {}  # point key -> (finished child or None, new child or None, Recorder, Replay)
        self.parent = self.mlflow("the sweep's run", lambda: self._parent(flow_run_id))

    def _parent(self, flow_run_id: str) -> str:
        tracking.init_tracking(self.ws.root, self.experiment)
        return record.find_mlflow_run(self.experiment, {"semprobe.sweep": self.spec.key}) or tracking.start_parent_run(
            self.experiment, f"sweep-{self.spec.name}", {"sweep": self.spec.source, "points": len(self.spec.points)},
            tags={"semprobe.sweep": self.spec.key, "prefect_flow_run": flow_run_id})

    def _children(self, point: Point, status: str | None = None, max_results: int = 1000) -> list[str]:
        """The point's MLflow child runs, newest first (in ``status`` only, where given); none
        without a parent run or where MLflow refused the search."""
        if not self.parent:
            return []
        return self.mlflow(f"the search for point {point.label}'s runs", lambda: record.find_mlflow_runs(
            self.experiment, {"semprobe.point": point.key}, parent=self.parent, status=status,
            max_results=max_results)) or []

    def _child(self, point: Point, status: str | None = None) -> str | None:
        """The point's newest MLflow child run (in ``status`` only, where given), or None."""
        found = self._children(point, status, max_results=1)
        return found[0] if found else None

    def earlier(self, point: Point) -> record.Journal | None:
        """The journal of the point's run that this sweep recorded before (its MLflow child names
        the flow run; finished or not, as when the sweep stopped while replaying it), when every
        artifact it names is still complete; else None."""
        logged = self._child(point)
        run_id = self.mlflow("the child run's tags", lambda: tracking.run_tags(logged).get("prefect_flow_run")) \
            if logged else None
        return journal_if_complete(self.ws, run_id) if run_id else None

    def point(self, point: Point, journal: record.Journal) -> dict:
        """Replay a finished point into DuckDB (always: upserts are idempotent) and MLflow (once)."""
        if point.key not in self._open:
            logged = self._child(point, "FINISHED")
            child = None if logged or not self.parent else self._new_child(point, journal)
            rec = record.Recorder(self.db, journal.run_id, child, warn=self.warn, mlflow=self.mlflow)
            self._open[point.key] = (logged, child, rec, record.Replay(journal, self.ws.store))
        logged, child, rec, replay = self._open[point.key]
        replay.into(rec)
        report = build_report(str(self.ws.root), journal.run_id, self.spec.preset)
        rec.report(report)
        del self._open[point.key]
        if child:
            self.mlflow(f"the end of point {point.label}'s run", lambda: tracking.finish_run(child), always=True)
        return {"report": report["html"], "mlflow_run": child or logged}

    def _new_child(self, point: Point, journal: record.Journal) -> str | None:
        """A child run for the point; those left RUNNING by recordings that were cut off (several,
        where ending one was refused before) are ended FAILED."""
        for run in self._children(point, "RUNNING"):
            self.mlflow(f"the end of point {point.label}'s unfinished run {run}",
                        functools.partial(tracking.finish_run, run, "FAILED"))
        params = load_preset(self.spec.preset, list(point.overrides)).as_dict()
        tags = {"semprobe.point": point.key, "prefect_flow_run": journal.run_id,
                **{f"where.{k}": v for k, v in journal.where.items() if v is not None}}
        return self.mlflow(f"point {point.label}'s run",
                           lambda: tracking.nested_run(self.parent, point.label, params, tags=tags))

    def finish(self, ok: bool) -> None:
        status = "FINISHED" if ok else "FAILED"
        if self.parent:
            self.mlflow("the end of the sweep's run", lambda: tracking.finish_run(self.parent, status), always=True)


# ------------------------------------------------------------------ deployment mode
def _run_deployments(spec: SweepSpec, ws: Workspace, rec: SweepRecorder, deployment: str,
                     max_attempts: int, poll_s: float) -> list[dict]:
    from prefect import get_client

    log = get_run_logger()
    runs = UnitRuns(ws, spec.name, max_attempts, tags=("semprobe-sweep", f"sweep:{spec.name}"))
    units = [runs.submit(Unit("point", p.label, p.key, deployment, {
        "preset": spec.preset, "overrides": list(p.overrides), "workspace": str(ws.root),
        "record_results": False, "progress": False})) for p in spec.points]
    status = {}
    recordings = Recordings(log)

    def record_point(p: Point, u) -> None:  # resumable: rec.point goes on where a held results file stopped it
        status[p.key] = {"where": u.journal.where, **rec.point(p, u.journal)}

    try:
        with get_client(sync_client=True) as client:
            while any(u.state == "submitted" for u in units):
                for u in runs.poll(client):
                    p = spec.points[units.index(u)]
                    log.info("point %s finished (flow run %s on %s)", p.label, u.flow_run,
                             u.journal.where.get("worker"))
                    recordings.add(functools.partial(record_point, p, u))
                recordings.write()
                if any(u.state == "submitted" for u in units):
                    time.sleep(poll_s)
                    stop_if_signalled()
    except BaseException:
        # a stop (or a failure) with finished points queued behind a held results file: record
        # what can be now (a second signal is only noted); the rest when the sweep is submitted again
        stopping()
        recordings.write_on_stop("the sweep submitted again records them")
        raise
    recordings.write_all()
    return [{"point": u.label, "key": u.key, "attempt": u.attempt, "flow_runs": u.flow_runs, "state": u.state,
             "flow_run": u.flow_run, **({"detail": u.detail} if u.detail else {}), **status.get(u.key, {})}
            for u in units]


# ------------------------------------------------------------------ local mode
def _run_local(spec: SweepSpec, ws: Workspace, rec: SweepRecorder) -> list[dict]:
    log = get_run_logger()
    out = []
    for p in spec.points:
        st = {"point": p.label, "key": p.key, "attempt": 1}
        journal = rec.earlier(p)  # resubmitted: its finished run is found, as the deployment mode finds it
        if journal is not None:
            log.info("point %s: finished before, in flow run %s", p.label, journal.run_id)
        else:
            try:
                res = pipeline(preset=spec.preset, overrides=list(p.overrides), workspace=str(ws.root),
                               record_results=False, progress=False)
                journal = journal_if_complete(ws, res["run_id"])
            except Exception as e:
                journal, res = None, e
        if journal is None:
            st.update(state="failed", detail=repr(res)[:500])
            log.error("point %s failed: %r", p.label, res)
        else:
            st.update(state="finished", flow_run=journal.run_id, where=journal.where,
                      **until_recorded(log, functools.partial(rec.point, p, journal)))
            log.info("point %s finished", p.label)
        out.append(st)
    return out


# ------------------------------------------------------------------ the flow
@flow(name="semprobe-sweep")
def sweep(spec: dict, workspace: str | None = None, mode: str = "deployment", deployment: str = DEPLOYMENT,
          max_attempts: int = 3, poll_s: float = POLL_S, name: str = "sweep") -> dict:
    """Run every point of ``spec`` (a parsed YAML/TOML sweep spec), record them, return a summary."""
    if mode not in ("deployment", "local"):
        raise ValueError(f"sweep mode must be 'deployment' or 'local', not {mode!r}")
    ws = Workspace.at(workspace)
    s = parse_spec(spec, name)
    from prefect.runtime import flow_run

    t0 = time.perf_counter()
    unnote = note_signals()  # before the first write, as the pipeline
    rec = None
    try:
        rec = SweepRecorder(ws, s, str(flow_run.id), warn=get_run_logger().warning)
        if mode == "deployment":
            points = _run_deployments(s, ws, rec, deployment, max_attempts, poll_s)
        else:
            points = _run_local(s, ws, rec)
    except BaseException as exc:  # a stop (SIGTERM, Ctrl-C) leaves with its code; the points go on on their workers
        stopping()
        if rec is not None:
            rec.finish(False)
        exit_if_stopped(exc)
        raise
    finally:
        unnote()
    ok = all(p["state"] == "finished" for p in points)
    rec.finish(ok)  # MLflow errors are warned about (SweepRecorder)
    out = {"sweep": s.name, "key": s.key, "mlflow_run": rec.parent, "ok": ok, "points": points,
           "seconds": round(time.perf_counter() - t0, 1)}
    if not ok:
        failed = [p["point"] for p in points if p["state"] != "finished"]
        raise RuntimeError(f"sweep {s.name}: {len(failed)} point(s) did not finish: {failed}; summary: {json.dumps(out, default=str)}")
    return out
