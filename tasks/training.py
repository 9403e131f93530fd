"""Stage 2: train the language model, publishing each checkpoint as its own artifact.

Training runs in a resumable work folder (``<workspace>/work/train/<key>``): a killed run
resumes from its last checkpoint. Each scheduled checkpoint is published at once as a
``checkpoint`` artifact (a hard link, so nothing is copied), which lets evaluation and probing of
early checkpoints start while training continues. The ``train`` artifact completes last.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from model import config as mcfg
from model.train import train
from tasks.dataset import data_dir
from tasks.live import progress_artifact
from tasks.stage import recomputed, run_stage, stage_key
from tasks.workspace import Workspace

CHECKPOINT_FILE = "model.pt"
STOP = threading.Event()  # set by the CLI's SIGTERM handler: training checkpoints and stops


class TrainingInterrupted(RuntimeError):
    """Training was asked to stop; its work folder holds a checkpoint to resume from."""


def train_key(model_cfg: mcfg.ModelConfig, train_cfg: mcfg.TrainConfig, data_key: str) -> str:
    return stage_key("train", {"model": model_cfg, "train": train_cfg}, [data_key], ["karel", "model.train"], __name__)


def checkpoint_key(train_key_: str, step: int) -> str:
    return f"{train_key_}-s{step:07d}"


def publish_checkpoint(ws: Workspace, train_key_: str, step: int, path: Path, tokens_per_step: int) -> dict:
    """Make one checkpoint file an artifact (idempotent)."""

    def compute(tmp: Path) -> dict:
        try:
            os.link(path, tmp / CHECKPOINT_FILE)
        except OSError:  # another filesystem: copy
            shutil.copy2(path, tmp / CHECKPOINT_FILE)
        return {"train_key": train_key_, "step": step, "tokens_seen": step * tokens_per_step}

    return run_stage(str(ws.root), "checkpoint", checkpoint_key(train_key_, step), compute)


def checkpoint_file(ckpt: dict) -> Path:
    return Path(ckpt["path"]) / CHECKPOINT_FILE


@task(name="train-lm", cache_policy=NONE)
def train_lm(ws_root: str, model_cfg: mcfg.ModelConfig, train_cfg: mcfg.TrainConfig, dataset: dict,
             progress: bool = True) -> dict:
    """Train (or resume, or find) the model; meta lists every published checkpoint."""
    ws = Workspace.at(ws_root)
    key = train_key(model_cfg, train_cfg, dataset["key"])
    work = ws.work_dir / "train" / key

    def publish(step: int, path) -> None:
        publish_checkpoint(ws, key, step, Path(path), train_cfg.tokens_per_step)

    def compute(tmp: Path) -> dict:
        done = train(model_cfg, train_cfg, data_dir(dataset), work, on_checkpoint=publish, progress=progress,
                     should_stop=STOP.is_set, on_progress=progress_artifact(key))
        if STOP.is_set():  # never let a stopped run look finished
            raise TrainingInterrupted(f"training {key} stopped at step {done[-1][0]}; rerun to resume")
        published = []
        for step, path in done:
            if step in set(mcfg.checkpoint_steps(train_cfg)):
                published.append(publish_checkpoint(ws, key, step, Path(path), train_cfg.tokens_per_step))
        rows = [{"key": c["key"], "step": c["meta"]["step"], "tokens_seen": c["meta"]["tokens_seen"],
                 "path": c["path"]} for c in published]
        (tmp / "checkpoints.json").write_text(json.dumps(rows, indent=1))
        return {"checkpoints": rows, "n_params": model_cfg.n_params()}

    return run_stage(ws_root, "train", key, compute, force=recomputed(dataset))


def published_checkpoint(ws_root: str, train_key_: str, step: int) -> dict | None:
    """One published checkpoint (its file local: a remote store downloads it), or None when it is
    not published (yet); a file changed in place is an error (``_published``)."""
    return _published(Workspace.at(ws_root), checkpoint_key(train_key_, step))


def published_checkpoints(ws_root: str, train_key_: str) -> list[dict]:
    """Checkpoints of a training run that are already published (training may still run)."""
    ws = Workspace.at(ws_root)
    found = (_published(ws, key) for key in ws.store.keys("checkpoint") if key.startswith(train_key_ + "-s"))
    return sorted((c for c in found if c is not None), key=lambda c: c["step"])


def _published(ws: Workspace, key: str) -> dict | None:
    """The published checkpoint ``key``, or None while it is not (complete). Its file is hashed
    when its size or mtime differ from the manifest's (``verify="stat"``): one changed in place
    with the same size is a ValueError naming it, not a checkpoint to read."""
    store = ws.store
    if store.is_complete("checkpoint", key, verify="stat"):
        meta = store.manifest("checkpoint", key).get("meta", {})
        return {"key": key, "path": str(store.path("checkpoint", key)), **meta}
    if store.is_complete("checkpoint", key, verify=False):  # sizes right, bytes not: changed in place
        train_key_ = key.rsplit("-s", 1)[0]
        raise ValueError(
            f"checkpoint {key}: its file in {store.path('checkpoint', key)} no longer matches the sha256 in its "
            f"manifest (changed in place). The training work folder holds the same file (a hard link): delete "
            f"the train artifact ({store.path('train', train_key_)}), the work folder "
            f"({ws.work_dir / 'train' / train_key_}) and this checkpoint's folder to retrain it")
    return None
