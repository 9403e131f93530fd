"""A flow stopped by SIGTERM or Ctrl-C knows it was stopped, whatever exception the stop came out
as: DuckDB turns the exception a signal raises in a running query into
``RuntimeError('Query interrupted')``, and the pipeline took such a stop for a failed stage (it
waited for the tasks in flight, past a scheduler's grace period, and left with exit code 1)."""

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
# as a flow run has it, around a DuckDB query that runs until the signal lands.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, duckdb
    from prefect.utilities.engine import capture_sigterm
    from flows.stopping import note_signals, termination_code

    signum, noted = int(sys.argv[1]), sys.argv[2] == "noted"
    with capture_sigterm():
        bridge = signal.getsignal(signal.SIGTERM)
        unnote = note_signals() if noted else (lambda: None)
        try:
            threading.Timer(0.5, os.kill, (os.getpid(), signum)).start()
            duckdb.connect().execute(
                "SELECT sum(a.range * b.range) FROM range(10000000) a, range(10000000) b").fetchall()
            out = {"raised": None}
        except BaseException as exc:
            out = {"raised": type(exc).__name__, "code": termination_code(exc)}
        finally:
            unnote()
        out["handlers_back"] = signal.getsignal(signal.SIGTERM) is bridge
    print(json.dumps(out))
""")


def _stopped_query(signum: int, noted: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(signum), "noted" if noted else "plain"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_duckdb_query_is_a_stop(signum, code):
    out = _stopped_query(signum, noted=True)
    assert out["raised"] is not None, "the query ended before the signal: make it longer"
    assert out["code"] == code, out
    assert out["handlers_back"], "the flow's handlers were not put back"


def test_without_the_note_the_stop_looks_like_a_failure():
    """Why the note is needed: DuckDB hides the signal's exception, and only the note tells."""
    out = _stopped_query(signal.SIGTERM, noted=False)
    assert out["raised"] == "RuntimeError", f"DuckDB no longer hides the signal's exception: {out}"
    assert out["code"] is None, out
