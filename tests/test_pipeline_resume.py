"""A run stopped in the middle of training (SIGTERM, as a scheduler stops a job) keeps what it
finished in DuckDB, leaves no process behind, and resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from flows.cli import _chosen_run
from model.checkpoint import list_checkpoints
from tasks.results import ReadOnlyResults, read_only_query
from tasks.workspace import Workspace
from distributed_cluster import wait_for
from pipeline_cli import semprobe, temporary_server_env


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
                                env={**temporary_server_env(), "PYTHONFAULTHANDLER": "1"})
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
            if len(steps) >= 2 and evaluated and "recording it at a later poll" in flow_log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, ("the run ended before it could be interrupted (make it longer), or the held "
                                     f"results file stopped it:\n{flow_log.read_text()[-3000:]}")
        assert holder is not None and "recording it at a later poll" in flow_log.read_text(), flow_log.read_text()
        holder.close()  # the evaluation it could not record goes in at a later poll, while training goes on
        wait_for("the evaluation recorded", lambda: not read_only_query(
            db, "SELECT 1 FROM checkpoint_metrics LIMIT 1").empty, 60)
        assert proc.poll() is None, "training finished before it could be interrupted; make it longer"
        os.kill(proc.pid, signal.SIGTERM)  # as a scheduler stops a job
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # where it hangs: faulthandler writes every thread's stack on SIGABRT
            os.kill(proc.pid, signal.SIGABRT)
            proc.wait(timeout=30)
            raise AssertionError(f"the run did not exit within 60 s of SIGTERM:\n{flow_log.read_text()[-12000:]}")
        assert code == 128 + signal.SIGTERM, code  # stopped, not failed: 1 is a failed stage's code
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
