"""The gpu pool for real (``make test-distributed``): a 4-point smoke sweep across two process
workers, and one smoke study fanned out to the deployment units.

Everything is real and on 127.0.0.1 (``distributed_cluster.py``): a Prefect server, the ``gpu``
pool made by ``deployments/setup.sh`` (pool, queue, zombie automation, ``prefect deploy``), two
workers started by ``deployments/worker.sh`` and an MLflow tracking server, shared by the tests.
In the sweep, one worker is killed (with its flow-run process, as when a machine is lost) in the
middle of its second point. The fanned-out study (``semprobe run --fanout``) runs its train and
checkpoint units on the workers and must record what an in-process ``semprobe run`` records.

The code runs from a snapshot of the repository taken at the start, so that colleagues editing
the checkout meanwhile cannot change the points' cache keys under the test. Every process the
test starts is stopped by its PID (with its descendants, found through /proc).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from distributed_cluster import Cluster, alive, descendants, stop, summary_of, wait_for
from tasks.results import read_only_query

# Minutes of real servers and workers: run by `make test-distributed`, skipped by `make test`.
distributed = pytest.mark.skipif(os.environ.get("SEMPROBE_TEST_DISTRIBUTED") != "1",
                                 reason="distributed: run with make test-distributed")

SEEDS = [0, 2, 3, 4]  # not 1: its step-0 smoke model writes only empty programs, so that grid has no rows
FANOUT_SEED = 5  # a config no sweep point shares: the fanned-out study computes every stage
RESULT_TABLES = ["datasets", "checkpoints", "checkpoint_metrics", "probe_results", "probe_summary",
                 "interventions", "interventions_vs_init", "controls", "semantic_content", "phases"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Servers, pool, deployments and workers a and b, for every distributed test here."""
    cl = Cluster(tmp_path_factory.mktemp("cluster"))
    cl.timings = {}
    t0 = time.perf_counter()
    try:
        cl.snapshot_code()
        cl.start_servers()
        cl.timings["servers, pool, deployments"] = time.perf_counter() - t0
        cl.start_workers("a", "b")
        cl.timings["workers ready"] = time.perf_counter() - t0
        yield cl
    finally:
        cl.stop_all()
        cl.timings["total"] = time.perf_counter() - t0
        print("timings (s):", json.dumps({k: round(v, 1) for k, v in cl.timings.items()}))
        (cl.root / "timings.json").write_text(json.dumps(cl.timings))
    leftovers = [(n, p.pid) for n, p in cl.procs.items() if alive(p.pid)]
    assert not leftovers, leftovers


def manifests(ws: Path, run_ids) -> dict[tuple[str, str], float]:
    """created_at of every artifact the finished points' journals name (a recompute changes it)."""
    out = {}
    for rid in run_ids:
        journal = json.loads((ws / "journals" / f"{rid}.json").read_text())
        for name, args in journal["calls"]:
            s = args[1] if name == "checkpoint" else args[0] if name in ("stage", "dataset", "probes", "phases") else None
            if s:
                out[(s["stage"], s["key"])] = json.loads((Path(s["path"]) / "manifest.json").read_text())["created_at"]
    return out


