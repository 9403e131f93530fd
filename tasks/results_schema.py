"""The results file's schema: its tables (``TABLES``: columns and primary keys), their DDL, and
the migrations that bring an older file to ``SCHEMA_VERSION`` with every row kept.

Column meanings not obvious from names: ``interventions.semantics`` is the alternative
semantics (e.g. 'flip', 'adversarial'); ``original``/``alternative`` are the probe accuracies
against the original and the alternative semantics' features, ``content`` their difference
(semantic content), ``ci_low``/``ci_high`` a CI of ``content``. ``interventions_vs_init``: the
same drop on the trained states (``trained_drop``) minus the random-init states' drop over the same
programs (``init_drop``), paired by seed: ``content`` with its CI (at the random-init grid's
offsets, layer mean); its rows with ``feature = 'main_mean'`` average the main features within each
seed first. ``controls.semantics`` is the semantics of the grid a row comes from: every grid has
its ``random_init`` rows, only ``original`` the others. ``probe`` is the probe kind (e.g. 'linear',
'mlp1'); ``split`` is 'train'/'val'/'test'.
``semantic_content`` holds one row per phases stage (``phases_key``, one probe configuration
over one training run) and checkpoint: ``content`` and ``content_vs_init`` at ``offset``, the
run's current-state offset (0 on generated programs, -1 on fed reference programs). Two runs that
probe the same checkpoints differently keep one row each (before schema 4 these were
``checkpoint_metrics`` rows keyed by checkpoint alone, and the last run to write one won).
``checkpoint_metrics.eval_key`` is the evaluate stage that measured the row, and
``phases.phases_key`` the phases stage that labelled it: runs that evaluate or probe the same
checkpoints differently keep their own rows. Both are '' on rows recorded before schema 5.
``phases.start_step`` is the first training step of the phase (babbling, syntax, semantics), NULL
for a phase that never started.
"""

from __future__ import annotations

# 2: controls kinds of the alignment check (emitted_action*); 3: controls.semantics (each row's
# grid's semantics); 4: semantic content in its own table, keyed by phases stage; 5:
# checkpoint_metrics keyed by evaluate stage, phases by phases stage; 6: controls kinds of the
# paired margins over each baseline (*_margin_low); 7: interventions and interventions_vs_init
# keyed by phases stage too; 8: stage_runs.machine (what computed each artifact); 9: phases keyed
# by training run too (rows migrated from before 5 got phases_key '', and two training runs' rows
# of one phase then collided: such a file could not be opened); 1-8 are migrated. A new version:
# add the one it replaces to tests/old_schemas.json (its DDL, as test_results_migrations says)
SCHEMA_VERSION = 9
CONTROL_KINDS = ("majority", "control_task", "selectivity", "random_init", "embedding",
                 "emitted_action", "emitted_action_init", "emitted_action_majority",
                 "majority_margin_low", "control_task_margin_low", "random_init_margin_low")

# table -> (columns [(name, type)], primary key columns)
_PROBE_ID = [("probe_key", "VARCHAR"), ("checkpoint_key", "VARCHAR"), ("step", "BIGINT"),
             ("semantics", "VARCHAR"), ("feature", "VARCHAR"), ("offset", "INTEGER"),
             ("probe", "VARCHAR"), ("layer", "INTEGER")]
