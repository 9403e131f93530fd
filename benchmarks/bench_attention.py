"""Causal self-attention forward + backward at a preset's training shape, per SDPA backend.

The ``cpu`` preset's step spends a large share in attention (8 heads of 32 dims over 386
tokens), below the matmul rate. This times one layer's ``scaled_dot_product_attention``
(``is_causal=True``, as training calls it) under torch's flash kernel, the model's path on CPU,
against torch's math backend and softmax(QK^T)V written out, in the same run; the flash kernel
is timed first and again last (their spread says how steady the machine was). Random inputs.

    .venv/bin/python benchmarks/bench_attention.py [--preset cpu] [--threads 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from flows.presets import load_preset  # noqa: E402


def by_hand(q, k, v):
    t = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v


def seconds(attend, shape, steps: int) -> float:
    torch.manual_seed(0)
    q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))
    for i in range(steps + 2):  # two warm-up rounds
        if i == 2:
            t0 = time.perf_counter()
        attend(q, k, v).sum().backward()
    return (time.perf_counter() - t0) / steps


def sdpa(backend):
    def attend(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    m, t = cfg.model, cfg.train
    shape = (t.batch_size, m.n_head, t.block_len, m.d_model // m.n_head)
    arms = [("flash", sdpa(SDPBackend.FLASH_ATTENTION)), ("math", sdpa(SDPBackend.MATH)),
            ("by_hand", by_hand), ("flash_again", sdpa(SDPBackend.FLASH_ATTENTION))]
    ms = {name: round(1000 * seconds(f, shape, args.steps), 1) for name, f in arms}
    base = (ms["flash"] + ms["flash_again"]) / 2
    print(json.dumps({"preset": args.preset, "shape_b_h_t_d": shape, "threads": torch.get_num_threads(),
                      "ms_per_layer_fwd_bwd": ms, "math_over_flash": round(ms["math"] / base, 2),
                      "by_hand_over_flash": round(ms["by_hand"] / base, 2)}, indent=1))


if __name__ == "__main__":
    main()
