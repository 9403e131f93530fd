import dataclasses
import os
import re
from pathlib import Path

import pytest

from tasks import tracking as T

mlflow = T.mlflow


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    d_model: int = 64
    layers: tuple = (1, 2)


@pytest.fixture(scope="module")
def shared_ws(tmp_path_factory):
    # one migrated SQLite store for the module: creating one costs seconds. Not exported: a
    # MLFLOW_TRACKING_URI left in this process would be "the user's" store to every later test's
    # subprocess, which then logged there (and, for an experiment that store lacked, into
    # ./mlruns of its working directory: the repository)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        w = tmp_path_factory.mktemp("shared") / "ws"
        T.init_tracking(w, experiment="smoke", export_env=False)
        yield w
    T._state.update(uri=None, artifact_root=None, exported=None)


@pytest.fixture
def ws(shared_ws, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # what init_tracking exports: conftest undoes it
    monkeypatch.chdir(tmp_path)  # anything written to the cwd would show up here
    uri = T.init_tracking(shared_ws, experiment="smoke")
    yield shared_ws, uri
    mlflow.set_tracking_uri(None)
    T._state.update(uri=None, artifact_root=None, exported=None)


def test_init_creates_sqlite_store_and_experiment(ws):
    w, uri = ws
    assert uri == f"sqlite:///{w / 'mlflow.db'}"
    assert (w / "mlflow.db").is_file()
    assert os.environ["MLFLOW_TRACKING_URI"] == uri  # inherited by subprocess workers
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("smoke")
    assert exp is not None
    assert exp.artifact_location == (w / "mlartifacts" / "smoke").as_uri()
    assert T.init_tracking(w, experiment="smoke") == uri  # idempotent
    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY") == "true"


def test_second_workspace_not_shadowed_by_our_own_export(ws, tmp_path):
    w2 = tmp_path / "ws2"
    uri2 = T.init_tracking(w2)
    assert uri2 == f"sqlite:///{w2 / 'mlflow.db'}" and (w2 / "mlflow.db").is_file()


def test_user_tracking_uri_wins(ws, tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert T.init_tracking(tmp_path / "ws3", experiment="e") == other
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (tmp_path / "ws3" / "mlflow.db").exists()


def test_parent_nested_metrics_artifacts_roundtrip(ws, tmp_path):
    w, uri = ws
    params = {"preset": "smoke", "model": ModelCfg(), "data": {"n": 10, "sem": {"kind": "orig"}},
              "long": "x" * 7000, "empty": {}, "weird key!": 1,
              **{f"many.p{i}": i for i in range(150)}}  # > 100 params: batched
    parent = T.start_parent_run("roundtrip", "pipeline-1", params, tags={"git": "abc"})
    child = T.nested_run(parent, "ckpt-100", {"step": 100})
    for step, acc in [(0, 0.1), (100, 0.5), (200, 0.9)]:
        T.log_metrics_by_step(parent, {"gen": {"accuracy": acc}, "ppl": 10 - step / 100,
                                       "skip": None}, step)
    T.log_metrics_by_step(child, {"probe.acc": 0.7}, 100)
    f = tmp_path / "report.html"
    f.write_text("<html>ok</html>")
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "phase.png").write_bytes(b"\x89PNG")
    T.log_artifact(parent, f)
    T.log_artifact(parent, figs, artifact_path="figures")
    with pytest.raises(FileNotFoundError):
        T.log_artifact(parent, tmp_path / "nope")
    T.finish_run(child)
    T.finish_run(parent)

    assert mlflow.get_tracking_uri() == uri  # init_tracking set the global URI
    runs = mlflow.search_runs(experiment_names=["roundtrip"])
    assert set(runs.run_id) == {parent, child}
    p = runs[runs.run_id == parent].iloc[0]
    assert p["params.preset"] == "smoke"
    assert p["params.model.d_model"] == "64"
    assert p["params.model.layers"] == "[1, 2]"
    assert p["params.data.sem.kind"] == "orig"
    assert p["params.weird key_"] == "1"
    assert p["params.many.p149"] == "149"
    assert p["params.empty"] == "{}"
    assert len(p["params.long"]) == 6000 and "truncated, sha256:" in p["params.long"]
    assert p["tags.git"] == "abc" and p["status"] == "FINISHED"
    assert p["metrics.gen.accuracy"] == pytest.approx(0.9)  # latest value
    assert "metrics.skip" not in runs.columns
    kids = mlflow.search_runs(experiment_names=["roundtrip"],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert kids.run_id.tolist() == [child]
    assert kids.iloc[0]["tags.mlflow.runName"] == "ckpt-100"
    assert kids.iloc[0]["params.step"] == "100"

    client = mlflow.MlflowClient(uri)
    hist = client.get_metric_history(parent, "gen.accuracy")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.1), (100, 0.5), (200, 0.9)]
    arts = {a.path for a in client.list_artifacts(parent)}
    assert arts == {"report.html", "figures"}
    assert [a.path for a in client.list_artifacts(parent, "figures")] == ["figures/phase.png"]
    stored = list((w / "mlartifacts" / "roundtrip").rglob("phase.png"))
    assert len(stored) == 1
    # nothing written outside the workspace (e.g. ./mlruns in the cwd)
    assert sorted(x.name for x in Path.cwd().iterdir()) == ["figs", "report.html"]


