#!/usr/bin/env bash
# One prepared GPU session (device tool), issue 7: how many tokens the `cpu` preset's recipe
# (Muon lr 0.01, 21 whole-sample rows of lengths 1..10) needs to go past its 60-minute CPU run,
# which sizes a `cpu-long` preset of the same recipe. Three runs side by side for BUDGET seconds,
# each with its schedule sized to end with the budget, logging accuracy, diversity and quick
# direction / facing-wall probes against tokens seen:
#   cpu-recipe       the preset exactly, as many steps as fit
#   cpu-recipe-b166  the same at 8x the rows per step (does Muon keep its tokens at a GPU batch?)
#   cpu-long-recipe  the `cpu-long` model (six layers), as many steps as fit: where its probes
#                    rise, against the 4-layer curve (on 2 CPU cores it needs ~5,000 steps, 40M
#                    tokens, for 70% on lengths 6..10)
# PAPER=1 first runs the paper-shape throughput check (tokens/s, MFU, peak memory; ~1-4 min).
# PROBES=1 first trains issue 4's 135-probe grid (2 epochs, synthetic states) on the GPU
# (probe.device=cuda; ~1 min?), to read against the CPU figure in BENCHMARKS.md.
# Usage: OUT=/some/dir bash benchmarks/gpu_session.sh [budget_s]     (TINY=1: CPU check)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET=${1:-420}
PY=${PY:-python3}
TINY_FLAG=""; [ "${TINY:-0}" = 1 ] && TINY_FLAG="--tiny"
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null

if [ "${PAPER:-0}" = 1 ]; then
  timeout 240 $PY benchmarks/gpu_check.py --out "$OUT/paper.jsonl" --paper-steps 60 --budget 0 --n-train 20000 $TINY_FLAG \
    > "$OUT/paper.log" 2>&1 || echo "paper check failed: $(tail -3 "$OUT/paper.log")"
  tail -2 "$OUT/paper.jsonl" 2>/dev/null
fi

if [ "${PROBES:-0}" = 1 ]; then
  DEV=cuda; PROGS=17800; [ -n "$TINY_FLAG" ] && DEV=auto && PROGS=300
  timeout 150 $PY benchmarks/bench_probes.py --only grid --epochs 2 --device $DEV --programs $PROGS \
    > "$OUT/probes.log" 2>&1 || echo "probe grid failed: $(tail -3 "$OUT/probes.log")"
  tail -3 "$OUT/probes.log"
fi

# the cpu preset's data (lengths 1..10), enough programs that neither run repeats one
$PY -c "
import karel, os
n = 2000 if '$TINY_FLAG' else 1_000_000
karel.generate_dataset(karel.DataConfig(n_train_generated=n, n_val=500, n_test=2000, train_lengths=tuple(range(1, 11))),
                       '/tmp/d110', workers=min(16, os.cpu_count()), overwrite=True)
print('data ready')"
run() {  # tag, then --train overrides of the cpu preset
  local tag=$1; shift
  OMP_NUM_THREADS=5 $PY benchmarks/gpu_emergence.py --data /tmp/d110 --out "$OUT/emergence.jsonl" --tag "$tag" \
    --budget "$BUDGET" --n-eval 1000 --eval-every-s 40 --probe-features direction,facing_wall $TINY_FLAG "$@" \
    > "$OUT/$tag.log" 2>&1 || echo "$tag failed: $(tail -3 "$OUT/$tag.log")"
}
run cpu-recipe &
run cpu-recipe-b166 --train batch_size=166 &
run cpu-long-recipe --model n_layer=6 &
wait
grep '"part": "done"' "$OUT/emergence.jsonl"
