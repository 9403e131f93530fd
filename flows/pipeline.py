"""The end-to-end study for one config, as a Prefect flow of cached tasks.

dataset -> train (publishing checkpoints as it goes) -> per checkpoint: evaluate + activations
-> per checkpoint x semantics: probes (costliest grid first) -> phases, interventions -> report.

Evaluation and activation dumps of early checkpoints start while training continues
(``overlap=True``): the flow polls the store for newly published checkpoints. Only this flow
process writes DuckDB; tasks hand back manifests whose artifacts hold the rows. Each evaluation
and probe grid is recorded as it finishes, so a run stopped half way has them in DuckDB.

With ``record_results=False`` (a sweep point on a worker) the flow writes neither DuckDB nor
MLflow: it keeps a journal of what it would have recorded (``tasks.record.Journal``) on the
shared storage, and the sweep flow, the single writer, replays it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
import uuid
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from tqdm.auto import tqdm
from prefect.task_runners import ThreadPoolTaskRunner

from flows.presets import load_preset
from flows.stopping import (exit_if_stopped, note_signals, stop_if_signalled, stop_noted, stopping, termination_code,
                            wait_for_training)
from model.checkpoint import list_checkpoints
from model.config import checkpoint_steps
from model.threads import PROCESS_THREADS
from tasks import record
from tasks.activations import dump_activations
from tasks.dataset import generate_dataset
from tasks.evaluation import evaluate
from tasks.phases import phase_metrics
from tasks.probing import train_probes
from tasks.report import build_report
from tasks.results import DatabaseLockedError, HeldWarning, ResultsDB, retried_while_locked
from tasks.probe_config import probe_config_at
from tasks.stage_configs import current_offset
from tasks.tracking import finish_run, init_tracking, start_parent_run
from tasks.training import STOP, publish_checkpoint, published_checkpoints, train_key, train_lm
from tasks.workspace import Workspace

POLL_S = 1.0
# How long a finished run's last writes wait for another process to let the results file go (a
# notebook's open connection), warning every half minute; then it fails as before, and a rerun
# records it from the cached stages.
RESULTS_WAIT_S = 1800.0


def _wait_ended(future, unless=lambda: False) -> None:
    """Until a task future has ended (or ``unless()`` holds), waiting in short slices so SIGTERM and
    Ctrl-C are handled at once (a single blocking wait can hold the signal until the task finishes)."""
    while not unless() and not _ended(future):
        future.wait(timeout=POLL_S)


def _result(future):
    """A task future's result, once it has ended (``_wait_ended``); a noted stop raises first."""
    stop_if_signalled()
    _wait_ended(future)
    return future.result()


def _thread_future(future) -> concurrent.futures.Future | None:
    """The task's thread future (the thread pool task runner's), else None."""
    wrapped = getattr(future, "wrapped_future", None)
    return wrapped if isinstance(wrapped, concurrent.futures.Future) else None


def _ended(future) -> bool:
    """Whether a task future has ended (in any final state), asked of its thread's future where it
    has one: no server round trip. An ended one then holds its final state as the thread returned
    it, so ``future.state`` no longer asks the server either, whose copy can lag the thread (read
    there, a grid that had ended still looked running, and the run finished without recording it)."""
    thread = _thread_future(future)
    if thread is None:
        return future.state.is_final()
    if thread.done():
        future.wait(0)
        return True
    return False


def _running(futures) -> list:
    """Those of ``futures`` whose task is executing now (not queued, not ended), as their thread's
    future tells; none where a task runner gives no thread future."""
    return [f for f in futures if (thread := _thread_future(f)) is not None and thread.running()]


def _finish(futures) -> None:
    """Wait until each of ``futures`` has ended, or a stop signal is noted (the stop path's
    waits: ``flows.stopping.stopping``)."""
    for future in futures:
        try:
            _wait_ended(future, unless=stop_noted)
        except Exception:  # its engine crashed: it has ended, with nothing to record
            pass


