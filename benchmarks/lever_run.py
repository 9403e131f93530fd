"""One lever arm trained from step 0, scored like the evaluate stage, without the probes.

Trains a preset's model with ``--set`` overrides (e.g. ``model.n_layer=6``) into OUT (resuming
what is there), then evaluates the checkpoints of ``--eval-steps`` on the preset's test and val
specs exactly as the evaluate stage does, one JSON line per step. The baseline arm is a pipeline
run of the same preset and seed on the same machine: its ``checkpoint_metrics`` rows come from
the same code (a different CPU trains a different trajectory from the same seed, so never compare
across machines). ``--data`` reuses that run's dataset folder; without it the preset's dataset is
generated into OUT (the same bytes: generation is deterministic).

SIGTERM writes a checkpoint at the current step and scores the asked checkpoints already on disk;
running the same command again resumes the training (long arms can span several sittings).
``--stop-after STEP`` ends the training at that step of the preset's schedule (the learning rate
follows the whole schedule, so step 1,000 of a stopped arm is step 1,000 of a full one); run again
with a later STEP, or without it, to go on.
``--score-only`` trains nothing: it scores the checkpoints on disk, e.g. on more test specs than
the preset's (``--set eval.n_test_specs=2000``: all of the ``cpu`` preset's).

Run: .venv/bin/python benchmarks/lever_run.py OUT [--preset cpu] [--data DIR]
     [--eval-steps 1000,1500,2000] [--stop-after 1000] [--set section.field=value ...] [--score-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import karel  # noqa: E402
from flows.presets import StudyConfig, load_preset  # noqa: E402
from model.checkpoint import checkpoint_path, list_checkpoints, load_model  # noqa: E402
from model.metrics import evaluate_checkpoint  # noqa: E402
from model.train import train  # noqa: E402

SHOWN = ("acc_spec", "acc_spec_len6_10", "acc_all_len6_10", "diversity", "ppl_program",
         "ppl_program_len6_10", "gen_len_mean", "ref_len_mean", "acc_all", "gen_len_correct_mean",
         "ref_len_correct_mean", "ended_rate", "parse_rate")


def score(cfg: StudyConfig, data: Path, checkpoints: list[tuple[Path, int]]):
    """Yield ``{"step", SHOWN..., acc_spec_len1, ...}`` (the last: accuracy by reference length)
    for each ``(training folder, step)`` checkpoint, scored on the preset's test and val specs as
    the evaluate stage does."""
    test = karel.load_split(data, "test", limit=cfg.eval.n_test_specs)
    val = karel.load_split(data, "val", limit=cfg.eval.n_val_samples)
    for folder, step in checkpoints:
        model, saved = load_model(checkpoint_path(folder, step))
        m = evaluate_checkpoint(model, saved["vocab_obj"], test, val, batch_size=cfg.eval.batch_size)
        by_length = sorted((k for k in m if k.startswith("acc_spec_len") and k[12:].isdigit()),
                           key=lambda k: int(k[12:]))
        yield {"step": step, **{k: round(float(m[k]), 4) for k in (*SHOWN, *by_length)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--data", type=Path, default=None, help="the preset's dataset folder (default: OUT/data)")
    ap.add_argument("--eval-steps", default="", help="comma-separated checkpoint steps (default: the last)")
    ap.add_argument("--set", action="append", default=[], help="a preset override, as semprobe run takes")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="end the training at this step of the preset's schedule (resumable)")
    ap.add_argument("--score-only", action="store_true", help="train nothing: score the checkpoints on disk")
    args = ap.parse_args()
    cfg = load_preset(args.preset, args.set)
    t = cfg.train
    data = args.data or args.out / "data"
    if args.data is None and not data.exists():
        karel.generate_dataset(cfg.data, data, workers=2)
    steps = [int(s) for s in args.eval_steps.split(",") if s.strip()] or [t.steps]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.perf_counter()
    if not args.score_only:
        done = train(cfg.model, t, data, args.out / "train", progress=False, should_stop=stop.is_set,
                     stop_after=args.stop_after)
        reached = done[-1][0]
        print(json.dumps({"part": "trained" if reached == t.steps else "stopped", "steps": reached,
                          "seconds": round(time.perf_counter() - t0, 1), "overrides": args.set}), flush=True)
    on_disk = {step for step, _ in list_checkpoints(args.out / "train")}
    missing = [s for s in steps if s not in on_disk]
    if missing:
        print(json.dumps({"part": "not yet trained", "eval_steps": missing}), flush=True)
    for row in score(cfg, data, [(args.out / "train", s) for s in steps if s in on_disk]):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
