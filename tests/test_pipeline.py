"""The smoke preset end to end through Prefect (real temporary server, DuckDB, MLflow SQLite),
then the cache: a rerun recomputes nothing, a deleted artifact recomputes only what needs it.
A run killed in the middle of training: test_pipeline_resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import karel
from flows.presets import load_preset
from flows.status import stage_status
from tasks.activations import concat_samples, reference_programs
from tasks.phases import CONTENT_PROBE, MEAN_FEATURE
from tasks.results import TABLES, read_only_query
from tasks.workspace import Workspace
from distributed_cluster import free_port, http_ok, stop, wait_for
from pipeline_cli import SHARED_SERVER, semprobe, temporary_server_env

RESULT_TABLES = ["checkpoint_metrics", "probe_results", "probe_summary", "interventions", "interventions_vs_init",
                 "controls", "semantic_content", "phases", "checkpoints"]


def snapshot(ws: Path, tables=RESULT_TABLES) -> dict[str, pd.DataFrame]:
    out = {}
    for t in tables:
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
        live = con.execute("SELECT key, data, description FROM artifact WHERE type = 'progress'").fetchall()
    assert {"semprobe-summary", "semprobe-report"} <= keys
    # and training's live step as a progress artifact, at its end when the run is done
    (key, share, text), = live
    assert key.startswith("train-") and float(share) == 100.0 and text.startswith("training step 12 of 12: "), live


def test_rerun_recomputes_nothing_and_results_are_identical(ws):
    from tasks.store_files import HOST_TAG

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
    typo = ws.parent / f"{ws.name}-typo"  # a mistyped --workspace: an error, and no folder made there
    for command in (["status", "--preset", "smoke"], ["sql", "SELECT 1"], ["report"]):
        bad = semprobe(typo, *command, check=False)
        assert bad.returncode == 2 and f"no workspace at {typo}" in bad.stderr, (command, bad.stderr)
    # commands that write nothing there leave a missing workspace missing
    assert "| 1. generative accuracy" in semprobe(typo, "compare", str(ws)).stdout
    spec = ws.parent / "dry.yaml"
    spec.write_text("name: dry\npreset: smoke\ngrid: {train.seed: [0, 1]}\n")
    env = {k: v for k, v in temporary_server_env().items() if k not in ("PREFECT_HOME", "SEMPROBE_WORKSPACE")}
    dry = subprocess.run([sys.executable, "-m", "flows.cli", "--workspace", str(typo), "sweep", str(spec), "--dry-run"],
                         capture_output=True, text=True, timeout=300, env=env)  # its own process: Prefect's home
    assert dry.returncode == 0 and "train.seed=0" in dry.stdout and "train.seed=1" in dry.stdout, dry.stderr
    assert not typo.exists()


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
    first, again = snapshot(ws, TABLES), snapshot(back, TABLES)
    for t in TABLES:
        pd.testing.assert_frame_equal(again[t], first[t], check_exact=True, obj=t)


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
    # the dataset's artifact folder (beside it lies its lock file, .<key>.lock)
    data = next(p for p in (ws / "artifacts" / "dataset").iterdir() if not p.name.startswith(".")) / "data"
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


def test_a_local_sweep_submitted_again_finds_its_finished_point(ws, tmp_path):
    """`sweep --local` a second time runs no pipeline for a point it recorded before: one run row
    for two submissions, as a resubmitted deployment sweep finds its runs by their keys. The point
    is the smoke config itself, so even its first run finds every stage cached."""
    spec = tmp_path / "one.yaml"
    spec.write_text(f"preset: smoke\nset: {{train.seed: {load_preset('smoke').train.seed}}}\n")
    runs = lambda: set(read_only_query(ws / "results.duckdb", "SELECT run_id FROM runs")["run_id"])  # noqa: E731
    before = runs()
    wait_for("the Prefect server", lambda: http_ok(SHARED_SERVER["url"] + "/health"), 120)
    env = {**temporary_server_env(), "PREFECT_API_URL": SHARED_SERVER["url"]}
    cmd = [sys.executable, "-m", "flows.cli", "--workspace", str(ws), "sweep", str(spec), "--local"]
    outs = [subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env) for _ in range(2)]
    assert all(o.returncode == 0 for o in outs), outs[-1].stderr[-3000:]
    new = runs() - before
    assert len(new) == 1 and {json.loads(o.stdout)["points"][0]["flow_run"] for o in outs} == new


CANCELLED_UNIT = r'''
import json, sys
from prefect import flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.states import Cancelled, Cancelling, Running
from flows.deployment_runs import Unit, UnitRuns
from tasks.workspace import Workspace

ws = Workspace.at(sys.argv[1])
with get_client(sync_client=True) as client:  # a deployment no worker serves: its runs stay scheduled
    try:
        client.create_work_pool(WorkPoolCreate(name="no-workers", type="process"))
    except ObjectAlreadyExists:
        pass
    client.create_deployment(flow_id=client.create_flow_from_name("cancel-check"), name="unit",
                             work_pool_name="no-workers")


@flow
def follow(cancel: bool) -> dict:
    runs = UnitRuns(ws, "cancel-check", max_attempts=3)
    u = runs.submit(Unit("point", "p", "cancel-check-key", "cancel-check/unit", {}))
    with get_client(sync_client=True) as client:
        if cancel:  # as a person does in the UI while the sweep follows the run
            client.set_flow_run_state(u.flow_run, Cancelled(), force=True)
        runs.poll(client)
    return {"state": u.state, "attempt": u.attempt, "flow_runs": u.flow_runs, "detail": u.detail}


@flow
def found_cancelling() -> dict:
    # a person cancelled the earlier submission's run, and it was still Cancelling (a worker
    # stopping it) when the same unit was submitted again: it ends Cancelled while followed
    unit = lambda: Unit("point", "q", "cancelling-key", "cancel-check/unit", {})  # noqa: E731
    first = UnitRuns(ws, "cancel-check", max_attempts=3).submit(unit())
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first.flow_run, Running(), force=True)  # a scheduled run cancels at once
        client.set_flow_run_state(first.flow_run, Cancelling(), force=True)
        runs = UnitRuns(ws, "cancel-check", max_attempts=3)
        u = runs.submit(unit())
        client.set_flow_run_state(u.flow_run, Cancelled(), force=True)
        runs.poll(client)
    return {"state": u.state, "attempt": u.attempt, "flow_runs": u.flow_runs, "first": first.flow_run,
            "found": u.found_cancelled, "detail": u.detail}


print(json.dumps([follow(True), follow(False), found_cancelling()]))
'''


def test_a_unit_cancelled_while_followed_is_not_resubmitted_until_submitted_again(ws):
    """A run a person cancels (the UI) was resubmitted like a crash, up to three times; now the
    unit fails saying so, and a later submission (the same sweep again) runs it again, also where
    that submission found the run still Cancelling (it failed the unit there too)."""
    wait_for("the Prefect server", lambda: http_ok(SHARED_SERVER["url"] + "/health"), 120)
    env = {**temporary_server_env(), "PREFECT_API_URL": SHARED_SERVER["url"]}
    out = subprocess.run([sys.executable, "-c", CANCELLED_UNIT, str(ws)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    cancelled, again, cancelling = json.loads(out.stdout.strip().splitlines()[-1])
    assert cancelled["state"] == "failed" and cancelled["attempt"] == 1, cancelled
    assert "was cancelled, so it was not resubmitted" in cancelled["detail"]
    assert again["state"] == "submitted" and again["attempt"] == 2, again
    assert again["flow_runs"][0] == cancelled["flow_runs"][0] and len(set(again["flow_runs"])) == 2
    assert cancelling["state"] == "submitted" and cancelling["attempt"] == 2, cancelling
    assert cancelling["flow_runs"][0] == cancelling["first"] and len(set(cancelling["flow_runs"])) == 2
