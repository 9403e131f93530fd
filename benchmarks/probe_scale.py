"""Probe-set size on a finished run: with more probed programs, do the probes read the trained
model's states beyond what the random-init model's states over the same programs hold?

The ``cpu`` preset probes ~750 specs per checkpoint (~1,900 pairs at offset 0, ~190 of them in
the test split), and there its probes read nothing beyond the random-init control (RESULTS.md).
The paper probes 50,000 specs. This decodes ``--specs`` train-split specs with one checkpoint
(default: the last) and teacher-forces the same programs through the step-0 model, then trains
the pipeline's probe grid (``probes.grid.probe_grid``: the same estimators, splits by program,
selection on val, test reported) on the first N programs for each N of ``--sizes``, on both sets
of states, and prints per feature, offset, semantics and kind the test accuracy (mean over
seeds) of the trained states, of the random-init states and of the majority baseline. The
decoded states are kept in ``--cache`` (an .npz; reused when its checkpoint and spec count
match), nothing is written to the workspace. With ``--sklearn`` it also prints a logistic
regression (scikit-learn) on both states, and a positive control of the alignment on the real
states: the action each state emits, and the one it has just read.

Run: .venv/bin/python benchmarks/probe_scale.py WORKSPACE [--preset cpu] [--step STEP]
     [--specs 6000] [--sizes 750,2000,6000] [--cache FILE] [--kinds linear,mlp1,mlp2]
     [--offsets -1,0,1] [--epochs 30] [--batch 256] [--seeds 2] [--sklearn] [--no-grid]
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import karel  # noqa: E402
from benchmarks.gpu_emergence import logistic_accuracy  # noqa: E402
from benchmarks.random_init_control import artifacts, finished_run, sklearn_reference  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.decode import forced_hidden, generate  # noqa: E402
from probes.controls import majority_baseline  # noqa: E402
from probes.grid import GridConfig, probe_grid, row_splits  # noqa: E402
from probes.labels import hidden_rows, make_labels  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402
from tasks.activations import initial_checkpoint  # noqa: E402
from tasks.training import checkpoint_file  # noqa: E402

SEMANTICS = ("original", "flip", "adversarial")
FEATURES = ("direction", "rel_start", "facing_wall")


def options(ap) -> None:
    ints = lambda s: tuple(int(v) for v in s.split(","))
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    ap.add_argument("--specs", type=int, default=6000, help="train-split specs to decode")
    ap.add_argument("--sizes", type=ints, default=(750, 2000, 6000), help="programs probed, a curve")
    ap.add_argument("--cache", type=Path, default=None, help="npz keeping the decoded states")
    ap.add_argument("--kinds", default="linear,mlp1,mlp2")
    ap.add_argument("--offsets", type=ints, default=(-1, 0, 1))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sklearn", action="store_true", help="also a logistic regression (scikit-learn)")
    ap.add_argument("--sklearn-features", type=lambda s: tuple(s.split(",")), default=("direction", "facing_wall"))
    ap.add_argument("--no-grid", action="store_true", help="skip the pipeline's probe grid")


def checkpoint(root: Path, step: int | None) -> dict:
    """The checkpoint artifact at ``step`` (default: the highest step) of the workspace's run."""
    ckpts = [{"key": d.name, "path": str(d), **m} for d, m in artifacts(root, "checkpoint")]
    runs = {c["train_key"] for c in ckpts}
    if len(runs) != 1:
        raise SystemExit(f"{root}: expected the checkpoints of one training run, found {len(runs)}")
    if step is None:
        step = max(c["step"] for c in ckpts)
    found = [c for c in ckpts if c["step"] == step]
    if not found:
        raise SystemExit(f"{root}: no checkpoint at step {step}; have {sorted(c['step'] for c in ckpts)}")
    return found[0]


