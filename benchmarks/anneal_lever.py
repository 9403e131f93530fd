"""The length-anneal lever (``train.anneal_steps``) against the same run's own last steps.

Trains a preset's model to step FROM (or resumes a folder that has it), then finishes the
schedule twice from that same checkpoint: once as the preset does, once with the last
``steps - FROM`` steps' rows drawn only from programs of at least ``--min-actions`` actions.
Both arms share every step before FROM, so the difference is the lever alone (a different machine
trains a different trajectory from the same seed: compare arms of one run, never across runs).
Each arm's last checkpoint is evaluated like the evaluate stage (the preset's test and val specs)
and printed as one JSON line.

Run: .venv/bin/python benchmarks/anneal_lever.py OUT [--preset cpu] [--from-step 1500] [--min-actions 6]
[--set section.field=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import karel  # noqa: E402
from benchmarks.lever_run import score  # noqa: E402
from flows.presets import load_preset  # noqa: E402
from model.checkpoint import checkpoint_path  # noqa: E402
from model.data import make_stream, tokenize  # noqa: E402
from model.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--from-step", type=int, default=1500)
    ap.add_argument("--min-actions", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="a preset override, as semprobe run takes")
    args = ap.parse_args()
    cfg = load_preset(args.preset, args.set)
    t, data, base = cfg.train, args.out / "data", args.out / "preset"
    if not data.exists():
        karel.generate_dataset(cfg.data, data, workers=2)
    train(cfg.model, t, data, base, stop_after=args.from_step, progress=False)
    anneal = args.out / f"anneal-{args.min_actions}"
    anneal.mkdir(parents=True, exist_ok=True)
    start = checkpoint_path(anneal, args.from_step)
    if not start.exists():
        shutil.copy(checkpoint_path(base, args.from_step), start)
    ids, lengths = tokenize(karel.load_split(data, "train"), karel.Vocab(t.robot_markers))
    # the checkpoint's config stays the preset's: the anneal lives in the data stream only
    rows = make_stream(ids, lengths, replace(t, anneal_steps=t.steps - args.from_step,
                                             anneal_min_actions=args.min_actions))
    train(cfg.model, t, None, anneal, blocks=rows, progress=False)
    train(cfg.model, t, data, base, progress=False)  # the preset's own last steps
    arms = (base, anneal)
    for arm, row in zip(arms, score(cfg, data, [(arm, t.steps) for arm in arms])):
        print(json.dumps({"arm": arm.name, **row}))


if __name__ == "__main__":
    main()
