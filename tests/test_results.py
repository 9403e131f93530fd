import subprocess
import sys
import time

import duckdb
import pandas as pd
import pytest

from tasks.record import Recorder
from tasks.results import (CONTROL_KINDS, SCHEMA_VERSION, TABLES, DatabaseLockedError, ReadOnlyViolation, ResultsDB,
                           _ddl, export_tables, read_only_query)


def _probe_rows(acc=0.5):
    rows = []
    for feature in ("facing", "position"):
        for seed in (0, 1, 2):
            rows.append(dict(probe_key="pk1", checkpoint_key="ck1", step=100, semantics="orig",
                             feature=feature, offset=0, probe="linear", layer=2, seed=seed,
                             split="test", accuracy=acc + seed / 10, n=500))
    return rows


@pytest.fixture
def db(tmp_path):
    return ResultsDB(tmp_path / "ws" / "results.duckdb")


def test_schema_created_with_primary_keys(db):
    tables = set(db.query("SELECT table_name FROM information_schema.tables")["table_name"])
    assert set(TABLES) <= tables
    cons = db.query("SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                    "WHERE constraint_type = 'PRIMARY KEY'")
    pks = {r.table_name: list(r.constraint_column_names) for r in cons.itertuples()}
    for t, (_, pk) in TABLES.items():
        assert pks[t] == pk, t
    # reopening an existing file is fine and keeps data
    db.upsert("checkpoints", [dict(key="c", train_key="t", step=1, tokens_seen=10, path="/x")])
    assert ResultsDB(db.path).count("checkpoints") == 1


def test_upsert_idempotent_list_and_frame(db):
    assert db.upsert("probe_results", _probe_rows()) == 6
    first = db.table("probe_results")
    db.upsert("probe_results", _probe_rows())
    db.upsert("probe_results", pd.DataFrame(_probe_rows()))
    pd.testing.assert_frame_equal(db.table("probe_results"), first)
    # replace by key: same keys, new values -> still 6 rows, values updated
    db.upsert("probe_results", _probe_rows(acc=0.7))
    after = db.table("probe_results")
    assert len(after) == 6
    assert after["accuracy"].round(6).tolist() == [0.7, 0.8, 0.9] * 2


def test_upsert_duplicate_keys_in_batch_last_wins(db):
    rows = [dict(checkpoint_key="c1", eval_key="e", train_key="t", step=5, metric="ppl", value=v)
            for v in (3.0, 2.0)]
    assert db.upsert("checkpoint_metrics", rows) == 1
    assert db.table("checkpoint_metrics")["value"].tolist() == [2.0]


def test_json_and_timestamps_and_default_kept(db):
    db.upsert("datasets", [dict(key="d1", config={"n": (1, 2), "name": "x"}, stats=None)])
    first = db.table("datasets")
    assert first.loc[0, "config"] == '{"n": [1, 2], "name": "x"}'
    assert first.loc[0, "created_at"] is not pd.NaT
    time.sleep(0.02)
    db.upsert("datasets", [dict(key="d1", config={"n": (1, 2), "name": "x"}, stats=None)])
    pd.testing.assert_frame_equal(db.table("datasets"), first)  # created_at not bumped
    n = db.query("SELECT json_extract(config, '$.n[1]')::INT AS v FROM datasets")["v"][0]
    assert n == 2
    t0 = 1_700_000_000.0
    db.upsert("stage_runs", [dict(run_id="r", stage="train", key="k", status="cached",
                                  seconds=0.1, finished_at=t0)])
    got = db.table("stage_runs").loc[0, "finished_at"]
    assert got == pd.Timestamp("2023-11-14 22:13:20")


def test_bad_rows_rejected_with_names(db):
    with pytest.raises(ValueError, match="nope"):
        db.upsert("nope", [{"a": 1}])
    with pytest.raises(ValueError, match="bogus"):
        db.upsert("checkpoints", [dict(key="c", bogus=1)])
    with pytest.raises(ValueError, match="'metric'"):
        db.upsert("checkpoint_metrics", [dict(checkpoint_key="c", eval_key="e", value=1.0)])
    with pytest.raises(ValueError, match="'layer'"):
        db.upsert("probe_results", [dict(_probe_rows()[0], layer=None)])
    with pytest.raises(duckdb.ConstraintException):
        db.upsert("controls", [dict(probe_key="p", feature="f", offset=0, kind="bogus",
                                    probe="linear", value=0.5)])
    with pytest.raises(duckdb.ConstraintException):
        db.upsert("stage_runs", [dict(run_id="r", stage="s", key="k", status="done")])
    assert db.upsert("checkpoints", []) == 0


def test_connection_not_held_between_operations(db):
    db.upsert("checkpoints", [dict(key="c", train_key="t", step=1, tokens_seen=1, path="p")])
    # another process can open the file for writing right after an operation
    code = ("import duckdb,sys; c=duckdb.connect(sys.argv[1]); "
            "print(c.execute('select count(*) from checkpoints').fetchone()[0])")
    r = subprocess.run([sys.executable, "-c", code, str(db.path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_read_only_query(db):
    db.upsert("probe_results", _probe_rows())
    df = read_only_query(db.path, 'SELECT feature, avg(accuracy) AS a FROM probe_results '
                                  'WHERE "offset" = ? GROUP BY feature ORDER BY feature', [0])
    assert df["feature"].tolist() == ["facing", "position"]
    for stmt in ["DELETE FROM probe_results", "CREATE TABLE x (a INT)",
                 "INSERT INTO checkpoints (key) VALUES ('z')", "DROP TABLE runs"]:
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            read_only_query(db.path, stmt)
    assert db.count("probe_results") == 6
    with pytest.raises(FileNotFoundError, match="no results database"):
        read_only_query(db.path.parent / "missing.duckdb", "SELECT 1")
    with pytest.raises(ValueError, match='query failed.*offset_'):
        read_only_query(db.path, "SELECT offset_ FROM probe_results")
    with pytest.raises(ValueError, match="query failed.*nope"):
        read_only_query(db.path, "SELECT * FROM nope")


def test_export_round_trips(db, tmp_path):
    db.upsert("probe_results", _probe_rows())
    files = export_tables(db.path, tmp_path / "out")
    assert sorted(f.name for f in files) == sorted(
        [f"{t}.{'parquet' if t == 'probe_results' else 'csv'}" for t in TABLES] + ["schema_info.csv"])
    assert pd.read_csv(tmp_path / "out" / "schema_info.csv")["version"].tolist() == [SCHEMA_VERSION]
    back = pd.read_parquet(tmp_path / "out" / "probe_results.parquet")
    pd.testing.assert_frame_equal(back.reset_index(drop=True), db.table("probe_results").reset_index(drop=True),
                                  check_dtype=False)
    assert pd.read_csv(tmp_path / "out" / "runs.csv").empty


@pytest.fixture
def holder(db):
    """A second real process holding a read-write connection to the file."""
    code = ("import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.readline()")
    p = subprocess.Popen([sys.executable, "-c", code, str(db.path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    yield p
    p.stdin.close()
    p.wait(10)


def test_locked_by_other_process_clear_error(db, holder):
    db.lock_timeout = 0.3
    t0 = time.monotonic()
    with pytest.raises(DatabaseLockedError) as ei:
        db.upsert("checkpoints", [dict(key="c", train_key="t", step=1, tokens_seen=1, path="p")])
    assert time.monotonic() - t0 >= 0.3  # retried for lock_timeout before giving up
    msg = str(ei.value)
    assert str(db.path) in msg and "locked by another process" in msg
    assert ei.value.pid == holder.pid and f"PID {holder.pid}" in msg
    with pytest.raises(DatabaseLockedError, match="locked by another process"):
        read_only_query(db.path, "SELECT 1", lock_timeout=0.1)
    with pytest.raises(DatabaseLockedError):
        ResultsDB(db.path, lock_timeout=0.1)


def test_lock_released_waiter_succeeds(db, holder):
    import threading
    threading.Timer(0.4, holder.stdin.close).start()
    db.lock_timeout = 10
    db.upsert("checkpoints", [dict(key="c", train_key="t", step=1, tokens_seen=1, path="p")])
    assert db.count("checkpoints") == 1


def test_nan_stored_as_null_and_numpy_scalars(db):
    import numpy as np
    db.upsert("checkpoint_metrics", [
        dict(checkpoint_key="c", eval_key="e", metric="m", value=float("nan"), step=np.int64(3)),
        dict(checkpoint_key="c", eval_key="e", metric="n", value=np.float32(0.5), step=np.int64(3))])
    got = db.query("SELECT metric, value, step FROM checkpoint_metrics ORDER BY metric")
    assert got["value"].isna().tolist() == [True, False]
    assert got["step"].tolist() == [3, 3]


@pytest.mark.parametrize("version", [1, 2])
def test_old_controls_are_migrated_with_their_rows(tmp_path, version):
    """A results file of schema 1 (before the alignment check's kinds) or 2 (before
    ``controls.semantics``) opens, keeps its controls, gives each its grid's semantics from
    ``probe_summary`` (NULL for a grid without summary rows) and accepts the new kinds; a kind
    outside the list is still refused."""
    path = tmp_path / "results.duckdb"
    kinds = "'majority', 'control_task', 'selectivity', 'random_init', 'embedding'" + (
        ", 'emitted_action', 'emitted_action_init', 'emitted_action_majority'" if version == 2 else "")
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute(f"INSERT INTO schema_info VALUES ({version})")
    con.execute(f"""CREATE TABLE controls (probe_key VARCHAR, checkpoint_key VARCHAR, step BIGINT,
        feature VARCHAR, "offset" INTEGER, kind VARCHAR CHECK (kind IN ({kinds})), probe VARCHAR,
        value DOUBLE, PRIMARY KEY (probe_key, feature, "offset", kind, probe))""")
    con.execute("INSERT INTO controls VALUES ('pk', 'ck', 5, 'direction', 0, 'random_init', 'mlp1', 0.4), "
                "('pk-flip', 'ck', 5, 'direction', 0, 'random_init', 'mlp1', 0.3), "
                "('pk-none', 'ck', 5, 'direction', 0, 'random_init', 'mlp1', 0.2)")
    if version == 2:
        con.execute(_ddl("probe_summary"))  # unchanged since schema 1
        con.execute("INSERT INTO probe_summary (probe_key, semantics, feature, \"offset\", probe, layer, split) "
                    "VALUES ('pk', 'original', 'direction', 0, 'mlp1', -1, 'test'), "
                    "('pk-flip', 'flip', 'direction', 0, 'mlp1', -1, 'test'), "
                    "('pk-flip', 'flip', 'direction', 0, 'mlp1', -1, 'val')")
    con.close()
    db = ResultsDB(path)
    got = db.query("SELECT probe_key, semantics, value FROM controls ORDER BY probe_key")
    assert got["value"].tolist() == [0.4, 0.3, 0.2]
    want = ["original", "flip", None] if version == 2 else [None, None, None]
    assert [None if pd.isna(v) else v for v in got["semantics"]] == want
    row = dict(probe_key="pk", checkpoint_key="ck", step=5, semantics="original", feature="emitted_action",
               offset=0, kind="emitted_action_init", probe="linear", value=0.5)
    db.upsert("controls", [row])
    got = db.query("SELECT kind, value FROM controls WHERE probe_key = 'pk' ORDER BY kind")
    assert list(got["kind"]) == ["emitted_action_init", "random_init"] and list(got["value"]) == [0.5, 0.4]
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION]
    with pytest.raises(Exception, match="CHECK"):
        db.upsert("controls", [{**row, "kind": "made_up"}])
    assert ResultsDB(path).count("controls") == 4  # opening it again: nothing to migrate


def test_schema_5_controls_admit_the_paired_margins(tmp_path):
    """A results file of schema 5 opens with its controls rows kept, then takes the paired-margin
    kinds; a made-up kind is still refused."""
    path = tmp_path / "results.duckdb"
    kinds = ", ".join(repr(k) for k in CONTROL_KINDS if not k.endswith("_margin_low"))
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (5)")
    con.execute(f"""CREATE TABLE controls (probe_key VARCHAR, checkpoint_key VARCHAR, step BIGINT,
        semantics VARCHAR, feature VARCHAR, "offset" INTEGER, kind VARCHAR CHECK (kind IN ({kinds})),
        probe VARCHAR, value DOUBLE, PRIMARY KEY (probe_key, feature, "offset", kind, probe))""")
    con.execute("INSERT INTO controls VALUES ('pk', 'ck', 5, 'original', 'direction', 0, 'majority', 'majority', 0.25), "
                "('pk', 'ck', 5, 'original', 'direction', 0, 'random_init', 'mlp1', NULL)")
    with pytest.raises(Exception, match="CHECK"):  # what the migration is for
        con.execute("INSERT INTO controls VALUES ('pk', 'ck', 5, 'original', 'direction', 0, "
                    "'majority_margin_low', 'mlp1', 0.1)")
    con.close()
    db = ResultsDB(path)
    got = db.query("SELECT kind, value FROM controls ORDER BY kind")
    assert got["kind"].tolist() == ["majority", "random_init"] and got["value"].iloc[0] == 0.25
    assert pd.isna(got["value"].iloc[1])
    row = dict(probe_key="pk", checkpoint_key="ck", step=5, semantics="original", feature="direction",
               offset=0, kind="majority_margin_low", probe="mlp1", value=0.1)
    db.upsert("controls", [row])
    assert db.count("controls") == 3
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION]
    with pytest.raises(Exception, match="CHECK"):
        db.upsert("controls", [{**row, "kind": "made_up"}])


# checkpoint_metrics and phases before schema 5 (no stage key in their primary keys)
OLD_METRICS = ('CREATE TABLE checkpoint_metrics (checkpoint_key VARCHAR, train_key VARCHAR, step BIGINT, '
               'metric VARCHAR, value DOUBLE, PRIMARY KEY (checkpoint_key, metric))')
OLD_PHASES = ('CREATE TABLE phases (train_key VARCHAR, phase VARCHAR, start_step BIGINT, '
              'PRIMARY KEY (train_key, phase))')


def test_schema_3_content_rows_leave_checkpoint_metrics(tmp_path):
    """Schema 3 kept semantic content as ``checkpoint_metrics`` rows keyed by checkpoint alone
    (the last probe configuration to write one won): opening it drops those rows, keeps every
    evaluation metric, and gives content its own table keyed by phases stage."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (3)")
    con.execute(OLD_METRICS)
    con.execute("INSERT INTO checkpoint_metrics VALUES ('ck', 'tk', 5, 'acc_spec', 0.5), "
                "('ck', 'tk', 5, 'semantic_content', 0.02), ('ck', 'tk', 5, 'semantic_content_vs_init', 0.01)")
    con.close()
    db = ResultsDB(path)
    assert db.query("SELECT metric, value FROM checkpoint_metrics").values.tolist() == [["acc_spec", 0.5]]
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION]
    row = dict(phases_key="ph", checkpoint_key="ck", train_key="tk", step=5, offset=-1, content=0.03)
    db.upsert("semantic_content", [row, dict(row, phases_key="ph2", offset=0, content=0.04)])
    got = db.query("SELECT phases_key, \"offset\", content, content_vs_init FROM semantic_content ORDER BY phases_key")
    assert got[["phases_key", "offset", "content"]].values.tolist() == [["ph", -1, 0.03], ["ph2", 0, 0.04]]
    assert got["content_vs_init"].isna().all()


def test_schema_4_metrics_and_phases_gain_their_stage_keys(tmp_path):
    """Schema 4 keyed evaluation metrics by checkpoint and phases by training run, so a run that
    evaluated or probed the same checkpoints differently overwrote them: opening it keeps every
    row under the stage key '' (unknown), and rows of two stages then stand side by side."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (4)")
    con.execute(OLD_METRICS)
    con.execute(OLD_PHASES)
    con.execute("INSERT INTO checkpoint_metrics VALUES ('ck', 'tk', 5, 'acc_spec', 0.5), ('ck', 'tk', 5, 'ppl', 3.0)")
    # and another training run's phases (a workspace that ran two presets): '' must not merge them
    con.execute("INSERT INTO phases VALUES ('tk', 'syntax', 5), ('tk', 'semantics', NULL), ('tk2', 'syntax', 7)")
    con.close()
    db = ResultsDB(path)
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION] == [9]
    got = db.query("SELECT eval_key, train_key, step, metric, value FROM checkpoint_metrics ORDER BY metric")
    assert got.values.tolist() == [["", "tk", 5, "acc_spec", 0.5], ["", "tk", 5, "ppl", 3.0]]
    got = db.query("SELECT phases_key, train_key, phase, start_step FROM phases WHERE train_key = 'tk' ORDER BY phase")
    assert got["phases_key"].tolist() == ["", ""] and got["start_step"].isna().tolist() == [True, False]
    assert db.query("SELECT start_step FROM phases WHERE train_key = 'tk2'")["start_step"].tolist() == [7]
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck", eval_key="ev2", train_key="tk", step=5,
                                          metric="acc_spec", value=0.6)])
    db.upsert("phases", [dict(phases_key="ph2", train_key="tk", phase="syntax", start_step=4)])
    got = db.query("SELECT eval_key, value FROM checkpoint_metrics WHERE metric = 'acc_spec' ORDER BY eval_key")
    assert got.values.tolist() == [["", 0.5], ["ev2", 0.6]]
    assert db.count("phases") == 4
    assert ResultsDB(path).count("checkpoint_metrics") == 3  # opening it again: nothing to migrate


