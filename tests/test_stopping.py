"""A flow stopped by SIGTERM or Ctrl-C knows it was stopped, whatever became of the exception the
signal raised. DuckDB turns it, raised in a running query, into ``RuntimeError('Query
interrupted')`` (the pipeline took that stop for a failed stage: it waited for the tasks in
flight, past a scheduler's grace period, and left with exit code 1), and now and then drops it
and finishes the query (the stop was lost)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a process of its own (the signal goes to the whole process): Prefect's own SIGTERM bridge,
# as a flow run has it. "duckdb": the signal lands in a query of seconds, then the flow's polls
# (``stop_if_signalled``) follow. "dropped": code the signal lands in catches its exception and
# drops it, as DuckDB now and then does.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time, duckdb
    from prefect.utilities.engine import capture_sigterm
    from flows.stopping import note_signals, stop_if_signalled, termination_code

    signum, noted, where, rows = int(sys.argv[1]), sys.argv[2] == "noted", sys.argv[3], int(sys.argv[4])
    # Ctrl-C as in a terminal: a test run started with `&` by a shell without job control hands
    # its processes SIGINT ignored, which note_signals rightly leaves ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sent = []
    def send():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signum)
    sigint = signal.getsignal(signal.SIGINT)
    with capture_sigterm():
        bridge = signal.getsignal(signal.SIGTERM)
        unnote = note_signals() if noted else (lambda: None)
        out = {"raised": None}
        try:
            try:
                threading.Timer(0.2, send).start()
                if where == "duckdb":
                    duckdb.connect().execute(
                        f"SELECT sum(a.range * b.range) FROM range(100000) a, range({rows}) b").fetchall()
                else:
                    time.sleep(5)
            except BaseException as exc:
                if where == "duckdb":
                    raise
            finally:
                out["in_query"] = bool(sent)
            for _ in range(40):  # the flow's polls
                if noted:
                    stop_if_signalled()
                time.sleep(0.05)
        except BaseException as exc:
            out.update(raised=type(exc).__name__, code=termination_code(exc))
        finally:
            unnote()
        out["handlers_back"] = signal.getsignal(signal.SIGTERM) is bridge and signal.getsignal(signal.SIGINT) is sigint
    print(json.dumps(out))
""")


def _stopped(signum: int, noted: bool, where: str) -> dict:
    """The script's outcome. Its query (~2.3 s on a 2-core Zen 1) is made 10x longer, up to
    twice, where it ended before the signal came (a machine with many fast cores)."""
    for rows in (3000, 30000, 300000):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(signum), "noted" if noted else "plain", where,
                               str(rows)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if out["in_query"]:
            return out
    raise AssertionError(f"the signal came after the query, even 100x longer: make it longer ({out})")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("where", ["duckdb", "dropped"])
def test_a_signal_is_a_stop_whatever_became_of_its_exception(signum, code, where):
    out = _stopped(signum, noted=True, where=where)
    assert out["raised"] is not None and out["code"] == code, out
    assert out["handlers_back"], "the flow's handlers were not put back"


def test_without_the_note_the_stop_looks_like_a_failure_or_is_lost():
    """Why the note is needed: DuckDB hides the signal's exception (or drops it), and only the
    note tells."""
    out = _stopped(signal.SIGTERM, noted=False, where="duckdb")
    assert out["raised"] in ("RuntimeError", None), f"DuckDB no longer hides the signal's exception: {out}"
    assert out.get("code") is None, out


# The stop path and an ignored signal, in a process of their own too.
PHASES = textwrap.dedent("""
    import json, os, signal, time
    from prefect.utilities.engine import capture_sigterm
    from flows.stopping import note_signals, stop_if_signalled, stop_noted, stopping, termination_code

    out = {}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell gives a job it starts with `&`
    with capture_sigterm():
        bridge = signal.getsignal(signal.SIGTERM)
        unnote = note_signals()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        stop_if_signalled()  # an ignored signal is no stop
        out["ignored_is_no_stop"] = not stop_noted()
        stopping()  # the stop path has begun: a signal is only noted
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        out["second_signal_noted"] = stop_noted() and termination_code(RuntimeError("a failed stage")) == 143
        unnote()
        out["handlers_back"] = (signal.getsignal(signal.SIGTERM) is bridge
                                and signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        out["note_cleared"] = not stop_noted()
    print(json.dumps(out))
""")


def test_an_ignored_signal_is_no_stop_and_the_stop_path_only_notes_a_second_one():
    proc = subprocess.run([sys.executable, "-c", PHASES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"ignored_is_no_stop": True, "second_signal_noted": True, "handlers_back": True,
                   "note_cleared": True}, out


def test_a_training_that_outlasts_the_stop_wait_is_said_to_lose_its_steps(monkeypatch, caplog):
    """The stop path waits for training's stop checkpoint at most ``TRAINING_STOP_WAIT_S`` and
    then says what is lost; a training that ends in time is waited for without a word."""
    import logging
    import threading

    from flows import stopping

    class Training:  # a thread standing in for the task future: ``wait(timeout)`` and ``state`` as Prefect's
        def __init__(self, seconds):
            self.thread = threading.Thread(target=threading.Event().wait, args=(seconds,))
            self.thread.start()

        def wait(self, timeout=None):
            self.thread.join(timeout)

        @property
        def state(self):
            return type("State", (), {"is_final": lambda _: not self.thread.is_alive()})()

    monkeypatch.setattr(stopping, "TRAINING_STOP_WAIT_S", 0.2)
    log = logging.getLogger("stop-wait")
    with caplog.at_level(logging.WARNING, "stop-wait"):
        stopping.wait_for_training(Training(0.01), log)
        stopping.wait_for_training(None, log)
        assert not caplog.records
        stopping.wait_for_training(Training(1.0), log)
    assert [r.getMessage() for r in caplog.records] == [
        "training did not stop within 0.2 s: a rerun resumes from its last checkpoint, the steps since are lost"]
