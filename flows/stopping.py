"""How a flow stops on SIGTERM (a scheduler ending a job) or Ctrl-C: it tells a stop from a failed
stage, records what finished and leaves at once, with the signal's exit code.

A stop is known by the signal, not by the exception it raises: Prefect turns SIGTERM into a
``TerminationSignal`` raised wherever the flow's thread is, and code running there may catch it
and raise another. DuckDB does: a SIGTERM during a write came out of ``execute`` as
``RuntimeError('Query interrupted')``, so the flow took the stop for a failed stage, waited for
the evaluations and grids in flight (minutes) and left with exit code 1, after the scheduler had
given up on it. Worse, DuckDB may drop the exception and finish the query (about one SIGTERM in
ten during a query of seconds, here): the stop was lost, and the run went on until the scheduler
killed it. ``note_signals`` notes each signal before the handler in place acts on it, and a flow's
waits call ``stop_if_signalled``, which raises for a noted stop that did not reach the flow.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the stop signals received during the running flow, in order
_quiet = threading.Event()  # set by ``stopping``: a signal is only noted


def note_signals():
    """From now on each SIGTERM or SIGINT is noted (``termination_code``) and then handled as
    before (Prefect's bridge raises ``TerminationSignal``; Python's default, ``KeyboardInterrupt``).
    A flow calls it first thing and the returned function as it ends, which puts the handlers
    back. Outside the main thread no handler can be set: only the exception's type tells a stop.
    A signal the process ignores (SIGINT in a job a script started with ``&``) stays ignored.

    Prefect's cancellation handshake (a deployed run cancelled in the UI) looks for its own
    handler and, finding this one, falls back to the runner's SIGTERM: the flow stops the same."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _received.clear()
    _quiet.clear()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def note(signum, frame):
        _received.append(signum)
        if not _quiet.is_set():
            _handle(previous[signum], signum, frame)

    noted = [s for s in STOP_SIGNALS if previous[s] not in (signal.SIG_IGN, None)]
    for s in noted:
        signal.signal(s, note)

    def restore() -> None:
        for s in noted:
            if signal.getsignal(s) is note:  # one set since (a nested flow's) is left alone
                signal.signal(s, previous[s])
        _received.clear()
        _quiet.clear()

    return restore


def stopping() -> None:
    """The flow's stop path has begun (a signal, or a failed stage): from now on a signal is only
    noted, so a second SIGTERM or Ctrl-C cannot break off the recording of what finished. The stop
    path asks ``stop_noted`` where it would wait, and ``termination_code`` at its end."""
    _quiet.set()


# How long a stopping flow waits for training to write its stop checkpoint: one step and a save,
# which for the paper preset (weights and Adam moments, a few GB) can take minutes on a slow disk.
# A scheduler that kills sooner bounds it anyway; a save cut short leaves the previous checkpoint.
TRAINING_STOP_WAIT_S = 600.0


def wait_for_training(training, log) -> None:
    """After ``tasks.training.STOP`` is set: wait for ``training`` (a future, or None) to write
    its stop checkpoint and end, at most ``TRAINING_STOP_WAIT_S``; say so in ``log`` when it
    did not, as the steps since its last checkpoint are then lost."""
    if training is None:
        return
    training.wait(timeout=TRAINING_STOP_WAIT_S)
    try:
        ended = training.state.is_final()
    except Exception:  # its state unreadable on the way out (the API gone): say nothing rather than guess
        return
    if not ended:
        log.warning("training did not stop within %g s: a rerun resumes from its last checkpoint, "
                    "the steps since are lost", TRAINING_STOP_WAIT_S)


def stop_noted() -> bool:
    """Whether a stop signal was noted during the running flow."""
    return bool(_received)


class Stopped(BaseException):
    """A noted stop signal whose own exception was caught on its way (``stop_if_signalled``)."""

    def __init__(self, signum: int):
        self.signal = signum
        super().__init__(f"stopped by signal {signum} ({signal.Signals(signum).name})")


def stop_if_signalled() -> None:
    """Raise ``Stopped`` if a stop signal was noted: the flow's polls call it, so a stop whose
    exception code caught and dropped (DuckDB) still stops the flow, at its next poll."""
    if _received:
        raise Stopped(_received[0])


def _handle(handler, signum: int, frame) -> None:
    """What ``handler`` (a ``signal.getsignal`` value) would have done with the signal."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default action (end the process): as if never caught
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def termination_code(exc: BaseException) -> int | None:
    """The exit code of a flow stopped by SIGTERM or Ctrl-C (128 + the signal), whatever ``exc``
    the stop came out as; None when ``exc`` is a failure of its own."""
    if _received:
        return 128 + int(_received[0])
    if isinstance(exc, KeyboardInterrupt):
        return 130
    signum = getattr(exc, "signal", None)
    return 128 + int(signum) if type(exc).__name__ == "TerminationSignal" and signum else None


def exit_if_stopped(exc: BaseException) -> None:
    """Where ``exc`` (or a signal noted during the stop path) is a stop, leave at once with its
    code (``exit_now``): Prefect's task runner would otherwise wait for every task in flight."""
    code = termination_code(exc)
    if code is not None:
        exit_now(code)


def exit_now(code: int) -> None:
    """Leave the process at once, without waiting for task threads still in flight (evaluations,
    probe grids): their artifacts are written atomically, so an unfinished one simply does not
    exist yet, and training has already checkpointed. atexit handlers still run: they stop
    Prefect's temporary server, which would otherwise be left behind; any child process still
    there after them (a server whose hook was not yet registered) is sent SIGTERM."""
    atexit._run_exitfuncs()
    _stop_children()
    os._exit(code)


def _stop_children() -> None:
    """SIGTERM this process's child processes: Prefect's temporary server when a signal came
    before its exit hook was registered (seen when SIGTERM lands early in a run). Linux /proc."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == me:
                os.kill(int(stat.parent.name), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
