"""Every older results schema opens at the current one with all its rows, when they come from
several runs.

``old_schemas.json`` holds each old version's DDL as the code of that time wrote it: for version
v, ``_ddl`` of every table in ``TABLES`` at the last commit before the schema became v + 1 (the
commit is in the file). Within a version only tables were added, never changed, so that last
commit's tables are every table a file of that version can hold.

The rows are those of several runs at their most alike: one row, and for each column of the old
primary key a row that differs from it in that column alone. A migration that leaves an old key
column out of the new key (as 4 -> 5 once did to ``phases``) makes two of them collide, and the
file then cannot be opened.
"""

import json
from pathlib import Path

import duckdb
import pytest

from tasks.results import SCHEMA_VERSION, TABLES, ResultsDB
from tasks.results_schema import STAGE_KEY_COLUMNS

OLD_SCHEMAS = json.loads((Path(__file__).parent / "old_schemas.json").read_text())
# columns whose CHECK or meaning limits their values (content metrics leave at 3 -> 4)
ALLOWED = {("controls", "kind"): ("majority", "control_task"), ("stage_runs", "status"): ("computed", "cached"),
           ("checkpoint_metrics", "metric"): ("acc_spec", "ppl")}


def _value(table: str, column: str, dtype: str, i: int) -> str:
    """SQL literal number ``i`` (0 or 1) of a column's type."""
    if (table, column) in ALLOWED:
        return repr(ALLOWED[table, column][i])
    return {"VARCHAR": f"'{column}{i}'", "BIGINT": str(10 + i), "INTEGER": str(i - 1), "DOUBLE": str(i + 0.25),
            "JSON": f"'{{\"run\": {i}}}'", "TIMESTAMP": f"TIMESTAMP '2026-12-0{i + 1} 10:00:00'"}[dtype]


def _columns(con, table: str) -> list[tuple[str, str]]:
    return con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                       "ORDER BY ordinal_position", [table]).fetchall()


def _primary_key(con, table: str) -> list[str]:
    (cols,), = con.execute("SELECT constraint_column_names FROM duckdb_constraints() "
                           "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]).fetchall()
    return list(cols)


def _rows(con, table: str, columns: list[str]) -> list[tuple]:
    cast = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in columns)
    return con.execute(f'SELECT {cast} FROM "{table}" ORDER BY ALL').fetchall()


@pytest.mark.parametrize("version", sorted(OLD_SCHEMAS, key=int))
def test_every_old_schema_opens_with_the_rows_of_several_runs(tmp_path, version):
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER)")
    con.execute(f"INSERT INTO schema_info VALUES ({int(version)})")
    before = {}
    for table, ddl in OLD_SCHEMAS[version]["ddl"].items():
        con.execute(ddl)
        columns = _columns(con, table)
        variants = [None] + _primary_key(con, table)
        for varied in variants:
            values = [_value(table, c, t, int(c == varied)) for c, t in columns]
            con.execute(f'INSERT INTO "{table}" VALUES ({", ".join(values)})')
        before[table] = ([c for c, _ in columns], _rows(con, table, [c for c, _ in columns]))
        assert len(before[table][1]) == len(variants)
    con.close()

    ResultsDB(path)  # opening for writing migrates
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
        for table, (columns, rows) in before.items():
            assert _rows(con, table, columns) == rows, f"{table}: rows changed or lost from schema {version}"
            assert [c for c, _ in _columns(con, table)] == [c for c, _ in TABLES[table][0]], table
            assert _primary_key(con, table) == TABLES[table][1], table
            for added in set(STAGE_KEY_COLUMNS.get(table, ())) - set(columns):
                assert con.execute(f'SELECT DISTINCT "{added}" FROM "{table}"').fetchall() == [("",)]
    finally:
        con.close()
    assert ResultsDB(path).count("phases") == len(before["phases"][1])  # opening again: nothing to migrate
