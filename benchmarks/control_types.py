"""How high the control task scores depends on what a surface "type" is: the data for a decision.

Issue 7's targets 3 and 6 ask every real probe to beat its control task. With the project's
type (the emitted action token and its index j, ``probes.controls.surface_types``) there are
only ~70 types and every probe memorises their random labels (81-97%), above any real probe.
This trains, on one checkpoint's real activations (layer mean, original semantics, every main
feature, linear/mlp1/mlp2, the ``cpu`` preset's budget), the real task beside control tasks
whose types are finer, each in one pass, and prints the test accuracy of each:

- ``token_index``: (action j, j), the project's control task;
- ``token_index_prev``: (action j, j, action j-1 or the program start);
- ``prefix``: the whole program prefix up to action j;
- ``instance``: a label per row (i.i.d., which Hewitt & Liang reject: nothing to memorise).

Labels are drawn once per type from the feature's empirical distribution, as in
``probes.controls.control_labels``. Nothing here changes the project's control task.

Run: .venv/bin/python benchmarks/control_types.py ACTIVATIONS_DIR [--offset 0] [--epochs 30]
ACTIVATIONS_DIR is an ``artifacts/activations/<key>`` folder of a workspace.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from probes.controls import PROGRAM_START, draw_per_type, surface_types  # noqa: E402
from probes.grid import GridConfig, Task, label_tasks, train_tasks  # noqa: E402
from probes.labels import MAIN_FEATURES, check_feature, hidden_rows, make_labels  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402
from tasks.activations import load_activations  # noqa: E402
from tasks.probing import subsample  # noqa: E402


def type_ids(labels, programs: np.ndarray, kind: str) -> np.ndarray:
    """(n,) type id of each row under ``kind`` (see the module docstring)."""
    p, j = labels.program, labels.position
    if kind == "token_index":
        cols = surface_types(labels)
    elif kind == "token_index_prev":
        prev = np.where(j > 0, programs[p, np.maximum(j - 1, 0)], PROGRAM_START)
        cols = np.column_stack([surface_types(labels), prev])
    elif kind == "prefix":
        cols = np.where(np.arange(programs.shape[1])[None, :] <= j[:, None], programs[p], -9)
    elif kind == "instance":
        return np.arange(len(p))
    else:
        raise ValueError(f"type kind: {kind!r}")
    return np.unique(cols, axis=0, return_inverse=True)[1].reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("activations")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-pairs", type=int, default=12_000, help="as probe.max_train_pairs")
    # one thread, as the pipeline's grids train: the thread count changes the matmuls' rounding,
    # and a probe's result moves with it (by up to 5 points per seed at 30 epochs; RESULTS.md)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    a = subsample(load_activations({"path": args.activations}), args.max_pairs)
    labels = make_labels(a["programs"], a["inputs"], ("original",), MAIN_FEATURES, (args.offset,), True)
    grid = GridConfig(semantics=("original",), features=MAIN_FEATURES, offsets=(args.offset,),
                      seeds=tuple(range(args.seeds)),
                      train=TrainConfig(epochs=args.epochs, batch_size=args.batch, threads=args.threads))
    kinds = ("token_index", "token_index_prev", "prefix", "instance")
    tasks = label_tasks(labels, grid)
    for kind in kinds:
        types = type_ids(labels, a["programs"], kind)
        print(f"{kind}: {types.max() + 1} types over {len(types)} rows")
        for feat in MAIN_FEATURES:
            y = labels.get("original", feat, args.offset)
            tasks.append(Task(dict(semantics="original", feature=feat, offset=args.offset, task=kind),
                              check_feature(feat), draw_per_type(y, types, f"{kind}/{feat}/{args.offset}")))
    t = time.perf_counter()
    rows = train_tasks(hidden_rows(a["hidden"].astype(np.float32), labels), labels.program, tasks, grid, layer=-1)
    test = rows[rows["split"] == "test"]
    table = test.pivot_table(index=["feature", "probe"], columns="task", values="accuracy", aggfunc="mean")
    print(f"\n{len(a['lengths'])} programs, offset {args.offset}, {args.epochs} epochs at batch {args.batch}, "
          f"{args.seeds} seeds: {time.perf_counter() - t:.0f} s. Test accuracy, mean over seeds:")
    print((100 * table[["real", *kinds]]).round(1).to_string())


if __name__ == "__main__":
    main()
