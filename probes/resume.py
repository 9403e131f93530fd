"""Resumable probe grids: each (seed, probe kind) unit of a grid is kept as it finishes.

A grid on a long run's checkpoint trains for tens of minutes; killed half way (a SIGTERM, a
preempted worker, a session's end), it would start again from nothing. Inside
``with resumable(folder):`` every ``probes.grid.train_tasks`` call saves the result rows of each
finished (seed, kind) unit in ``folder`` and, on a later call with the same inputs, loads them
instead of training again.

A unit's file is named by a digest of everything its rows depend on: the rows ``x``, each row's
program, every task's key, heads and labels, the layer name, the whole ``GridConfig`` (probe
widths, training settings, threads, device) and where the arithmetic runs (the CPU, or the CUDA
device's name, for ``device="auto"``), with the seed and kind. A unit is therefore reused
only for the same inputs, and a grid resumed from saved units returns the rows a straight run
returns (each unit seeds its own generators, so it does not depend on which units ran before it
in the process). Files are written whole (a temporary name, then a rename): a process killed
mid-write leaves no unit, and a file that does not read back is trained again.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("probe_units", default=None)


@contextlib.contextmanager
def resumable(folder: str | os.PathLike):
    """Keep and reuse the grid units of ``train_tasks`` calls in this context (and thread)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    token = _FOLDER.set(path)
    try:
        yield path
    finally:
        _FOLDER.reset(token)


def active() -> Path | None:
    """The folder of the enclosing ``resumable`` context, or None."""
    return _FOLDER.get()


def inputs_digest(x: np.ndarray, program: np.ndarray, tasks, layer, config, arithmetic: str = "") -> str:
    """Digest of one ``train_tasks`` call's inputs (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)

    def array(arr) -> None:  # its dtype and shape too: the same bytes may be another array
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)

    array(x)
    array(program)
    for t in tasks:
        h.update(json.dumps([t.key, list(t.heads)], sort_keys=True, default=str).encode())
        array(t.labels)
    h.update(repr((layer, config, arithmetic)).encode())
    return h.hexdigest()


def unit_path(folder: Path, digest: str, seed: int, kind: str) -> Path:
    return folder / f"{digest}-s{int(seed)}-{kind}.parquet"


def load_unit(path: Path) -> pd.DataFrame | None:
    """A saved unit's rows, or None when it is missing or does not read back."""
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception:  # a damaged file: train the unit again
        return None


def save_unit(path: Path, rows: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def saved_units(folder: str | os.PathLike) -> int:
    """How many units a folder and its subfolders hold (for progress reports)."""
    path = Path(folder)
    return len(list(path.rglob("*.parquet"))) if path.is_dir() else 0
