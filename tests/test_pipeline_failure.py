"""A run whose stage fails keeps what its other tasks computed: the probe grids still running when
the failure is seen finish (Prefect's task runner waits for them before the flow exits all the
same) and go into DuckDB under the failed run."""

from __future__ import annotations

from tasks.results import read_only_query
from tasks.workspace import Workspace
from pipeline_cli import semprobe


def test_a_failed_stage_records_the_grids_still_running(tmp_path):
    store = Workspace.at(tmp_path / "ws").store
    # every evaluation fails: a file stands where the evaluate stage's folder goes
    blocked = store.stage_dir("evaluate")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    proc = semprobe(tmp_path / "ws", "run", "--preset", "smoke", "--quiet", "--set", "activations.checkpoints=2",
                    check=False)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert str(blocked) in proc.stderr  # the failure that stopped the run is the one named
    db = tmp_path / "ws" / "results.duckdb"
    runs = read_only_query(db, "SELECT run_id, status FROM runs")
    assert runs["status"].tolist() == ["failed"]
    grids = {k for k in store.keys("probes") if store.is_complete("probes", k)}
    assert len(grids) == 6  # two probed checkpoints x three semantics, all computed
    recorded = set(read_only_query(db, "SELECT DISTINCT probe_key FROM probe_summary")["probe_key"])
    assert recorded == grids, proc.stderr[-3000:]
    assert read_only_query(db, "SELECT count(*) AS n FROM checkpoint_metrics")["n"][0] == 0  # none evaluated
