"""Training step time of model shapes against a preset's own shape, in one run (issue 7's levers).

A lever that changes the model (more layers, fewer heads) changes both how much a step learns and
what a step costs; this measures the cost. Each variant is the preset's model with ``--set``-style
overrides (``model.n_head=4``, or several joined by ``+``: ``model.n_layer=6+model.n_head=4``),
trained on the preset's step (batch x block_len tokens, random tokens) at the precision the preset
trains at on this CPU (bf16 autocast where it is native, else float32: ``model.train.precision``);
the baseline is the preset's shape, timed first and again last (the spread of the two says how
steady the machine was). Prints ms a step, tokens/s and each variant's speed as a multiple of the
baseline.

    .venv/bin/python benchmarks/bench_shape.py [--preset cpu] [--steps 5] [--threads 2] \
        model.n_head=4 model.n_layer=6 model.n_layer=6+model.n_head=4
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.bench_train import time_training  # noqa: E402
from flows.presets import apply_overrides, load_preset  # noqa: E402
from model.train import precision  # noqa: E402
from model.transformer import Transformer  # noqa: E402


def step_seconds(model_cfg, x, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    return time_training(Transformer(model_cfg), lambda mod, inp: mod(inp)[0], x, steps, bf16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="overrides of one variant, joined by '+'")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    t = cfg.train
    x = torch.randint(0, 43, (t.batch_size, t.block_len + 1))
    tokens = t.batch_size * t.block_len
    bf16 = precision(t, torch.device("cpu")) == "bf16"  # as the preset trains on this CPU
    base = step_seconds(cfg.model, x, args.steps, bf16)
    rows = []
    for variant in args.variants:
        m = apply_overrides(cfg, variant.split("+")).model
        s = step_seconds(m, x, args.steps, bf16)
        rows.append({"variant": variant, "params": sum(p.numel() for p in Transformer(m).parameters()),
                     "ms_per_step": round(1e3 * s, 1), "tokens_per_s": round(tokens / s)})
    again = step_seconds(cfg.model, x, args.steps, bf16)
    ref = (base + again) / 2
    print(json.dumps({"preset": args.preset, "step_tokens": tokens, "threads": torch.get_num_threads(),
                      "precision": "bf16" if bf16 else "float32",
                      "baseline_ms": [round(1e3 * base, 1), round(1e3 * again, 1)], "variants": rows}, indent=1))
    for r in rows:
        print(f"{r['variant']}: {r['ms_per_step']} ms a step, {ref / (r['ms_per_step'] / 1e3):.2f}x the speed of "
              f"the {args.preset} preset's shape ({1e3 * ref:.1f} ms)")


if __name__ == "__main__":
    main()
