#!/usr/bin/env bash
# One prepared GPU session (device tool), issue 7: the `cpu` preset's recipe (Muon lr 0.01,
# whole-sample rows of lengths 1..10) on a GPU. Runs side by side, each on its own fixed
# schedule (the preset's warm-up and linear decay, stretched to its steps), logging accuracy,
# diversity and quick direction / facing-wall probes against tokens seen, and (GRID_EPOCHS) the
# pipeline's probes beside the random-init control; BUDGET seconds stop a run early. ARMS picks
# the runs:
#   ARMS=probes (default, next session): issue 7's targets 3-6 on the `cpu-long` recipe, with
#     probe sets of the pipeline's size (4,000 train-split specs) at chosen checkpoints, and the
#     control task, the majority and the random-init states beside every probe. Two runs:
#     cpu-long-probes-curve   seed 0, probed at steps 500, 1,000, 2,000, 3,000, 4,500 and 6,000
#                             under original, flip and adversarial at offset 0 (targets 3, 4, 5)
#     cpu-long-probes-future  seed 1, probed at steps 3,000 and 6,000 at offsets 0, +1 and +2
#                             (targets 3 and 6)
#     six-layers-b332-sized   with GRID_GRAPHS=1 only: the same six layers at 16x the rows a
#                             step, its schedule sized to the budget (toward the issue's "a
#                             billion or more" tokens; 166 rows made ~1.7M tokens/s alone),
#                             probed at its end
#     ~400-500 s (estimated; the probes' GPU time at this size is not yet measured) after ~45 s
#     of data: `bash benchmarks/gpu_session.sh 450` with a call limit of 600 s.
#   ARMS=seeds (2026-12-04, session 26, RESULTS.md): `cpu-long` at training seeds 1 and 2, and
#     the same six layers at 8x the rows a step (384M tokens); 284-329 s side by side
#   ARMS=2026-12-04: that session's three (RESULTS.md; they took 212-262 s together)
#     cpu-recipe-8k       the `cpu` preset at 8,000 steps (65M tokens; on 2 CPU cores it runs 2,000)
#     cpu-recipe-b166-6k  the same at 8x the rows a step, 6,000 steps (384M tokens)
#     cpu-long-recipe-6k  the `cpu-long` model and schedule (six layers, 6,000 steps, 48.6M tokens)
#   ARMS=pairs: the spec-pairs lever (`train.spec_pairs`, RESULTS.md, session 39) on the
#     `cpu-long` model and schedule, side by side with the same run without it:
#     cpu-long-recipe-6k-pairs15  each step's rows show k = 1..5 spec pairs (uniform), as many
#                                 rows as fit the step's tokens (~2.1x the programs a step)
#     cpu-long-recipe-6k          the baseline of the same session (session 25 read 72.8% on
#                                 lengths 6..10 from it on another lease)
#     cpu-long-recipe-6k-pairs35  k = 3..5 (~1.4x the programs a step)
#     ~250-300 s side by side (the `seeds` arms' size)
#   ARMS=blocks: the block options (`model.qk_norm=true`, `model.mlp_act=relu2`; RESULTS.md,
#     session 42: at step 1,000 where the `cpu` preset is at 1,500, one seed on the CPU) on the
#     `cpu` recipe for 8,000 steps (65M tokens, the `2026-12-04` arms' size: ~210-260 s side by side):
#     cpu-recipe-8k          the baseline of the same session
#     cpu-recipe-8k-blocks   with both options, seed 0
#     cpu-recipe-8k-blocks-s1  with both options, seed 1
#     Tokens to 70% on lengths 6..10 of each curve against the baseline's: the lever's size.
#   ARMS=none: no training arms (for a first call of PAPER=1 PROBES=1 alone)
# PAPER=1 first runs the `paper` preset for PAPER_STEPS steps (default 300, issue 3's "a few
# hundred"; ~70 s on an H200 on 2026-12-04) and reports tokens/s, MFU, peak memory.
# PAPER=1 PROBES=1 and the arms together exceed one 10-minute call: run the arms in a second
# call at once, while the machine is warm.
# PROBES=1 first runs the probe training's tests (the CUDA-graph ones run only on a GPU), then
# trains issue 4's 135-probe grid (2 epochs, synthetic states) on the GPU per probe, batched, and
# batched with CUDA graphs (~1.5 min), to read against BENCHMARKS.md's figures. GRID_GRAPHS=1
# trains the arms' probes with CUDA graphs (--grid-graphs): only once PROBES=1 showed they pass.
# Next session, two calls back to back (machine warm): `PROBES=1 ARMS=none bash
# benchmarks/gpu_session.sh` (~1.5 min), then `bash benchmarks/gpu_session.sh 450`, with
# GRID_GRAPHS=1 in front if the first call's tests passed and batched+graphs was the fastest,
# and GRID_SEEDS=3 too if graphs ran the grid >= 3x faster than batched (CIs for targets 3, 5, 6).
# If the session's device time allows a third call (~5 min): `ARMS=blocks bash benchmarks/gpu_session.sh 330`
# (the strongest CPU lead, session 42); a fourth: `ARMS=pairs bash benchmarks/gpu_session.sh 330`.
# It measures `spec_pairs=3,4,5` at more seeds: on the CPU it led at 7 of 8 paired checkpoints over
# two seeds up to step 1,500, by a few points and by 20 at one, and was level at the end of the
# `cpu` schedule (seed 1; RESULTS.md, sessions 40-42): low priority.
# Usage: OUT=/some/dir bash benchmarks/gpu_session.sh [budget_s]     (TINY=1: CPU check)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET=${1:-420}   # a stop, not a schedule: `seeds` needed 284-329 s on one H200; `probes` is planned for 450
PY=${PY:-python3}
TINY_FLAG=""; [ "${TINY:-0}" = 1 ] && TINY_FLAG="--tiny"
ARMS=${ARMS:-probes}
case "$ARMS" in probes|seeds|pairs|blocks|2026-12-04|none) ;; *) echo "ARMS: '$ARMS' is not one of probes, seeds, pairs, blocks, 2026-12-04, none"; exit 2 ;; esac
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null