def test_schema_6_interventions_gain_their_phases_key(tmp_path):
    """Schema 6 keyed the interventions tables by probe grid, so two phases stages (other code)
    over the same grids overwrote each other's rows: opening it keeps every row under the phases
    key '' (unknown), and the rows of two phases stages then stand side by side."""
    path = tmp_path / "results.duckdb"
    ident = ('probe_key VARCHAR, checkpoint_key VARCHAR, step BIGINT, semantics VARCHAR, feature VARCHAR, '
             '"offset" INTEGER, probe VARCHAR, layer INTEGER')
    pk = 'PRIMARY KEY (probe_key, semantics, feature, "offset", probe, layer)'
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (6)")
    con.execute(f"CREATE TABLE interventions ({ident}, original DOUBLE, alternative DOUBLE, content DOUBLE, "
                f"ci_low DOUBLE, ci_high DOUBLE, {pk})")
    con.execute(f"CREATE TABLE interventions_vs_init ({ident}, trained_drop DOUBLE, init_drop DOUBLE, "
                f"content DOUBLE, ci_low DOUBLE, ci_high DOUBLE, {pk})")
    con.execute("INSERT INTO interventions VALUES ('pk', 'ck', 5, 'flip', 'direction', 0, 'mlp1', -1, "
                "0.5, 0.4, 0.1, 0.05, 0.15), ('pk', 'ck', 5, 'adversarial', 'direction', 0, 'mlp1', -1, "
                "0.5, 0.3, 0.2, 0.1, 0.3)")
    con.execute("INSERT INTO interventions_vs_init VALUES ('pk', 'ck', 5, 'flip', 'direction', 0, 'mlp1', -1, "
                "0.1, 0.02, 0.08, 0.0, 0.16)")
    con.close()
    db = ResultsDB(path)
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION] == [9]
    got = db.query("SELECT phases_key, semantics, content FROM interventions ORDER BY semantics")
    assert got.values.tolist() == [["", "adversarial", 0.2], ["", "flip", 0.1]]
    got = db.query("SELECT phases_key, trained_drop, init_drop, content FROM interventions_vs_init")
    assert got.values.tolist() == [["", 0.1, 0.02, 0.08]]
    row = dict(phases_key="ph2", probe_key="pk", checkpoint_key="ck", step=5, semantics="flip", feature="direction",
               offset=0, probe="mlp1", layer=-1, original=0.5, alternative=0.45, content=0.05)
    db.upsert("interventions", [row])
    got = db.query("SELECT phases_key, content FROM interventions WHERE semantics = 'flip' ORDER BY phases_key")
    assert got.values.tolist() == [["", 0.1], ["ph2", 0.05]]
    assert ResultsDB(path).count("interventions") == 3  # opening it again: nothing to migrate


