"""The evaluate stage's work on one checkpoint: both decoding modes from one pass over the prompts
(``model.decode.generate_modes``, what ``model.metrics.evaluate_checkpoint`` does) against one
``generate`` call per mode (the baseline: each mode reads the ~374-token prompts again).

On one checkpoint of a finished run (default: the last), with the preset's evaluation sizes
(``eval.n_test_specs`` test specs, ``eval.n_val_samples`` val samples, ``eval.batch_size``):
the two arms alternate ``--rounds`` times, best time of each kept. Prints each arm's seconds
split into decoding and perplexity, the ratio, and whether the two arms' metrics are equal
(they must be, bit for bit).

Run: .venv/bin/python benchmarks/bench_eval.py WORKSPACE [--step STEP] [--rounds 2] [--preset cpu]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import karel  # noqa: E402
from benchmarks.probe_scale import checkpoint  # noqa: E402
from benchmarks.random_init_control import finished_run  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.decode import generate, generate_modes  # noqa: E402
from model.metrics import DECODING_MODES as MODES, decoding_metrics, perplexity  # noqa: E402
from tasks.training import checkpoint_file  # noqa: E402


def main() -> None:
    def extra(ap):
        ap.add_argument("--step", type=int, default=None)
        ap.add_argument("--rounds", type=int, default=2)

    args, cfg, data = finished_run(__doc__, extra)
    ev = cfg.eval
    ckpt = checkpoint(args.workspace, args.step)
    model, saved = load_model(checkpoint_file(ckpt), device="cpu")
    vocab = saved["vocab_obj"]
    test = karel.load_split(data, "test", limit=ev.n_test_specs)
    val = karel.load_split(data, "val", limit=ev.n_val_samples)
    arms = {
        "one generate call per mode (baseline)":
            lambda: {m: generate(model, test, vocab, m, batch_size=ev.batch_size) for m in MODES},
        "both modes from one prompt pass": lambda: generate_modes(model, test, vocab, MODES, batch_size=ev.batch_size),
    }
    best, outs = {}, {}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            t = time.perf_counter()
            outs[name] = decoding_metrics(fn(), test, vocab)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    t = time.perf_counter()
    perplexity(model, val, vocab, batch_size=max(ev.batch_size // 4, 1))
    ppl = time.perf_counter() - t
    (base, base_s), (new, new_s) = best.items()
    print(f"step {ckpt['step']}, {len(test)} test specs, {len(val)} val samples, batch {ev.batch_size}, "
          f"best of {args.rounds}; perplexity pass {ppl:.1f} s (both arms)")
    for name, s in best.items():
        print(f"  {name}: decoding {s:.1f} s, evaluation {s + ppl:.1f} s")
    print(f"decoding {base_s / new_s:.2f}x, the whole evaluation {(base_s + ppl) / (new_s + ppl):.2f}x faster than "
          f"the baseline; metrics equal: {outs[base] == outs[new]}")


if __name__ == "__main__":
    main()
