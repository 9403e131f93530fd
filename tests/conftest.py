"""What every test shares: the process environment is given back as it was after each test."""

from __future__ import annotations

import pytest

from environment import environment_kept


@pytest.fixture(autouse=True)
def environment_restored():
    """A test that runs the CLI in-process exports what a run's subprocesses need (PREFECT_HOME,
    MLFLOW_TRACKING_URI, the SEMPROBE_* settings) into ``os.environ``; left there, a later test's
    subprocess ran against that test's workspace and stores. (A module-scoped fixture sets up
    before this snapshot, so it must undo its own changes.)"""
    with environment_kept():
        yield