_PROBE_PK = ["probe_key", "semantics", "feature", "offset", "probe", "layer"]
# rows the phases stage derives from probe grids: keyed by that stage too, as two phases stages
# (other code) over the same grids write different rows
_PHASES_ID, _PHASES_PK = [("phases_key", "VARCHAR")] + _PROBE_ID, ["phases_key"] + _PROBE_PK
TABLES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "datasets": ([("key", "VARCHAR"), ("config", "JSON"), ("stats", "JSON"),
                  ("created_at", "TIMESTAMP DEFAULT current_timestamp")], ["key"]),
    "runs": ([("run_id", "VARCHAR"), ("preset", "VARCHAR"), ("config", "JSON"),
              ("data_key", "VARCHAR"), ("train_key", "VARCHAR"), ("started_at", "TIMESTAMP"),
              ("finished_at", "TIMESTAMP"), ("status", "VARCHAR")], ["run_id"]),
    "checkpoints": ([("key", "VARCHAR"), ("train_key", "VARCHAR"), ("step", "BIGINT"),
                     ("tokens_seen", "BIGINT"), ("path", "VARCHAR")], ["key"]),
    "checkpoint_metrics": ([("checkpoint_key", "VARCHAR"), ("eval_key", "VARCHAR"), ("train_key", "VARCHAR"),
                            ("step", "BIGINT"), ("metric", "VARCHAR"), ("value", "DOUBLE")],
                           ["checkpoint_key", "eval_key", "metric"]),
    "probe_results": (_PROBE_ID + [("seed", "INTEGER"), ("split", "VARCHAR"),
                                   ("accuracy", "DOUBLE"), ("n", "BIGINT")],
                      _PROBE_PK + ["seed", "split"]),
    "probe_summary": (_PROBE_ID + [("split", "VARCHAR"), ("mean", "DOUBLE"),
                                   ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"),
                                   ("n_seeds", "INTEGER")], _PROBE_PK + ["split"]),
    "interventions": (_PHASES_ID + [("original", "DOUBLE"), ("alternative", "DOUBLE"),
                                    ("content", "DOUBLE"), ("ci_low", "DOUBLE"),
                                    ("ci_high", "DOUBLE")], _PHASES_PK),
    "interventions_vs_init": (_PHASES_ID + [("trained_drop", "DOUBLE"), ("init_drop", "DOUBLE"),
                                            ("content", "DOUBLE"), ("ci_low", "DOUBLE"),
                                            ("ci_high", "DOUBLE")], _PHASES_PK),
    "controls": ([("probe_key", "VARCHAR"), ("checkpoint_key", "VARCHAR"), ("step", "BIGINT"),
                  ("semantics", "VARCHAR"), ("feature", "VARCHAR"), ("offset", "INTEGER"),
                  ("kind", f"VARCHAR CHECK (kind IN ({', '.join(repr(k) for k in CONTROL_KINDS)}))"),
                  ("probe", "VARCHAR"), ("value", "DOUBLE")],
                 ["probe_key", "feature", "offset", "kind", "probe"]),
    "semantic_content": ([("phases_key", "VARCHAR"), ("checkpoint_key", "VARCHAR"), ("train_key", "VARCHAR"),
                          ("step", "BIGINT"), ("offset", "INTEGER"), ("content", "DOUBLE"),
                          ("content_vs_init", "DOUBLE")], ["phases_key", "checkpoint_key"]),
    "phases": ([("phases_key", "VARCHAR"), ("train_key", "VARCHAR"), ("phase", "VARCHAR"),
                ("start_step", "BIGINT")], ["phases_key", "train_key", "phase"]),
    "stage_runs": ([("run_id", "VARCHAR"), ("stage", "VARCHAR"), ("key", "VARCHAR"),
                    ("status", "VARCHAR CHECK (status IN ('computed', 'cached'))"),
                    ("seconds", "DOUBLE"), ("finished_at", "TIMESTAMP"), ("machine", "JSON")],
                   ["run_id", "stage", "key"]),
}


# what a migration gave the rows recorded before a column existed (an export of an older file is
# imported by the same rules, ``tasks.results_import``): a stage-key column added to a primary key
# is '' (which stage wrote an old row is not in it), and these metrics left ``checkpoint_metrics``
STAGE_KEY_COLUMNS = {"checkpoint_metrics": ("eval_key",), "phases": ("phases_key",),
                     "interventions": ("phases_key",), "interventions_vs_init": ("phases_key",)}
CONTENT_METRICS = ("semantic_content", "semantic_content_vs_init")
# columns that say when or where a row was made in its own workspace, not what was computed: two
# workspaces' rows of one key differ there and are still the same result
BOOKKEEPING_COLUMNS = {"datasets": ("created_at",), "checkpoints": ("path",)}


def grid_semantics(summary: str = "probe_summary") -> str:
    """SQL: each probe key's grid semantics, as the ``summary`` table (``probe_summary``'s
    columns) names it; a controls row recorded before schema 3 gets its ``semantics`` from it."""
    return f"SELECT probe_key, any_value(semantics) AS semantics FROM {_q(summary)} GROUP BY probe_key"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _path_literal(path) -> str:
    """A file path as an SQL string literal (``COPY ... TO``, ``read_csv``)."""
    return "'" + path.as_posix().replace("'", "''") + "'"


def _base_type(decl: str) -> str:
    return decl.split()[0]


def _ddl(table: str) -> str:
    cols, pk = TABLES[table]
    body = ", ".join(f"{_q(c)} {t}" for c, t in cols)
    return f"CREATE TABLE IF NOT EXISTS {_q(table)} ({body}, PRIMARY KEY ({', '.join(map(_q, pk))}))"


def _transaction(con, *statements: str) -> None:
    """Run ``statements`` in one transaction: all of them, or (on any error) none."""
    con.execute("BEGIN TRANSACTION")
    try:
        for sql in statements:
            con.execute(sql)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _rebuilt_with(table: str, column: str | None = None, value_sql: str = "", join_sql: str = "") -> list[str]:
    """Statements that rebuild ``table`` (renamed ``<table>_old``, aliased ``o``) to its current
    ``TABLES`` schema, every old row kept and its new ``column`` (if any) set to ``value_sql``, an
    SQL expression over ``o`` and what ``join_sql`` joins to it. DuckDB cannot add a key column or
    alter a CHECK in place."""
    old = [c for c, _ in TABLES[table][0] if c != column]
    into, values = list(map(_q, old)), ["o." + _q(c) for c in old]
    if column is not None:
        into, values = into + [_q(column)], values + [value_sql]
    return [f"ALTER TABLE {_q(table)} RENAME TO {_q(table + '_old')}", _ddl(table),
            f"INSERT INTO {_q(table)} ({', '.join(into)}) "
            f"SELECT {', '.join(values)} FROM {_q(table + '_old')} o {join_sql}",
            f"DROP TABLE {_q(table + '_old')}"]


