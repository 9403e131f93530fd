#!/usr/bin/env bash
# Create (or update) what GPU workers and sweeps need on a Prefect server, then deploy.
# Idempotent: run it again after changing prefect.yaml or a limit.
#
#   PREFECT_API_URL   the server, e.g. http://prefect-host:4200/api          (required)
#   POOL, QUEUE       work pool and queue names                            (default: gpu, gpu)
#   POOL_SLOTS        flow runs at once in the whole pool, e.g. the number of GPUs
#                     (default: unset = unlimited; each worker is limited to WORKER_SLOTS
#                     runs by worker.sh, one GPU slot per worker by default)
#   ZOMBIE_WITHIN     seconds without a heartbeat before a run counts as crashed (default 90)
#   SEMPROBE_RESULTS_URL  remote Prefect result storage (e.g. s3://bucket/semprobe/results):
#                     saved as the block remote-file-system/semprobe-results (default: unset)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?export PREFECT_API_URL=http://HOST:4200/api (see deployments/README.md)}"
POOL=${POOL:-gpu}
QUEUE=${QUEUE:-gpu}
ZOMBIE_WITHIN=${ZOMBIE_WITHIN:-90}
PY=${PYTHON:-python}

prefect --no-prompt work-pool create "$POOL" --type process --overwrite
prefect --no-prompt work-queue create "$QUEUE" --pool "$POOL" 2>/dev/null \
  || echo "work queue $QUEUE already exists in pool $POOL"
if [ -n "${POOL_SLOTS:-}" ]; then
  prefect --no-prompt work-pool set-concurrency-limit "$POOL" "$POOL_SLOTS"
else
  prefect --no-prompt work-pool clear-concurrency-limit "$POOL"
fi

# Zombie detection: a run whose worker died is marked Crashed, and the sweep resubmits it.
"$PY" - "$ZOMBIE_WITHIN" <<'PYTHON'
import sys

import yaml
from prefect.automations import Automation

spec = yaml.safe_load(open("deployments/zombies.yaml"))
spec["trigger"]["within"] = int(sys.argv[1])
try:
    Automation.read(name=spec["name"]).delete()
except ValueError:
    pass
print(f"automation {spec['name']!r}: {Automation.model_validate(spec).create().id}")
PYTHON

if [ -n "${SEMPROBE_RESULTS_URL:-}" ]; then  # the block that worker.sh points Prefect at
  "$PY" -c 'from tasks.result_storage import save_results_block as s; print("result storage:", s() or "a local path")'
fi

prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
