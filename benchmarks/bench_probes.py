"""Whole probe grid of one checkpoint, batched vs one probe at a time (same code).

Grid: 3 probe kinds (linear, mlp1 256, mlp2 256->1024) x 3 main features (direction, rel_start,
facing_wall) x 5 offsets x 3 semantics (original, flip, adversarial) = 135 probes, about 100,000
training pairs of width 256 (synthetic hidden states over real Karel labels), one seed.
Batched arm: ``probes.grid.probe_grid`` (one stacked pass per kind). Baseline arm: the
``LinearProbe``/``MLPProbe`` estimators (the same engine with one probe), fit one at a time on
each probe's own rows with the same split, epochs and val selection. The baseline is timed on
``--sample`` probes per kind and extrapolated to the 45 probes of that kind (stated in output).

Both arms run with ``--threads`` torch threads (default 1: on this 2-core machine, shared with
other work, a 2-thread OpenMP team stalls whenever one of its threads is descheduled).

``--device cuda`` trains the grid arm on the GPU (``TrainConfig.device``; the probes come back
to the CPU for scoring), to be read against the same command's CPU figure.

``--layouts per_probe,batched`` times the grid once per probe layout (``TrainConfig.layout``),
each against the first in the same run; ``+graphs`` after a layout (``batched+graphs``) replays
each chunk's training step as a CUDA graph (``TrainConfig.graphs``; CUDA only).

Run: .venv/bin/python benchmarks/bench_probes.py [--epochs 1] [--sample 2] [--threads 1] [--device cpu]
     [--only grid|baseline] [--layouts auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import karel  # noqa: E402
from probes import LinearProbe, MLPProbe, make_labels  # noqa: E402
from probes.grid import PROBE_KINDS, GridConfig, probe_grid, row_splits  # noqa: E402
from probes.labels import MAIN_FEATURES, OFFSETS, hidden_rows  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402

SEMANTICS = ("original", "flip", "adversarial")


def make_data(n_programs: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    progs = karel.random_programs(rng, rng.integers(6, 11, n_programs), width=14)
    inputs = karel.random_worlds(rng, n_programs * 5)
    labels = make_labels(progs, inputs, SEMANTICS, MAIN_FEATURES, OFFSETS)
    y = np.zeros((n_programs, 14), int)
    y[labels.program, labels.position] = labels.get("original", "direction", 0)[:, 0].clip(0)
    hidden = rng.normal(size=(n_programs, 14, d)) + np.eye(d)[:4][y]
    return labels, hidden.astype(np.float16)


def one_at_a_time(labels, hidden, config, kind, sample, rng):
    x = hidden_rows(hidden, labels).astype(np.float32)
    split = row_splits(labels.program, 0, config.split)
    keys = [(s, f, o) for s in SEMANTICS for f in MAIN_FEATURES for o in OFFSETS]
    picked = [keys[i] for i in rng.choice(len(keys), size=sample, replace=False)]
    t = time.perf_counter()
    for sem, feat, off in picked:
        y = labels.get(sem, feat, off)
        ok = y[:, 0] >= 0
        tr, va, te = (ok & (split == i) for i in range(3))
        tc = config.train
        kw = dict(epochs=tc.epochs, batch_size=tc.batch_size, seed=0)
        probe = LinearProbe(**kw) if kind == "linear" else MLPProbe(PROBE_KINDS[kind], **kw)
        probe.fit(x[tr], y[tr], x[va], y[va]).score(x[te], y[te])
    return (time.perf_counter() - t) / sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--sample", type=int, default=2, help="baseline probes timed per kind")
    ap.add_argument("--programs", type=int, default=17800)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=("grid", "baseline"), default=None)
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where the grid arm trains")
    ap.add_argument("--layouts", default="auto",
                    help="comma-separated probe layouts (auto, per_probe, batched; +graphs: CUDA graphs), "
                         "each a grid arm; ratios against the first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    labels, hidden = make_data(args.programs, args.width)
    layouts = args.layouts.split(",")
    for layout in layouts:
        if layout.partition("+")[2] not in ("", "graphs"):
            raise SystemExit(f"--layouts: {layout!r}: after '+' only 'graphs' is known")
    config = GridConfig(semantics=SEMANTICS, seeds=(0,), report=("test",),
                        train=TrainConfig(epochs=args.epochs, device=args.device))
    split = row_splits(labels.program, 0, config.split)
    n_train = int(((split == 0) & labels.valid(0)).sum())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"probes: 135, training pairs per probe (offset 0): {n_train}, width {args.width}, "
          f"epochs {args.epochs}")
    grid_s = None
    for i, layout in enumerate(layouts if args.only != "baseline" else ()):
        name, _, extra = layout.partition("+")
        arm = replace(config, train=replace(config.train, layout=name, graphs=extra == "graphs"))
        t, c = time.perf_counter(), time.process_time()
        df = probe_grid(hidden, labels, arm)
        took = time.perf_counter() - t
        grid_s = took if grid_s is None else grid_s
        print(f"batched grid, layout {layout}: {took:.1f} s wall, {time.process_time() - c:.1f} s cpu "
              f"({len(df)} rows; mean test accuracy by probe: "
              f"{df.groupby('probe')['accuracy'].mean().round(3).to_dict()})"
              + (f"; {grid_s / took:.2f}x the {layouts[0]} layout's speed" if i else ""), flush=True)
    if args.only == "grid":
        return
    rng = np.random.default_rng(0)
    total = 0.0
    c = time.process_time()
    for kind in config.probes:
        per = one_at_a_time(labels, hidden, config, kind, args.sample, rng)
        total += per * 45
        print(f"one at a time, {kind}: {per:.2f} s per probe (mean of {args.sample}) -> "
              f"{per * 45:.1f} s for 45 probes", flush=True)
    print(f"one at a time (extrapolated): {total:.1f} s wall "
          f"(sampled probes: {time.process_time() - c:.1f} s cpu)")
    if grid_s is not None:
        print(f"ratio one-at-a-time / batched: {total / grid_s:.2f}x")


if __name__ == "__main__":
    main()
