"""The smoke preset end to end through Prefect (real temporary server, DuckDB, MLflow SQLite),
then the cache: a rerun recomputes nothing, a deleted artifact recomputes only what needs it,
and a run killed in the middle of training resumes from its last checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import karel
from flows.cli import _chosen_run, main
from flows.presets import load_preset
from flows.status import stage_status
from model.checkpoint import list_checkpoints
from tasks.activations import concat_samples, reference_programs
from tasks.phases import CONTENT_PROBE, MEAN_FEATURE
from tasks.results import TABLES, ReadOnlyResults, read_only_query
from tasks.workspace import Workspace
from distributed_cluster import free_port, http_ok, stop, wait_for
from environment import environment_kept

RESULT_TABLES = ["checkpoint_metrics", "probe_results", "probe_summary", "interventions", "interventions_vs_init",
                 "controls", "semantic_content", "phases", "checkpoints"]


SHARED_SERVER: dict[str, str] = {}  # PREFECT_API_URL of the module's own server, once it runs


def temporary_server_env() -> dict[str, str]:
    """The environment of a run that starts Prefect's temporary server, as ``make run`` does."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def semprobe(ws: Path, *args, check=True, temporary_server=False, **kw) -> subprocess.CompletedProcess:
    """``semprobe run`` in a subprocess, against the module's Prefect server unless
    ``temporary_server`` (each run's own temporary server: ~13 s more a run on a 2-core Zen 1).
    The commands that start no flow (status, sql, export, report) run the same ``main`` in this
    process: a subprocess spent ~9 s importing torch, prefect and sklearn on the Zen 1."""
    if args[0] != "run":
        return _in_process(["--workspace", str(ws), *args], check)
    cmd = [sys.executable, "-m", "flows.cli", "--workspace", str(ws), *args]
    env = temporary_server_env()
    if not temporary_server and "url" in SHARED_SERVER:
        url = SHARED_SERVER["url"]
        wait_for("the Prefect server", lambda: http_ok(url + "/health"), 120)
        env["PREFECT_API_URL"] = url
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _in_process(argv: list[str], check: bool) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    # what main() configures for its workspace must not reach a later run's subprocess in the same test
    with environment_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if check and code != 0:
        raise AssertionError(f"semprobe {argv} failed ({code}):\n{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}")
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def snapshot(ws: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for t in RESULT_TABLES:
        df = read_only_query(ws / "results.duckdb", f"SELECT * FROM {t}")
        out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def stage_runs(ws: Path, run_id: str) -> pd.DataFrame:
    return read_only_query(ws / "results.duckdb", f"SELECT * FROM stage_runs WHERE run_id = '{run_id}'")


def latest_run(ws: Path) -> str:
    return read_only_query(ws / "results.duckdb", "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")["run_id"][0]


@pytest.fixture(scope="module", autouse=True)
def prefect_server(tmp_path_factory):
    """One real Prefect server (``prefect server start``) for the module's runs, so that each run
    does not start and stop a temporary one; the first run of ``ws`` and the killed run keep
    the temporary server that ``make run`` uses."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**temporary_server_env(), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:  # it starts while the first run of ``ws`` runs; a run waits for it at first use
        SHARED_SERVER["url"] = f"http://127.0.0.1:{port}/api"
        yield SHARED_SERVER["url"]
    finally:
        SHARED_SERVER.clear()
        stop(proc)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    semprobe(root, "run", "--preset", "smoke", "--quiet", temporary_server=True)
    return root


def test_first_run_fills_every_table_and_report(ws):
    snap = snapshot(ws)
    for table in ("checkpoint_metrics", "probe_results", "probe_summary", "interventions", "controls", "phases"):
        assert len(snap[table]) > 0, table
    assert set(snap["checkpoints"]["step"]) == {0, 6, 12}
    assert set(snap["probe_results"]["semantics"]) == {"original", "flip", "adversarial"}
    assert set(snap["controls"]["kind"]) >= {"majority", "control_task", "selectivity", "embedding", "random_init"}
    init = snap["controls"][snap["controls"]["kind"] == "random_init"]
    # each controls row carries its grid's semantics, the one its probe key's summary rows name
    grids = snap["probe_summary"][["probe_key", "semantics"]].drop_duplicates()
    named = init.merge(grids, on="probe_key", suffixes=("", "_grid"))
    assert len(named) == len(init) and (named["semantics"] == named["semantics_grid"]).all()
    # the random-init model on each later checkpoint's programs: every semantics, main feature and kind
    assert set(init["step"]) == {6, 12} and len(init) == 2 * 3 * 3 * 2 and init["value"].between(0, 1).all()
    assert set(init["semantics"]) == {"original", "flip", "adversarial"}
    # the alignment check: the emitted action read from the trained, random-init (after step 0) states
    em = snap["controls"][snap["controls"]["feature"] == "emitted_action"]
    assert set(em["kind"]) == {"emitted_action", "emitted_action_init", "emitted_action_majority"}
    assert set(em[em["kind"] == "emitted_action_init"]["step"]) == {6, 12}
    assert set(em[em["kind"] == "emitted_action"]["step"]) == {0, 6, 12} and em["value"].between(0, 1).all()
    # semantic content: one row per checkpoint under the run's phases key, at offset 0 (generated programs)
    content = snap["semantic_content"]
    phases_key = stage_runs(ws, latest_run(ws)).query("stage == 'phases'")["key"].tolist()
    assert content["phases_key"].unique().tolist() == phases_key and (content["offset"] == 0).all()
    assert set(content["step"]) == {0, 6, 12} and content["content"].notna().all()
    assert set(content.dropna(subset=["content_vs_init"])["step"]) == {6, 12}
    assert not {"semantic_content", "semantic_content_vs_init"} & set(snap["checkpoint_metrics"]["metric"])
    # evaluation metrics and phases carry the stage that wrote them
    stages = stage_runs(ws, latest_run(ws))
    assert set(snap["checkpoint_metrics"]["eval_key"]) == set(stages.query("stage == 'evaluate'")["key"])
    assert snap["phases"]["phases_key"].unique().tolist() == phases_key
    # and every stage the machine that computed it (its artifact's meta.machine), queryable
    machines = [json.loads(m) for m in stages["machine"]]
    assert len(machines) == len(stages) and all(m["cores"] == os.cpu_count() and m["torch"] for m in machines)
    # drops beyond the random-init states, paired by seed: the trained drop is the interventions row's
    beyond = snap["interventions_vs_init"]
    assert set(beyond["step"]) == {6, 12} and set(beyond["semantics"]) == {"flip", "adversarial"}
    means, beyond = beyond[beyond["feature"] == MEAN_FEATURE], beyond[beyond["feature"] != MEAN_FEATURE]
    both = beyond.merge(snap["interventions"], on=["probe_key", "semantics", "feature", "offset", "probe", "layer"],
                        suffixes=("", "_raw"))
    assert len(both) == len(beyond) == 2 * 2 * 3 * 2  # steps x alternatives x features x kinds
    # one mean-of-features row per step, alternative and kind: the features' mean (every seed has all three)
    assert len(means) == 2 * 2 * 2
    per_feature = beyond.groupby(["step", "semantics", "probe"])["content"].mean()
    assert (means.set_index(["step", "semantics", "probe"])["content"] - per_feature).abs().max() < 1e-9
    assert (both["trained_drop"] - both["content_raw"]).abs().max() < 1e-9
    assert (both["content"] - (both["trained_drop"] - both["init_drop"])).abs().max() < 1e-9
    assert ((both["ci_low"] <= both["content"] + 1e-12) & (both["content"] <= both["ci_high"] + 1e-12)).all()
    run = read_only_query(ws / "results.duckdb", "SELECT * FROM runs")
    assert list(run["status"]) == ["finished"]
    html = ws / "reports" / run["run_id"][0] / "report.html"
    assert html.exists() and "data:image/png;base64" in html.read_text()
    assert "alignment check: probes read the action each state emits" in html.read_text()
    # MLflow: a parent run with nested checkpoint and probe runs
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").get_experiment_by_name("semprobe-smoke").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"checkpoint-0", "checkpoint-12", "probes-12-original"} <= names
    # the parent run logs each content measure under its own name, one point per checkpoint
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    # the torch thread count the stages ran on, to compare runs by: the one their artifacts carry
    stamped = {json.loads(m)["torch_threads"] for m in stage_runs(ws, latest_run(ws))["machine"]}
    assert stamped == {int(parent.data.tags["torch_threads"])}
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    for column, metric in (("content", "semantic_content"), ("content_vs_init", "semantic_content_vs_init")):
        db_rows = content.dropna(subset=[column])
        logged = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, metric)}
        assert logged == pytest.approx(dict(zip(db_rows["step"], db_rows[column]))), metric
    # Prefect: the report's key table and a link to it on the flow run page
    import sqlite3

    with sqlite3.connect(ws / "prefect" / "prefect.db") as con:
        keys = {k for (k,) in con.execute("SELECT key FROM artifact")}
    assert {"semprobe-summary", "semprobe-report"} <= keys


def test_rerun_recomputes_nothing_and_results_are_identical(ws):
    from tasks.store import HOST_TAG

    before = snapshot(ws)
    # a dump its killed writer left half-written goes; nothing complete is touched
    stale = ws / "artifacts" / "activations" / f".deadbeefdeadbeef.tmp-999999999-{HOST_TAG}0123abcd"
    stale.mkdir()
    (stale / "activations.npz").write_bytes(b"partial")
    semprobe(ws, "run", "--preset", "smoke", "--quiet")
    assert not stale.exists()
    runs = stage_runs(ws, latest_run(ws))
    assert len(runs) > 10 and set(runs["status"]) == {"cached"}, runs
    after = snapshot(ws)
    for t in RESULT_TABLES:
        pd.testing.assert_frame_equal(before[t], after[t], obj=t)


def test_a_fresh_workspace_reproduces_every_number(ws, tmp_path):
    """Same seed and config, another workspace, on this CPU: every table of results bit for bit
    (dataset bytes, training curve, evaluations, probes, controls, phases), not just found in a
    cache."""
    semprobe(tmp_path, "run", "--preset", "smoke", "--quiet")
    assert set(stage_runs(tmp_path, latest_run(tmp_path))["status"]) == {"computed"}
    first, again = snapshot(ws), snapshot(tmp_path)
    for t in RESULT_TABLES:
        if "path" in again[t]:  # where the artifact lies is the workspace's, not a result
            first[t], again[t] = first[t].drop(columns="path"), again[t].drop(columns="path")
        pd.testing.assert_frame_equal(first[t], again[t], check_exact=True, obj=t)


def test_deleted_activation_recomputes_only_its_checkpoint(ws):
    acts = read_only_query(ws / "results.duckdb",
                           "SELECT key FROM stage_runs WHERE stage = 'activations'")["key"].unique()
    store = ws / "artifacts" / "activations"
    victim = sorted(acts)[0]
    (store / victim / "activations.npz").unlink()
    semprobe(ws, "run", "--preset", "smoke", "--quiet")
    runs = stage_runs(ws, latest_run(ws))
    computed = runs[runs["status"] == "computed"]
    assert list(computed[computed["stage"] == "activations"]["key"]) == [victim]
    # ... and what depends on it: its three probe grids and the run-level phase metrics
    assert sorted(computed["stage"]) == ["activations", "phases", "probes", "probes", "probes"], computed
    assert (store / victim / "activations.npz").exists()


def test_a_deleted_checkpoint_is_republished_from_the_training_work_folder(ws):
    """Training is cached, so it publishes nothing: a checkpoint deleted from the store comes back
    from the work folder (and its evaluation, keyed by it, stays cached); one the work folder
    lacks too stops the run with an error that names it, instead of a report without it."""
    tk = read_only_query(ws / "results.duckdb", "SELECT train_key FROM runs LIMIT 1")["train_key"][0]
    victim = ws / "artifacts" / "checkpoint" / f"{tk}-s0000012"
    size = (victim / "model.pt").stat().st_size
    shutil.rmtree(victim)
    semprobe(ws, "run", "--preset", "smoke", "--quiet")
    assert (victim / "model.pt").stat().st_size == size
    runs = stage_runs(ws, latest_run(ws))
    assert set(runs["status"]) == {"cached"} and len(runs[runs["stage"] == "evaluate"]) == 3
    work = ws / "work" / "train" / tk / "step-0000012.pt"
    aside, victim_aside = work.with_suffix(".aside"), ws / "checkpoint-aside"  # outside the store
    victim.rename(victim_aside)
    work.rename(aside)
    try:
        proc = semprobe(ws, "run", "--preset", "smoke", "--quiet", check=False)
        assert proc.returncode != 0 and "checkpoints at steps [12]" in proc.stdout + proc.stderr
    finally:  # the workspace as it was, for the module's next tests
        aside.rename(work)
        victim_aside.rename(victim)
    assert (victim / "model.pt").stat().st_size == size


def test_cli_status_sql_and_bad_input(ws):
    status = semprobe(ws, "status", "--preset", "smoke").stdout
    assert "missing" not in status and status.count("done") >= 1 + 1 + 3 * (3 + 3)
    changed = semprobe(ws, "status", "--preset", "smoke", "--set", "probe.seeds=3").stdout
    assert "probes" in changed and "missing" in changed and "units saved" not in changed
    # a grid stopped half way: status counts the units its rerun will not train again
    missing = [r for r in stage_status(Workspace.at(str(ws)), "smoke", ["probe.seeds=3"]) if r["stage"] == "probes"]
    units = ws / "work" / "probes" / missing[0]["key"]
    units.mkdir(parents=True)
    for name in ("a", "b"):
        (units / f"{name}.parquet").write_bytes(b"")
    try:
        changed = semprobe(ws, "status", "--preset", "smoke", "--set", "probe.seeds=3").stdout
        assert changed.count("2 (seed, kind) units saved") == 1, changed
    finally:
        shutil.rmtree(units)
    out = semprobe(ws, "sql", "SELECT count(*) AS n FROM checkpoints", "--format", "csv").stdout
    assert out.strip().splitlines()[-1] == "3"
    bad = semprobe(ws, "sql", "DELETE FROM checkpoints", check=False)
    assert bad.returncode == 2 and "read-only" in bad.stderr
    bad = semprobe(ws, "run", "--preset", "smoke", "--set", "train.lrr=1", check=False)
    assert bad.returncode == 2 and "lrr" in bad.stderr
    bad = semprobe(ws, "run", "--preset", "huge", check=False)
    assert bad.returncode == 2 and "huge" in bad.stderr


def test_export_writes_tables_and_each_report(ws, tmp_path):
    out = tmp_path / "export"
    written = semprobe(ws, "export", str(out)).stdout.split()
    reports = sorted((ws / "reports").glob("*/report.html"))
    assert reports and len(written) == len(TABLES) + 1 + len(reports)  # and schema_info.csv
    for html_path in reports:
        copy = out / f"report-{html_path.parent.name[:8]}.html"
        assert str(copy) in written and copy.read_bytes() == html_path.read_bytes()
    assert pd.read_csv(out / "runs.csv")["run_id"].nunique() >= len(reports)
    assert (out / "probe_results.parquet").is_file()
    # ... and `semprobe import` reads it back: every table as the workspace holds it, bit for bit
    back = tmp_path / "back"
    semprobe(back, "import", str(out))
    for t in TABLES:
        first, again = (read_only_query(w / "results.duckdb", f"SELECT * FROM {t}") for w in (ws, back))
        pd.testing.assert_frame_equal(again.sort_values(list(again.columns)).reset_index(drop=True),
                                      first.sort_values(list(first.columns)).reset_index(drop=True),
                                      check_exact=True, obj=t)


def test_reference_programs_are_probed_the_same_at_every_checkpoint(ws):
    """``activations.programs=reference``: every checkpoint's states read the specs' reference
    programs (teacher-forced), so the probed programs and labels do not move with the model;
    training and evaluation are reused."""
    before = snapshot(ws)["semantic_content"]
    semprobe(ws, "run", "--preset", "smoke", "--quiet", "--set", "activations.programs=reference")
    runs = stage_runs(ws, latest_run(ws))
    computed = runs[runs["status"] == "computed"]
    assert set(computed["stage"]) == {"activations", "probes", "phases"}, computed
    cfg = load_preset("smoke").activations
    data = next((ws / "artifacts" / "dataset").iterdir()) / "data"
    specs = concat_samples(karel.load_split(data, "train", limit=cfg.n_train_specs),
                           karel.load_split(data, "test", limit=cfg.n_test_specs))
    dumps = {}
    for key in computed[computed["stage"] == "activations"]["key"]:
        folder = ws / "artifacts" / "activations" / key
        dumps[json.loads((folder / "manifest.json").read_text())["meta"]["step"]] = dict(np.load(folder / "activations.npz"))
    assert sorted(dumps) == [0, 6, 12]
    for d in dumps.values():
        np.testing.assert_array_equal(d["programs"], reference_programs(specs))
        np.testing.assert_array_equal(d["spec_ids"], specs.ids)
        assert ((np.abs(d["hidden"].astype(np.float32)).sum(-1) > 0).sum(1) == d["lengths"]).all()
        assert d["hidden_layers"].shape[:2] == d["hidden"].shape[:2]
    # the random-init control over the same programs is the step-0 dump's own states
    for step in (6, 12):
        np.testing.assert_array_equal(dumps[step]["hidden_init"], dumps[0]["hidden"])
        assert not np.array_equal(dumps[step]["hidden"], dumps[0]["hidden"])
    # the semantic content is read at the current state, offset -1 here (not offset 0)
    probe_keys = tuple(computed[computed["stage"] == "probes"]["key"])
    iv = read_only_query(ws / "results.duckdb", 'SELECT step, AVG(content) AS content FROM interventions '
                         'WHERE "offset" = -1 AND layer = -1 AND probe = ? AND probe_key IN (SELECT UNNEST(?)) '
                         'GROUP BY step ORDER BY step', [CONTENT_PROBE, list(probe_keys)])
    phases_key = computed[computed["stage"] == "phases"]["key"].tolist()
    content = read_only_query(ws / "results.duckdb", 'SELECT step, "offset", content FROM semantic_content '
                              "WHERE phases_key IN (SELECT UNNEST(?)) ORDER BY step", [phases_key])
    assert len(iv) >= 2 and content["step"].tolist() == iv["step"].tolist(), (iv, content)
    np.testing.assert_allclose(content["content"], iv["content"])
    assert (content["offset"] == -1).all()
    # the generated-program runs' content on the same checkpoints is kept beside it, unchanged
    after = snapshot(ws)["semantic_content"]
    kept = after[after["phases_key"].isin(before["phases_key"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before)
    bad = semprobe(ws, "run", "--preset", "smoke", "--set", "activations.programs=teacher", check=False)
    assert bad.returncode == 2 and "activations.programs" in bad.stderr and "teacher" in bad.stderr


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    # long enough to be killed while training; probing two of its checkpoints is all the resumed
    # run needs to finish (every one of them made the test ~4 minutes on a 2-core Zen 1)
    overrides = ["--set", "train.steps=300", "--set", "train.ckpt_every=50", "--set", "data.n_train_generated=2000",
                 "--set", "activations.checkpoints=2"]
    cmd = [sys.executable, "-m", "flows.cli", "--workspace", str(tmp_path), "run", "--preset", "smoke", "--quiet", *overrides]
    # the temporary server, as `make run` has it: the kill must not leave it behind
    flow_log = tmp_path.parent / f"{tmp_path.name}-flow.log"
    with open(flow_log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env=temporary_server_env())
    work = tmp_path / "work" / "train"
    store = Workspace.at(tmp_path).store
    db = tmp_path / "results.duckdb"
    deadline = time.time() + 300
    seen: list[Path] = []
    evaluated: set[str] = set()
    holder = None  # a reader holding the results file (a notebook's open connection) from the first checkpoint on
    try:
        while time.time() < deadline and proc.poll() is None:
            if holder is None and any(store.is_complete("checkpoint", k, verify=False) for k in store.keys("checkpoint")):
                try:
                    holder = duckdb.connect(str(db), read_only=True)
                except duckdb.IOException:  # the flow is writing: the next poll
                    pass
            seen = sorted(work.glob("*/step-*.pt")) if work.exists() else []
            steps = [p for p in seen if not p.name.endswith(".tmp")]
            evaluated = {k for k in store.keys("evaluate") if store.is_complete("evaluate", k, verify=False)}
            if len(steps) >= 2 and evaluated and "recording it at the next poll" in flow_log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, ("the run ended before it could be interrupted (make it longer), or the held "
                                     f"results file stopped it:\n{flow_log.read_text()[-3000:]}")
        assert holder is not None and "recording it at the next poll" in flow_log.read_text(), flow_log.read_text()
        holder.close()  # the evaluation it could not record goes in at a later poll, while training goes on
        wait_for("the evaluation recorded", lambda: not read_only_query(
            db, "SELECT 1 FROM checkpoint_metrics LIMIT 1").empty, 60)
        assert proc.poll() is None, "training finished before it could be interrupted; make it longer"
        os.kill(proc.pid, signal.SIGTERM)  # as a scheduler stops a job
        assert proc.wait(timeout=60) != 0
        # Prefect's temporary server (uvicorn) is stopped at exit but may take a few seconds to go.
        leftovers = "?"
        for _ in range(30):
            time.sleep(0.5)
            leftovers = subprocess.run(["pgrep", "-a", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            if not leftovers:
                break
        assert not leftovers, f"processes left behind by the killed run (15 s after it exited): {leftovers}"
    finally:
        if holder is not None:
            holder.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kept = {p: p.stat().st_mtime_ns for p in sorted(work.glob("*/step-*.pt")) if p.suffix != ".tmp"}
    assert kept, "no checkpoint survived the kill"
    # the evaluations that had finished before the kill are in DuckDB already, under the stopped run
    recorded = read_only_query(db, "SELECT DISTINCT eval_key FROM checkpoint_metrics")["eval_key"]
    assert evaluated <= set(recorded), (evaluated, set(recorded))
    stopped = read_only_query(db, "SELECT run_id, status FROM runs")
    assert stopped["status"].tolist() == ["failed"]
    # its report holds what it finished, and says the run stopped
    html = Path(semprobe(tmp_path, "report", "--run-id", stopped["run_id"][0]).stdout.strip()).read_text()
    assert "<td>failed</td>" in html and "Per-checkpoint metrics" in html and "did not finish (status" in html
    with pytest.raises(ValueError, match="no finished run"):  # what `semprobe report` says without --run-id
        _chosen_run(ReadOnlyResults(db), None)
    last = max(step for run in work.iterdir() for step, _ in list_checkpoints(run))  # where it will resume
    status = semprobe(tmp_path, "status", "--preset", "smoke", *overrides).stdout
    assert f"300 steps, checkpointed at step {last}" in status, status
    semprobe(tmp_path, "run", "--preset", "smoke", "--quiet", *overrides)
    for p, mtime in kept.items():  # resumed: nothing before the kill was trained or written again
        assert p.stat().st_mtime_ns == mtime, p
    steps = read_only_query(db, "SELECT step FROM checkpoints ORDER BY step")["step"]
    assert steps.iloc[-1] == 300 and 0 in set(steps)


def test_offsets_before_last_probe_other_offsets_at_the_last_checkpoint_only(ws):
    """``probe.offsets_before_last=0``: the steps before the last probe offset 0 only; the last
    step's grids are the plain config's, found in the store, not recomputed."""
    plan = ["--set", "probe.offsets_before_last=0"]
    status = semprobe(ws, "status", "--preset", "smoke", *plan).stdout.splitlines()
    grids = {line for line in status if line.lstrip().startswith("probes")}
    assert len(grids) == 9, status
    assert all(("done" in g) == ("step 12" in g) for g in grids), grids
    semprobe(ws, "run", "--preset", "smoke", "--quiet", *plan)
    runs = stage_runs(ws, latest_run(ws))
    grids = runs[runs["stage"] == "probes"]
    assert sorted(grids["status"]) == ["cached"] * 3 + ["computed"] * 6, grids
    rows = read_only_query(ws / "results.duckdb", 'SELECT step, semantics, "offset" FROM probe_results '
                           "WHERE probe_key IN (SELECT UNNEST(?))", [grids["key"].tolist()])
    offsets = rows.groupby(["step", "semantics"])["offset"].agg(lambda o: sorted(set(o))).to_dict()
    assert offsets == {(s, sem): [-1, 0, 1] if s == 12 else [0] for s in (0, 6, 12)
                       for sem in ("original", "flip", "adversarial")}, offsets


def test_without_step0_probes_the_trained_checkpoints_and_reads_random_init_as_untrained(ws):
    """``activations.probe_step0=false`` (the ``cpu`` preset): no dump or grid of the step-0
    checkpoint; the others' dumps and grids are the plain config's (found, not recomputed), and
    the report's current-state target still has its untrained floor (the random-init control)."""
    plan = ["--set", "activations.probe_step0=false"]
    status = semprobe(ws, "status", "--preset", "smoke", *plan).stdout.splitlines()
    probed = [line for line in status if line.lstrip().startswith(("activations", "probes"))]
    assert len(probed) == 2 + 2 * 3 and not any("step 0" in line for line in probed), status
    semprobe(ws, "run", "--preset", "smoke", "--quiet", *plan)
    run = latest_run(ws)
    runs = stage_runs(ws, run)
    assert len(runs[runs["stage"] == "activations"]) == 2 and len(runs[runs["stage"] == "probes"]) == 6
    assert set(runs[runs["stage"].isin(["activations", "probes"])]["status"]) == {"cached"}
    assert set(read_only_query(ws / "results.duckdb", "SELECT step FROM controls WHERE kind = 'random_init' AND "
                               "probe_key IN (SELECT UNNEST(?))", [runs["key"].tolist()])["step"]) == {6, 12}
    # target 3 reads the probes from step 6 on (smoke has no mlp2, so no verdict)
    assert "step 6 -&gt; 12; linear/mlp1/mlp2" in (ws / "reports" / run / "report.html").read_text()


def test_start_costliest_starts_the_costliest_ready_grid_when_a_worker_is_free():
    from flows.pipeline import start_costliest

    started = []
    ready = [(2, "flip@0"), (3, "original@0"), (2, "adversarial@0"), (13, "original@2000")]
    out = start_costliest(ready, running=1, slots=3, start=lambda g: started.append(g) or len(started))
    assert started == ["original@2000", "original@0"]
    assert out == [("original@2000", 1), ("original@0", 2)]
    assert ready == [(2, "flip@0"), (2, "adversarial@0")]  # ties wait in the order they came
    assert start_costliest(ready, running=3, slots=3, start=started.append) == []  # no free worker
    assert len(ready) == 2


def test_a_poll_waits_for_a_task_to_end_not_for_the_poll_interval(monkeypatch):
    import concurrent.futures
    import threading
    import types

    from flows import pipeline

    monkeypatch.setattr(pipeline, "POLL_S", 3600.0)  # were it slept through, the thread below would not end
    task = types.SimpleNamespace(wrapped_future=concurrent.futures.Future())
    waiter = threading.Thread(target=pipeline._pause, args=([task],), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # still waiting on the running task
    task.wrapped_future.set_result(None)
    waiter.join(30)
    assert not waiter.is_alive()
    pipeline._pause([])  # nothing running: no wait at all
