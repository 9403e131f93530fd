#!/usr/bin/env bash
# One prepared GPU session (device tool): paper-shape throughput, then the issue-7 levers
# (packing, training lengths, batch, Muon) on the cpu-size model, two at a time, each logging
# emergence against tokens seen. Budget per pair of recipes: BUDGET seconds.
# Usage: OUT=/some/dir bash benchmarks/gpu_session.sh [budget_s]     (TINY=1: CPU check)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET=${1:-300}
PY=${PY:-python3}
TINY_FLAG=""; [ "${TINY:-0}" = 1 ] && TINY_FLAG="--tiny"
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null

# 1. the paper preset shape: tokens/s, MFU, peak memory (alone on the GPU)
timeout 240 $PY benchmarks/gpu_check.py --out "$OUT/paper.jsonl" --paper-steps 60 --budget 0 --n-train 20000 $TINY_FLAG \
  > "$OUT/paper.log" 2>&1 || echo "paper check failed: $(tail -3 "$OUT/paper.log")"
tail -2 "$OUT/paper.jsonl" 2>/dev/null

# 2. shared data (paper lengths 6..10, and all lengths 1..10 for the length lever), then the
#    lever recipes two at a time (four at once left the evaluations CPU-bound last time).
#    All at ~64k tokens per step, lr 2e-3, the schedule of the run that emerged (RESULTS.md).
$PY -c "
import karel, os
tiny = '$TINY_FLAG' != ''
n = 2000 if tiny else 1_000_000
for name, lengths in (('d610', range(6, 11)), ('d110', range(1, 11))):
    karel.generate_dataset(karel.DataConfig(n_train_generated=n, n_val=500, n_test=2000, train_lengths=tuple(lengths)),
                           '/tmp/' + name, workers=min(16, os.cpu_count()), overwrite=True)
print('data ready')"
run() {  # tag, dataset, then --model/--train overrides
  local tag=$1 data=$2; shift 2
  OMP_NUM_THREADS=6 $PY benchmarks/gpu_emergence.py --data "$data" --out "$OUT/emergence.jsonl" --tag "$tag" \
    --budget "$BUDGET" --n-eval 1000 --eval-every-s 25 --probe-features direction,facing_wall --fixed-steps \
    --train lr=2e-3 --train steps=6000 --train warmup_steps=200 --train weight_decay=0.1 $TINY_FLAG "$@" \
    > "$OUT/$tag.log" 2>&1 || echo "$tag failed: $(tail -3 "$OUT/$tag.log")"
}
SAMPLES="--train packing=samples --train block_len=386 --train batch_size=166"
run blocks-b64 /tmp/d610 --train batch_size=64 &
run samples-b166 /tmp/d610 $SAMPLES &
wait
run samples-len1-10 /tmp/d110 $SAMPLES &
run samples-len1-10-muon /tmp/d110 $SAMPLES --train optimizer=muon &
wait
grep '"part": "done"' "$OUT/emergence.jsonl"