def _migrate_controls(con) -> None:
    """Version 1 or 2 -> 3, the controls table: 2 admits the alignment check's kinds in its kind
    CHECK, 3 adds each row's grid ``semantics`` (from ``probe_summary``, where the grid's probe key
    names it; NULL for a grid without summary rows). DuckDB cannot alter a CHECK, so the table is
    rebuilt with its rows, in one transaction."""
    con.execute(_ddl("probe_summary"))
    _transaction(con, *_rebuilt_with("controls", "semantics", "s.semantics",
                                     f"LEFT JOIN ({grid_semantics()}) s ON s.probe_key = o.probe_key"),
                 "UPDATE schema_info SET version = 3")


def _migrate_content(con) -> None:
    """Version 3 -> 4: ``checkpoint_metrics`` rows ``semantic_content`` and
    ``semantic_content_vs_init`` are deleted. Keyed by checkpoint alone, each holds whichever probe
    configuration wrote it last, so no row can be told to belong to a run. Nothing computed is
    lost: the values are re-derived from the ``interventions`` and ``controls`` rows kept here, and a
    rerun of the run records them into the ``semantic_content`` table under its phases key."""
    con.execute(_ddl("checkpoint_metrics"))
    _transaction(con, f"DELETE FROM checkpoint_metrics WHERE metric IN ({', '.join(map(repr, CONTENT_METRICS))})",
                 "UPDATE schema_info SET version = 4")


def _with_stage_key(con, table_keys: tuple[tuple[str, str], ...], version: int) -> None:
    """Each ``(table, key)``: the table rebuilt with every row and the stage-key column ``key``
    in its primary key, set to '' (unknown: which stage wrote an old row is not in the file); a
    rerun records its rows under their real keys beside them. Then the file is ``version``."""
    statements = []
    for table, key in table_keys:
        con.execute(_ddl(table))  # a file may not have one yet
        statements += _rebuilt_with(table, key, "''")
    _transaction(con, *statements, f"UPDATE schema_info SET version = {version}")


def _migrate_stage_keys(con) -> None:
    """Version 4 -> 5: ``checkpoint_metrics`` gains ``eval_key`` and ``phases`` gains
    ``phases_key`` in their primary keys."""
    _with_stage_key(con, tuple((t, *STAGE_KEY_COLUMNS[t]) for t in ("checkpoint_metrics", "phases")), 5)


def _migrate_margin_kinds(con) -> None:
    """Version 5 -> 6: the controls table's kind CHECK admits the paired margins
    (``*_margin_low``); rebuilt with every row, in one transaction."""
    con.execute(_ddl("controls"))  # a file may not have one yet
    _transaction(con, *_rebuilt_with("controls"), "UPDATE schema_info SET version = 6")


def _migrate_intervention_keys(con) -> None:
    """Version 6 -> 7: ``interventions`` and ``interventions_vs_init`` gain ``phases_key`` in their
    primary keys, as 5 gave it to ``phases``."""
    _with_stage_key(con, tuple((t, *STAGE_KEY_COLUMNS[t]) for t in ("interventions", "interventions_vs_init")), 7)


def _migrate_stage_machine(con) -> None:
    """Version 7 -> 8: ``stage_runs`` gains ``machine``, the artifact's ``meta.machine`` (CPU,
    instruction sets, cores, torch, the GPU in use); NULL on the rows recorded before."""
    has = con.execute("SELECT column_name FROM information_schema.columns "
                      "WHERE table_name = 'stage_runs'").fetchall()
    add = ["ALTER TABLE stage_runs ADD COLUMN machine JSON"] if has and ("machine",) not in has else []
    _transaction(con, *add, "UPDATE schema_info SET version = 8")


def _migrate_phases_key(con) -> None:
    """Version 8 -> 9: ``phases`` gains ``train_key`` in its primary key (a phases stage reads one
    training run, so its own rows are unchanged; the rows a migration gave phases_key '' stay
    apart by training run); rebuilt with every row, in one transaction."""
    con.execute(_ddl("phases"))  # a file may not have one yet
    _transaction(con, *_rebuilt_with("phases"), "UPDATE schema_info SET version = 9")


_MIGRATIONS = {1: _migrate_controls, 2: _migrate_controls, 3: _migrate_content, 4: _migrate_stage_keys,
               5: _migrate_margin_kinds, 6: _migrate_intervention_keys, 7: _migrate_stage_machine,
               8: _migrate_phases_key}