def test_run_scope_marks_failure(ws):
    w, uri = ws
    rid = T.start_parent_run("smoke", "failing", {"a": 1})
    with pytest.raises(RuntimeError):
        with T.run_scope(rid):
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(uri).get_run(rid).info.status == "FAILED"
    with T.run_scope(T.nested_run(rid, "ok")) as child:
        pass
    assert mlflow.MlflowClient(uri).get_run(child).info.status == "FINISHED"


def test_new_experiment_and_restored_deleted(ws):
    w, uri = ws
    eid = T.get_or_create_experiment("sweep-a")
    client = mlflow.MlflowClient(uri)
    client.delete_experiment(eid)
    assert T.get_or_create_experiment("sweep-a") == eid
    assert client.get_experiment(eid).lifecycle_stage == "active"


def test_flatten_params_limits():
    long_key = "k" * 300
    out = T.flatten_params({long_key: 1, "a": {"b": [1, {"c": 2}]}, "x/y z": None})
    assert all(len(k) <= 250 for k in out)
    assert out["a.b"] == '[1, {"c": 2}]'
    assert out["x/y z"] == "None"


def test_a_refused_mlflow_write_is_warned_about_and_duckdb_still_records(ws, tmp_path):
    """MLflow is the view, DuckDB the record: the parent run deleted in MLflow's UI mid-run made
    every later MLflow write raise, and the pipeline's recording with it (training stopped)."""
    from tasks.record import Recorder
    from tasks.results import ResultsDB

    w, uri = ws
    parent = T.start_parent_run("smoke", "deleted-mid-run", {"a": 1})
    warnings: list[str] = []
    rec = Recorder(ResultsDB(tmp_path / "results.duckdb"), "run-1", parent,
                   warn=lambda msg, *args: warnings.append(msg % args))
    ckpt = {"key": "ck-s100", "train_key": "tk", "step": 100, "tokens_seen": 6400, "path": "/x"}
    ev = {"stage": "evaluate", "key": "ev-1", "status": "computed", "seconds": 1.0, "metrics": {"acc": 0.5}}
    rec.checkpoint(ckpt, ev)  # MLflow takes it
    assert warnings == []
    mlflow.MlflowClient(uri).delete_run(parent)
    rec.checkpoint({**ckpt, "key": "ck-s200", "step": 200}, {**ev, "key": "ev-2", "metrics": {"acc": 0.7}})
    # a child run under the deleted parent MLflow still creates
    assert len(warnings) == 1 and "MLflow did not take the run's metrics at step 200" in warnings[0], warnings
    rec.checkpoint({**ckpt, "key": "ck-s300", "step": 300}, {**ev, "key": "ev-3", "metrics": {"acc": 0.8}})
    assert len(warnings) == 1  # MLflow paused after a refusal: no write tried (each could cost 20 s)
    rows = rec.db.query("SELECT step, value FROM checkpoint_metrics ORDER BY step")
    assert rows.values.tolist() == [[100, 0.5], [200, 0.7], [300, 0.8]]


