"""A long stage's live position in the Prefect UI: ``train``'s ``on_progress`` rows (model.progress)
as a progress artifact on the task run, beside its logs (the flow run's Artifacts tab, and the
Artifacts page under ``train-<key>``). A convenience: a server that cannot be reached is logged
once and training goes on without it.
"""

from __future__ import annotations

import logging
import math
import time

from model.progress import describe

EVERY = 60.0  # seconds between updates sent to the server (and the last step always)


def progress_artifact(train_key: str, every_s: float = EVERY):
    """An ``on_progress`` callable for ``model.train.train``, or None outside a Prefect run."""
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    sent = {"id": None, "at": -math.inf, "off": False}

    def on_progress(row: dict) -> None:
        if sent["off"] or (time.monotonic() - sent["at"] < every_s and row["step"] < row["last_step"]):
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        share = 100.0 * row["step"] / row["steps"]
        text = f"training step {row['step']:,} of {row['steps']:,}: {describe(row)}"
        try:
            if sent["id"] is None:
                sent["id"] = create_progress_artifact(share, key=f"train-{train_key}", description=text)
            else:
                update_progress_artifact(sent["id"], share, description=text)
            sent["at"] = time.monotonic()
        except Exception as e:  # never stop training for the UI
            sent["off"] = True
            logging.getLogger(__name__).warning("training's progress artifact is off: %s", e)

    return on_progress
