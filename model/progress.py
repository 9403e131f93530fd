"""A training run's live position, for whoever watches it without a terminal (``semprobe status``
in a ``--quiet`` run, a Prefect worker's flow run): ``progress.json`` beside the checkpoints,
rewritten at most every ``EVERY`` seconds, and at the last step or a stop. It only reports; nothing resumes
from it (checkpoints do), and writing it changes nothing in the training curve.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

PROGRESS_FILE = "progress.json"
EVERY = 15.0  # seconds between rewrites


class ProgressFile:
    """Rewrites ``out_dir/progress.json`` (atomically: a reader never sees half a file). Made as
    training starts, it removes the file an earlier process left, so a resumed run never shows
    the dead one's step; a file that cannot be written is warned about once and left off."""

    def __init__(self, out_dir: Path, steps: int, on_write=None):
        self.path = Path(out_dir) / PROGRESS_FILE
        self.path.unlink(missing_ok=True)
        self.steps = steps
        self.on_write = on_write  # called with each row written
        self.first = self.last = 0
        self.t0 = self.written = None
        self.off = False

    def start(self, first_step: int, last_step: int) -> None:
        """The loop starts after ``first_step`` and ends at ``last_step``."""
        self.first, self.last = first_step, last_step
        self.t0 = time.monotonic()

    def update(self, step: int, loss: float, tokens: int, force: bool = False) -> None:
        """After ``step`` (``tokens`` trained by this process so far, ``loss`` the step's); written
        at most every ``EVERY`` seconds, and always at the last step or when ``force`` (a stop)."""
        now = time.monotonic()
        if self.off or (self.written is not None and now - self.written < EVERY and step < self.last and not force):
            return
        elapsed = max(now - self.t0, 1e-9)
        row = {"step": step, "last_step": self.last, "steps": self.steps, "loss": loss,
               "seconds_per_step": elapsed / max(step - self.first, 1), "tokens_per_s": tokens / elapsed,
               "updated": time.time(), "pid": os.getpid()}
        tmp = self.path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(row))
            os.replace(tmp, self.path)
        except OSError as e:  # it only reports: never stop training for it
            self.off = True
            warnings.warn(f"{self.path}: cannot write training's progress ({e}); training goes on without it",
                          stacklevel=2)
            return
        self.written = now
        if self.on_write is not None:
            self.on_write(row)


def describe(row: dict) -> str:
    """A row's rate and loss as ``semprobe status`` and the Prefect UI both show them."""
    return f"{row['seconds_per_step']:.2f} s a step, {row['tokens_per_s']:,.0f} tokens/s, loss {row['loss']:.4f}"


def read_progress(out_dir: Path) -> dict | None:
    """The last ``progress.json`` written in ``out_dir``, or None (none yet, or unreadable)."""
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