def test_a_replay_stopped_by_a_held_results_file_goes_on_without_writing_mlflow_twice(ws, tmp_path):
    """A fan-out or sweep replays each finished unit's journal into DuckDB and MLflow. A results
    file held by another process (a notebook) failed the whole study; now the replay waits at the
    call it could not write (``Recordings``) and goes on from there once the file is free."""
    import logging
    import subprocess
    import sys

    from flows.deployment_runs import Recordings
    from tasks.record import Journal, Recorder, Replay
    from tasks.results import ResultsDB

    w, uri = ws
    parent = T.start_parent_run("smoke", "replayed", {"a": 1})
    db = ResultsDB(tmp_path / "results.duckdb", lock_timeout=0.2)
    journal = Journal("unit-run")
    ckpt = {"key": "ck-s100", "train_key": "tk", "step": 100, "tokens_seen": 6400, "path": "/x"}
    ev = {"stage": "evaluate", "key": "ev-1", "status": "computed", "seconds": 1.0, "metrics": {"acc": 0.5}}
    journal.checkpoint(ckpt, ev)
    rec, replay = Recorder(db, "study-run", parent), Replay(journal)
    warnings: list[str] = []
    log = logging.getLogger("test-recordings")
    log.warning = lambda msg, *args: warnings.append(msg % args)
    recordings = Recordings(log)
    recordings.add(lambda: replay.into(rec))
    assert recordings.write() and replay.done == 1  # the first call, written while the file is free
    # the unit's later calls meet a held file: a second real process with a read-write connection
    journal.checkpoint({**ckpt, "key": "ck-s200", "step": 200}, {**ev, "key": "ev-2", "metrics": {"acc": 0.7}})
    journal.checkpoint({**ckpt, "key": "ck-s300", "step": 300}, {**ev, "key": "ev-3", "metrics": {"acc": 0.9}})
    recordings.add(lambda: replay.into(rec))
    code = "import duckdb,sys; c=duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.readline()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(db.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert not recordings.write() and not recordings.write()  # not raised: the study goes on
        assert replay.done == 1 and len(warnings) == 1, warnings  # said once, not at every poll
        assert str(db.path) in warnings[0] and f"PID {holder.pid}" in warnings[0]
        # a stop now (SIGTERM): what cannot be recorded is said, not raised over the stop
        recordings.write_on_stop("the sweep submitted again records them")
        assert warnings[1:] == ["1 finished run(s) not recorded: the sweep submitted again records them"]
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert recordings.write() and replay.done == 3 and not recordings.queue
    assert db.query("SELECT step, value FROM checkpoint_metrics ORDER BY step").values.tolist() == \
        [[100, 0.5], [200, 0.7], [300, 0.9]]
    client = mlflow.MlflowClient(uri)
    assert sorted((m.step, m.value) for m in client.get_metric_history(parent, "acc")) == \
        [(100, 0.5), (200, 0.7), (300, 0.9)]  # each step once
    kids = mlflow.search_runs(experiment_names=["smoke"], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(kids["tags.mlflow.runName"]) == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]


