#!/usr/bin/env bash
# One prepared GPU session (device tool): paper-shape throughput, then several small-model
# recipes trained side by side on the one GPU, each logging emergence against tokens seen.
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

# 2. shared data, then the recipes side by side
DATA=/tmp/emergence-data
$PY -c "
import karel, os, sys
tiny = '$TINY_FLAG' != ''
karel.generate_dataset(karel.DataConfig(n_train_generated=2000 if tiny else 1_000_000, n_val=500, n_test=2000),
                       '$DATA', workers=min(16, os.cpu_count()), overwrite=True)
print('data ready')"
run() {  # tag, then --model/--train overrides
  local tag=$1; shift
  $PY benchmarks/gpu_emergence.py --data $DATA --out "$OUT/emergence.jsonl" --tag "$tag" --budget "$BUDGET" \
    --n-eval 1000 --eval-every-s 25 $TINY_FLAG "$@" > "$OUT/$tag.log" 2>&1 || echo "$tag failed: $(tail -3 "$OUT/$tag.log")"
}
run b64-lr2e-3 --train batch_size=64 --train lr=2e-3 &
run b64-lr5e-3 --train batch_size=64 --train lr=5e-3 &
run wide8x512-b64 --model n_layer=8 --model d_model=512 --model d_mlp=2048 --train batch_size=64 --train lr=1e-3 &
run b16-lr1e-3 --train batch_size=16 --train lr=1e-3 &
wait
grep '"part": "done"' "$OUT/emergence.jsonl"
