"""Cost per training step of Muon (``train.optimizer=muon``) against AdamW, the baseline.

Real training steps of the ``cpu`` preset (whole-sample rows of real Karel samples, bf16 autocast
where ``autocast="auto"`` picks it, gradient clipping), the two optimizers alternating in rounds so
that drift in the machine's speed hits both alike. Prints seconds per step of each and the ratio
AdamW / Muon (above 1: Muon is faster per step). What Muon buys per step in learning is in
RESULTS.md (lever round 5); this script checks that it does not cost throughput.

    .venv/bin/python benchmarks/bench_optimizer.py [--steps 6] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import karel  # noqa: E402
from benchmarks.gpu_check import setup, train_step  # noqa: E402
from model.config import preset  # noqa: E402


def seconds_per_step(optimizer: str, samples, steps: int) -> float:
    m, t = preset("cpu", train={"optimizer": optimizer})
    device, _, fwd, opt, blocks = setup(m, t, samples, compile_model=False)
    train_step(fwd, opt, blocks, t, 0, device)  # warm-up
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(fwd, opt, blocks, t, step, device)
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = karel.DataConfig(n_train_generated=4_000, n_val=10, n_test=10, train_lengths=tuple(range(1, 11)))
        karel.generate_dataset(cfg, tmp, workers=1, overwrite=True)
        samples = karel.load_split(tmp, "train")
    times = {"adamw": [], "muon": []}
    for _ in range(args.rounds):
        for name in times:
            times[name].append(seconds_per_step(name, samples, args.steps))
    adamw, muon = min(times["adamw"]), min(times["muon"])
    tokens = preset("cpu")[1].tokens_per_step
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "adamw_s_per_step": round(adamw, 4), "muon_s_per_step": round(muon, 4),
                      "adamw_tokens_per_s": round(tokens / adamw), "muon_tokens_per_s": round(tokens / muon),
                      "ratio_adamw_over_muon": round(adamw / muon, 3)}))
    print(f"Muon step {muon:.3f} s vs AdamW (baseline) {adamw:.3f} s: {adamw / muon:.2f}x")


if __name__ == "__main__":
    main()