def test_a_sweep_warns_of_mlflow_errors_and_finds_a_point_whose_recording_was_cut_off(ws):
    """A sweep's own MLflow calls are warnings too (its points are recorded in DuckDB all the same;
    a store that cannot be opened at all: the test after this one), and a point whose replay was
    cut off (its child run left RUNNING) is found on resubmission, not run again; its next child
    run ends the cut-off ones FAILED."""
    from flows.sweep import SweepRecorder, parse_spec
    from tasks.record import Journal
    from tasks.workspace import Workspace

    w, uri = ws
    spec = parse_spec({"preset": "smoke", "grid": {"train.seed": [0]}}, "cut")
    point = spec.points[0]
    warnings: list[str] = []
    warn = lambda msg, *args: warnings.append(msg % args)  # noqa: E731
    rec = SweepRecorder(Workspace.at(w), spec, "sweep-flow-run", warn)
    assert rec.parent and warnings == []
    journal = Journal("point-run")
    journal.run("smoke", {}, "d", "t", "2026-12-06T00:00:00+00:00", "finished")
    journal.write(w)
    assert rec.earlier(point) is None
    cut = rec._new_child(point, journal)  # the replay that was cut off before finish_run
    found = rec.earlier(point)
    assert found is not None and found.run_id == "point-run"
    again = rec._new_child(point, journal)
    client = mlflow.MlflowClient(uri)
    assert (client.get_run(cut).info.status, client.get_run(again).info.status) == ("FAILED", "RUNNING")
    assert rec._child(point, "FINISHED") is None and rec._child(point) == again
    # two left RUNNING (ending one was refused, then that recording was cut off too): both are ended
    older = T.nested_run(rec.parent, point.label, {}, tags={"semprobe.point": point.key})
    third = rec._new_child(point, journal)
    assert [client.get_run(r).info.status for r in (again, older, third)] == ["FAILED", "FAILED", "RUNNING"]

    client.delete_run(rec.parent)  # deleted in the UI
    rec.finish(True)
    assert len(warnings) == 1 and "MLflow did not take the end of the sweep's run" in warnings[0], warnings


def test_a_store_that_cannot_be_opened_is_named_at_once_and_the_run_records_duckdb_alone(tmp_path, monkeypatch):
    """A folder (or any non-database) where the workspace's mlflow.db should be: MLflow retried
    opening it for ~100 s before it raised. init_tracking now names the file at once, the run's
    parent run is None (one warning) and its rows go to DuckDB without any MLflow write."""
    from flows.pipeline import _end_parent_run, _parent_run
    from flows.presets import load_preset
    from tasks.record import MlflowWrites, Recorder
    from tasks.results import ResultsDB
    from tasks.workspace import Workspace

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder, garbage = tmp_path / "folder", tmp_path / "garbage"
    (folder / "mlflow.db").mkdir(parents=True)
    garbage.mkdir()
    (garbage / "mlflow.db").write_bytes(b"not a database, " * 256)
    try:
        named = re.escape(f"tracking store {folder / 'mlflow.db'} cannot be opened: unable to open")
        with pytest.raises(RuntimeError, match=named):
            T.init_tracking(folder, experiment="smoke")
        with pytest.raises(RuntimeError, match="mlflow.db cannot be opened: file is not a database"):
            T.init_tracking(garbage, experiment="smoke")

        warnings: list[str] = []
        writes = MlflowWrites(lambda msg, *args: warnings.append(msg % args))
        ws = Workspace.at(folder)
        parent = writes("the run's parent run", lambda: _parent_run(ws, "smoke", "run-1", load_preset("smoke"), {}))
        assert parent is None and len(warnings) == 1
        assert f"{folder / 'mlflow.db'} cannot be opened" in warnings[0], warnings
        rec = Recorder(ResultsDB(tmp_path / "results.duckdb"), "run-1", parent, mlflow=writes)
        ckpt = {"key": "ck-s100", "train_key": "tk", "step": 100, "tokens_seen": 6400, "path": "/x"}
        rec.checkpoint(ckpt, {"stage": "evaluate", "key": "ev-1", "status": "computed", "seconds": 1.0,
                              "metrics": {"acc": 0.5}})
        _end_parent_run(writes, parent, "FINISHED")
        assert rec.db.query("SELECT step, value FROM checkpoint_metrics").values.tolist() == [[100, 0.5]]
        assert len(warnings) == 1  # no MLflow write was tried without a parent
    finally:
        mlflow.set_tracking_uri(None)
        T._state.update(uri=None, artifact_root=None, exported=None)
