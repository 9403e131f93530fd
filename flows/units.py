"""The deployment units a study fans out to: train one model; evaluate and probe one checkpoint.

``semprobe-train``: the dataset and training of one config. Checkpoints are published to the
shared artifact store as training goes (as in the pipeline), so the study that submitted this
unit (``flows.fanout``) can submit one ``semprobe-checkpoint`` unit per checkpoint at once.

``semprobe-checkpoint``: for one checkpoint (the config's training key and a step): evaluation,
and when the step is one the config probes, the activation dump and the probe grid of every
semantics. The checkpoint must already be published; the dataset comes from the store.

Both run the pipeline's cached tasks (a rerun or a duplicate finds every artifact), write no
DuckDB and no MLflow, and keep a journal (``tasks.record.Journal``) on the shared workspace
that ends with a ``unit`` status; the fanning-out flow, the single writer, replays it.
Their keys (:func:`train_unit_key`, :func:`checkpoint_unit_key`) name what they compute: the
fan-out submits each under an idempotency key made of it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import _result, _run_id, republish_missing
from flows.stopping import exit_if_stopped, note_signals, stopping, wait_for_training
from flows.presets import StudyConfig, load_preset
from model.config import checkpoint_steps
from tasks import record
from tasks.activations import dump_activations
from tasks.cachekey import cache_key
from tasks.dataset import dataset_key, generate_dataset
from tasks.evaluation import evaluate
from tasks.probing import train_probes
from tasks.stage import RUN_CODE
from tasks.probe_config import probe_config_at
from tasks.training import STOP, checkpoint_key, published_checkpoint, train_key, train_lm
from tasks.workspace import Workspace


def train_unit_key(cfg: StudyConfig) -> str:
    """The train unit's key: its training stage's key (which hashes the dataset's)."""
    return train_key(cfg.model, cfg.train, dataset_key(cfg.data))


def is_probed(cfg: StudyConfig, step: int) -> bool:
    """Whether the config dumps activations and probes the checkpoint at ``step``."""
    return step in cfg.probed_steps()


def probe_config(cfg: StudyConfig, step: int):
    """The probe config of the (probed) checkpoint at ``step`` (``ProbeConfig.at_checkpoint``)."""
    return probe_config_at(cfg.probe, step, cfg.probed_steps())


def checkpoint_unit_key(cfg: StudyConfig, step: int) -> str:
    """The checkpoint unit's key: the checkpoint, the dataset and the configs of the stages the
    unit runs on it (activations and probes only where the step is probed), and the code a study
    runs (``RUN_CODE``)."""
    probed = is_probed(cfg, step)
    config = {"eval": cfg.eval, "activations": cfg.activations if probed else None,
              "probe": probe_config(cfg, step) if probed else None}
    ckpt = checkpoint_key(train_unit_key(cfg), step)
    return cache_key("checkpoint-unit", config, [dataset_key(cfg.data), ckpt], RUN_CODE)


def _failed(rec: record.Journal, kind: str, root: str, exc: BaseException) -> None:
    stopping()  # a second signal is only noted: the journal is written
    rec.unit(kind, "failed", {"error": repr(exc)[:500]})
    rec.write(root)
    exit_if_stopped(exc)  # SIGTERM or Ctrl-C: leave without waiting for task threads


@flow(name="semprobe-train")
def train_model(preset: str = "smoke", overrides: list[str] | None = None, workspace: str | None = None,
                progress: bool = False) -> dict:
    """Generate the dataset and train one model, publishing its checkpoints; journal only."""
    root = str(Workspace.at(workspace).root)
    cfg = load_preset(preset, overrides or [])
    rec = record.Journal(_run_id())
    training = None
    STOP.clear()
    unnote = note_signals()
    try:
        ds = generate_dataset(root, cfg.data)
        rec.dataset(ds, cfg.data)
        training = train_lm.submit(root, cfg.model, cfg.train, ds, progress=progress)
        trained = _result(training)
        # a cached training publishes nothing: checkpoints deleted since would be waited for by the
        # fan-out for ever
        republish_missing(root, trained["key"], cfg.train, get_run_logger())
        rec.stage(trained)
        rec.unit("train", "finished", {"train_key": trained["key"], "data_key": ds["key"],
                                       "steps": [c["step"] for c in trained["meta"]["checkpoints"]]})
        get_run_logger().info("trained %s (%s)", trained["key"], trained["status"])
        return {"run_id": rec.run_id, "train": trained["key"], "journal": str(rec.write(root))}
    except BaseException as exc:
        stopping()
        STOP.set()  # training checkpoints and stops: a resubmitted unit resumes from there
        wait_for_training(training, get_run_logger())
        _failed(rec, "train", root, exc)
        raise
    finally:
        unnote()


@flow(name="semprobe-checkpoint", task_runner=ThreadPoolTaskRunner(max_workers=3))
def probe_checkpoint(preset: str = "smoke", overrides: list[str] | None = None, step: int = 0,
                     workspace: str | None = None) -> dict:
    """Evaluate one published checkpoint and, if its step is probed, dump its activations and
    run the probe grid of every semantics; journal only."""
    root = str(Workspace.at(workspace).root)
    cfg = load_preset(preset, overrides or [])
    if step not in checkpoint_steps(cfg.train):
        raise ValueError(f"step {step} is not a checkpoint of this config: {checkpoint_steps(cfg.train)}")
    rec = record.Journal(_run_id())
    unnote = note_signals()
    try:
        tkey = train_unit_key(cfg)
        ckpt = published_checkpoint(root, tkey, step)
        if ckpt is None:
            raise FileNotFoundError(f"checkpoint {checkpoint_key(tkey, step)} is not published (yet) in {root}")
        ds = generate_dataset(root, cfg.data)  # found in the store: the train unit made it
        ev = evaluate.submit(root, cfg.eval, ds, ckpt)
        acts = dump_activations.submit(root, cfg.activations, ds, ckpt) if is_probed(cfg, step) else None
        rec.checkpoint(ckpt, _result(ev))
        grids = []
        if acts is not None:
            a = _result(acts)
            rec.stage(a)
            futures = [train_probes.submit(root, probe_config(cfg, step), a, sem)
                       for sem in cfg.probe.semantics]
            grids = [_result(f) for f in futures]
            for out in grids:
                rec.probes(out)
        rec.unit("checkpoint", "finished", {"checkpoint_key": ckpt["key"], "step": step,
                                            "probe_keys": [g["key"] for g in grids]})
        return {"run_id": rec.run_id, "checkpoint": ckpt["key"], "journal": str(rec.write(root))}
    except BaseException as exc:
        _failed(rec, "checkpoint", root, exc)
        raise
    finally:
        unnote()
