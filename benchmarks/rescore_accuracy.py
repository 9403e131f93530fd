"""Generative accuracy of a finished run's checkpoints under both checks: the paper's (the output
grids read as the text shows them; the robot glyph hides the markers under it) and the whole world
state (those markers too).

Runs evaluated before ``model.metrics.correct_pairs`` compared the text stored only the
whole-state figure; re-keying them would retrain (cache keys hash the ``model`` package). This
decodes the same test specs with the same constrained greedy decoding as the evaluate stage and
prints, per checkpoint, both accuracies on all lengths and on lengths 6..10, with the stored
figure beside the whole-state one as a check (they must agree). Nothing is written.

Run: .venv/bin/python benchmarks/rescore_accuracy.py WORKSPACE [--preset cpu] [--steps 1000,2000]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import karel  # noqa: E402
from benchmarks.random_init_control import artifacts, finished_run  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.decode import generate  # noqa: E402
from model.metrics import generation_metrics  # noqa: E402


def main() -> None:
    args, cfg, data = finished_run(__doc__, lambda ap: ap.add_argument(
        "--steps", default="", help="comma-separated checkpoint steps (default: all evaluated)"))
    root = args.workspace
    test = karel.load_split(data, "test", limit=cfg.eval.n_test_specs)
    stored = {m["checkpoint_key"]: d for d, m in artifacts(root, "evaluate")}
    wanted = {int(s) for s in args.steps.split(",") if s}
    print("step  text: all  6..10 | state: all  6..10 | stored acc_spec (whole state)")
    for d, meta in sorted(artifacts(root, "checkpoint"), key=lambda x: x[1]["step"]):
        step = meta["step"]
        if (wanted and step not in wanted) or d.name not in stored:
            continue
        model, saved = load_model(d / "model.pt", device="cpu")
        vocab = saved["vocab_obj"]
        g = generation_metrics(generate(model, test, vocab, "constrained", batch_size=cfg.eval.batch_size), test, vocab)
        old = json.loads((stored[d.name] / "metrics.json").read_text())["acc_spec"]
        print(f"{step:5d}  {g['acc_spec']:9.3f}  {g['acc_spec_len6_10']:5.3f} | {g['acc_spec_state']:10.3f}  "
              f"{g['acc_spec_len6_10_state']:5.3f} | {old:.3f}", flush=True)


if __name__ == "__main__":
    main()
