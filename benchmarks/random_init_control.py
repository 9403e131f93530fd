"""The random-init control for a finished run that predates it: probes on the step-0 model's
states over each probed checkpoint's own programs, next to the run's probes on the same rows.

Runs written before ``activations.random_init`` existed have no ``random_init`` controls; their
training cannot be re-keyed without retraining, so this computes the control from the stored
artifacts with the pipeline's own functions (``model.decode.forced_hidden``, the same probe
grid, labels, subsample and splits as ``tasks.probing``) and prints, per probed checkpoint,
offset 0, layer mean, test split: the run's probe accuracy, the random-init control, the
majority baseline and the control task. With ``--sklearn`` it also prints a logistic regression
(scikit-learn, to convergence, the seed-0 split) on the trained and on the random-init states for
direction and facing wall under every semantics: the pipeline's probes at a few thousand pairs
are under-trained (BENCHMARKS.md), and an alternative semantics' labels can be easier or harder
to read from the text itself. Nothing is written to the workspace.

Run: .venv/bin/python benchmarks/random_init_control.py WORKSPACE [--preset cpu] [--set k=v ...] [--sklearn]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import karel  # noqa: E402
from flows.presets import load_preset  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from benchmarks.gpu_emergence import logistic_accuracy  # noqa: E402
from model.decode import forced_hidden  # noqa: E402
from probes.grid import row_splits  # noqa: E402
from probes.labels import hidden_rows, make_labels  # noqa: E402
from tasks.activations import concat_samples, initial_checkpoint, load_activations  # noqa: E402
from tasks.probing import random_init_results, random_init_rows, subsample  # noqa: E402
from tasks.training import checkpoint_file  # noqa: E402


def artifacts(root: Path, stage: str) -> list[tuple[Path, dict]]:
    out = []
    for d in sorted((root / "artifacts" / stage).glob("*")):
        if (d / "manifest.json").exists():
            out.append((d, json.loads((d / "manifest.json").read_text())["meta"]))
    return out


def finished_run(doc: str, extra=lambda ap: None):
    """Command line of a script over a finished run's workspace: (args, config, dataset folder).
    ``extra(parser)`` adds the script's own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    extra(ap)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    (data,) = [d / "data" for d, _ in artifacts(args.workspace, "dataset")]
    return args, load_preset(args.preset, args.overrides), data


def main() -> None:
    args, cfg, data = finished_run(__doc__, lambda ap: ap.add_argument(
        "--sklearn", action="store_true", help="also the logistic-regression reference"))
    root = args.workspace
    train = karel.load_split(data, "train", limit=cfg.activations.n_train_specs)
    test = karel.load_split(data, "test", limit=cfg.activations.n_test_specs)
    specs = concat_samples(train, test)
    init, vocab = None, None
    probes = {(m["checkpoint_key"], m["semantics"]): d for d, m in artifacts(root, "probes")}
    for d, meta in sorted(artifacts(root, "activations"), key=lambda x: x[1]["step"]):
        step = meta["step"]
        if step == 0:
            continue
        a = load_activations({"path": str(d)})
        if not np.array_equal(a["spec_ids"], specs.ids):
            raise ValueError(f"{d}: its specs are not {args.preset}'s first train/test specs; pass --preset/--set")
        if init is None:  # the step-0 checkpoint of the same training run
            step0 = initial_checkpoint(str(root), {"key": meta["checkpoint_key"]})
            init, saved = load_model(checkpoint_file(step0), device="cpu")
            vocab = saved["vocab_obj"]
        a["hidden_init"] = forced_hidden(init, specs, a["programs"], vocab, cfg.activations.batch_size)
        a = subsample(a, cfg.probe.max_train_pairs)
        labels = make_labels(a["programs"], a["inputs"], ("original",), cfg.probe.features, (0,), cfg.probe.drop_last)
        ri = pd.DataFrame(random_init_rows(random_init_results(a["hidden_init"].astype(np.float32), labels, cfg.probe)))
        pdir = probes[(meta["checkpoint_key"], "original")]
        summ = pd.read_parquet(pdir / "probe_summary.parquet")
        real = summ[(summ["offset"] == 0) & (summ["layer"] == -1) & (summ["split"] == "test")]
        ctrl = pd.read_parquet(pdir / "controls.parquet")
        ctrl = ctrl[ctrl["offset"] == 0]
        print(f"\nstep {step}: {len(labels)} action positions")
        for r in ri.itertuples():
            acc = real[(real["feature"] == r.feature) & (real["probe"] == r.probe)]["mean"].mean()
            maj = ctrl[(ctrl["feature"] == r.feature) & (ctrl["kind"] == "majority")]["value"].mean()
            ct = ctrl[(ctrl["feature"] == r.feature) & (ctrl["kind"] == "control_task") & (ctrl["probe"] == r.probe)]["value"].mean()
            print(f"  {r.feature:12s} {r.probe:6s} probe {acc:.3f}  random-init {r.value:.3f}  "
                  f"majority {maj:.3f}  control task {ct:.3f}  probe - random-init {acc - r.value:+.3f}")

        if args.sklearn:
            sklearn_reference(a, cfg)


def sklearn_reference(a: dict, cfg, feats=("direction", "facing_wall"), offsets=(0,)) -> None:
    """Logistic regression on the trained vs the random-init states, every semantics.
    lbfgs stops at 500 iterations, the same budget for both states; its ConvergenceWarning is
    silenced (on the larger sets it does not converge by then)."""
    sems = ("original", "flip", "adversarial")
    labels = make_labels(a["programs"], a["inputs"], sems, feats, offsets, cfg.probe.drop_last)
    split = row_splits(labels.program, 0)
    states = {"trained": hidden_rows(a["hidden"].astype(np.float32), labels),
              "random-init": hidden_rows(a["hidden_init"].astype(np.float32), labels)}
    for feat in feats:
        for off in offsets:
            for sem in sems:
                y = labels.get(sem, feat, off)
                ok = y[:, 0] >= 0
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    got = {k: logistic_accuracy(x, y, ok & (split == 0), ok & (split == 2), max_iter=500)
                           for k, x in states.items()}
                if got["trained"] is None:
                    continue
                print(f"  sklearn {feat:12s} offset {off:+d} {sem:12s} trained {got['trained'][0]:.3f}  random-init "
                      f"{got['random-init'][0]:.3f}  majority {got['trained'][1]:.3f}")


if __name__ == "__main__":
    main()