def test_schema_7_stage_runs_gain_the_machine(tmp_path):
    """Schema 7 did not say what computed a stage: opening it keeps every stage row (machine
    NULL), and a stage recorded from then on carries its artifact's ``meta.machine``."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (7)")
    con.execute("CREATE TABLE stage_runs (run_id VARCHAR, stage VARCHAR, key VARCHAR, status VARCHAR "
                "CHECK (status IN ('computed', 'cached')), seconds DOUBLE, finished_at TIMESTAMP, "
                "PRIMARY KEY (run_id, stage, key))")
    con.execute("INSERT INTO stage_runs VALUES ('r0', 'train', 'tk', 'computed', 60.0, '2026-12-04 10:00:00')")
    con.close()
    db = ResultsDB(path)
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION] == [9]
    old = db.query("SELECT * FROM stage_runs")
    assert old[["run_id", "stage", "seconds"]].values.tolist() == [["r0", "train", 60.0]]
    assert old["machine"].isna().all()
    machine = {"cpu": "AMD EPYC (family 25, model 17)", "cpu_isa": ["avx512_bf16", "avx512f", "avx2"],
               "cores": 2, "torch": "2.13.0+cpu", "python": "3.11.7", "cuda": None}
    Recorder(db, "r1", None).stage({"stage": "evaluate", "key": "ek", "status": "computed", "seconds": 2.0,
                                    "finished_at": "2026-12-04T11:00:00+00:00", "meta": {"machine": machine}})
    got = db.query("SELECT machine->>'cpu' AS cpu, CAST(machine->>'cores' AS INTEGER) AS cores, "
                   "machine->'cpu_isa' AS isa FROM stage_runs WHERE run_id = 'r1'")
    assert got.values.tolist() == [[machine["cpu"], 2, '["avx512_bf16","avx512f","avx2"]']]
    assert ResultsDB(path).count("stage_runs") == 2  # opening it again: nothing to migrate


def test_schema_8_phases_are_keyed_by_training_run_too(tmp_path):
    """Schema 8 keyed phases by phases stage and phase: every row is kept, and the primary key
    becomes (phases_key, train_key, phase), so rows a migration left with phases_key '' for two
    training runs stand apart."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (8)")
    con.execute("CREATE TABLE phases (phases_key VARCHAR, train_key VARCHAR, phase VARCHAR, start_step BIGINT, "
                "PRIMARY KEY (phases_key, phase))")
    con.execute("INSERT INTO phases VALUES ('', 'tk', 'syntax', 5), ('ph', 'tk', 'syntax', 4)")
    con.close()
    db = ResultsDB(path)
    assert db.query("SELECT version FROM schema_info")["version"].tolist() == [SCHEMA_VERSION] == [9]
    pk = db.query("SELECT constraint_column_names AS c FROM duckdb_constraints() "
                  "WHERE table_name = 'phases' AND constraint_type = 'PRIMARY KEY'")["c"].tolist()
    assert [list(c) for c in pk] == [["phases_key", "train_key", "phase"]]
    db.upsert("phases", [dict(phases_key="", train_key="tk2", phase="syntax", start_step=7)])
    got = db.query("SELECT phases_key, train_key, start_step FROM phases ORDER BY ALL")
    assert got.values.tolist() == [["", "tk", 5], ["", "tk2", 7], ["ph", "tk", 4]]


