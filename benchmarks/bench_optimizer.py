"""Cost per training step of Muon (``train.optimizer=muon``) against AdamW, the baseline.

Real training steps of the ``cpu`` preset (whole-sample rows of real Karel samples, bf16 autocast
where ``autocast="auto"`` picks it, gradient clipping), the two optimizers alternating in rounds so
that drift in the machine's speed hits both alike. Prints seconds per step of each and the ratio
AdamW / Muon (above 1: Muon is faster per step). What Muon buys per step in learning is in
RESULTS.md (lever round 5); this script checks that it does not cost throughput. On a CPU
without bf16 hardware it also times torch's Muon (bf16 Newton-Schulz, emulated there) against
``Float32Muon``, which ``make_optimizer`` picks on such a CPU.

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
from benchmarks.gpu_check import setup  # noqa: E402
from model import machine, optim  # noqa: E402
from model.config import preset  # noqa: E402
from model.train import train_step  # noqa: E402


def train_samples(n: int = 4_000):
    """``n`` real Karel training samples of the ``cpu`` preset's lengths (1..10)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = karel.DataConfig(n_train_generated=n, n_val=10, n_test=10, train_lengths=tuple(range(1, 11)))
        karel.generate_dataset(cfg, tmp, workers=1, overwrite=True)
        return karel.load_split(tmp, "train")


def timed_steps(train: dict, samples, steps: int) -> float:
    """Seconds per real training step of the ``cpu`` preset with ``train`` overrides, after one
    warm-up step."""
    m, t = preset("cpu", train=train)
    device, _, fwd, opt, blocks = setup(m, t, samples, compile_model=False)
    train_step(fwd, opt, blocks, t, 0, device)  # warm-up
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(fwd, opt, blocks, t, step, device)
    return (time.perf_counter() - t0) / steps


def seconds_per_step(arm: str, samples, steps: int) -> float:
    """``adamw``, ``muon`` (as ``make_optimizer`` picks it here) or ``muon-torch`` (torch's Muon,
    whose Newton-Schulz iteration is bf16 whatever the CPU)."""
    optim.bf16_native = (lambda device: True) if arm == "muon-torch" else machine.bf16_native
    try:
        return timed_steps({"optimizer": arm.removesuffix("-torch")}, samples, steps)
    finally:
        optim.bf16_native = machine.bf16_native  # the module as the other arms and callers expect it


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = train_samples()
    arms = ["adamw", "muon"] + ([] if machine.bf16_native(torch.device("cpu")) else ["muon-torch"])
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name in times:
            times[name].append(seconds_per_step(name, samples, args.steps))
    best = {name: min(t) for name, t in times.items()}
    adamw, muon = best["adamw"], best["muon"]
    tokens = preset("cpu")[1].tokens_per_step
    print(json.dumps({"machine": platform.processor() or platform.machine(), **machine.cpu_identity(),
                      "threads": torch.get_num_threads(),
                      **{f"{name}_s_per_step": round(s, 4) for name, s in best.items()},
                      **{f"{name}_tokens_per_s": round(tokens / s) for name, s in best.items()},
                      "ratio_adamw_over_muon": round(adamw / muon, 3)}))
    print(f"Muon step {muon:.3f} s vs AdamW (baseline) {adamw:.3f} s: {adamw / muon:.2f}x")
    if "muon-torch" in best:
        print(f"Muon with the float32 iteration {muon:.3f} s vs torch's bf16 iteration (baseline) "
              f"{best['muon-torch']:.3f} s on this CPU without bf16 hardware: {best['muon-torch'] / muon:.2f}x")


if __name__ == "__main__":
    main()
