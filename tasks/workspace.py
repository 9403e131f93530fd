"""The workspace: one folder holding artifacts, results, MLflow and Prefect state.

With nothing configured everything lives under ``./.semprobe/``. ``configure_environment``
must run before prefect is imported, because Prefect reads its settings at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.store import ArtifactStore

DEFAULT_ROOT = ".semprobe"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Workspace":
        return cls(Path(root or os.environ.get("SEMPROBE_WORKSPACE", DEFAULT_ROOT)).resolve())

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root / "artifacts")

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


def configure_environment(root: str | os.PathLike | None = None) -> Workspace:
    """Point Prefect and MLflow at the workspace (unless the user configured them) and turn
    telemetry off. Call before importing prefect."""
    ws = Workspace.at(root)
    ws.root.mkdir(parents=True, exist_ok=True)
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
