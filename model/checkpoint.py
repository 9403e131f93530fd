"""Checkpoint files: everything needed to evaluate a model or to resume training exactly.

A checkpoint holds plain values only (configs as dicts, vocab as a list, RNG states as tensors
and ints) so it loads with ``torch.load(weights_only=True)``: no code runs while reading it.
Files are written under a temporary name and renamed, so a killed run never leaves a
half-written ``step-*.pt`` that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import karel

from .config import ModelConfig, TrainConfig, config_from_dict, config_to_dict
from .transformer import Transformer

FORMAT_VERSION = 1
NAME = re.compile(r"^step-(\d{7})\.pt$")
REQUIRED = ("format_version", "step", "model_config", "train_config", "vocab", "model")
# Train fields that may change between a run and its resume (e.g. a run moved between a GPU and a
# CPU). Where the device or precision they resolve to changes, training warns that the curve differs.
RESUMABLE_CHANGES = {"device", "autocast"}


def checkpoint_path(out_dir, step: int) -> Path:
    return Path(out_dir) / f"step-{step:07d}.pt"


def list_checkpoints(out_dir) -> list[tuple[int, Path]]:
    """(step, path) of the finished checkpoints in ``out_dir``, by step."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), out_dir / n) for n in os.listdir(out_dir) if (m := NAME.match(n))]
    return sorted(found)


class FolderInUse(RuntimeError):
    """Another process is training into the same checkpoint folder."""


@contextlib.contextmanager
def sole_writer(out_dir) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on the folder ``out_dir`` itself while training writes
    there, or raise FolderInUse at once. Two processes resuming from one folder would each write
    their own trajectory's checkpoints under the same step names, and the next resume would mix
    them without a sign. The lock goes with the process and leaves no file behind. Where the
    filesystem cannot lock a folder (NFS emulates flock with byte-range locks, which need a file
    open for writing) training goes on unguarded, with a warning."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{out_dir} is being trained into by another process (`fuser -v {out_dir}` names "
                              "it): wait for it or stop it, then run again (training resumes from its last "
                              "checkpoint)") from None
        except OSError as e:
            warnings.warn(f"cannot lock {out_dir} ({e.strerror}): a second process training into it would not "
                          "be refused", stacklevel=4)
        yield
    finally:
        os.close(fd)  # releases the flock


def rng_state(device: torch.device | None = None) -> dict:
    """Torch, numpy and python global RNG states as weights_only-safe values, and the CUDA
    generator's of a CUDA ``device`` (only that one: a resume may see fewer GPUs, and reading
    CUDA's state on a CPU run would start a CUDA context for nothing)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list):  # the first files of format 1: every visible GPU's state
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(path, payload: dict) -> Path:
    """Write ``payload`` atomically (temporary file in the same folder, on disk before it is
    renamed: after a host crash the newest ``step-*.pt`` is whole, not an empty file that stops
    the resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_payload(step, model_cfg, train_cfg, vocab, model, optimizer=None, data_state=None, extra=None,
                 device: torch.device | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model_config": config_to_dict(model_cfg),
        "train_config": config_to_dict(train_cfg),
        "vocab": list(vocab.tokens),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(device),
        "data": data_state,
        "extra": extra or {},
    }


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and sanity-check a checkpoint; any unreadable or incomplete file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global: all mean "not ours"
        raise ValueError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise ValueError(f"{path}: not a semprobe checkpoint (missing {missing})")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt['format_version']}, expected {FORMAT_VERSION}")
    return ckpt


def check_compatible(ckpt: dict, model_cfg: ModelConfig, vocab: karel.Vocab, path="checkpoint") -> None:
    """ValueError unless ``ckpt`` was trained with this model shape and tokenizer."""
    # a field added since the checkpoint was written reads as its default (the model it built)
    saved = config_to_dict(config_from_dict(ModelConfig, ckpt["model_config"]))
    want = config_to_dict(model_cfg)
    if saved != want:
        diff = {k: (saved.get(k), want.get(k)) for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)}
        raise ValueError(f"{path}: model config differs from the checkpoint's (saved, wanted): {diff}")
    check_vocab(ckpt, vocab, path)


def check_vocab(ckpt: dict, vocab: karel.Vocab, path="checkpoint") -> None:
    if list(ckpt["vocab"]) != list(vocab.tokens):
        raise ValueError(
            f"{path}: tokenizer mismatch: the checkpoint has {len(ckpt['vocab'])} tokens "
            f"{list(ckpt['vocab'])[:5]}..., this vocabulary {len(vocab)} ({vocab.robot_markers!r})"
        )


def load_model(path, device="cpu") -> tuple[Transformer, dict]:
    """The model of a checkpoint in eval mode, and the checkpoint dict (configs as objects too)."""
    ckpt = load_checkpoint(path)
    model_cfg = config_from_dict(ModelConfig, ckpt["model_config"])
    train_cfg = config_from_dict(TrainConfig, ckpt["train_config"])
    vocab = karel.Vocab(train_cfg.robot_markers)
    check_vocab(ckpt, vocab, path)
    model = Transformer(model_cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the saved model config ({e})") from None
    ckpt["model_cfg"], ckpt["train_cfg"], ckpt["vocab_obj"] = model_cfg, train_cfg, vocab
    return model.to(device).eval(), ckpt
