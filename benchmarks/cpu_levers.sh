#!/usr/bin/env bash
# Issue 7 levers on a 2-core CPU: two recipes side by side, one torch thread each, the cpu
# preset's model and schedule, evaluated on the same test specs (RESULTS.md, "Levers on this CPU").
# The optimizer is the preset's (Muon since session 5): round 1 ran AdamW, so to reproduce its
# figures add `--train optimizer=adamw` to COMMON.
# Usage: OUT=/tmp/levers BUDGET=3000 bash benchmarks/cpu_levers.sh
set -u
OUT=${OUT:-/tmp/levers}; mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
$PY -c "
import karel
for name, lengths in (('d610', range(6, 11)), ('d110', range(1, 11))):
    karel.generate_dataset(karel.DataConfig(n_train_generated=200_000, n_val=500, n_test=2000, train_lengths=tuple(lengths)),
                           '$OUT/' + name, workers=1, overwrite=True)"
COMMON="--budget ${BUDGET:-3000} --eval-every-s ${EVERY:-400} --n-eval 300 --probe-features direction,facing_wall --fixed-steps
  --train packing=samples --train block_len=386 --train batch_size=21 --train weight_decay=0.1"
OMP_NUM_THREADS=1 $PY benchmarks/gpu_emergence.py --data "$OUT/d610" --out "$OUT/levers.jsonl" --tag samples-len6-10 $COMMON > "$OUT/l1.log" 2>&1 &
OMP_NUM_THREADS=1 $PY benchmarks/gpu_emergence.py --data "$OUT/d110" --out "$OUT/levers.jsonl" --tag samples-len1-10 $COMMON > "$OUT/l2.log" 2>&1 &
wait
grep '"part": "done"' "$OUT/levers.jsonl"