def test_spec_grid_points_and_keys(tmp_path):
    from flows.presets import load_preset
    from flows.sweep import load_spec, parse_spec, point_key

    spec = parse_spec({"preset": "smoke", "set": {"train.steps": 6},
                       "grid": {"train.seed": [0, 1], "probe.offsets": [[0, 1], [-1, 0]]},
                       "points": [{"train.seed": 7}]}, "s")
    assert [p.label for p in spec.points] == [
        "train.seed=0 probe.offsets=0,1", "train.seed=0 probe.offsets=-1,0",
        "train.seed=1 probe.offsets=0,1", "train.seed=1 probe.offsets=-1,0", "train.seed=7"]
    assert all(p.overrides[0] == "train.steps=6" for p in spec.points)
    assert len({p.key for p in spec.points}) == 5
    # the key is the resolved config's: spelling out a default changes nothing
    seed = load_preset("smoke").train.seed
    assert point_key("smoke", [f"train.seed={seed}"]) == point_key("smoke", []) != point_key("smoke", ["train.seed=99"])
    toml = tmp_path / "t.toml"
    toml.write_text('preset = "smoke"\n[grid]\n"train.seed" = [0, 1]\n')
    assert [p.label for p in load_spec(toml).points] == ["train.seed=0", "train.seed=1"]
    assert load_spec(toml).name == "t"
    toml.write_text('preset = "smoke"\n[set]\ntrain.steps = 6\n[grid]\ntrain.seed = [0, 1]\n')  # TOML's own dotted keys
    assert [p.overrides for p in load_spec(toml).points] == [("train.steps=6", "train.seed=0"),
                                                              ("train.steps=6", "train.seed=1")]
    for bad, word in [({"preset": "smoke", "grid": {"train.lrr": [1]}}, "lrr"),
                      ({"preset": "huge", "grid": {"train.seed": [1]}}, "huge"),
                      ({"preset": "smoke", "grid": {"train.seed": [1, 1]}}, "same config"),
                      ({"preset": "smoke", "gird": {}}, "gird"),
                      ({"preset": "smoke"}, "no points"),
                      ({"preset": "smoke", "set": ["train.steps=12"]}, "set must be a mapping"),
                      ({"preset": "smoke", "grid": [{"train.seed": 1}]}, "grid must be a mapping"),
                      ({"preset": "smoke", "set": {"train.seed": 5}, "grid": {"train": {"seed": [0, 1]}}},
                       r"\['train.seed'\] in both set and grid")]:
        with pytest.raises(ValueError, match=word):
            parse_spec(bad, "s")
    octal = tmp_path / "o.yaml"  # YAML 1.1 read 010 as 8 and 0x10 as 16: a seed is decimal or refused
    octal.write_text("preset: smoke\ngrid: {train.seed: [010, 11]}\n")
    assert [p.key for p in load_spec(octal).points] == [point_key("smoke", ["train.seed=10"]),
                                                        point_key("smoke", ["train.seed=11"])]
    octal.write_text("preset: smoke\ngrid: {train.seed: [0x10]}\n")
    with pytest.raises(ValueError, match="train.seed.*0x10"):
        load_spec(octal)
    broken = tmp_path / "b.yaml"
    broken.write_text("preset: smoke\ngrid: {train.seed: [0, 1}\n")
    with pytest.raises(ValueError, match="b.yaml: not valid YAML"):
        load_spec(broken)
    from pipeline_cli import semprobe

    refused = semprobe(tmp_path / "ws", "sweep", str(toml), "--max-attempts", "0", "--local", check=False)
    assert refused.returncode == 2 and "--max-attempts: must be at least 1, got 0" in refused.stderr


def test_journal_replays_what_a_recorder_would_write(tmp_path):
    from datetime import datetime, timezone

    from tasks import record
    from tasks.results import ResultsDB

    j = record.Journal("run-1")
    j.stage({"stage": "train", "key": "k1", "status": "computed", "seconds": 1.5, "path": "/x", "meta": {}})
    j.run("smoke", {"train": {"seed": 0}}, "d", "k1", datetime.now(timezone.utc), "finished")
    j.write(tmp_path)
    back = record.Journal.read(tmp_path, "run-1")
    assert back.status() == "finished" and [s["key"] for s in back.stages()] == ["k1"]
    db = ResultsDB(tmp_path / "r.duckdb")
    record.replay(back, record.Recorder(db, "run-1", None))  # None: DuckDB only, no MLflow
    assert db.table("runs")["status"].tolist() == ["finished"]
    assert db.table("stage_runs")[["stage", "key", "status"]].values.tolist() == [["train", "k1", "computed"]]


@distributed
def test_deployments_on_the_gpu_pool(cluster):
    """What deployments/setup.sh deployed: every unit on pool and queue gpu, the regression
    schedule inactive."""
    regression = cluster.deployment("semprobe-pipeline/cpu-regression")
    assert [s["active"] for s in regression["schedules"]] == [False]
    for name, entrypoint in [("semprobe-pipeline/point", "flows/pipeline.py:pipeline"),
                             ("semprobe-train/unit", "flows/units.py:train_model"),
                             ("semprobe-checkpoint/unit", "flows/units.py:probe_checkpoint")]:
        d = cluster.deployment(name)
        assert (d["work_pool_name"], d["work_queue_name"], d["entrypoint"]) == ("gpu", "gpu", entrypoint), name