def test_a_write_waits_for_a_held_file_saying_so(db, holder):
    """The end of a finished run waits for a reader to let the file go (``retried_while_locked``)."""
    import threading
    from tasks.results import retried_while_locked

    db.lock_timeout = 0.2
    waits: list[tuple] = []
    row = [dict(key="c", train_key="t", step=1, tokens_seen=1, path="p")]
    with pytest.raises(DatabaseLockedError):  # still held when the wait is over: the error, as before
        retried_while_locked(lambda: db.upsert("checkpoints", row), 0.5, lambda e, left: waits.append(left), 0.1)
    assert waits and all(0 < left <= 0.5 for left in waits)
    waits.clear()
    threading.Timer(1.0, holder.stdin.close).start()
    retried_while_locked(lambda: db.upsert("checkpoints", row), 60, lambda e, left: waits.append((e.pid, left)), 0.1)
    assert db.count("checkpoints") == 1
    assert waits and waits[0][0] == holder.pid and waits[0][1] > 50, waits


def test_a_held_file_is_said_once_per_interval_while_it_stays_held():
    """A flow's polls retry a held results file every few seconds; the warning comes once per
    interval, and again at once after a write went through and the file is held anew."""
    from tasks.results import HeldWarning

    said: list[str] = []
    held = HeldWarning(lambda msg, *args: said.append(msg % args), every_s=0.3)
    for _ in range(5):
        held("held by %s", "PID 1")
    assert said == ["held by PID 1 (said again every 0 minutes while it is held)"]  # 0.3 s, rounded
    time.sleep(0.35)
    held("held by %s", "PID 2")
    assert said[-1] == "held by PID 2 (said again every 0 minutes while it is held)" and len(said) == 2
    held.clear()  # written: the next hold is news
    held("held by %s", "PID 3")
    assert said[-1] == "held by PID 3 (said again every 0 minutes while it is held)" and len(said) == 3
    assert HeldWarning(said.append).every_s == 300  # the flows' interval: "every 5 minutes"
