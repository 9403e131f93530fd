"""The one way every stage runs: find a complete artifact by key, or compute it once.

Prefect's default cache policy keys on the run id (so it never hits across runs) and its source
hash misses changes in called helpers, so the tasks use ``cache_policy=NONE`` and this store
instead: the key hashes the config, the upstream keys and the library code, and completeness is
checked on the files themselves (a missing or corrupt artifact is recomputed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from model.machine import cpu_identity
from model.threads import PROCESS_THREADS, pinned_threads
from tasks.cachekey import cache_key, pin_sources
from tasks.workspace import Workspace

LIBRARIES = ("karel", "model", "probes")
# Keys describe the code this process loaded, not later edits on disk: the libraries, and the
# task modules whose own code a key names (the phases stage keys on ``tasks.phases``).
pin_sources(*LIBRARIES, "tasks")
# What a deployment run's key (a sweep point, a fan-out unit) hashes: everything a study runs,
# so a rerun after any edit is a new run, never an earlier run's results replayed.
RUN_CODE = (*LIBRARIES, "tasks", "flows")
# Task modules a stage may import without their code counting in its key: paths, the store,
# recording, progress shown in the UI (``tasks.live``). Anything else a stage module imports from
# tasks is one of its ``helpers`` (tests/test_cachekey.py checks every stage module against this).
PLUMBING = ("tasks.cachekey", "tasks.dataset", "tasks.live", "tasks.stage", "tasks.store", "tasks.training",
            "tasks.workspace")


def stage_key(stage: str, config, upstream: list[str], packages: list[str], own: str,
              helpers: tuple[str, ...] = ()) -> str:
    """The stage's cache key: config, upstream keys, the libraries it runs (``packages``) and its
    task module's own code (``own``, pass ``__name__``): a task module holds the wiring (which
    programs, splits and controls a stage asks for), so an edit there must re-key it too. So
    must an edit to ``helpers``, the other task modules whose code shapes the stage's output
    (``tasks.stage_configs``' offsets and device, ``tasks.probe_config``' offset rules for the
    grids, ``tasks.activations``' loader); the ones that
    only find paths and run the stage (``PLUMBING``) do not count."""
    return cache_key(stage, config, upstream, packages, own=(own, *helpers) if helpers else own)


@functools.lru_cache(maxsize=1)
def _host() -> dict:
    """This machine's CPU, cores and software (read once per process)."""
    return {**cpu_identity(), "cores": os.cpu_count(), "torch_threads": PROCESS_THREADS,
            "torch": torch.__version__, "python": platform.python_version()}


def arithmetic_tag() -> str:
    """A short name for what sets a CPU computation's bits here (CPU model, its bf16 ISA, the torch
    thread count and version): work kept to resume on, like a probe grid's units, is only mixed
    with work of the same tag (a CUDA device is told apart inside ``probes.resume``)."""
    host = _host()
    what = [host[k] for k in ("cpu", "cpu_isa", "torch_threads", "torch")]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


def machine() -> dict:
    """Where this process computes, stamped into every artifact it writes (``meta.machine``):
    ``_host()`` (``torch_threads``: the count stages run on, ``model.threads``; a probe grid
    trains on its own config's count, one in the flow) and the GPU this process has put to use
    (``cuda``; None while it has not, so a CPU-only stage on a GPU machine never starts a CUDA
    context just to name the device).

    Not in any key: the same config on another machine is the same stage, but its training
    trajectory and rounding differ (RESULTS.md), so an artifact says what computed it."""
    cuda = torch.cuda.get_device_name() if torch.cuda.is_initialized() else None
    return {**_host(), "cuda": cuda}


def run_stage(ws_root: str, stage: str, key: str, compute: Callable[[Path], dict | None],
              force: bool = False) -> dict:
    """The stage's manifest summary: ``{stage, key, path, status, seconds, finished_at, meta}``
(``finished_at``: ISO 8601, UTC; the recorder may store it much later, e.g. after every grid;
``meta.machine``: what computed the artifact, ``machine()`` of that process).

    ``force`` recomputes even a complete artifact: the flow sets it when an upstream stage was
    recomputed in this run, so a stage and everything that depends on it are rebuilt together.
    """
    store = Workspace.at(ws_root).store
    t = time.perf_counter()

    def stamped(tmp: Path) -> dict:
        # On the process's starting thread count, whatever a stage beside it set (model.threads);
        # a probe grid still sets its own inside.
        with pinned_threads():
            meta = compute(tmp) or {}
        return {**meta, "machine": machine()}

    if force:
        with store.lock(stage, key):
            meta: dict = {}
            with store.write(stage, key, meta=meta) as tmp:
                meta.update(stamped(tmp))
        manifest, computed = store.manifest(stage, key), True
    else:
        manifest, computed = store.ensure(stage, key, stamped)
    return {
        "stage": stage,
        "key": key,
        "path": str(store.path(stage, key)),
        "status": "computed" if computed else "cached",
        "seconds": round(time.perf_counter() - t, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "meta": manifest.get("meta", {}),
    }


def recomputed(*upstream: dict) -> bool:
    """Whether any upstream stage summary was computed (not found cached) in this run."""
    return any(u.get("status") == "computed" for u in upstream)
