"""bf16 against float32 on this machine, for what ``bf16_native`` decides: training and probes.

``model.machine.bf16_native`` (training's ``autocast="auto"``, the activations' ``bf16``) and
``probes.stacked_training.bf16_native`` (the probes' default) pick bf16 only where the CPU has it
in hardware (AMX or avx512_bf16). This measures both arms where it matters, float32 the baseline:

- a training step of the ``cpu`` preset (its model, optimizer and whole-sample rows of real
  Karel samples), under bf16 autocast and without;
- a 2-layer MLP probe (256 -> 1024) fitted on 12,000 rows of width 256, bf16 matmul inputs and
  float32 ones, one thread (as the pipeline's probe grids run).

Each arm alternates with the other over ``--rounds`` (the faster round counts), so drift in the
machine's speed hits both alike. Prints seconds of each, the ratio float32 / bf16 (above 1: bf16
is faster), the decision and whether the measurement agrees with it.

    .venv/bin/python benchmarks/bench_precision.py [--steps 2] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_optimizer import timed_steps, train_samples  # noqa: E402
from model.machine import bf16_native, cpu_identity  # noqa: E402
from probes import MLPProbe  # noqa: E402
from probes.stacked_training import bf16_native as probes_bf16_native  # noqa: E402


class _Precision(MLPProbe):
    """The estimator with its bf16 choice fixed (the estimators take the engine's default)."""

    def __init__(self, bf16: bool, **kw):
        super().__init__(**kw)
        self.bf16 = bf16

    def _config(self):
        return replace(super()._config(), bf16=self.bf16)


def probe_seconds(bf16: bool, x, y) -> float:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        _Precision(bf16, hidden=(256, 1024), seed=0, epochs=2, batch_size=256).fit(x, y)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(prev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for training (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = train_samples(2_000)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12_000, 256)).astype(np.float32)
    y = rng.integers(0, 4, 12_000)
    train = {"off": [], "bf16": []}
    probe = {False: [], True: []}
    for _ in range(args.rounds):
        for autocast in train:
            train[autocast].append(timed_steps({"autocast": autocast}, samples, args.steps))
        for bf16 in probe:
            probe[bf16].append(probe_seconds(bf16, x, y))
    cpu = torch.device("cpu")
    train_ratio = min(train["off"]) / min(train["bf16"])
    probe_ratio = min(probe[False]) / min(probe[True])
    decided = {"training": bf16_native(cpu), "probes": bool(probes_bf16_native(cpu))}
    print(json.dumps({
        **cpu_identity(), "threads": torch.get_num_threads(),
        "train_s_per_step": {"float32": round(min(train["off"]), 3), "bf16": round(min(train["bf16"]), 3)},
        "probe_fit_s": {"float32": round(min(probe[False]), 3), "bf16": round(min(probe[True]), 3)},
        "float32_over_bf16": {"training": round(train_ratio, 3), "probes": round(probe_ratio, 3)},
        "bf16_chosen": decided,
    }))
    for what, ratio in (("training", train_ratio), ("probes", probe_ratio)):
        faster = ratio > 1
        verdict = "agrees" if faster == decided[what] else "DISAGREES"
        print(f"{what}: bf16 takes {1 / ratio:.2f}x float32's time (baseline float32); "
              f"bf16 chosen: {decided[what]}; the measurement {verdict}")


if __name__ == "__main__":
    main()
