"""Probe accuracy against the probes' optimisation budget, on one checkpoint's real activations.

A small probe set (the ``cpu`` preset keeps ~2,000 training pairs) at the paper's batch of 1,024
gets about two optimizer steps an epoch, so "the probe reads nothing" may only mean "the probe
barely trained". This trains the current-state grid (offset 0, layer mean, original semantics,
every main feature, linear/mlp1/mlp2, 3 seeds) with the real task and its control task in one
pass, for each ``BATCHxEPOCHS`` budget given, and prints test accuracy, control-task accuracy,
selectivity and the wall time as a ratio against the first budget (the baseline: the preset's).
A budget ``BATCHxEPOCHSpK`` (``256x60p10``) stops each probe after K epochs without a better val
accuracy (``TrainConfig.patience``). ``--offsets 0,1`` probes more offsets side by side.
A logistic regression from scikit-learn on the same rows and split is printed as a reference.

Run: .venv/bin/python benchmarks/probe_budget.py ACTIVATIONS_DIR [1024x15 256x30 128x60 256x60p10 ...]
ACTIVATIONS_DIR is an ``artifacts/activations/<key>`` folder of a workspace.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.gpu_emergence import logistic_accuracy  # noqa: E402
from probes.controls import selectivity  # noqa: E402
from probes.grid import GridConfig, row_splits  # noqa: E402
from probes.labels import MAIN_FEATURES, hidden_rows, make_labels  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402
from tasks.activations import load_activations  # noqa: E402
from tasks.probing import subsample  # noqa: E402


def sklearn_reference(x, labels, grid: GridConfig) -> dict:
    """Test accuracy of a logistic regression per feature (joint class over label heads)."""
    split = row_splits(labels.program, grid.seeds[0], grid.split)
    out = {}
    for feat in grid.features:
        y = labels.get("original", feat, 0)
        ok = y[:, 0] >= 0
        scored = logistic_accuracy(x, y, ok & (split == 0), ok & (split == 2), max_iter=1000)
        out[feat] = scored[0] if scored else float("nan")
    return out


def epochs_trained(rows, epochs: int, patience: int) -> dict:
    """Mean epochs each probe kind's chunks trained: a chunk (the real and control probes of one
    seed, kind and offset, which share their rows) stops when its last probe has gone
    ``patience`` epochs past its best (``TrainConfig.patience``), else runs every epoch."""
    test = rows[rows["split"] == "test"]
    out = {}
    for kind, g in test.groupby("probe", sort=False):
        last = g.groupby(["seed", "offset"])["best_epoch"].max()
        out[kind] = float((last + patience).clip(upper=epochs).mean()) if patience else float(epochs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("activations")
    ap.add_argument("budgets", nargs="*", default=["1024x15", "256x30", "128x60"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--offsets", default="0")
    ap.add_argument("--max-pairs", type=int, default=0, help="subsample whole programs to about this many pairs")
    args = ap.parse_args()
    offsets = tuple(int(o) for o in args.offsets.split(","))
    a = load_activations({"path": args.activations})
    if args.max_pairs:
        a = subsample(a, args.max_pairs)
    labels = make_labels(a["programs"], a["inputs"], ("original",), MAIN_FEATURES, offsets, True)
    hidden = a["hidden"].astype(np.float32)
    print(f"{args.activations}: {len(a['lengths'])} programs, {len(labels)} action positions")
    base_s = None
    for budget in args.budgets:
        size, _, patience = budget.partition("p")
        batch, epochs = (int(v) for v in size.split("x"))
        grid = GridConfig(semantics=("original",), features=MAIN_FEATURES, offsets=offsets,
                          train=TrainConfig(epochs=epochs, batch_size=batch, threads=args.threads,
                                            patience=int(patience or 0)))
        t = time.perf_counter()
        rows, sel = selectivity(hidden, labels, grid, layer=-1)
        seconds = time.perf_counter() - t
        base_s = base_s or seconds
        print(f"\nbatch {batch} x {epochs} epochs: {seconds:.1f} s, {seconds / base_s:.2f}x the time of {args.budgets[0]}")
        trained = epochs_trained(rows, epochs, int(patience or 0))
        print("epochs trained per chunk (mean over seeds and offsets; the compute, whatever else runs): "
              + ", ".join(f"{k} {v:.1f} ({v / epochs:.0%})" for k, v in trained.items()))
        print(sel[["feature", "offset", "probe", "acc_real", "acc_control", "selectivity"]].round(3).to_string(index=False))
    ref = sklearn_reference(hidden_rows(hidden, labels), labels, grid)
    print("\nscikit-learn logistic regression, seed-0 split:", {k: round(v, 3) for k, v in ref.items()})


if __name__ == "__main__":
    main()