@distributed
def test_sweep_across_two_workers_survives_a_lost_worker(cluster):
    cl, t0 = cluster, time.perf_counter()
    timings = cl.timings
    spec = cl.root / "seeds.yaml"
    spec.write_text(f"name: seeds\npreset: smoke\ngrid:\n  train.seed: {SEEDS}\n")
    point = cl.deployment("semprobe-pipeline/point")
    workers = {w: cl.workers[w] for w in ("a", "b")}
    try:
        # --- the sweep; worker a is lost in the middle of its second point
        t_sweep = time.perf_counter()
        sweep = cl.start("sweep-1", cl.sweep_cmd(spec))
        journals = cl.ws / "journals"

        def finished_by(worker):
            out = []
            for p in journals.glob("*.json") if journals.exists() else []:
                j = json.loads(p.read_text())
                if j["where"].get("worker") == worker and any(a[5] == "finished" for n, a in j["calls"] if n == "run"):
                    out.append(j["run_id"])
            return out

        def second_point_of_a():
            done = finished_by("w-a")
            for pid in descendants(workers["a"].pid) if done else []:
                try:
                    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
                except OSError:
                    continue
                rid = env.get("PREFECT__FLOW_RUN_ID")
                if rid and rid not in done and not (journals / f"{rid}.json").exists():
                    return rid
            return None

        victim = wait_for("worker a to start a second point", second_point_of_a, 400)
        wait_for("its flow run to be running", lambda: cl.api(f"/flow_runs/{victim}")["state"]["type"] == "RUNNING", 120)
        time.sleep(8)  # into its training
        assert sweep.poll() is None and not (journals / f"{victim}.json").exists()
        before_kill = manifests(cl.ws, [p.stem for p in journals.glob("*.json")])
        stop(workers["a"], sig=signal.SIGKILL, grace=5)  # the machine is gone: no clean-up runs
        timings["worker a killed"] = time.perf_counter() - t_sweep
        assert sweep.wait(timeout=600) == 0, cl.log("sweep-1")[-5000:]
        timings["sweep with a lost worker"] = time.perf_counter() - t_sweep
        summary = summary_of(cl.log("sweep-1"))

        # --- all 4 points finished, on both workers; the killed run crashed and was resubmitted
        assert summary["ok"] and [p["state"] for p in summary["points"]] == ["finished"] * 4
        assert {p["where"]["worker"] for p in summary["points"]} == {"w-a", "w-b"}
        assert cl.api(f"/flow_runs/{victim}")["state"]["type"] == "CRASHED"
        retried = [p for p in summary["points"] if victim in p["flow_runs"]]
        assert len(retried) == 1 and retried[0]["attempt"] == 2 and retried[0]["where"]["worker"] == "w-b"
        for p in summary["points"]:
            timings[f"point {p['point']} flow run"] = cl.api(f"/flow_runs/{p['flow_run']}")["total_run_time"]

        # --- nothing computed twice: finished artifacts untouched, one 'computed' per stage key
        after = manifests(cl.ws, [p["flow_run"] for p in summary["points"]])
        assert {k: after[k] for k in before_kill} == before_kill
        db = cl.ws / "results.duckdb"
        twice = read_only_query(db, "SELECT stage, key, count(*) AS n FROM stage_runs WHERE status = 'computed' "
                                    "GROUP BY stage, key HAVING count(*) > 1")
        assert twice.empty, twice

        # --- DuckDB: the 4 points, with their checkpoints and probe results
        runs = read_only_query(db, "SELECT run_id, status, train_key, json_extract(config, '$.train.seed')::INT AS seed FROM runs")
        assert set(runs["run_id"]) == {p["flow_run"] for p in summary["points"]}
        assert sorted(runs["seed"]) == SEEDS and set(runs["status"]) == {"finished"}
        per_train = read_only_query(db, "SELECT c.train_key, count(DISTINCT s.probe_key) AS grids FROM checkpoints c "
                                        "JOIN probe_summary s ON s.checkpoint_key = c.key GROUP BY c.train_key")
        assert set(per_train["train_key"]) == set(runs["train_key"]) and (per_train["grids"] > 0).all()

        # --- MLflow: a sweep parent whose 4 children are the points, with metrics
        from mlflow.tracking import MlflowClient

        ml = MlflowClient(cl.env["MLFLOW_TRACKING_URI"])
        exp = ml.get_experiment_by_name("semprobe-smoke").experiment_id
        parent = ml.get_run(summary["mlflow_run"])
        assert parent.info.status == "FINISHED" and parent.data.tags["semprobe.sweep"] == summary["key"]
        children = ml.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(r.info.run_name for r in children) == [f"train.seed={s}" for s in SEEDS]
        assert all(r.info.status == "FINISHED" and "acc_all" in r.data.metrics for r in children)
        n_mlflow = len(ml.search_runs([exp], max_results=1000))

        # --- resubmitting creates no flow run for any point, and no MLflow run
        n_points_before = len(cl.point_runs(point["id"]))
        t_re = time.perf_counter()
        cl.run("sweep-2", cl.sweep_cmd(spec), timeout=300)
        timings["resubmitted sweep"] = time.perf_counter() - t_re
        assert len(cl.point_runs(point["id"])) == n_points_before == len(SEEDS) + 1  # + the crashed run
        again = summary_of(cl.log("sweep-2"))
        assert [p["flow_run"] for p in again["points"]] == [p["flow_run"] for p in summary["points"]]
        assert len(ml.search_runs([exp], max_results=1000)) == n_mlflow
    finally:
        timings["sweep test"] = time.perf_counter() - t0


