"""Training throughput of ``packing="samples"`` against the paper's packed blocks (issue 7).

Baseline, measured in the same run: the ``cpu`` preset's packed blocks (8 x 1,024 tokens, attention
across samples). Candidate: one whole sample per row (21 x 386 tokens, about as many tokens per
step). Both run the real training step (``model.train.lm_loss``, bf16 autocast as trained, AdamW)
on real Karel samples. Reported per second: tokens, non-padding tokens, and program tokens whose
whole specification is inside the model's context (a program cut from its spec by a block
boundary cannot be learned from, it only teaches the unconditional prior).

    .venv/bin/python benchmarks/bench_packing.py [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import karel  # noqa: E402
from model.config import preset  # noqa: E402
from model.data import make_stream, tokenize  # noqa: E402
from model.optim import make_optimizer  # noqa: E402
from model.train import lm_loss, resolve_device  # noqa: E402
from model.transformer import Transformer  # noqa: E402


def usable_program_tokens(offset: torch.Tensor, prompt_len: int) -> int:
    """Program targets whose sample starts inside the same row (offset 0 seen before them)."""
    off = offset[:, 1:]
    start_seen = torch.cumsum((offset[:, :-1] == 0).long(), dim=1) > 0
    return int(((off >= prompt_len) & start_seen).sum())


def measure(m, t, ids, lengths, steps: int) -> dict:
    device = resolve_device(t)
    torch.manual_seed(0)
    model = Transformer(m).train()
    opt = make_optimizer(model, t)
    stream = make_stream(ids, lengths, t)
    prompt = karel.prompt_length()
    times, counts = [], {"tokens": 0, "real": 0, "program_usable": 0}
    for i in range(steps + 1):
        tokens, offset = stream.next_batch(t.batch_size)
        t0 = time.perf_counter()
        loss, _ = lm_loss(model, tokens, offset, t, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
            counts["tokens"] += tokens.shape[0] * (tokens.shape[1] - 1)
            counts["real"] += int((offset[:, 1:] >= 0).sum())
            counts["program_usable"] += usable_program_tokens(offset, prompt)
    seconds = sum(times)
    return {f"{k}_per_s": v / seconds for k, v in counts.items()} | {"s_per_step": seconds / steps}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", type=int, default=21, help="samples per step with packing=samples")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = "/tmp/semprobe-bench-packing"
    if not os.path.exists(os.path.join(data, "manifest.json")):
        karel.generate_dataset(karel.DataConfig(n_train_generated=20_000, n_val=10, n_test=10), data, overwrite=True)
    ids, lengths = tokenize(karel.load_split(data, "train"), karel.Vocab())
    m, t = preset("cpu")
    row = int(lengths.max()) - 1
    blocks = measure(m, t, ids, lengths, args.steps)
    samples = measure(m, replace(t, packing="samples", block_len=row, batch_size=args.rows), ids, lengths, args.steps)
    res = {"threads": torch.get_num_threads(), "blocks_8x1024": blocks, f"samples_{args.rows}x{row}": samples,
           "ratio_tokens": samples["tokens_per_s"] / blocks["tokens_per_s"],
           "ratio_real_tokens": samples["real_per_s"] / blocks["real_per_s"],
           "ratio_usable_program_tokens": samples["program_usable_per_s"] / blocks["program_usable_per_s"]}
    print(json.dumps(res, indent=1))
    print(f"packing=samples vs packed blocks (same run): tokens/s {res['ratio_tokens']:.2f}x, non-padding "
          f"tokens/s {res['ratio_real_tokens']:.2f}x, usable program tokens/s {res['ratio_usable_program_tokens']:.2f}x")


if __name__ == "__main__":
    main()
