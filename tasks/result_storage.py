"""Where Prefect persists flow and task results: ``SEMPROBE_RESULTS_URL`` (an fsspec URL).

Unset (the default) changes nothing: the flows do not persist Prefect results at all, because
every stage hands back a small manifest and its data lives in the artifact store; the sweep
reads journals, not Prefect results. Set it to keep results (e.g. to inspect a task's return
value from the UI, or to retry a flow run from its persisted results on another worker):

* a path or ``file://`` URL: ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` (a shared mount on a cluster);
* any other fsspec URL (``s3://bucket/semprobe/results``): Prefect's own ``RemoteFileSystem``
  block, saved on the server as ``remote-file-system/semprobe-results`` by
  :func:`save_results_block` and named by ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``.

Either way ``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true``. Prefect reads these settings at import,
so they are environment variables set before prefect is imported (``configure_environment``,
``deployments/worker.sh`` via ``python -m tasks.result_storage``); a variable the user exported
wins. This module imports prefect only inside :func:`save_results_block`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tasks.store import is_remote_url

RESULTS_URL_ENV = "SEMPROBE_RESULTS_URL"
BLOCK_NAME = "semprobe-results"
BLOCK_SLUG = f"remote-file-system/{BLOCK_NAME}"


def result_settings(url: str | None) -> dict[str, str]:
    """The Prefect settings (environment variables) that persist results at ``url``."""
    if not url:
        return {}
    if is_remote_url(url):
        from tasks.remote_store import filesystem_for

        filesystem_for(url, "Prefect result storage")  # unknown protocol / missing package: say so now
        return {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": BLOCK_SLUG}
    path = url[len("file://"):] if url.startswith("file://") else url
    return {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(Path(path).expanduser().absolute())}


def save_results_block(url: str | None = None) -> str | None:
    """Save (or update) the ``RemoteFileSystem`` block for a remote results URL on the Prefect
    server in use; its slug, or None when the URL is local or unset (nothing to save)."""
    url = url or os.environ.get(RESULTS_URL_ENV)
    if not url or not is_remote_url(url):
        return None
    from prefect.filesystems import RemoteFileSystem

    RemoteFileSystem(basepath=url).save(BLOCK_NAME, overwrite=True)
    return BLOCK_SLUG


if __name__ == "__main__":  # `eval "$(python -m tasks.result_storage)"`: export the settings
    for k, v in result_settings(os.environ.get(RESULTS_URL_ENV)).items():
        if k not in os.environ:
            print(f"export {k}={shlex.quote(v)}")
    sys.exit(0)
