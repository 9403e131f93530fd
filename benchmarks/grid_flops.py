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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_probes import SEMANTICS, make_data  # noqa: E402
from probes.grid import GridConfig, row_splits  # noqa: E402
from probes.labels import MAIN_FEATURES, OFFSETS  # noqa: E402

OUTPUTS = {"direction": 4, "rel_start": 26, "facing_wall": 2}  # logits per feature (rel_start: 13 + 13)
WIDTH = 256
KINDS = {  # multiply-adds per row of one probe with ``c`` logits (the hidden-layer biases left out)
    "linear": lambda c: WIDTH * c,
    "mlp1": lambda c: WIDTH * 256 + 256 * c,
    "mlp2": lambda c: WIDTH * 256 + 256 * 1024 + 1024 * c,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--programs", type=int, default=17800)
    ap.add_argument("--gflops", type=float, default=44.7, help="the matmul rate to divide by (bench_train's peak)")
    args = ap.parse_args()
    labels, _ = make_data(args.programs, WIDTH)
    split = row_splits(labels.program, 0, GridConfig().split)
    total = dict.fromkeys(KINDS, 0.0)
    for offset in OFFSETS:
        ok = labels.valid(offset)
        train, val, test = (int(((split == i) & ok).sum()) for i in range(3))
        for kind, macs in KINDS.items():
            for feature in MAIN_FEATURES:
                m = macs(OUTPUTS[feature]) * len(SEMANTICS)
                total[kind] += (6 * train + 2 * val) * m * args.epochs + 2 * test * m
    flops = sum(total.values())
    print({k: f"{v / 1e12:.2f} TFLOP" for k, v in total.items()}, f"total {flops / 1e12:.2f} TFLOP")
    print(f"at {args.gflops} GFLOP/s: {flops / args.gflops / 1e9:.0f} s "
          f"({', '.join(f'{k} {v / args.gflops / 1e9:.0f} s' for k, v in total.items())})")


if __name__ == "__main__":
    main()