if [ "${PAPER:-0}" = 1 ]; then
  timeout 330 $PY benchmarks/gpu_check.py --out "$OUT/paper.jsonl" --paper-steps "${PAPER_STEPS:-300}" --budget 0 --n-train 20000 $TINY_FLAG \
    > "$OUT/paper.log" 2>&1 || echo "paper check failed: $(tail -3 "$OUT/paper.log")"
  grep paper_summary "$OUT/paper.jsonl" 2>/dev/null
fi

if [ "${PROBES:-0}" = 1 ]; then
  DEV=cuda; PROGS=17800; [ -n "$TINY_FLAG" ] && DEV=auto && PROGS=300
  # the CUDA-only tests of the probe training first (graphs against eager steps; skipped on a CPU)
  timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_probes_stacked_training.py > "$OUT/probe_tests.log" 2>&1 \
    || echo "probe tests failed: $(tail -5 "$OUT/probe_tests.log")"
  tail -1 "$OUT/probe_tests.log"
  timeout 200 $PY benchmarks/bench_probes.py --only grid --epochs 2 --device $DEV --programs $PROGS \
    --layouts per_probe,batched,batched+graphs \
    > "$OUT/probes.log" 2>&1 || echo "probe grid failed: $(tail -3 "$OUT/probes.log")"
  tail -4 "$OUT/probes.log"
fi

[ "$ARMS" = none ] && exit 0
# the cpu preset's data (lengths 1..10): 1M programs (~45 s on 16 cores), so that 6,000 steps of
# 166 rows see each about once (332 rows for ~8,000 steps: ~2.7 times)
$PY -c "
import karel, os
n = 2000 if '$TINY_FLAG' else 1_000_000
karel.generate_dataset(karel.DataConfig(n_train_generated=n, n_val=500, n_test=2000, train_lengths=tuple(range(1, 11))),
                       '/tmp/d110', workers=min(16, os.cpu_count()), overwrite=True)
