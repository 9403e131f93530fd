"""The process environment given back as it was: after each test (conftest) and after each
in-process CLI call (test_pipeline), so what ``main()`` exports for one workspace (PREFECT_HOME,
MLFLOW_TRACKING_URI, the SEMPROBE_* settings) never reaches a later subprocess."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environment_kept():
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)
