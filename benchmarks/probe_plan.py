"""What ``probe.offsets_before_last`` saves: one checkpoint's probe grids, full and as probed before the last.

Runs the probe stage (``tasks.probing.train_probes``, every semantics of the preset, one after
another in this process) on one real activations artifact twice, in fresh stores: with the
preset's probe config as the last checkpoint gets it (every offset: the baseline) and as the
checkpoints before the last get it with ``probe.offsets_before_last`` (default ``0``). Prints
the seconds of each grid, the ratio per checkpoint, and what it makes of a run's probe stage
with N probed checkpoints (the last one full): (full + (N - 1) x before-last) / (N x full).

Run: .venv/bin/python benchmarks/probe_plan.py ACTIVATIONS_DIR [--preset cpu] [--set probe.x=y ...]
     [--before-last 0] [--threads 2]
ACTIVATIONS_DIR is an ``artifacts/activations/<key>`` folder of a workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from flows.presets import load_preset  # noqa: E402
from tasks.probing import train_probes  # noqa: E402


def time_grids(cfg, acts: dict, semantics) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as ws:
        for sem in semantics:
            t = time.perf_counter()
            train_probes.fn(ws, cfg, acts, sem)
            out[sem] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("activations")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--before-last", default="0", help="probe.offsets_before_last of the second arm")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the grids set 1 while training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.activations)
    manifest = json.loads((folder / "manifest.json").read_text())
    cfg = load_preset(args.preset, [*args.overrides, f"probe.offsets_before_last={args.before_last}"])
    # a dump made before dumps recorded their programs holds the config's
    meta = {"programs": cfg.activations.programs, **manifest["meta"]}
    acts = {"key": manifest["key"], "path": str(folder), "meta": meta, "status": "cached"}
    n = len(cfg.probed_steps())
    arms = {"full": cfg.probe.at_checkpoint(True), "before_last": cfg.probe.at_checkpoint(False)}
    print(f"{folder}: step {manifest['meta']['step']}, {manifest['meta']['n_specs']} specs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}")
    secs = {name: time_grids(p, acts, cfg.probe.semantics) for name, p in arms.items()}
    for name, p in arms.items():
        print(f"{name:12s} offsets {p.offsets}, alternatives at {p.alternative_offsets or p.offsets}: "
              + ", ".join(f"{s} {v:.0f} s" for s, v in secs[name].items()) + f"; total {sum(secs[name].values()):.0f} s")
    full, early = sum(secs["full"].values()), sum(secs["before_last"].values())
    stage = (full + (n - 1) * early) / (n * full) if n > 1 else 1.0
    print(json.dumps({"preset": args.preset, "step": manifest["meta"]["step"], "seconds": secs,
                      "before_last_over_full": round(early / full, 3), "probed_checkpoints": n,
                      "probe_stage_ratio": round(stage, 3)}))
    print(f"a checkpoint before the last: {early / full:.2f}x the full grids; the probe stage of "
          f"{n} probed checkpoints: {stage:.2f}x ({1 / stage:.2f}x faster)")


if __name__ == "__main__":
    main()