def decoded_states(root: Path, ckpt: dict, specs: karel.Samples, batch: int, cache: Path | None) -> dict:
    """Programs, inputs and both sets of layer-mean states for ``specs`` (from ``cache`` if it fits)."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            if str(z["checkpoint_key"]) == ckpt["key"] and np.array_equal(z["spec_ids"], specs.ids):
                print(f"states from {cache}")
                return {k: z[k] for k in ("programs", "lengths", "hidden", "hidden_init")}
    model, saved = load_model(checkpoint_file(ckpt), device="cpu")
    vocab = saved["vocab_obj"]
    t = time.perf_counter()
    gen = generate(model, specs, vocab, "constrained", batch_size=batch)
    t_gen = time.perf_counter() - t
    init, _ = load_model(checkpoint_file(initial_checkpoint(str(root), ckpt)), device="cpu")
    t = time.perf_counter()
    hidden_init = forced_hidden(init, specs, gen.programs, vocab, batch)
    print(f"decoded {len(specs)} specs in {t_gen:.0f} s, random-init states in {time.perf_counter() - t:.0f} s; "
          f"{int(gen.lengths.sum())} actions, mean length {gen.lengths.mean():.2f}")
    out = {"programs": gen.programs, "lengths": gen.lengths, "hidden": gen.hidden, "hidden_init": hidden_init}
    if cache is not None:
        np.savez(cache, checkpoint_key=ckpt["key"], spec_ids=specs.ids, **out)
    return out


def first_programs(acts: dict, specs: karel.Samples, n: int) -> dict:
    """The first ``n`` programs with their states and spec inputs (program-major worlds)."""
    a = {k: v[:n] for k, v in acts.items()}
    w = len(specs.inputs) // len(specs)
    a["inputs"] = karel.WorldBatch(*(getattr(specs.inputs, f)[: n * w] for f in ("walls", "markers", "row", "col", "dir")))
    return a


def emitted_action_lr(a: dict) -> None:
    """Positive control of the alignment on real states, by logistic regression on every action
    row (the pipeline's ``probes.controls.emitted_action`` uses its grid on the offset-0 rows):
    from the state at row (p, j), the action it emits (token j) and the action it has just read
    (token j-1, or ``{``). The trained model's state decides token j, so a probe reads it there;
    the random-init model's state has not seen it, so its probe stays near the majority. Both
    states have read token j-1. A state taken one position late would read token j from both."""
    labels = make_labels(a["programs"], a["inputs"], ("original",), ("direction",), (0,))
    p, j = labels.program, labels.position
    split = row_splits(p, 0)
    emitted = labels.token[:, None]
    read = np.where(j > 0, a["programs"][p, np.maximum(j - 1, 0)], 5).astype(np.int64)[:, None]
    for name, y in (("emitted action j", emitted), ("read action j-1", read)):
        got = {k: logistic_accuracy(hidden_rows(a[k], labels).astype(np.float32), y, split == 0, split == 2)
               for k in ("hidden", "hidden_init")}
        if got["hidden"] is None:  # e.g. a babbling model that writes one action everywhere
            print(f"  positive control: {name}: too few rows or classes to score")
            continue
        print(f"  positive control: {name:17s} trained {got['hidden'][0]:.3f}  random-init "
              f"{got['hidden_init'][0]:.3f}  majority {got['hidden'][1]:.3f}")


def curve_point(a: dict, grid: GridConfig, drop_last: bool) -> pd.DataFrame:
    """Test accuracy (mean over seeds) of the trained and random-init states, and the majority."""
    labels = make_labels(a["programs"], a["inputs"], grid.semantics, grid.features, grid.offsets, drop_last)
    keys = ["semantics", "feature", "offset", "probe"]
    parts = []
    for name, x in (("trained", a["hidden"]), ("random_init", a["hidden_init"])):
        rows = probe_grid(x.astype(np.float32), labels, grid)
        parts.append(rows[rows["split"] == "test"].groupby(keys)["accuracy"].mean().rename(name))
    table = pd.concat(parts, axis=1).reset_index()
    maj = majority_baseline(labels, grid)
    maj = maj[maj["split"] == "test"].groupby(keys[:3])["accuracy"].mean().rename("majority").reset_index()
    splits = [row_splits(labels.program, s, grid.split) for s in grid.seeds]
    n_test = int(np.mean([(labels.valid(0) & (s == 2)).sum() for s in splits]))
    return table.merge(maj, on=keys[:3]).assign(pairs=len(labels), test_rows_offset0=n_test)


def main() -> None:
    args, cfg, data = finished_run(__doc__, options)
    # lbfgs stops at its iteration cap on the larger sets: the same cap for both states
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    root = args.workspace
    ckpt = checkpoint(root, args.step)
    specs = karel.load_split(data, "train", limit=args.specs)
    acts = decoded_states(root, ckpt, specs, cfg.activations.batch_size, args.cache)
    grid = GridConfig(semantics=SEMANTICS, features=FEATURES, offsets=args.offsets,
                      probes=tuple(args.kinds.split(",")), seeds=tuple(range(args.seeds)),
                      train=TrainConfig(epochs=args.epochs, batch_size=args.batch, threads=1))
    print(f"checkpoint step {ckpt['step']} ({ckpt['key']}); probes {grid.probes}, {args.epochs} epochs at "
          f"batch {args.batch}, {args.seeds} seeds; test accuracy, mean over seeds")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    for n in args.sizes:
        n = min(n, len(specs))
        a = first_programs(acts, specs, n)
        if args.sklearn:
            print(f"\n== {n} programs, logistic regression (scikit-learn, seed-0 split), test accuracy")
            emitted_action_lr(a)
            sklearn_reference(a, cfg, args.sklearn_features, args.offsets)
        if args.no_grid:
            continue
        t = time.perf_counter()
        table = curve_point(a, grid, cfg.probe.drop_last)
        print(f"\n== {n} programs: {table['pairs'].iloc[0]} action positions, ~{table['test_rows_offset0'].iloc[0]} "
              f"test rows at offset 0 ({time.perf_counter() - t:.0f} s)")
        wide = table.pivot(index=["feature", "offset", "probe"], columns="semantics",
                           values=["trained", "random_init", "majority"])
        wide.columns = [f"{sem[:4]}:{col.replace('random_init', 'init').replace('majority', 'maj')}" for col, sem in wide.columns]
        order = [f"{sem[:4]}:{c}" for sem in SEMANTICS for c in ("trained", "init", "maj")]
        print((100 * wide[order]).round(1).to_string())


if __name__ == "__main__":
    main()