def until_recorded(log, write):
    """``write()``, one of a finished run's last writes to the results file, waiting up to
    RESULTS_WAIT_S for another process to let the file go (``retried_while_locked``)."""
    return retried_while_locked(write, RESULTS_WAIT_S, lambda e, left: log.warning(
        "the run has finished, and the results file %s is held by another process (%s): it waits for the "
        "file to record its results, %.0f minutes more at most", e.path, e.holder or "unknown", left / 60))


def _logged(log, what: str, action) -> None:
    """``action()``; an exception it raises is logged (on ``log``) as what could not be done, not raised."""
    try:
        action()
    except Exception as e:
        log.warning("could not %s: %s", what, e)


def _pause(futures) -> None:
    """Until one of ``futures`` (those still running) ends, or POLL_S at most; none: no wait. A
    poll does not sleep a whole second while finished work waits. A noted stop raises
    (``stop_if_signalled``)."""
    stop_if_signalled()
    threads = [_thread_future(f) for f in futures]
    if not threads:
        return
    if None not in threads:
        concurrent.futures.wait(threads, timeout=POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
    else:
        time.sleep(POLL_S)


def _parent_run(ws: Workspace, preset: str, run_id: str, cfg, tags: dict) -> str:
    """A run's MLflow parent run, in the workspace's tracking store."""
    experiment = f"semprobe-{preset}"
    init_tracking(ws.root, experiment)
    return start_parent_run(experiment, f"{preset}-{run_id[:8]}", cfg.as_dict(), tags=tags)


def _end_parent_run(mlflow: record.MlflowWrites, parent: str | None, status: str) -> None:
    """End a run's MLflow parent run (where it has one), tried even while MLflow writes are paused."""
    if parent:
        mlflow("the end of the MLflow run", lambda: finish_run(parent, status), always=True)


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else uuid.uuid4().hex
    except Exception:
        return uuid.uuid4().hex


def start_costliest(ready: list, running: int, slots: int, start) -> list:
    """Start items of ``ready`` (``(cost, item)`` pairs) costliest first, ties in the order they
    were added, while fewer than ``slots`` tasks run; started ones leave ``ready``. Returns
    ``(item, start(item))`` pairs.

    The flow's pool runs what it is given first come, first served. After training the early
    checkpoints' grids are ready at once and the last checkpoint's only once its activations are
    dumped, yet its original grid (every offset, the random-init control at the future ones)
    costs several times any other: queued behind the early grids it started last and ran alone,
    one core of two idle, for minutes (BENCHMARKS.md). Held back until a worker is free, the
    costliest ready grid starts as soon as it can and the cheap ones fill in around it."""
    ready.sort(key=lambda r: -r[0])  # stable
    out = []
    while ready and running < slots:
        item = ready.pop(0)[1]
        out.append((item, start(item)))
        running += 1
    return out


WORKERS = 3  # the flow's task threads: training beside an evaluation and a dump; after it, up to three grids


def republish_missing(root: str, tkey: str, train_cfg, log) -> list[int]:
    """The scheduled checkpoints of a finished training that the artifact store lacks (deleted
    after training, when the cached train stage no longer publishes), republished from the
    training work folder, each with a warning on ``log``; returns their steps. One the work folder
    lacks too is an error that says how to rebuild it: the flow would otherwise skip that
    checkpoint without a word (or, fanned out, wait for it for ever)."""
    have = {c["step"] for c in published_checkpoints(root, tkey)}
    lost = sorted(set(checkpoint_steps(train_cfg)) - have)
    if not lost:
        return []
    ws = Workspace.at(root)
    work = dict(list_checkpoints(ws.work_dir / "train" / tkey))
    gone = [s for s in lost if s not in work]
    if gone:
        raise FileNotFoundError(
            f"checkpoints at steps {gone} of training {tkey} are in neither the artifact store nor the "
            f"training work folder {ws.work_dir / 'train' / tkey}; delete the train artifact "
            f"({ws.store.path('train', tkey)}) and the work folder to retrain them")
    for step in lost:
        publish_checkpoint(ws, tkey, step, work[step], train_cfg.tokens_per_step)
        log.warning("checkpoint at step %d was missing from the artifact store: republished from the "
                    "training work folder", step)
    return lost


@flow(name="semprobe-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def pipeline(preset: str = "cpu", overrides: list[str] | None = None, workspace: str | None = None,
             overlap: bool = True, progress: bool = True, record_results: bool = True) -> dict:
    """Run (or finish, or find cached) the whole study for ``preset`` with ``overrides``.

    ``record_results=False``: write no DuckDB or MLflow, only the journal (see module doc).
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    root = str(ws.root)
    cfg = load_preset(preset, overrides or [])
    # what killed writers of this host left (a partial activation dump is hundreds of MB); never
    # by age, so a long write on another machine sharing the store is left alone
    for p in ws.store.clean_stale(max_age_s=None):
        log.info("removed %s, left by a writer that is gone", p)
    run_id = _run_id()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    mlflow = record.MlflowWrites(log.warning)  # the view: its errors are warned about, the run goes on
    parent = rec = training = None
    finished = False
    ds, tkey = {}, None
    per_ckpt: dict[str, tuple] = {}  # checkpoint key -> (checkpoint, evaluation, activations or None)
    grids: dict = {}  # (step, semantics index) -> probe grid future
    recorded: set = set()
    stages: list[dict] = []  # stage rows to write (training's, each dump's) at the next record_finished
    held = HeldWarning(log.warning)  # a held results file, said once per 5 minutes while it stays held

    def submitted() -> list:
        """The task futures besides training's (evaluations, dumps, grids): they hold task threads too."""
        return [f for _, ev, acts in per_ckpt.values() for f in (ev, acts) if f is not None] + list(grids.values())

    def record_finished(final: bool = False, best_effort: bool = False) -> int:
        """Record each evaluation and probe grid that has finished since the last call, as it
        finishes: a run stopped half way (a session's end, a lost machine) leaves them in DuckDB,
        where before they waited for the last grid. A results file held by another process (a
        notebook's open connection) does not stop the run: what could not be written is written
        at a later call; only the ``final`` one raises. ``best_effort`` (a stopped run's last
        call): an item that cannot be recorded is logged and the items after it still are.
        Returns how many grids are recorded."""
        items = [(c["key"], ev, functools.partial(rec.checkpoint, c))
                 for c, ev, _ in sorted(per_ckpt.values(), key=lambda v: v[0]["step"])]
        items += [(k, grids[k], rec.probes) for k in sorted(grids)]
        try:
            while stages:
                rec.stage(stages[0])
                stages.pop(0)
            for key, future, write in items:
                try:
                    if key not in recorded and _ended(future) and future.state.is_completed():
                        write(future.result())
                        recorded.add(key)
                except DatabaseLockedError:
                    raise
                except Exception as e:
                    if not best_effort:
                        raise
                    log.warning("could not record %s: %s", key, e)
        except DatabaseLockedError as e:
            if final:
                raise
            if best_effort:
                log.warning("%s; not recorded", e)
            else:
                held("%s; recording it at a later poll", e)
        else:
            held.clear()
        return sum(k in recorded for k in grids)

    STOP.clear()
    unnote = note_signals()  # before the first write: a stop during the setup is known by its signal too
    try:
        if record_results:
            tags = {"prefect_flow_run": run_id, "torch_threads": PROCESS_THREADS}
            parent = mlflow("the run's parent run", lambda: _parent_run(ws, preset, run_id, cfg, tags))
            rec = record.Recorder(ResultsDB(ws.db_path), run_id, parent, warn=log.warning, mlflow=mlflow)
        else:
            rec = record.Journal(run_id)
        ds = generate_dataset(root, cfg.data)
        rec.dataset(ds, cfg.data)
        tkey = train_key(cfg.model, cfg.train, ds["key"])
        rec.run(preset, cfg, ds["key"], tkey, started, status="running")
        log.info("dataset %s (%s); training %s", ds["key"], ds["status"], tkey)

        training = train_lm.submit(root, cfg.model, cfg.train, ds, progress=progress)
        probed = cfg.probed_steps()

        def submit_new():
            for c in published_checkpoints(root, tkey):
                if c["key"] not in per_ckpt:
                    acts = dump_activations.submit(root, cfg.activations, ds, c) if c["step"] in probed else None
                    per_ckpt[c["key"]] = (c, evaluate.submit(root, cfg.eval, ds, c), acts)

        while overlap and not _ended(training):
            submit_new()
            record_finished()
            _pause([training])
        trained = _result(training)
        stages.append(trained)
        republish_missing(root, tkey, cfg.train, log)
        submit_new()

        ordered = sorted(per_ckpt.values(), key=lambda v: v[0]["step"])
        current = current_offset(cfg.activations.programs)
        pending = [(c, acts) for c, _, acts in ordered if acts is not None]
        ready = []

        def submit_grid(item):  # item: ((step, semantics index), (probe config, activations, semantics))
            return train_probes.submit(root, *item[1])

        while pending or ready:
            for c, acts in [p for p in pending if _ended(p[1])]:
                pending.remove((c, acts))
                a = acts.result()
                stages.append(a)
                pcfg = probe_config_at(cfg.probe, c["step"], probed)
                ready += [(pcfg.grid_cost(sem, current), ((c["step"], i), (pcfg, a, sem)))
                          for i, sem in enumerate(cfg.probe.semantics)]
            running = sum(not _ended(f) for f in submitted())
            for (key, _), fut in start_costliest(ready, running, WORKERS, submit_grid):
                grids[key] = fut
            record_finished()
            if pending or ready:  # a dump to end, or a task to free a worker
                _pause([acts for _, acts in pending] + [f for f in submitted() if not _ended(f)])
        waiting = [ev for _, ev, _ in ordered] + [grids[k] for k in sorted(grids)]
        with tqdm(total=len(grids), desc="probe grids", unit="grid", disable=not progress) as bar:
            while True:
                done = all(_ended(f) for f in waiting)  # before recording: none ends unrecorded
                for f in waiting:
                    if _ended(f) and not f.state.is_completed():
                        f.result()  # a failed evaluation or grid raises here, without waiting for the rest
                n = until_recorded(log, lambda: record_finished(final=True)) if done else record_finished()
                bar.update(n - bar.n)
                if done:
                    break
                _pause([f for f in waiting if not _ended(f)])
        probe_outs = [grids[k].result() for k in sorted(grids)]

        phases = phase_metrics(root, cfg.probe, probe_outs, rec.checkpoint_rows(), current)
        until_recorded(log, lambda: rec.phases(phases, tkey))
        until_recorded(log, lambda: rec.run(preset, cfg, ds["key"], tkey, started, status="finished"))
        finished = True  # the run's numbers are all recorded: nothing after this marks it failed
        out = {"run_id": run_id, "dataset": ds["key"], "train": tkey, "checkpoints": len(per_ckpt)}
        if record_results:
            report = until_recorded(log, lambda: build_report(root, run_id, preset))
            rec.report(report)
            _end_parent_run(mlflow, parent, "FINISHED")
            out["report"] = report["html"]
        else:
            out["journal"] = str(rec.write(root))
        log.info("finished in %.0fs", time.perf_counter() - t0)
        return {**out, "seconds": time.perf_counter() - t0}
    except BaseException as exc:
        # SIGTERM (Prefect raises TerminationSignal; code it lands in may raise another: flows.stopping),
        # Ctrl-C or a failed stage: training checkpoints at its next step and stops, so a rerun
        # resumes from there, not from scratch. A second signal from here on is only noted.
        stopping()
        STOP.set()
        wait_for_training(training, log)
        if termination_code(exc) is None:
            # a failed stage: the tasks already running finish before the flow exits all the same
            # (Prefect's task runner waits for them; queued ones are cancelled), so what they
            # compute is recorded too, not left in the artifact store alone
            _finish(_running(submitted()))
        # what finished before the stop; a recording error must not hide the one that stopped the run
        _logged(log, "record the finished evaluations and grids", lambda: record_finished(best_effort=True))
        if not finished and rec is not None:  # None: stopped before its results file opened
            _logged(log, f"mark run {run_id} failed in the results",
                    lambda: rec.run(preset, cfg, ds.get("key"), tkey, started, status="failed"))
        if record_results:
            _end_parent_run(mlflow, parent, "FAILED")
        elif rec is not None:
            _logged(log, "write the run's journal", lambda: rec.write(root))
        exit_if_stopped(exc)  # a signal during the stop path counts too
        raise
    finally:
        unnote()
