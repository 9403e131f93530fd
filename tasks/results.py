"""DuckDB results store (``<workspace>/results.duckdb``): the record of every number a figure shows.

Rules this module enforces or assumes:

* Only the flow process writes (DuckDB allows one writer *process* per file, and while it
  holds the file no other process can even read it). Workers hand rows back to the flow.
* Connections are opened per operation and closed at once, so the file is not held between
  operations and ``semprobe sql`` can read it between two writes. Opening retries for
  ``lock_timeout`` seconds, then raises :class:`DatabaseLockedError` naming the file and holder.
* :meth:`ResultsDB.upsert` is idempotent: ``INSERT OR REPLACE`` by primary key. Columns the
  rows do not mention keep their stored value (DuckDB's OR REPLACE updates only the inserted
  columns), so a default like ``created_at`` is set once, on first insert.
* NaN in numeric columns is stored as NULL (DuckDB's pandas scan). Timestamps: datetimes,
  ISO strings or epoch seconds; naive datetimes are taken as UTC; stored as UTC TIMESTAMP.
* ``offset`` is an SQL keyword: quote it in hand-written SQL (``SELECT "offset" FROM ...``).

The tables, their columns and the migrations of older files: ``tasks.results_schema``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pandas as pd

from tasks.results_schema import (  # noqa: F401 (CONTROL_KINDS: re-exported for callers)
    _MIGRATIONS, CONTROL_KINDS, SCHEMA_VERSION, TABLES, _base_type, _ddl, _path_literal, _q,
)

DEFAULT_LOCK_TIMEOUT_S = 5.0

_HOLDER_RE = re.compile(r"held in (?P<prog>.+?) \(PID (?P<pid>\d+)\)(?: by user (?P<user>[^.\s]+))?")
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class DatabaseLockedError(RuntimeError):
    """The DuckDB file is locked by another process. ``.path``, ``.holder``, ``.pid``."""

    def __init__(self, path: Path, detail: str):
        self.path = Path(path)
        m = _HOLDER_RE.search(detail)
        self.pid = int(m.group("pid")) if m else None
        self.holder = (f"{m.group('prog')}, PID {m.group('pid')}"
                       + (f", user {m.group('user')}" if m.group("user") else "")) if m else None
        who = f" ({self.holder})" if self.holder else ""
        super().__init__(
            f"results database file {self.path} is locked by another process{who}. "
            "DuckDB lets one process at a time open it for writing, and none read it meanwhile; "
            "only the flow process writes it. Wait for that run to finish or stop it, then retry."
        )
        self.detail = detail


class ReadOnlyViolation(PermissionError):
    """A write statement was sent through a read-only connection."""


class HeldWarning:
    """``warn`` for a results file that another process holds, said again only every ``every_s``
    while it stays held: a flow's poll retries every few seconds, and said at each retry, a
    notebook's connection held for ten minutes wrote a hundred warnings. ``clear()`` once a
    write went through."""

    def __init__(self, warn, every_s: float = 300.0):
        self.warn, self.every_s, self._last = warn, every_s, None

    def __call__(self, msg: str, *args) -> None:
        if self._last is None or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.warn(msg + " (said again every %.0f minutes while it is held)", *args, self.every_s / 60)

    def clear(self) -> None:
        self._last = None


def retried_while_locked(action, wait_s: float, warn, retry_s: float = 30.0):
    """``action()`` (writes to a results file), tried again every ``retry_s`` while it raises
    :class:`DatabaseLockedError`, for up to ``wait_s`` in all, then the error is raised. Each
    wait is passed to ``warn`` as ``(error, seconds left)``: where a run of hours has finished, it
    waits for a reader that holds the file (a notebook's open connection), saying so, instead of
    failing at its last write."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return action()
        except DatabaseLockedError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            warn(e, left)
            time.sleep(min(retry_s, left))


def _is_lock_error(e: Exception) -> bool:
    s = str(e)
    return "Could not set lock" in s or "Conflicting lock" in s


def _connect(path: Path, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + max(0.0, lock_timeout)
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if not _is_lock_error(e):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseLockedError(path, str(e)) from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)


def _fetch_df(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> pd.DataFrame:
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    if cur.description is None:
        return pd.DataFrame()
    return cur.df()


class ResultsDB:
    """Results database at ``path`` (a file; typically ``<workspace>/results.duckdb``)."""

    def __init__(self, path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout = lock_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _WRITE_LOCKS_GUARD:
            self._wlock = _WRITE_LOCKS.setdefault(str(self.path), threading.Lock())
        self._init_schema()

    def __repr__(self) -> str:
        return f"ResultsDB({str(self.path)!r})"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived read-write connection (closed on exit). Writes are serialised per
        process, so Prefect tasks on threads cannot conflict on the same rows."""
        with self._wlock:
            con = _connect(self.path, read_only=False, lock_timeout=self.lock_timeout)
            try:
                yield con
            finally:
                con.close()

    def _init_schema(self) -> None:
        with self.connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_info (version INTEGER)")
            row = con.execute("SELECT max(version) FROM schema_info").fetchone()
            if row[0] is None:
                con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
            elif row[0] in _MIGRATIONS:
                version = row[0]
                while version != SCHEMA_VERSION:
                    _MIGRATIONS[version](con)
                    version = con.execute("SELECT max(version) FROM schema_info").fetchone()[0]
            elif row[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has results schema version {row[0]}, this code expects "
                    f"{SCHEMA_VERSION}; move the file aside (results are re-derivable from the "
                    "artifact store by a cached rerun)")
            for t in TABLES:
                con.execute(_ddl(t))

    # ------------------------------------------------------------------ writing
    def _frame(self, table: str, rows: pd.DataFrame | Iterable[dict]) -> pd.DataFrame:
        if table not in TABLES:
            raise ValueError(f"unknown results table {table!r}; tables: {', '.join(TABLES)}")
        cols, pk = TABLES[table]
        df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if df.empty:
            return df
        types = {c: _base_type(t) for c, t in cols}
        unknown = [c for c in df.columns if c not in types]
        if unknown:
            raise ValueError(f"table {table!r} has no column(s) {unknown}; "
                             f"columns: {list(types)}")
        for c in pk:
            if c not in df.columns:
                raise ValueError(f"table {table!r}: rows lack primary-key column {c!r}")
            if df[c].isna().any():
                raise ValueError(f"table {table!r}: primary-key column {c!r} has missing values")
        for c in df.columns:
            if types[c] == "JSON":
                df[c] = df[c].map(_to_json_text).astype(object)
            elif types[c] == "TIMESTAMP":
                df[c] = _to_timestamp(df[c])
        # OR REPLACE cannot touch one row twice in one statement: last row per key wins.
        return df.drop_duplicates(subset=pk, keep="last").reset_index(drop=True)

    def upsert(self, table: str, rows: pd.DataFrame | Iterable[dict]) -> int:
        """Insert or replace ``rows`` by primary key; returns the number of distinct rows."""
        df = self._frame(table, rows)
        if df.empty:
            return 0
        types = {c: _base_type(t) for c, t in TABLES[table][0]}
        cols = list(df.columns)
        select = ", ".join(f"CAST({_q(c)} AS {types[c]})" for c in cols)
        sql = (f"INSERT OR REPLACE INTO {_q(table)} ({', '.join(map(_q, cols))}) "
               f"SELECT {select} FROM _semprobe_rows")
        with self.connect() as con:
            con.register("_semprobe_rows", df)
            try:
                con.execute(sql)
            finally:
                con.unregister("_semprobe_rows")
        return len(df)

    # ------------------------------------------------------------------ reading
    def query(self, sql: str, params: Any = None) -> pd.DataFrame:
        """Run SQL (reads or writes) on a short-lived connection; returns a DataFrame."""
        with self.connect() as con:
            return _fetch_df(con, sql, params)

    def table(self, table: str) -> pd.DataFrame:
        if table not in TABLES:
            raise ValueError(f"unknown results table {table!r}")
        order = ", ".join(map(_q, TABLES[table][1]))
        return self.query(f"SELECT * FROM {_q(table)} ORDER BY {order}")

    def count(self, table: str) -> int:
        return int(self.table(table).shape[0]) if table in TABLES else 0


class ReadOnlyResults:
    """A results file read without ever writing it (``semprobe compare`` reads other workspaces,
    some of them with a run still recording): ``query`` as ``ResultsDB.query``, reads only."""

    def __init__(self, path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        self.path, self.lock_timeout = Path(path).expanduser().absolute(), lock_timeout

    def query(self, sql: str, params: Any = None) -> pd.DataFrame:
        return read_only_query(self.path, sql, params, self.lock_timeout)

    def current_schema(self) -> ReadOnlyResults:
        """``self`` if the file has this code's schema; a file of another version is refused,
        not migrated (``ResultsDB`` migrates it when opened)."""
        _refuse_other_schema(self.path, self.query("SELECT max(version) AS v FROM schema_info")["v"].iloc[0], "reads")
        return self


def _refuse_other_schema(path: Path, version, what: str) -> None:
    """A results file of another schema version is an error naming the command that migrates it
    (``ResultsDB`` migrates when it opens a file; a reader or an export must not)."""
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema version {version}, this code {what} {SCHEMA_VERSION}; "
                         f"`semprobe --workspace {path.parent} report` migrates it")


def read_only_query(path: str | Path, sql: str, params: Any = None,
                    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> pd.DataFrame:
    """Run ``sql`` on a read-only connection to the results file (for ``semprobe sql``).

    Write statements raise :class:`ReadOnlyViolation`. A missing file raises FileNotFoundError;
    a file held by a writing process raises :class:`DatabaseLockedError` after ``lock_timeout``.
    Note: DuckDB file functions (COPY ... TO, read_csv) still work in read-only mode; the
    *database* cannot change. In the flow process itself use ``ResultsDB.query`` (DuckDB
    refuses read-only and read-write connections to one file in the same process at once).
    """
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise FileNotFoundError(f"no results database at {p} (has a pipeline run yet?)")
    con = _connect(p, read_only=True, lock_timeout=lock_timeout)
    try:
        return _fetch_df(con, sql, params)
    except duckdb.InvalidInputException as e:
        if "read-only" in str(e):
            raise ReadOnlyViolation(
                f"{p} is opened read-only: only SELECT-style queries are allowed here "
                f"(DuckDB: {e})") from None
        raise ValueError(f"query failed: {e}") from None
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as e:
        raise ValueError(f"query failed: {e}") from None
    finally:
        con.close()


def export_tables(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Every results table into ``out_dir``: CSV with a header, ``probe_results`` (one row per
    probe seed, the bulk of the data) as zstd Parquet, and ``schema_info.csv`` (the schema version,
    for ``semprobe import``). Read-only; returns the files written."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise FileNotFoundError(f"no results database at {p} (has a pipeline run yet?)")
    out = Path(out_dir)
    con = _connect(p, read_only=True, lock_timeout=DEFAULT_LOCK_TIMEOUT_S)
    written = []
    try:
        # its tables are not this schema's: refused before a file is written
        _refuse_other_schema(p, con.execute("SELECT max(version) FROM schema_info").fetchone()[0], "exports")
        out.mkdir(parents=True, exist_ok=True)
        for table, (_, key) in TABLES.items():
            parquet = table == "probe_results"
            dest = out / f"{table}.{'parquet' if parquet else 'csv'}"
            fmt = "FORMAT parquet, COMPRESSION zstd" if parquet else "HEADER"
            order = ", ".join(map(_q, key))
            con.execute(f"COPY (SELECT * FROM {_q(table)} ORDER BY {order}) TO {_path_literal(dest)} ({fmt})")
            written.append(dest)
        dest = out / "schema_info.csv"
        con.execute(f"COPY (SELECT max(version) AS version FROM schema_info) TO {_path_literal(dest)} (HEADER)")
        written.append(dest)
    finally:
        con.close()
    return written


def _to_json_text(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str):
        json.loads(v)  # must already be valid JSON text
        return v
    from tasks.cachekey import to_jsonable
    try:
        v = to_jsonable(v)
    except (TypeError, ValueError):
        pass
    return json.dumps(v, sort_keys=True, default=str)


def _to_timestamp(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        out = pd.to_datetime(s, unit="s", utc=True)  # epoch seconds (time.time())
    else:
        out = pd.to_datetime(s.map(lambda v: v if not isinstance(v, datetime) else pd.Timestamp(v)),
                             utc=True, format="mixed")
    return out.dt.tz_convert("UTC").dt.tz_localize(None)
