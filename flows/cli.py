"""The ``semprobe`` command line: run, estimate, sweep, report, compare, status, sql, export, import, ui.

The workspace (``--workspace``, else $SEMPROBE_WORKSPACE, else ./.semprobe) is configured before
prefect is imported, because Prefect reads its settings at import time. ``--artifacts`` (else
$SEMPROBE_ARTIFACTS) and ``--results-url`` (else $SEMPROBE_RESULTS_URL) put the artifact store and
Prefect's result storage on shared storage (fsspec URLs: a path, s3://, gs://, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

from tasks.workspace import configure_environment


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semprobe", description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default=None, help="folder for artifacts, results, MLflow and Prefect state")
    p.add_argument("--artifacts", default=None, metavar="URL",
                   help="artifact store: a path or fsspec URL, e.g. s3://bucket/semprobe/artifacts "
                        "(default: $SEMPROBE_ARTIFACTS, else WORKSPACE/artifacts)")
    p.add_argument("--results-url", default=None, metavar="URL",
                   help="persist Prefect results there (default: $SEMPROBE_RESULTS_URL, else not persisted)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole study for a preset (cached stages are skipped)")
    est = sub.add_parser("estimate", help="how long a preset will take on this machine: each stage timed at a small "
                                          "scale and scaled up (5-15 minutes for cpu on 2 cores; writes nothing)")
    for sp in (run, est, sub.add_parser("status", help="which stages are done or missing for a preset")):
        sp.add_argument("--preset", default="cpu", help="smoke | cpu | cpu-long | paper (default: cpu)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")
    est.add_argument("--train-steps", type=int, default=3, help="training steps timed after the first (default 3)")
    est.add_argument("--minutes", type=float, default=None,
                     help="also say how many training steps would fit the whole run in this many minutes")
    est.add_argument("--json", action="store_true", help="print the estimate as JSON")
    run.add_argument("--no-overlap", action="store_true", help="evaluate checkpoints only after training ends")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--fanout", action="store_true",
                     help="run the study's units on the gpu pool: one deployment run trains, one per checkpoint "
                          "evaluates and probes; this process records (needs PREFECT_API_URL and workers)")
    sw = sub.add_parser("sweep", help="run a grid/list of points (YAML or TOML spec) on the gpu pool or locally")
    sw.add_argument("spec", help="sweep spec file (.yaml/.yml/.toml); see flows/sweep.py")
    sw.add_argument("--local", action="store_true",
                    help="run the points one after another in this process (no Prefect server or workers)")
    sw.add_argument("--deployment", default=None, help="deployment a point runs as (default: semprobe-pipeline/point)")
    sw.add_argument("--max-attempts", type=int, default=3, help="runs per point before it counts as failed")
    sw.add_argument("--dry-run", action="store_true", help="print the points and their keys, run nothing")
    rep = sub.add_parser("report", help="(re)build the report of a run from DuckDB")
    rep.add_argument("--run-id", default=None, help="a run id or its beginning (default: the latest finished run); "
                                                    "a stopped run's report holds the evaluations and grids it finished")
    cmp_ = sub.add_parser("compare", help="issue 7's targets of several runs side by side, as Markdown (reads only)")
    cmp_.add_argument("workspaces", nargs="+", metavar="WORKSPACE[:RUN_ID]",
                      help="a workspace folder or an export (`semprobe export`, e.g. results/<run>), its latest "
                           "finished run unless a run id follows a colon")
    sql = sub.add_parser("sql", help="read-only SQL on the results database")
    sql.add_argument("query")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    export = sub.add_parser("export", help="every results table into a folder (CSV; per-seed probe rows as Parquet) "
                                                  "and each run's report.html")
    export.add_argument("folder")
    imp = sub.add_parser("import", help="an export folder (e.g. results/<run>) into the workspace's results, for "
                                        "report, compare and sql; rows already there must be the same")
    imp.add_argument("folder")
    ui = sub.add_parser("ui", help="how to start (or --start) the Prefect and MLflow UIs on 127.0.0.1")
    ui.add_argument("--start", action="store_true", help="start both servers and wait")
    return p


# Commands that read a workspace's results or store: a missing one (a mistyped --workspace) is an
# error, not an empty folder made there and then a less helpful one.
READS_WORKSPACE = ("status", "report", "sql", "export")
# Commands that write nothing in the workspace (estimate works in a temporary folder, compare
# reads the folders it names): a missing one is not made.
WRITES_NOTHING = ("estimate", "compare")


def _creates_workspace(args) -> bool | None:
    """``configure_environment``'s ``create`` for a command line: True (make the workspace),
    False (it must exist) or None (leave it as it is)."""
    if args.command in READS_WORKSPACE:
        return False
    if args.command in WRITES_NOTHING or getattr(args, "dry_run", False):
        return None
    return True


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        ws = configure_environment(args.workspace, args.artifacts, args.results_url, create=_creates_workspace(args))
    except (ValueError, ImportError, FileNotFoundError) as e:  # an unknown protocol, its fsspec package missing
        print(f"semprobe: error: {e}", file=sys.stderr)
        return 2
    from tasks.results import DatabaseLockedError

    try:
        if args.command in ("run", "sweep") and not getattr(args, "dry_run", False):
            from tasks.result_storage import save_results_block

            save_results_block()  # a remote results URL: Prefect's block must exist on the server
        return COMMANDS[args.command](args, ws)
    except (ValueError, FileNotFoundError, PermissionError, DatabaseLockedError) as e:
        print(f"semprobe: error: {e}", file=sys.stderr)
        return 2


def _exit_on_signal(signum, frame):
    from flows.stopping import exit_now

    exit_now(128 + signum)


def slow_cpu_note(preset: str, cfg) -> str | None:
    """A line for a ``cpu``/``cpu-long`` run that trains on a CPU without bf16 in hardware: those
    presets were sized on CPUs with it, and float32 takes several times as long (README)."""
    from model.machine import bf16_native, cpu_identity
    from model.train import resolve_device

    if preset not in ("cpu", "cpu-long") or resolve_device(cfg.train).type != "cpu" or bf16_native("cpu"):
        return None
    return (f"semprobe: this CPU ({cpu_identity()['cpu']}) has no bf16 in hardware, so the run computes in "
            f"float32. The `{preset}` preset is sized for a 2-core CPU with bf16 (`cpu`: an hour on a Zen 4 EPYC); "
            "`semprobe estimate` put `cpu` at 3:43 on a 2-core AVX2-only Zen 1. To know before you wait: "
            f"`semprobe estimate --preset {preset} --minutes 60` times every stage here and names the "
            "training steps that fit an hour.")


def cmd_run(args, ws) -> int:
    from flows.presets import load_preset

    cfg = load_preset(args.preset, args.overrides)  # fail fast on a bad preset or override
    note = slow_cpu_note(args.preset, cfg)
    if note and not args.fanout:
        print(note, file=sys.stderr)
    from flows.pipeline import pipeline

    # Prefect turns SIGTERM into a flow crash (the flow stops training) and then re-sends it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if args.fanout:
        if not os.environ.get("PREFECT_API_URL"):
            raise ValueError("--fanout needs a Prefect server with workers on the gpu pool: export "
                             "PREFECT_API_URL=http://HOST:4200/api (deployments/README.md)")
        from flows.fanout import fanout

        out = fanout(preset=args.preset, overrides=args.overrides, workspace=str(ws.root))
        print(json.dumps(out, indent=2, default=str))
        return 0
    out = pipeline(preset=args.preset, overrides=args.overrides, workspace=str(ws.root),
                   overlap=not args.no_overlap, progress=not args.quiet)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_estimate(args, ws) -> int:
    from flows.presets import load_preset

    cfg = load_preset(args.preset, args.overrides)  # fail fast on a bad preset or override
    if args.train_steps < 1:
        raise ValueError(f"--train-steps: must be at least 1, got {args.train_steps}")
    import torch

    from flows.estimate import estimate, steps_within
    from tasks.report_data import clock

    load = os.getloadavg()[0]
    out = estimate(cfg, train_steps=args.train_steps)
    fit = None
    if args.minutes is not None:
        fit = steps_within(60 * args.minutes, out["parts"], cfg, out["train_first"], out["train_per_step"])
    if args.json:
        print(json.dumps({"preset": args.preset, "overrides": args.overrides, "cores": out["cores"],
                          "torch_threads": torch.get_num_threads(), "load_average": load,
                          "seconds": out["seconds"], "parts": [vars(p) for p in out["parts"]],
                          "minutes": args.minutes, "train_steps_within": fit}, indent=1))
        return 0
    print(f"estimate for preset {args.preset} on this machine ({out['cores']} cores, {torch.get_num_threads()} "
          f"torch threads; load average {load:.1f} when it started, other work makes every figure larger):")
    print(f"{'stage':<12} {'runs':>5} {'each':>9} {'total':>9}")
    for p in out["parts"]:
        print(f"{p.stage:<12} {p.runs:>5} {clock(p.each):>9} {clock(p.seconds):>9}  {p.detail}")
    print(f"{'end to end':<12} {'':>5} {'':>9} {clock(out['seconds']):>9}  the stages in turn, the probe grids side by side")
    if fit is not None:
        print(f"to fit {args.minutes:g} minutes: --set train.steps={fit} (now {cfg.train.steps}; the learning-rate "
              "schedule stretches with it)" if fit else f"nothing fits {args.minutes:g} minutes: the stages other than "
              "training take longer than that")
    return 0


def cmd_sweep(args, ws) -> int:
    from flows.sweep import DEPLOYMENT, load_spec

    spec = load_spec(args.spec)  # fail fast on a bad spec or override
    if args.max_attempts < 1:
        raise ValueError(f"--max-attempts: must be at least 1, got {args.max_attempts}")
    if args.dry_run:
        for p in spec.points:
            print(f"{p.key}  {p.label}")
        return 0
    if not args.local and not os.environ.get("PREFECT_API_URL"):
        raise ValueError("a distributed sweep needs a Prefect server with workers on the gpu pool: export "
                         "PREFECT_API_URL=http://HOST:4200/api (deployments/README.md), or run with --local")
    from flows.sweep import sweep

    signal.signal(signal.SIGTERM, _exit_on_signal)
    out = sweep(spec=spec.source, workspace=str(ws.root), mode="local" if args.local else "deployment",
               deployment=args.deployment or DEPLOYMENT, max_attempts=args.max_attempts,
               name=spec.name)
    print(json.dumps(out, indent=2, default=str))
    return 0


def _chosen_run(db, run_id: str | None) -> tuple[str, str]:
    """(run id, preset): ``run_id`` (or the one run it begins, as reports and ``compare`` show the
    first 8 characters) whatever its status (a stopped run's report holds what it recorded: each
    evaluation and grid is recorded as it finishes), else the latest finished run."""
    if run_id:
        runs = db.query("SELECT run_id, preset FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", [run_id])
        exact = runs[runs["run_id"] == run_id]
        if runs.empty:
            raise ValueError(f"no run {run_id} in {db.path}")
        if exact.empty and len(runs) > 1:
            raise ValueError(f"run id {run_id} begins {len(runs)} runs in {db.path}: {', '.join(runs['run_id'])}")
        runs = runs if exact.empty else exact
    else:
        runs = db.query("SELECT run_id, preset FROM runs WHERE status = 'finished' ORDER BY finished_at DESC")
        if runs.empty:
            raise ValueError(f"no finished run in {db.path} (name a stopped one with its run id)")
    return str(runs["run_id"].iloc[0]), str(runs["preset"].iloc[0])


def cmd_report(args, ws) -> int:
    from tasks.report import build_report
    from tasks.results import ReadOnlyResults

    run_id, preset = _chosen_run(ReadOnlyResults(ws.db_path), args.run_id)
    out = build_report(str(ws.root), run_id, preset)
    print(out["html"])
    return 0


def _results_of(folder: str, scratch: str):
    """The results of a workspace ``folder``, or of an export folder (``runs.csv``, no results
    file) loaded into a new results file in the folder ``scratch``."""
    from pathlib import Path

    from tasks.results import ReadOnlyResults, ResultsDB
    from tasks.results_import import import_export

    path = Path(folder) / "results.duckdb"
    if not path.is_file() and (Path(folder) / "runs.csv").is_file():
        path = Path(scratch) / "results.duckdb"
        import_export(folder, ResultsDB(path))
    return ReadOnlyResults(path).current_schema()


def cmd_compare(args, ws) -> int:
    import tempfile
    from pathlib import Path

    from tasks.report_data import RunData
    from tasks.report_targets import issue_targets, side_by_side

    columns, caveats = [], []
    with tempfile.TemporaryDirectory(prefix="semprobe-compare-") as scratch:
        for i, spec in enumerate(args.workspaces):
            folder, _, run_id = spec.partition(":")
            db = _results_of(folder, f"{scratch}/{i}")
            run_id, preset = _chosen_run(db, run_id or None)
            notes: list[str] = []
            title = f"{preset}, run {run_id[:8]} ({Path(folder).name})"
            columns.append((title, issue_targets(RunData(db, run_id, preset, notes))))
            caveats += [f"- {title}: {note}" for note in notes]  # what each run's report would say beside its table
    print(side_by_side(columns), end="")
    if caveats:
        print("\nNotes:\n" + "\n".join(caveats))
    return 0


def cmd_status(args, ws) -> int:
    from flows.status import stage_status

    for row in stage_status(ws, args.preset, args.overrides):
        print(f"{row['stage']:<12} {row['state']:<9} {row['key']:<26} {row.get('detail', '')}")
    return 0


def cmd_sql(args, ws) -> int:
    import pandas as pd

    from tasks.results import read_only_query

    df = read_only_query(ws.db_path, args.query)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif args.format == "json":
        print(df.to_json(orient="records", indent=1))
    else:
        with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_columns", 30):
            print(df.to_string(index=False))
    return 0


def cmd_ui(args, ws) -> int:
    prefect = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4200"]
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", "5000",
              "--backend-store-uri", os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ws.root / 'mlflow.db'}")]
    print(f"Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} {' '.join(prefect)}  -> http://127.0.0.1:4200")
    print(f"MLflow UI:  {' '.join(mlflow)}  -> http://127.0.0.1:5000")
    print("Runs made with the temporary server appear in the Prefect UI when both use the same PREFECT_HOME.")
    if args.start:
        procs = [subprocess.Popen(prefect), subprocess.Popen(mlflow)]
        try:
            for p in procs:
                p.wait()
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
    return 0


def cmd_import(args, ws) -> int:
    from tasks.results import ResultsDB
    from tasks.results_import import import_export

    db = ResultsDB(ws.db_path)
    for table, counts in import_export(args.folder, db).items():
        missing = f"; not in the export, so '' or NULL: {', '.join(counts['missing_columns'])}" \
            if counts["missing_columns"] else ""
        print(f"{table:<22} {counts['added']:>7} added, {counts['present']:>7} there already{missing}")
    runs = db.query("SELECT run_id, preset, status FROM runs ORDER BY started_at")
    print("runs in " + str(ws.db_path) + ":\n" + "\n".join(f"  {r.run_id}  {r.preset}  {r.status}"
                                                            for r in runs.itertuples()))
    return 0


def cmd_export(args, ws) -> int:
    from tasks.report import export_reports
    from tasks.results import export_tables

    for path in [*export_tables(ws.db_path, args.folder), *export_reports(ws.reports_dir, args.folder)]:
        print(path)
    return 0


COMMANDS = {"compare": cmd_compare, "estimate": cmd_estimate, "export": cmd_export, "import": cmd_import, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report, "status": cmd_status, "sql": cmd_sql, "ui": cmd_ui}

if __name__ == "__main__":
    sys.exit(main())
