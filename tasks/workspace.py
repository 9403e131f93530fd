"""The workspace: one folder holding artifacts, results, MLflow and Prefect state.

With nothing configured everything lives under ``./.semprobe/``. ``configure_environment``
must run before prefect is imported, because Prefect reads its settings at import time.

Shared storage on a cluster (every worker must see the same cache):

* ``SEMPROBE_ARTIFACTS``: the artifact store, an fsspec URL or path (default
  ``<workspace>/artifacts``), e.g. ``s3://bucket/semprobe/artifacts`` or an NFS path. A remote
  URL keeps verified local copies under ``SEMPROBE_ARTIFACT_CACHE`` (default
  ``<workspace>/artifact-cache``).
* ``SEMPROBE_RESULTS_URL``: Prefect result storage (default: results are not persisted), see
  :mod:`tasks.result_storage`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.result_storage import RESULTS_URL_ENV, result_settings
from tasks.store import ArtifactStore

DEFAULT_ROOT = ".semprobe"
ARTIFACTS_ENV = "SEMPROBE_ARTIFACTS"
ARTIFACT_CACHE_ENV = "SEMPROBE_ARTIFACT_CACHE"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Workspace":
        return cls(Path(root or os.environ.get("SEMPROBE_WORKSPACE", DEFAULT_ROOT)).resolve())

    @property
    def artifacts_url(self) -> str:
        """Where the artifact store lives: $SEMPROBE_ARTIFACTS, else ``<root>/artifacts``."""
        return os.environ.get(ARTIFACTS_ENV) or str(self.root / "artifacts")

    @property
    def artifact_cache(self) -> Path:
        """Local copies of a remote store's artifacts (unused for a local store)."""
        return Path(os.environ.get(ARTIFACT_CACHE_ENV) or self.root / "artifact-cache").absolute()

    @property
    def store(self) -> ArtifactStore:
        """The artifact store (ValueError naming the URL for an unknown protocol)."""
        return ArtifactStore(self.artifacts_url, cache_dir=self.artifact_cache)

    @property
    def db_path(self) -> Path:
        return self.root / "results.duckdb"

    @property
    def work_dir(self) -> Path:
        """Resumable work in progress (training checkpoints before they are published)."""
        return self.root / "work"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


def configure_environment(root: str | os.PathLike | None = None, artifacts: str | None = None,
                          results_url: str | None = None, create: bool | None = True) -> Workspace:
    """Point Prefect and MLflow at the workspace (unless the user configured them) and turn
    telemetry off. ``artifacts`` / ``results_url`` override $SEMPROBE_ARTIFACTS /
    $SEMPROBE_RESULTS_URL; both are checked here (a bad URL fails before any work). ``create``:
    True makes the workspace folder; False: one that does not exist raises FileNotFoundError; None
    (a command that writes nothing there): a missing one is left missing, and Prefect's home, which
    importing prefect makes, goes to a temporary folder removed at exit. Call before importing
    prefect."""
    ws = Workspace.at(root)
    if artifacts:
        os.environ[ARTIFACTS_ENV] = artifacts
    if results_url:
        os.environ[RESULTS_URL_ENV] = results_url
    ws.store  # noqa: B018 -- fail fast on an unknown protocol or a missing fsspec package
    for k, v in result_settings(os.environ.get(RESULTS_URL_ENV)).items():
        os.environ.setdefault(k, v)
    if create:
        ws.root.mkdir(parents=True, exist_ok=True)
    elif not ws.root.is_dir():
        if create is False:  # a command that reads one (cli.READS_WORKSPACE)
            raise FileNotFoundError(f"no workspace at {ws.root} (`semprobe run` makes one; is --workspace or "
                                    "$SEMPROBE_WORKSPACE mistyped?)")
        if "PREFECT_HOME" not in os.environ:  # the user's own is kept, as below
            os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="semprobe-prefect-")
            atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
    os.environ["SEMPROBE_WORKSPACE"] = str(ws.root)
    os.environ.setdefault("PREFECT_HOME", str(ws.root / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return ws
