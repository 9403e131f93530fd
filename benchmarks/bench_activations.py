"""The activations stage's two passes in bf16 autocast vs float32 on CPU (``activations.bf16``).

On one checkpoint of a finished run (default: the last), for ``--specs`` train-split specs:
grammar-constrained decoding with hidden states (``model.decode.generate``) and the random-init
model's teacher-forced pass over the decoded programs (``model.decode.forced_hidden``), each in
float32 (the baseline) and in bf16 autocast, in the same run. Prints the times, the ratios, the
share of programs the bf16 decoding writes identically, and how far the bf16 random-init states
are from the float32 ones on the same programs.

Run: .venv/bin/python benchmarks/bench_activations.py WORKSPACE [--step STEP] [--specs 600] [--batch 100]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import karel  # noqa: E402
from benchmarks.probe_scale import checkpoint  # noqa: E402
from benchmarks.random_init_control import finished_run  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.decode import forced_hidden, generate  # noqa: E402
from tasks.activations import initial_checkpoint  # noqa: E402
from tasks.training import checkpoint_file  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    def extra(ap):
        ap.add_argument("--step", type=int, default=None)
        ap.add_argument("--specs", type=int, default=600)
        ap.add_argument("--batch", type=int, default=100)

    args, _, data = finished_run(__doc__, extra)
    ckpt = checkpoint(args.workspace, args.step)
    model, saved = load_model(checkpoint_file(ckpt), device="cpu")
    init, _ = load_model(checkpoint_file(initial_checkpoint(str(args.workspace), ckpt)), device="cpu")
    vocab, specs = saved["vocab_obj"], karel.load_split(data, "train", limit=args.specs)
    gen, states = {}, {}
    for bf16 in (False, True):  # float32 first: the baseline
        gen[bf16], t_gen = timed(lambda: generate(model, specs, vocab, "constrained", batch_size=args.batch,
                                                  keep_layers=True, autocast=bf16))
        # both passes read the float32 programs, so their states can be compared
        states[bf16], t_init = timed(lambda: forced_hidden(init, specs, gen[False].programs, vocab, args.batch, bf16))
        print(f"{'bf16' if bf16 else 'float32'}: decode {t_gen:.1f} s, random-init pass {t_init:.1f} s")
        if not bf16:
            base = (t_gen, t_init)
    print(f"bf16 vs float32: decode {base[0] / t_gen:.2f}x, random-init pass {base[1] / t_init:.2f}x faster")
    same = (gen[True].programs == gen[False].programs).all(axis=1)
    print(f"step {ckpt['step']}, {len(specs)} specs: bf16 decoding writes {same.mean():.1%} of the programs "
          f"identically (the rest: near-ties in the greedy choice)")
    exact, rough = states[False].astype(np.float32), states[True].astype(np.float32)
    print(f"random-init states, bf16 vs float32 on the same programs: max |diff| {np.abs(rough - exact).max():.3f} "
          f"(largest |state| {np.abs(exact).max():.2f})")


if __name__ == "__main__":
    main()
