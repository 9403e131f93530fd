"""Cached batched decoding vs decoding without a KV cache, and vs one teacher-forced pass.

Decodes the test specs of a freshly generated dataset (default 1,000) with the ``cpu`` preset
model shape, grammar-constrained, three ways on the same specs and model:
  * cached: one prefill of the prompt, then one-token steps against the KV cache (ours);
  * uncached (baseline): every step re-runs the whole prefix;
  * teacher-forced: a single forward pass over prompt + the generated program (the floor).
The model is random-init with its LM head biased towards ``move`` so every spec decodes all
14 actions plus ``}`` (the worst case, the same work for each method).

    .venv/bin/python benchmarks/bench_decode.py [--specs 1000] [--batch 250] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

import karel
from model.config import preset
from model.decode import generate, program_tokens, spec_prompts
from model.transformer import Transformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--specs", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for all three")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = karel.Vocab()
    with tempfile.TemporaryDirectory() as tmp:
        karel.generate_dataset(karel.DataConfig(n_train_generated=10, n_val=10, n_test=args.specs), f"{tmp}/d")
        test = karel.load_split(f"{tmp}/d", "test")
    m, _ = preset(args.preset)
    torch.manual_seed(0)
    model = Transformer(m).eval()
    with torch.no_grad():
        model.lm_head.bias[vocab.id("move")] += 20.0

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    kw = dict(batch_size=args.batch, autocast=args.bf16)
    cached, t_cached = timed(lambda: generate(model, test, vocab, "constrained", **kw))
    uncached, t_uncached = timed(lambda: generate(model, test, vocab, "constrained", use_cache=False, **kw))
    assert np.array_equal(cached.programs, uncached.programs), "cached and uncached decoding disagree"
    seq = torch.cat([torch.from_numpy(spec_prompts(test, vocab)),
                     torch.from_numpy(program_tokens(cached.programs, vocab))], dim=1)

    def teacher_forced():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
        with torch.no_grad(), ctx:
            for lo in range(0, len(seq), args.batch):
                model(seq[lo : lo + args.batch], return_hidden=True)

    _, t_forward = timed(teacher_forced)
    res = {
        "specs": args.specs, "batch": args.batch, "threads": torch.get_num_threads(), "bf16": args.bf16,
        "mean_actions": float(cached.lengths.mean()), "tokens_per_spec": int(seq.shape[1]),
        "s_cached": t_cached, "s_uncached": t_uncached, "s_teacher_forced": t_forward,
        "speedup_vs_uncached": t_uncached / t_cached,
        "cached_over_teacher_forced": t_cached / t_forward,
    }
    print(json.dumps(res, indent=1))
    print(f"cached decoding {res['speedup_vs_uncached']:.1f}x faster than uncached (target >= 10x); "
          f"{res['cached_over_teacher_forced']:.2f}x the time of one teacher-forced pass")


if __name__ == "__main__":
    main()
