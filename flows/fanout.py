"""One study fanned out over the gpu pool: a deployment run to train, one per checkpoint.

``semprobe run --fanout`` (the ``semprobe-fanout`` flow) submits the ``semprobe-train/unit``
deployment, watches the shared artifact store for the checkpoints that training publishes, and
submits a ``semprobe-checkpoint/unit`` run for each as soon as it appears, so evaluation and
probing of early checkpoints run on other workers while training continues (``flows.units``).

Each unit is submitted with ``run_deployment(timeout=0)`` under an idempotency key made of the
unit's cache key and the workspace, as the sweep does for points: a resubmitted study finds its
earlier runs instead of creating new ones, and a run that crashed or failed is resubmitted
under the next key of its chain (``<key>~2``, ``<key>~3``). This flow is the single writer: it
replays each finished unit's journal into DuckDB and MLflow, then computes the phase metrics and
the report itself, so the tables hold what an in-process ``semprobe run`` of the config writes.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone

from prefect import flow, get_client, get_run_logger

from flows.deployment_runs import Recordings, Unit, UnitRuns
from flows.pipeline import _end_parent_run, _logged, _parent_run, _run_id, until_recorded
from flows.stopping import exit_if_stopped, note_signals, stop_if_signalled, stopping
from flows.presets import StudyConfig, load_preset
from flows.units import checkpoint_unit_key, train_unit_key
from model.config import checkpoint_steps
from tasks import record
from tasks.dataset import dataset_key
from tasks.phases import phase_metrics
from tasks.report import build_report
from tasks.results import ResultsDB
from tasks.stage_configs import current_offset
from tasks.workspace import Workspace

TRAIN_DEPLOYMENT = "semprobe-train/unit"
CHECKPOINT_DEPLOYMENT = "semprobe-checkpoint/unit"
POLL_S = 2.0


def published_steps(ws: Workspace, train_key_: str) -> list[int]:
    """Steps of the checkpoints of ``train_key_`` already in the store (nothing downloaded)."""
    store, prefix = ws.store, train_key_ + "-s"
    return sorted(int(k[len(prefix):]) for k in store.keys("checkpoint")
                  if k.startswith(prefix) and store.is_complete("checkpoint", k, verify=False))


def _record_unit(replay: record.Replay, rec: record.Recorder, grids: list) -> None:
    """Replay a finished unit's journal into ``rec`` (resumable: ``Recordings``), then keep the
    probe-grid summaries it journalled, their paths resolved here."""
    replay.into(rec)
    grids += [record.localized(args[0], replay.store) for name, args in replay.journal.calls if name == "probes"]


def _run_units(cfg: StudyConfig, params: dict, runs: UnitRuns, rec: record.Recorder, ws: Workspace,
               train_deployment: str, checkpoint_deployment: str, poll_s: float) -> list[dict]:
    """Submit the train unit, then a checkpoint unit per published checkpoint; replay each
    finished unit into ``rec``. Returns the probe-grid summaries of every checkpoint."""
    log = get_run_logger()
    tkey = train_unit_key(cfg)
    train = runs.submit(Unit("train", "train", tkey, train_deployment, {**params, "progress": False}))
    expected = set(checkpoint_steps(cfg.train))
    ckpts: dict[int, Unit] = {}
    grids: list[dict] = []
    recordings = Recordings(log)
    try:
        with get_client(sync_client=True) as client:
            while True:
                # training's state before the scan: where it had finished by then, the scan sees every
                # checkpoint it published (read after the poll below, a training that finished between
                # the two made its last checkpoint look missing: seen in test_distributed)
                trained = train.state == "finished"
                for step in published_steps(ws, tkey):
                    if step in expected and step not in ckpts:
                        ckpts[step] = runs.submit(Unit("checkpoint", f"checkpoint-{step}",
                                                       checkpoint_unit_key(cfg, step), checkpoint_deployment,
                                                       {**params, "step": step}))
                for u in runs.poll(client):
                    log.info("%s finished (flow run %s on %s)", u.label, u.flow_run, u.journal.where.get("worker"))
                    recordings.add(functools.partial(_record_unit, record.Replay(u.journal, ws.store), rec, grids))
                recordings.write()
                if runs.failed():
                    raise RuntimeError(f"units did not finish: {[u.summary() for u in runs.failed()]}")
                if trained and expected - set(ckpts):
                    raise RuntimeError(f"training {tkey} finished, but its checkpoints at steps "
                                       f"{sorted(expected - set(ckpts))} are not in the artifact store {ws.store}")
                if train.state == "finished" and set(ckpts) == expected \
                        and all(u.state == "finished" for u in ckpts.values()):
                    recordings.write_all()
                    return grids
                time.sleep(poll_s)
                stop_if_signalled()
    except BaseException:
        # a stop or a failed unit with finished units queued behind a held results file: record
        # what can be now (a second signal is only noted); the rest when the study is submitted again
        stopping()
        recordings.write_on_stop("the study submitted again records them")
        raise


@flow(name="semprobe-fanout")
def fanout(preset: str = "cpu", overrides: list[str] | None = None, workspace: str | None = None,
           train_deployment: str = TRAIN_DEPLOYMENT, checkpoint_deployment: str = CHECKPOINT_DEPLOYMENT,
           max_attempts: int = 3, poll_s: float = POLL_S) -> dict:
    """The whole study for ``preset`` with ``overrides``, its units run by the gpu pool's
    workers; records DuckDB, MLflow and the report like ``pipeline``."""
    ws = Workspace.at(workspace)
    root = str(ws.root)
    cfg = load_preset(preset, overrides or [])
    run_id, started, t0 = _run_id(), datetime.now(timezone.utc), time.perf_counter()
    log = get_run_logger()
    mlflow = record.MlflowWrites(log.warning)
    dkey, tkey = dataset_key(cfg.data), train_unit_key(cfg)
    study = f"{preset}-{tkey[:8]}"
    runs = UnitRuns(ws, study, max_attempts, tags=("semprobe-fanout", f"study:{study}"))
    unnote = note_signals()  # before the first write, as the pipeline
    parent = rec = None
    finished = False
    try:
        tags = {"prefect_flow_run": run_id, "semprobe.fanout": "true"}
        parent = mlflow("the study's parent run", lambda: _parent_run(ws, preset, run_id, cfg, tags))
        rec = record.Recorder(ResultsDB(ws.db_path), run_id, parent, warn=log.warning, mlflow=mlflow)
        rec.run(preset, cfg, dkey, tkey, started, status="running")
        params = {"preset": preset, "overrides": list(overrides or []), "workspace": root}
        grids = _run_units(cfg, params, runs, rec, ws, train_deployment, checkpoint_deployment, poll_s)
        order = {s: i for i, s in enumerate(cfg.probe.semantics)}
        grids.sort(key=lambda g: (g["meta"]["step"], order[g["meta"]["semantics"]]))  # as the pipeline
        phases = phase_metrics(root, cfg.probe, grids, rec.checkpoint_rows(),
                               current_offset(cfg.activations.programs))
        until_recorded(log, lambda: rec.phases(phases, tkey))
        until_recorded(log, lambda: rec.run(preset, cfg, dkey, tkey, started, status="finished"))
        finished = True  # nothing after this marks the run failed
        report = until_recorded(log, lambda: build_report(root, run_id, preset))
        rec.report(report)
        _end_parent_run(mlflow, parent, "FINISHED")
        return {"run_id": run_id, "dataset": dkey, "train": tkey, "checkpoints": len(rec.checkpoint_rows()),
                "report": report["html"], "mlflow_run": parent, "units": [u.summary() for u in runs.units],
                "seconds": round(time.perf_counter() - t0, 1)}
    except BaseException as exc:
        # the units keep running on their workers: submitting the study again collects them. A
        # recording error (a held results file) is logged: it must not hide what stopped the run
        stopping()
        if not finished and rec is not None:
            _logged(log, f"mark run {run_id} failed in the results",
                    lambda: rec.run(preset, cfg, dkey, tkey, started, status="failed"))
        _end_parent_run(mlflow, parent, "FAILED")
        exit_if_stopped(exc)
        raise
    finally:
        unnote()
