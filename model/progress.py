"""A training run's live position, for whoever watches it without a terminal (``semprobe status``
in a ``--quiet`` run, a Prefect worker's flow run): ``progress.json`` beside the checkpoints,
rewritten at most every ``EVERY`` seconds and at the last step. It only reports; nothing resumes
from it (checkpoints do), and writing it changes nothing in the training curve.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"
EVERY = 15.0  # seconds between rewrites


class ProgressFile:
    """Rewrites ``out_dir/progress.json`` (atomically: a reader never sees half a file)."""

    def __init__(self, out_dir: Path, first_step: int, last_step: int, steps: int, on_write=None):
        self.path = Path(out_dir) / PROGRESS_FILE
        self.first, self.last, self.steps = first_step, last_step, steps
        self.on_write = on_write  # called with each row written
        self.t0 = time.time()
        self.written = 0.0

    def update(self, step: int, loss: float, tokens: int) -> None:
        """After ``step`` (``tokens`` trained by this process so far, ``loss`` the step's)."""
        now = time.time()
        if now - self.written < EVERY and step < self.last:
            return
        elapsed = max(now - self.t0, 1e-9)
        done = max(step - self.first, 1)
        row = {"step": step, "last_step": self.last, "steps": self.steps, "loss": loss,
               "seconds_per_step": elapsed / done, "tokens_per_s": tokens / elapsed,
               "updated": now, "pid": os.getpid()}
        tmp = self.path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, self.path)
        self.written = now
        if self.on_write is not None:
            self.on_write(row)


def read_progress(out_dir: Path) -> dict | None:
    """The last ``progress.json`` written in ``out_dir``, or None (none yet, or unreadable)."""
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
