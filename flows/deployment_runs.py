"""Deployment runs a flow submits and follows: sweep points and fan-out units alike.

Each run is submitted with ``run_deployment(timeout=0)`` under an idempotency key made of the
run's cache key and the workspace, so a resubmitted sweep or study finds its earlier runs
instead of creating new ones. A run that crashed or failed is resubmitted under the next key of
its chain (``<key>~2``, ``<key>~3``), so a resubmission walks the same chain and again creates
nothing new. A run cancelled while the flow follows it (a person's act) fails its unit instead;
submitted again, the flow finds it cancelled and resubmits it. A run counts as finished only
when its journal on the shared workspace says so and every artifact the journal names is still
complete.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from prefect import get_run_logger
from prefect.client.schemas.objects import StateType

from flows.pipeline import until_recorded
from tasks import record
from tasks.results import DatabaseLockedError, HeldWarning
from tasks.workspace import Workspace


def journal_if_complete(ws: Workspace, run_id: str) -> record.Journal | None:
    """The finished run's journal, if it exists and every artifact it names is still complete."""
    try:
        journal = record.Journal.read(ws.root, run_id)
    except (OSError, ValueError, KeyError):
        return None
    if journal.status() != "finished":
        return None
    store = ws.store
    if not all(store.is_complete(s["stage"], s["key"], verify="stat") for s in journal.stages()):
        return None
    return journal


def idempotency_key(kind: str, key: str, workspace: str, attempt: int = 1) -> str:
    """``semprobe-<kind>-<cache key>-<workspace hash>``, ``~<attempt>`` after the first: the same
    run in another workspace is another run."""
    where = hashlib.sha256(str(workspace).encode()).hexdigest()[:8]
    return f"semprobe-{kind}-{key}-{where}" + (f"~{attempt}" if attempt > 1 else "")


@dataclass(eq=False)  # a unit is itself, whatever its fields
class Unit:
    """One submitted piece of work and the flow runs (attempts) it took."""

    kind: str                      # "point", "train" or "checkpoint": part of the idempotency key
    label: str                     # "train.seed=3", "checkpoint-6"
    key: str                       # the unit's cache key
    deployment: str
    parameters: dict
    attempt: int = 0
    state: str = "pending"         # submitted, finished, failed
    flow_run: str | None = None
    flow_runs: list[str] = field(default_factory=list)
    journal: record.Journal | None = None
    detail: str = ""
    found_cancelled: bool = False  # its run was Cancelled or Cancelling when submitted (an earlier submission's)

    def summary(self) -> dict:
        where = self.journal.where if self.journal else {}
        return {"unit": self.label, "key": self.key, "state": self.state, "attempt": self.attempt,
                "flow_run": self.flow_run, "flow_runs": self.flow_runs, "worker": where.get("worker"),
                **({"detail": self.detail} if self.detail else {})}


class UnitRuns:
    """Submits units as deployment runs and follows them to a finished journal (or failure)."""

    def __init__(self, ws: Workspace, name: str, max_attempts: int, tags: tuple[str, ...] = ()):
        self.ws, self.name, self.max_attempts, self.tags = ws, name, max_attempts, list(tags)
        self.units: list[Unit] = []

    def submit(self, unit: Unit) -> Unit:
        from prefect.deployments import run_deployment

        unit.attempt += 1
        name = f"{self.name}-{unit.label}".replace(" ", "-")[:100]
        fr = run_deployment(
            unit.deployment, timeout=0, parameters=unit.parameters,
            idempotency_key=idempotency_key(unit.kind, unit.key, str(self.ws.root), unit.attempt),
            flow_run_name=name + (f"-try{unit.attempt}" if unit.attempt > 1 else ""), tags=self.tags)
        unit.flow_run, unit.state = str(fr.id), "submitted"
        # Cancelling too: a person's cancel of the earlier submission's run, still being carried out
        # by its worker, is not one made while this flow follows the run
        unit.found_cancelled = fr.state is not None and fr.state.type in (StateType.CANCELLED, StateType.CANCELLING)
        if unit.flow_run not in unit.flow_runs:
            unit.flow_runs.append(unit.flow_run)
        if not any(u is unit for u in self.units):
            self.units.append(unit)
        return unit

    def poll(self, client) -> list[Unit]:
        """Units whose run finished since the last poll (their journal read and complete)."""
        done = []
        for u in [u for u in self.units if u.state == "submitted"]:
            fr = client.read_flow_run(u.flow_run)
            if not fr.state or not fr.state.is_final():
                continue
            journal = journal_if_complete(self.ws, u.flow_run) if fr.state.type == StateType.COMPLETED else None
            if journal is not None:
                u.state, u.journal = "finished", journal
                done.append(u)
            elif fr.state.type == StateType.CANCELLED and not u.found_cancelled:
                # cancelled while this flow followed it (the UI, `prefect flow-run cancel`): what a person
                # asked for, not a crash to retry. Submitted again, the flow finds it Cancelled and runs it
                u.state = "failed"
                u.detail = (f"{fr.state.name}: flow run {fr.name} was cancelled, so it was not resubmitted; "
                            "submit again to run it")
            elif u.attempt < self.max_attempts:
                get_run_logger().warning("%s: flow run %s ended %s; submitting attempt %d",
                                         u.label, fr.name, fr.state.name, u.attempt + 1)
                self.submit(u)
            else:  # a resubmission would find these same runs by their keys, and fail again at once
                u.state = "failed"
                u.detail = (f"{fr.state.name}: {fr.state.message} (attempt {u.attempt} of {self.max_attempts}; "
                            "submitted again, it finds these same failed runs: fix the cause, then submit with "
                            f"max_attempts above {u.attempt}, e.g. semprobe sweep --max-attempts {u.attempt + 1})")
        return done

    def failed(self) -> list[Unit]:
        return [u for u in self.units if u.state == "failed"]


class Recordings:
    """What finished runs left to record (each a callable that records one run's journal, and
    goes on where it stopped when called again: ``record.Replay``), written in the order they
    finished. A results file another process holds (a notebook's open connection) does not fail
    the flow that follows the runs: the recording it stopped stays first and is tried again at the
    next ``write``, while the runs go on; ``write_all`` waits for the file at the end."""

    def __init__(self, log):
        self.log, self.queue, self.held = log, [], HeldWarning(log.warning)

    def add(self, recording) -> None:
        self.queue.append(recording)

    def write(self, final: bool = False) -> bool:
        """Record what can be; True when nothing is left. ``final``: a held file raises."""
        while self.queue:
            try:
                self.queue[0]()
            except DatabaseLockedError as e:
                if final:
                    raise
                self.held("%s; %d finished run(s) are recorded once it is free, the others go on", e, len(self.queue))
                return False
            self.queue.pop(0)
        self.held.clear()
        return True

    def write_on_stop(self, later: str) -> None:
        """On the stop path: record what can be now, once; a held file or another error is
        logged, not raised (it must not hide the stop), and what is left is said, with ``later``
        (where it gets recorded)."""
        try:
            self.write()
        except Exception as e:
            self.log.warning("could not record the finished runs: %s", e)
        if self.queue:
            self.log.warning("%d finished run(s) not recorded: %s", len(self.queue), later)

    def write_all(self) -> None:
        """Every recording left, waiting for a held results file up to the pipeline's limit."""
        until_recorded(self.log, lambda: self.write(final=True))