print('data ready')"
run() {  # tag, then --train / --model overrides of the cpu preset
  local tag=$1; shift
  OMP_NUM_THREADS=5 $PY benchmarks/gpu_emergence.py --data /tmp/d110 --out "$OUT/emergence.jsonl" --tag "$tag" \
    --budget "$BUDGET" --n-eval 1000 --eval-every-s 40 --probe-features direction,facing_wall $TINY_FLAG \
    --grid-epochs "$GRID_EPOCHS" "$@" \
    > "$OUT/$tag.log" 2>&1 || { echo "$tag failed: $(tail -3 "$OUT/$tag.log")"; return 1; }
  # an arm can end with status 0 and nothing written (seen once on a CPU check): only its
  # "done" line says it finished
  grep -q "\"tag\": \"$tag\".*\"part\": \"done\"" "$OUT/emergence.jsonl" 2>/dev/null && return 0
  echo "$tag ended without its \"done\" line: $(tail -3 "$OUT/$tag.log")"; return 1
}
STEPS=${STEPS:-1}; [ -n "$TINY_FLAG" ] && STEPS=0.005   # TINY: a few steps each
# the pipeline's probes and the random-init control at each evaluation, or at the steps an arm
# names (0: off; session 25's runs had none)
GRID_EPOCHS=${GRID_EPOCHS:-30}; [ -n "$TINY_FLAG" ] && GRID_EPOCHS=3
steps() { python3 -c "print(max(int($1 * $STEPS), 2))"; }
# probed steps, scaled like the schedules; TINY's would fall in gpu_emergence's timing run (its
# first 30 steps), so there the end alone is probed
gsteps() { [ -n "$TINY_FLAG" ] && return; local IFS=,; echo "$*"; }
rows() { if [ -n "$TINY_FLAG" ]; then echo 4; else echo "$1"; fi; }   # TINY: rows a step
SPECS=4000; [ -n "$TINY_FLAG" ] && SPECS=200
PROBED="--grid-specs $SPECS --grid-control --grid-chunk 64 --grid-kinds linear,mlp1,mlp2"
[ "${GRID_GRAPHS:-0}" = 1 ] && PROBED="$PROBED --grid-graphs"
PROBED="$PROBED --grid-seeds ${GRID_SEEDS:-1}"   # 3: paired CIs (gpu_targets.py), 3x the probe time
# gpu_emergence.py starts from the `cpu` preset, whose blocks are normalised queries and keys with a
# squared-ReLU MLP since session 45; the arms that rerun earlier recipes (`cpu-long`, the `cpu`
# recipe of 2026-12-04) keep CodeGen's blocks, as their figures were measured with.
CODEGEN="--model qk_norm=false --model mlp_act=gelu"
case "$ARMS" in
  probes)
    run cpu-long-probes-curve --fixed-steps $CODEGEN --model n_layer=6 --train steps=$(steps 6000) $PROBED \
      --grid-steps "$(gsteps 500 1000 2000 3000 4500)" --grid-semantics original,flip,adversarial &
    run cpu-long-probes-future --fixed-steps $CODEGEN --model n_layer=6 --train seed=1 --train steps=$(steps 6000) $PROBED \
      --grid-steps "$(gsteps 3000)" --grid-offsets 0,1,2 &
    # a third run beside them only when the probes replay as CUDA graphs: eager, the two
    # probed runs need ~400-500 s of the call alone (the probe sets hold ~10-17k positions)
    if [ "${GRID_GRAPHS:-0}" = 1 ]; then
      run six-layers-b332-sized $CODEGEN --model n_layer=6 --train batch_size=$(rows 332) $PROBED --grid-steps "$(gsteps end)" &
    fi ;;
  seeds)
    run cpu-long-recipe-6k-s1 --fixed-steps $CODEGEN --model n_layer=6 --train seed=1 --train steps=$(steps 6000) &
    run cpu-long-recipe-6k-s2 --fixed-steps $CODEGEN --model n_layer=6 --train seed=2 --train steps=$(steps 6000) &
    run cpu-long-recipe-b166-6k --fixed-steps $CODEGEN --model n_layer=6 --train batch_size=$(rows 166) --train steps=$(steps 6000) & ;;
  pairs)  # TINY's smoke preset packs blocks; spec_pairs needs whole-sample rows
    ROWS=""; [ -n "$TINY_FLAG" ] && ROWS="--train packing=samples --train block_len=386"
    run cpu-long-recipe-6k-pairs15 --fixed-steps $CODEGEN --model n_layer=6 --train steps=$(steps 6000) $ROWS --train spec_pairs=1,2,3,4,5 &
    run cpu-long-recipe-6k --fixed-steps $CODEGEN --model n_layer=6 --train steps=$(steps 6000) $ROWS &
    run cpu-long-recipe-6k-pairs35 --fixed-steps $CODEGEN --model n_layer=6 --train steps=$(steps 6000) $ROWS --train spec_pairs=3,4,5 & ;;
  blocks)
    run cpu-recipe-8k --fixed-steps $CODEGEN --train steps=$(steps 8000) &
    run cpu-recipe-8k-blocks --fixed-steps --model qk_norm=true --model mlp_act=relu2 --train steps=$(steps 8000) &
    run cpu-recipe-8k-blocks-s1 --fixed-steps --model qk_norm=true --model mlp_act=relu2 --train seed=1 \
      --train steps=$(steps 8000) & ;;
  2026-12-04)
    run cpu-recipe-8k --fixed-steps $CODEGEN --train steps=$(steps 8000) &
    run cpu-recipe-b166-6k --fixed-steps $CODEGEN --train batch_size=$(rows 166) --train steps=$(steps 6000) &
    run cpu-long-recipe-6k --fixed-steps $CODEGEN --model n_layer=6 --train steps=$(steps 6000) & ;;
esac
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
grep '"part": "done"' "$OUT/emergence.jsonl"
[ "$failed" = 0 ] || { echo "$failed arm(s) did not finish"; exit 1; }