def result_tables(ws: Path) -> dict[str, pd.DataFrame]:
    """The tables a figure reads, sorted by their key columns; without the columns that name
    this workspace or this moment (a checkpoint's path, a dataset's created_at)."""
    out = {}
    for t in RESULT_TABLES:
        df = read_only_query(ws / "results.duckdb", f"SELECT * FROM {t}")
        df = df.drop(columns=[c for c in ("path", "created_at") if c in df.columns])
        out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def stage_keys(ws: Path) -> list[tuple[str, str, str]]:
    return sorted(map(tuple, read_only_query(ws / "results.duckdb", "SELECT stage, key, status FROM stage_runs")
                      .values.tolist()))


@distributed
def test_fanned_out_study_records_what_an_in_process_run_records(cluster):
    cl, t0 = cluster, time.perf_counter()
    missing = 2 - len(cl.live_workers())  # the sweep test lost a worker
    if missing > 0:
        cl.start_workers(*["c", "d"][:missing])
    units_of = {n: cl.deployment(n)["id"] for n in ("semprobe-train/unit", "semprobe-checkpoint/unit")}
    args = ["--preset", "smoke", "--set", f"train.seed={FANOUT_SEED}"]
    fan_ws, local_ws = cl.root / "ws-fanout", cl.root / "ws-inprocess"
    try:
        # --- the fanned-out study, and meanwhile the same config in process (the reference)
        fan = cl.start("fanout-1", cl.cli(fan_ws, "run", "--fanout", *args))
        cl.run("in-process", cl.cli(local_ws, "run", "--quiet", *args), timeout=600)
        cl.timings["in-process smoke run"] = time.perf_counter() - t0
        assert fan.wait(timeout=600) == 0, cl.log("fanout-1")[-5000:]
        cl.timings["fanned-out smoke study"] = time.perf_counter() - t0
        summary = summary_of(cl.log("fanout-1"))

        # --- one train unit and one unit per checkpoint, each one flow run on a worker of the pool
        units = {u["unit"]: u for u in summary["units"]}
        assert sorted(units) == ["checkpoint-0", "checkpoint-12", "checkpoint-6", "train"], units
        assert all(u["state"] == "finished" and u["attempt"] == 1 for u in units.values()), units
        assert {u["worker"] for u in units.values()} <= set(cl.live_workers()), units
        flow_runs = {n: cl.point_runs(d) for n, d in units_of.items()}
        assert [r["id"] for r in flow_runs["semprobe-train/unit"]] == [units["train"]["flow_run"]]
        assert sorted(r["id"] for r in flow_runs["semprobe-checkpoint/unit"]) == \
            sorted(u["flow_run"] for n, u in units.items() if n != "train")
        assert {r["state"]["type"] for rs in flow_runs.values() for r in rs} == {"COMPLETED"}

        # --- DuckDB: the study alone wrote it, and holds what the in-process run holds
        runs = read_only_query(fan_ws / "results.duckdb", "SELECT run_id, status FROM runs")
        assert runs.values.tolist() == [[summary["run_id"], "finished"]]
        stages = stage_keys(fan_ws)  # dataset, train, 3 x evaluate and activations, 9 probes, phases
        assert stages == stage_keys(local_ws) and len(stages) == 18 and {s[2] for s in stages} == {"computed"}
        expected, got = result_tables(local_ws), result_tables(fan_ws)
        for t in RESULT_TABLES:
            assert len(expected[t]) > 0, t
            pd.testing.assert_frame_equal(got[t], expected[t], obj=t)
        assert Path(summary["report"]).exists()

        # --- MLflow: the study's run with nested checkpoint and probe runs, as in process
        from mlflow.tracking import MlflowClient

        ml = MlflowClient(cl.env["MLFLOW_TRACKING_URI"])
        parent = ml.get_run(summary["mlflow_run"])
        assert parent.info.status == "FINISHED" and parent.data.tags["semprobe.fanout"] == "true"
        children = ml.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {"checkpoint-0", "checkpoint-12", "probes-12-original"} <= {r.info.run_name for r in children}

        # --- submitting the study again creates no unit flow run and records the same rows
        t_re = time.perf_counter()
        cl.run("fanout-2", cl.cli(fan_ws, "run", "--fanout", *args), timeout=300)
        cl.timings["resubmitted study"] = time.perf_counter() - t_re
        again = summary_of(cl.log("fanout-2"))
        assert {u["unit"]: u["flow_run"] for u in again["units"]} == {n: u["flow_run"] for n, u in units.items()}
        assert {n: len(cl.point_runs(d)) for n, d in units_of.items()} == {n: len(r) for n, r in flow_runs.items()}
        got = result_tables(fan_ws)
        for t in RESULT_TABLES:
            pd.testing.assert_frame_equal(got[t], expected[t], obj=t)
    finally:
        cl.timings["fan-out test"] = time.perf_counter() - t0
