"""``semprobe`` as the pipeline tests call it: runs in a subprocess (against a test module's own
Prefect server once one runs, else the temporary server ``make run`` uses), the commands that
start no flow in this process."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from flows.cli import main
from distributed_cluster import http_ok, wait_for
from environment import environment_kept

SHARED_SERVER: dict[str, str] = {}  # PREFECT_API_URL of the module's own server, once it runs


def temporary_server_env() -> dict[str, str]:
    """The environment of a run that starts Prefect's temporary server, as ``make run`` does."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def semprobe(ws: Path, *args, check=True, temporary_server=False, **kw) -> subprocess.CompletedProcess:
    """``semprobe run`` in a subprocess, against the module's Prefect server unless
    ``temporary_server`` (each run's own temporary server: ~13 s more a run on a 2-core Zen 1).
    The commands that start no flow (status, sql, export, report) run the same ``main`` in this
    process: a subprocess spent ~9 s importing torch, prefect and sklearn on the Zen 1."""
    if args[0] != "run":
        return _in_process(["--workspace", str(ws), *args], check)
    cmd = [sys.executable, "-m", "flows.cli", "--workspace", str(ws), *args]
    env = temporary_server_env()
    if not temporary_server and "url" in SHARED_SERVER:
        url = SHARED_SERVER["url"]
        wait_for("the Prefect server", lambda: http_ok(url + "/health"), 120)
        env["PREFECT_API_URL"] = url
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _in_process(argv: list[str], check: bool) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    # what main() configures for its workspace must not reach a later run's subprocess in the same test
    with environment_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if check and code != 0:
        raise AssertionError(f"semprobe {argv} failed ({code}):\n{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}")
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
