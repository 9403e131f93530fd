"""FLOPs of ``bench_probes.py``'s grid (its data, splits and epochs) and the time they take at a
given matmul rate: the floor under the grid's wall time on a machine whose probes are
matmul-bound (float32 on an AVX2 CPU). Training counts 6 FLOPs per multiply-add (forward and
backward), each epoch's val pass and the final test pass 2; BatchNorm, ReLU and AdamW are left out.

    .venv/bin/python benchmarks/grid_flops.py [--epochs 4] [--gflops 44.7]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_probes import SEMANTICS, make_data  # noqa: E402
from probes.grid import PROBE_KINDS, GridConfig, row_splits  # noqa: E402
from probes.labels import FEATURES, MAIN_FEATURES, OFFSETS  # noqa: E402

WIDTH = 256  # bench_probes' default --width


def multiply_adds(kind: str, feature: str) -> int:
    """Per row, one probe of ``kind`` (its hidden widths, ``PROBE_KINDS``) on ``feature`` (a logit
    per class of each of its heads); biases left out."""
    widths = (WIDTH, *PROBE_KINDS[kind], sum(FEATURES[feature][0]))
    return sum(a * b for a, b in zip(widths, widths[1:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--programs", type=int, default=17800)
    ap.add_argument("--gflops", type=float, default=44.7, help="the matmul rate to divide by (bench_train's peak)")
    args = ap.parse_args()
    labels, _ = make_data(args.programs, WIDTH)
    split = row_splits(labels.program, 0, GridConfig().split)
    total = dict.fromkeys(PROBE_KINDS, 0.0)
    for offset in OFFSETS:
        ok = labels.valid(offset)
        train, val, test = (int(((split == i) & ok).sum()) for i in range(3))
        for kind in PROBE_KINDS:
            for feature in MAIN_FEATURES:
                m = multiply_adds(kind, feature) * len(SEMANTICS)
                total[kind] += (6 * train + 2 * val) * m * args.epochs + 2 * test * m
    flops = sum(total.values())
    print({k: f"{v / 1e12:.2f} TFLOP" for k, v in total.items()}, f"total {flops / 1e12:.2f} TFLOP")
    print(f"at {args.gflops} GFLOP/s: {flops / args.gflops / 1e9:.0f} s "
          f"({', '.join(f'{k} {v / args.gflops / 1e9:.0f} s' for k, v in total.items())})")


if __name__ == "__main__":
    main()
