#!/usr/bin/env bash
# Start one process worker on the gpu pool, pinned to one device. One per GPU on a machine:
#
#   deployments/worker.sh 0 &   deployments/worker.sh 1 &   ...
#
#   $1 / GPU            device index for CUDA_VISIBLE_DEVICES (default: leave it unset)
#   PREFECT_API_URL     the server (required)
#   SEMPROBE_REPO       this machine's checkout (default: the one holding this script)
#   WORKER_SLOTS        flow runs at once on this worker (default 1: one GPU slot per worker)
#   POOL, QUEUE         default gpu, gpu
#   SEMPROBE_ARTIFACTS, SEMPROBE_ARTIFACT_CACHE, SEMPROBE_RESULTS_URL
#                       shared storage (deployments/README.md); the flow runs inherit them
#   PYTHON              the interpreter with semprobe installed (default: python)
# Extra arguments after the device index go to `prefect worker start`.
set -euo pipefail
: "${PREFECT_API_URL:?export PREFECT_API_URL=http://HOST:4200/api}"
GPU=${1:-${GPU:-}}
shift || true
export SEMPROBE_REPO=${SEMPROBE_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
if [ -n "$GPU" ]; then
  export CUDA_VISIBLE_DEVICES=$GPU   # the flow run inherits the worker's environment
fi
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}  # zombie detection
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
if [ -n "${SEMPROBE_RESULTS_URL:-}" ]; then  # Prefect reads its result settings at import
  RESULT_EXPORTS=$(cd "$SEMPROBE_REPO" && "${PYTHON:-python}" -m tasks.result_storage)  # fails on a bad URL
  eval "$RESULT_EXPORTS"
fi
NAME=${WORKER_NAME:-$(hostname)-gpu${GPU:-any}}
exec prefect worker start --type process --pool "${POOL:-gpu}" --work-queue "${QUEUE:-gpu}" \
  --limit "${WORKER_SLOTS:-1}" --name "$NAME" "$@"
