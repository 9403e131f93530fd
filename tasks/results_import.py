"""An export folder (``semprobe export``) read back into a results file, so that the runs
committed under ``results/`` are read by ``report``, ``compare`` and ``sql`` as any workspace's.

Exports written before a column existed load by the rules of the migration that added it
(``tasks.results_schema``): a missing stage-key column is '' (unknown), another missing column
NULL, a controls row's grid semantics comes from ``probe_summary``, and ``checkpoint_metrics``
keeps no semantic-content rows. Nothing in the target file is overwritten: a row whose key is
there already must be the same row (but for when and where it was made, ``BOOKKEEPING_COLUMNS``),
and no key may come twice in the export (a hand-edited one), or the import stops with nothing
written.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from tasks.results import ResultsDB
from tasks.results_schema import (BOOKKEEPING_COLUMNS, CONTENT_METRICS, SCHEMA_VERSION, STAGE_KEY_COLUMNS, TABLES,
                                  _base_type, _path_literal, _q, _transaction, grid_semantics)


def _export_file(folder: Path, table: str) -> Path | None:
    for suffix in (".parquet", ".csv"):
        if (folder / f"{table}{suffix}").is_file():
            return folder / f"{table}{suffix}"
    return None


def _columns(con: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]


def _source(path: Path) -> str:
    where = _path_literal(path)
    if path.suffix == ".parquet":
        return f"read_parquet({where})"
    # each column cast to the schema's type; a quoted empty field is '' (the stage key the migrations
    # give older rows), an unquoted one NULL, as DuckDB's COPY writes them
    return f"read_csv({where}, header = true, all_varchar = true, allow_quoted_nulls = false)"


def _staged(con: duckdb.DuckDBPyConnection, folder: Path, table: str) -> tuple[str, list[str]] | None:
    """A SELECT of the export's ``table`` in the current schema's columns and types, and the
    columns the export lacks; None when the export has no such table."""
    path = _export_file(folder, table)
    if path is None:
        return None
    have = _columns(con, _source(path))
    cols = TABLES[table][0]
    unknown = [c for c in have if c not in dict(cols)]
    if unknown:
        raise ValueError(f"{path}: column(s) {unknown} are not in table {table!r} of results schema "
                         f"{SCHEMA_VERSION} (an export of newer code?)")
    missing = [c for c, _ in cols if c not in have]
    exprs = []
    for c, decl in cols:
        value = _q(c) if c in have else ("''" if c in STAGE_KEY_COLUMNS.get(table, ()) else "NULL")
        exprs.append(f"CAST({value} AS {_base_type(decl)}) AS {_q(c)}")
    return f"SELECT {', '.join(exprs)} FROM {_source(path)}", missing


def import_export(folder: str | Path, db: ResultsDB) -> dict[str, dict]:
    """Load the export in ``folder`` into ``db``, in one transaction; returns, per table of the
    export, ``{"added": n, "present": n, "missing_columns": [...]}`` (``present``: rows ``db`` held
    already, identical). Raises ValueError when ``folder`` is no export, when the export's schema is
    newer than this code's, or when a row has the key of a different row in ``db``."""
    folder = Path(folder)
    if not (folder / "runs.csv").is_file():
        raise ValueError(f"{folder} is not a `semprobe export` folder: it has no runs.csv")
    version_file = folder / "schema_info.csv"
    if version_file.is_file():
        version = int(version_file.read_text().split()[-1])
        if version > SCHEMA_VERSION:
            raise ValueError(f"{folder} was exported with results schema {version}; this code reads up to "
                             f"{SCHEMA_VERSION}: import it with newer code")
    out: dict[str, dict] = {}
    statements = []
    with db.connect() as con:
        for table, (cols, pk) in TABLES.items():
            staged = _staged(con, folder, table)
            if staged is None:
                continue
            select, missing = staged
            stage = _q(f"_import_{table}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {stage} AS {select}")
            if table == "checkpoint_metrics":  # recorded here before schema 4; semantic_content holds them now
                con.execute(f"DELETE FROM {stage} WHERE metric IN ({', '.join(map(repr, CONTENT_METRICS))})")
            if table == "controls" and "semantics" in missing:
                con.execute(f"UPDATE {stage} o SET semantics = s.semantics FROM ({grid_semantics('_import_probe_summary')}) s "
                            f"WHERE s.probe_key = o.probe_key")
            twice = con.execute(f"SELECT {', '.join(map(_q, pk))} FROM {stage} GROUP BY ALL HAVING count(*) > 1 "
                                "LIMIT 1").fetchone()
            if twice is not None:  # which of the rows is the run's cannot be told
                raise ValueError(f"{folder}: table {table!r} holds key {dict(zip(pk, twice))} more than once"
                                 + (f" (the export has no {', '.join(missing)} column)" if missing else "")
                                 + "; nothing was imported")
            same_key = " AND ".join(f"t.{_q(c)} = i.{_q(c)}" for c in pk)
            compared = [c for c, _ in cols if c not in BOOKKEEPING_COLUMNS.get(table, ())]
            # JSON is compared by value, not text: another writer's spacing or key order is the same row
            json_cols = [c for c, decl in cols if c in compared and _base_type(decl) == "JSON"]
            same_row = " AND ".join(f"t.{_q(c)} IS NOT DISTINCT FROM i.{_q(c)}" for c in compared
                                    if c not in json_cols)
            clash = con.execute(f"SELECT {', '.join('i.' + _q(c) for c in pk)} FROM {stage} i JOIN {_q(table)} t "
                                f"ON {same_key} WHERE NOT ({same_row}) LIMIT 1").fetchone()
            if clash is None and json_cols:
                clash = _json_clash(con, stage, table, pk, json_cols, same_key)
            if clash is not None:
                raise ValueError(f"{folder}: table {table!r} row {dict(zip(pk, clash))} differs from the row of the "
                                 f"same key in {db.path}; nothing was imported (import it into another workspace)")
            present = con.execute(f"SELECT count(*) FROM {stage} i JOIN {_q(table)} t ON {same_key}").fetchone()[0]
            total = con.execute(f"SELECT count(*) FROM {stage}").fetchone()[0]
            out[table] = {"added": total - present, "present": present, "missing_columns": missing}
            statements.append(f"INSERT INTO {_q(table)} SELECT * FROM {stage} i "
                              f"WHERE NOT EXISTS (SELECT 1 FROM {_q(table)} t WHERE {same_key})")
        _transaction(con, *statements)
    return out


def _json_clash(con, stage: str, table: str, pk: list[str], json_cols: list[str], same_key: str):
    """The key of the first row of ``stage`` whose JSON columns differ in value from the row of
    the same key in ``table`` (text that differs only in spacing or key order is the same), or None."""
    differs = " OR ".join(f"t.{_q(c)}::VARCHAR IS DISTINCT FROM i.{_q(c)}::VARCHAR" for c in json_cols)
    pairs = ", ".join(f"i.{_q(c)}::VARCHAR, t.{_q(c)}::VARCHAR" for c in json_cols)
    rows = con.execute(f"SELECT {', '.join('i.' + _q(c) for c in pk)}, {pairs} FROM {stage} i JOIN {_q(table)} t "
                       f"ON {same_key} WHERE {differs}").fetchall()
    # parsed and written again with sorted keys: spacing and key order go, types stay (true is not 1)
    parse = lambda text: None if text is None else json.dumps(json.loads(text), sort_keys=True)  # noqa: E731
    for row in rows:
        values = row[len(pk):]
        if any(parse(a) != parse(b) for a, b in zip(values[::2], values[1::2])):
            return row[:len(pk)]
    return None
