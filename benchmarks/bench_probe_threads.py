"""Probe grids side by side, as the flow trains them: 2 torch threads each vs 1 (the default).

The pipeline trains one probe grid per semantics, up to three at once on the threads of one
process (``ThreadPoolTaskRunner(max_workers=3)``). On a 2-core machine three 2-thread OpenMP
teams contend for the cores. This trains the same offset-0/+1 grid of one checkpoint's real
activations (original semantics, every main feature and kind, 3 seeds) ``--parallel`` times at
once with 2 threads per grid (the baseline) and with 1, and once alone with each.

Run: .venv/bin/python benchmarks/bench_probe_threads.py ACTIVATIONS_DIR [--parallel 3] [--epochs 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from probes.grid import GridConfig, probe_grid  # noqa: E402
from probes.labels import MAIN_FEATURES, make_labels  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402
from tasks.activations import load_activations  # noqa: E402


def wall(grid: GridConfig, hidden, labels, parallel: int) -> float:
    runs = [threading.Thread(target=probe_grid, args=(hidden, labels, grid), kwargs={"layer": -1})
            for _ in range(parallel)]
    t = time.perf_counter()
    for r in runs:
        r.start()
    for r in runs:
        r.join()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("activations")
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    a = load_activations({"path": args.activations})
    offsets = (0, 1)
    labels = make_labels(a["programs"], a["inputs"], ("original",), MAIN_FEATURES, offsets, True)
    hidden = a["hidden"].astype(np.float32)
    print(f"{args.activations}: {len(a['lengths'])} programs, {len(labels)} action positions, offsets {offsets}")
    grids = {t: GridConfig(semantics=("original",), features=MAIN_FEATURES, offsets=offsets, seeds=(0, 1, 2),
                           train=TrainConfig(epochs=args.epochs, batch_size=args.batch, threads=t)) for t in (2, 1)}
    out = {}
    for par in (1, args.parallel):
        for t in (2, 1):
            out[t, par] = wall(grids[t], hidden, labels, par)
            print(f"{par} grid(s) at once, {t} thread(s) each: {out[t, par]:.1f} s", flush=True)
    p = args.parallel
    print(f"{p} at once: 1 thread each is {out[2, p] / out[1, p]:.2f}x faster than 2 threads each; "
          f"alone, 1 thread takes {out[1, 1] / out[2, 1]:.2f}x the time of 2")


if __name__ == "__main__":
    main()
