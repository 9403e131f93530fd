"""`semprobe import` and `semprobe compare` of an export folder, on the runs committed under
``results/``: the committed evidence reads back as the workspace that wrote it."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import _chosen_run, main
from tasks.results import SCHEMA_VERSION, TABLES, ResultsDB, export_tables, read_only_query
from tasks.results_import import import_export

RESULTS = Path(__file__).resolve().parent.parent / "results"
CPU = RESULTS / "cpu-zen4-1850-seed0-2026-12-05"  # exported with the current schema
CPU_LONG = RESULTS / "cpu-long-zen4-rerun-2026-12-04"  # before stage_runs.machine (schema 7)
FIRST = RESULTS / "cpu-seed0-2026-11-28"  # before controls.semantics, eval and phases keys (schema 2)


def _export_frame(folder: Path, table: str) -> pd.DataFrame:
    df = pd.read_parquet(folder / f"{table}.parquet") if table == "probe_results" \
        else pd.read_csv(folder / f"{table}.csv", dtype=str, keep_default_na=False)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_an_export_of_the_current_schema_round_trips(tmp_path):
    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    counts = import_export(CPU, db)
    assert set(counts) == set(TABLES) and not any(c["missing_columns"] for c in counts.values())
    export_tables(db.path, tmp_path / "again")
    for table in TABLES:
        first, again = _export_frame(CPU, table), _export_frame(tmp_path / "again", table)
        assert counts[table]["added"] == len(first) > 0, table
        pd.testing.assert_frame_equal(again, first, check_exact=True, obj=table)


def test_import_again_adds_nothing_and_a_different_row_stops_it_with_nothing_written(tmp_path):
    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    import_export(CPU, db)
    before = {t: db.count(t) for t in TABLES}
    again = import_export(CPU, db)
    assert all(c["added"] == 0 and c["present"] == before[t] for t, c in again.items())
    # another run of the same dataset, on another day: the dataset row was made at another time, the same result
    made = {pd.read_csv(f / "datasets.csv")["created_at"][0] for f in (CPU, CPU_LONG)}
    assert len(made) == 2 and import_export(CPU_LONG, db)["datasets"] == {"added": 0, "present": 1,
                                                                          "missing_columns": []}
    before = {t: db.count(t) for t in TABLES}
    # another machine's run of the same stage keys: its numbers must not replace the workspace's own
    other = tmp_path / "other"
    shutil.copytree(CPU, other)
    metrics = pd.read_csv(other / "checkpoint_metrics.csv")
    metrics.loc[metrics.index[-1], "value"] += 0.01
    metrics.to_csv(other / "checkpoint_metrics.csv", index=False)
    runs = pd.read_csv(other / "runs.csv")
    runs["run_id"] = "another-run"
    runs.to_csv(other / "runs.csv", index=False)
    with pytest.raises(ValueError, match="checkpoint_metrics.*differs.*nothing was imported"):
        import_export(other, db)
    assert {t: db.count(t) for t in TABLES} == before  # not even the new run row


def test_json_columns_are_compared_by_value_not_by_text(tmp_path):
    """The same run's config written by another writer (other spacing, other key order) is the
    row the workspace holds; a config that differs in a value still stops the import."""
    import json

    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    import_export(CPU, db)
    other = tmp_path / "other"
    shutil.copytree(CPU, other)
    runs = pd.read_csv(other / "runs.csv", dtype=str, keep_default_na=False)
    config = json.loads(runs.loc[0, "config"])
    runs.loc[0, "config"] = json.dumps(dict(reversed(list(config.items()))), separators=(",", ":"))
    assert runs.loc[0, "config"] != pd.read_csv(CPU / "runs.csv", dtype=str)["config"][0]
    runs.to_csv(other / "runs.csv", index=False)
    assert import_export(other, db)["runs"] == {"added": 0, "present": len(runs), "missing_columns": []}
    config["train"]["seed"] += 1
    runs.loc[0, "config"] = json.dumps(config)
    runs.to_csv(other / "runs.csv", index=False)
    with pytest.raises(ValueError, match="table 'runs' row .* differs .* nothing was imported"):
        import_export(other, db)


def test_older_exports_load_by_the_migrations_rules(tmp_path):
    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    counts = import_export(FIRST, db)
    assert counts["controls"]["missing_columns"] == ["semantics"]
    assert counts["checkpoint_metrics"]["missing_columns"] == ["eval_key"]
    assert set(db.query("SELECT DISTINCT eval_key FROM checkpoint_metrics")["eval_key"]) == {""}
    # semantic content moved out of checkpoint_metrics (schema 4): not carried in
    exported = pd.read_csv(FIRST / "checkpoint_metrics.csv")
    legacy = exported["metric"].str.startswith("semantic_content")
    assert legacy.any() and db.count("checkpoint_metrics") == (~legacy).sum()
    # each controls row gets its grid's semantics from probe_summary (schema 3)
    named = db.query("SELECT c.semantics AS got, s.semantics AS want FROM controls c JOIN "
                     "(SELECT DISTINCT probe_key, semantics FROM probe_summary) s USING (probe_key)")
    assert len(named) == db.count("controls") and (named["got"] == named["want"]).all()
    assert counts["stage_runs"]["missing_columns"] == ["machine"]
    assert import_export(CPU_LONG, db)["stage_runs"]["missing_columns"] == ["machine"]


def test_a_workspace_holding_older_rows_exports_and_imports_again_with_its_empty_stage_keys(tmp_path):
    """The '' stage keys that older rows got (migrations, older exports) come back as '', not
    NULL, from the export of such a workspace, into a folder whose name has a quote."""
    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    import_export(FIRST, db)
    again = tmp_path / "bob's export"
    export_tables(db.path, again)
    copy = ResultsDB(tmp_path / "copy" / "results.duckdb")
    counts = import_export(again, copy)
    for table in TABLES:
        assert counts[table]["added"] == db.count(table), table
        pd.testing.assert_frame_equal(copy.table(table), db.table(table), check_exact=True, obj=table)
    assert set(copy.query("SELECT DISTINCT phases_key FROM phases")["phases_key"]) == {""}


def test_a_workspace_of_an_older_schema_is_not_exported_half(tmp_path):
    """Its tables are not this code's: refused by name before a file is written (a half export
    without schema_info.csv would have imported as a run without its metrics)."""
    import duckdb

    path = tmp_path / "ws" / "results.duckdb"
    path.parent.mkdir()
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute("INSERT INTO schema_info VALUES (4)")
    con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY)")
    con.close()
    with pytest.raises(ValueError, match="results schema version 4, this code exports 9; .* report` migrates it"):
        export_tables(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_what_is_not_an_export_is_refused(tmp_path):
    db = ResultsDB(tmp_path / "ws" / "results.duckdb")
    with pytest.raises(ValueError, match="not a `semprobe export` folder: it has no runs.csv"):
        import_export(tmp_path, db)
    newer = tmp_path / "newer"
    shutil.copytree(CPU, newer)
    (newer / "schema_info.csv").write_text(f"version\n{SCHEMA_VERSION + 1}\n")
    with pytest.raises(ValueError, match=f"results schema {SCHEMA_VERSION + 1}"):
        import_export(newer, db)
    # a key twice (a hand-edited export): which of its rows is the run's cannot be told
    twice = tmp_path / "twice"
    shutil.copytree(FIRST, twice)
    phases = pd.read_csv(twice / "phases.csv")
    pd.concat([phases, phases.assign(start_step=1)]).to_csv(twice / "phases.csv", index=False)
    with pytest.raises(ValueError, match=r"'phases' holds key \{'phases_key': '', 'train_key': '\w+', 'phase': "
                                         r"'\w+'\} more than once \(the export has no phases_key column\); "
                                         r"nothing was imported"):
        import_export(twice, db)
    odd = tmp_path / "odd"
    shutil.copytree(CPU, odd)
    runs = pd.read_csv(odd / "runs.csv").assign(gpu="H100")
    runs.to_csv(odd / "runs.csv", index=False)
    with pytest.raises(ValueError, match=r"\['gpu'\] are not in table 'runs'"):
        import_export(odd, db)
    assert db.count("runs") == 0


def test_compare_reads_committed_exports_as_their_workspaces(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path / "ws"), "compare", str(CPU), str(CPU_LONG)]) == 0
    table = capsys.readouterr().out
    # target 1 as the runs recorded it: lengths 6..10 at each run's last checkpoint
    for folder in (CPU, CPU_LONG):
        metrics = pd.read_csv(folder / "checkpoint_metrics.csv")
        last = metrics[metrics["step"] == metrics["step"].max()].set_index("metric")["value"]
        assert f"{100 * last['acc_spec_len6_10']:.1f}% (95% CI" in table, folder
    assert "32.7% (95% CI 25.7-40.5%, 150 specs) at step 1850" in table  # RESULTS.md's top table
    assert "78.0% (95% CI 70.7-83.9%, 150 specs) at step 6000" in table
    assert not (tmp_path / "ws" / "results.duckdb").exists()  # compare writes no workspace
    assert main(["--workspace", str(tmp_path / "ws"), "import", str(CPU_LONG)]) == 0
    assert "bd457042" in capsys.readouterr().out
    runs = read_only_query(tmp_path / "ws" / "results.duckdb", "SELECT status FROM runs")
    assert sorted(runs["status"]) == ["failed"] * 3 + ["finished"]


def test_a_run_is_named_by_its_id_or_the_beginning_the_reports_show(tmp_path):
    db = ResultsDB(tmp_path / "results.duckdb")
    db.upsert("runs", [dict(run_id=r, preset="cpu", status="finished", finished_at=f"2026-12-0{i + 1}")
                       for i, r in enumerate(("bd457042-aa", "bd457042-ab", "c44025bb-cc"))])
    assert _chosen_run(db, "c44025bb") == ("c44025bb-cc", "cpu")
    assert _chosen_run(db, "bd457042-aa") == ("bd457042-aa", "cpu")
    assert _chosen_run(db, None) == ("c44025bb-cc", "cpu")  # the latest finished
    with pytest.raises(ValueError, match="run id bd457042 begins 2 runs"):
        _chosen_run(db, "bd457042")
    with pytest.raises(ValueError, match="no run ffff"):
        _chosen_run(db, "ffff")
