"""How many tokens does emergence take? Train one small-model recipe on a GPU for a wall-clock
budget and log, against tokens seen: constrained-decoding accuracy, diversity, program loss and
current-state probes (direction, relative position, facing wall; logistic regression on the
layer-mean hidden state at the emitting position, split by program) next to their majority.
``--grid-epochs N`` adds the pipeline's own probes (``probes.grid``, N epochs, on the GPU when
there is one; ``--grid-kinds``, linear and mlp2 by default; ``--grid-features``, all three by
default) on the same rows, and
the same probes on the step-0 model's states over the same programs (the random-init control):
``grid_<kind>_<feature>`` and ``grid_init_<kind>_<feature>``, test accuracy, split by program.
For targets 3-6 at chosen checkpoints: ``--grid-steps`` (probe there and at the end only),
``--grid-specs`` (a pipeline-sized probe set of train-split specs), ``--grid-semantics``,
``--grid-offsets`` and ``--grid-control`` (keys: ``grid_key``).

The schedule is sized to the budget: after a short timing run the step count is set so the
linear decay ends when the budget does. Several recipes can share one GPU (one process each).

    python benchmarks/gpu_emergence.py --data DIR --out runs.jsonl --tag base --budget 300 \
        [--model n_layer=8] [--train lr=3e-3] [--train batch_size=64]
    python benchmarks/gpu_emergence.py --tiny --out t.jsonl     # CPU check of the script
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import karel  # noqa: E402
from benchmarks.gpu_check import setup, sync  # noqa: E402
from model.config import preset  # noqa: E402
from model.decode import forced_hidden, generate  # noqa: E402
from model.metrics import generation_metrics, perplexity  # noqa: E402
from model.train import train_step  # noqa: E402
from probes.controls import majority_baseline, selectivity  # noqa: E402
from probes.grid import GridConfig, probe_grid  # noqa: E402
from probes.labels import make_labels  # noqa: E402
from probes.stacked import TrainConfig  # noqa: E402

FEATURES = ("direction", "rel_start", "facing_wall")
WARMUP_STEPS = 30  # 10 untimed, then 20 timed to size the schedule


def parse_sets(items):
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k] = v
    return out


def typed(cfg, overrides: dict):
    """Overrides parsed by the type of each field's default; a tuple (``spec_pairs=1,2,3,4,5``)
    as a comma list of ints, the only tuples the model and train configs hold. Not
    ``flows.presets``' parser: it would import pandas, which a bare GPU machine may lack."""
    out = {}
    for k, v in overrides.items():
        cur = getattr(cfg, k)
        if isinstance(cur, bool):
            out[k] = v.lower() in ("1", "true")
        elif isinstance(cur, tuple):
            out[k] = tuple(int(x) for x in v.split(",") if x.strip())
        else:
            out[k] = type(cur)(v)
    return out


def logistic_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                      max_iter: int = 300) -> tuple[float, float] | None:
    """(test accuracy, majority baseline) of a logistic regression on standardised ``x`` for the
    (n, H) labels ``y`` as one joint class; None when either side is too small to score."""
    cls = (y * np.array([13 ** i for i in range(y.shape[1])])[::-1]).sum(1)  # joint class
    if train.sum() < 10 or test.sum() < 10 or len(np.unique(cls[train])) < 2:
        return None
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(x[train]), cls[train])
    vals, counts = np.unique(cls[train], return_counts=True)
    return float(clf.score(scaler.transform(x[test]), cls[test])), float((cls[test] == vals[np.argmax(counts)]).mean())


def probe_scores(gen, specs, features=FEATURES, seed=0) -> dict:
    """Logistic-regression probes at offset 0, trained on 80% of programs, scored on the rest.

    rel_start has 169 joint classes: its fit costs far more CPU than the rest of an evaluation.
    """
    labels = make_labels(gen.programs, specs.inputs, ("original",), features, (0,))
    x = gen.hidden[labels.program, labels.position].astype(np.float32)
    test_prog = np.random.default_rng(seed).random(len(gen.programs)) < 0.2
    out = {}
    for feat in features:
        y = labels.get("original", feat, 0)
        ok = y[:, 0] >= 0
        scored = logistic_accuracy(x, y, ok & ~test_prog[labels.program], ok & test_prog[labels.program])
        if scored is not None:
            out[f"probe_{feat}"], out[f"majority_{feat}"] = scored
    return out


def grid_key(name: str, kind: str, feature: str, semantics: str = "original", offset: int = 0) -> str:
    """``<name>_<kind>_<feature>``, then ``@<semantics>`` unless original and the offset unless 0
    (``grid_mlp2_direction``, ``grid_init_linear_facing_wall@adversarial``, ``grid_control_mlp2_direction+1``)."""
    return (f"{name}_{kind}_{feature}" + ("" if semantics == "original" else f"@{semantics}")
            + ("" if offset == 0 else f"{offset:+d}"))


def grid_scores(gen, specs, init_model, vocab, features, epochs: int, semantics=("original",),
                offsets=(0,), control=False, chunk: int = 16, kinds=("linear", "mlp2"), graphs=False,
                seeds: int = 1) -> dict:
    """The pipeline's probes (``probes.grid``, layer mean, one seed, ``kinds``, batch 256) on
    ``gen``'s states (``grid_...``) and on ``init_model``'s states over the same programs
    (``grid_init_...``), every semantics and offset given; test accuracy by ``grid_key``, the mean
    over ``seeds`` probe seeds (each its own split and initial weights) and, with more than one,
    each seed's under ``<key>#seeds`` (in seed order, so two keys pair by seed). With
    ``control``: beside the trained states' probes the control task under ``original`` only, as
    the pipeline (``grid_control_...``, Hewitt & Liang, trained in the same pass) and the majority baseline on
    the same split (``grid_majority_<feature>``...)."""
    labels = make_labels(gen.programs, specs.inputs, semantics, features, offsets)
    if len(labels) == 0:  # e.g. a babbling model that ends every program at once
        return {"grid_pairs": 0}
    cfg = GridConfig(semantics=semantics, features=features, offsets=offsets, probes=tuple(kinds),
                     seeds=tuple(range(seeds)), report=("test",),
                     train=TrainConfig(epochs=epochs, batch_size=256, device="auto", chunk=chunk, graphs=graphs))
    init_hidden = forced_hidden(init_model, specs, gen.programs, vocab)
    per_seed: dict[str, dict[int, float]] = {}
    frames = []
    for name, hidden in (("grid", gen.hidden), ("grid_init", init_hidden)):
        if name == "grid" and control:
            df, _ = selectivity(hidden.astype(np.float32), labels, cfg, control_semantics=("original",))
        else:
            df = probe_grid(hidden.astype(np.float32), labels, cfg)
        frames.append(df.assign(prefix=np.where(df["task"] == "control", "grid_control", name)))
    if control:
        frames.append(majority_baseline(labels, cfg).assign(prefix="grid"))  # probe "majority"
    for df in frames:
        for r in df[df["split"] == "test"].itertuples():
            key = grid_key(r.prefix, r.probe, r.feature, r.semantics, r.offset)
            per_seed.setdefault(key, {})[int(r.seed)] = float(r.accuracy)
    out = {}
    for key, by_seed in per_seed.items():
        values = [by_seed.get(seed, float("nan")) for seed in range(seeds)]
        out[key] = float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")
        if seeds > 1:
            out[key + "#seeds"] = values
    out["grid_pairs"] = int(len(labels))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="dataset folder (karel.generate_dataset); generated if missing")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--eval-every-s", type=float, default=30.0)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--train", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--probe-features", default=",".join(FEATURES))
    ap.add_argument("--n-train", type=int, default=1_000_000, help="programs generated if --data is missing")
    ap.add_argument("--fixed-steps", action="store_true", help="keep the preset's schedule (no sizing to the budget)")
    ap.add_argument("--grid-epochs", type=int, default=0,
                    help="also the pipeline's probes and the random-init control at each evaluation (0: off)")
    ap.add_argument("--grid-features", default=",".join(FEATURES),
                    help="the features of those probes (rel_start's two heads cost a GPU little, unlike the "
                         "logistic fit's 169 joint classes)")
    ap.add_argument("--grid-steps", default="",
                    help="comma-separated steps: the probes run at these steps (and at the end) only, "
                         "each an extra evaluation; 'end': at the end only; empty: at every evaluation")
    ap.add_argument("--grid-specs", type=int, default=0,
                    help="probe the programs the model writes for this many train-split specs (the "
                         "pipeline's probe set; the paper's: 50,000) instead of the evaluation's test specs")
    ap.add_argument("--grid-semantics", default="original",
                    help="the semantics probed (targets 4 and 5: original,flip,adversarial)")
    ap.add_argument("--grid-offsets", default="0", help="the offsets probed (target 6: 0,1,2)")
    ap.add_argument("--grid-control", action="store_true",
                    help="the control task and the majority baseline beside the probes (target 3)")
    ap.add_argument("--grid-kinds", default="linear,mlp2",
                    help="probe kinds (the pipeline's target 4 reads mlp1's semantic content)")
    ap.add_argument("--grid-chunk", type=int, default=16,
                    help="probes trained side by side (a GPU is host-bound: more per chunk, fewer steps)")
    ap.add_argument("--grid-seeds", type=int, default=1,
                    help="probe seeds (splits and initial weights): more than one gives paired confidence intervals")
    ap.add_argument("--grid-graphs", action="store_true",
                    help="train the probes' steps as CUDA graphs (probes.stacked.TrainConfig.graphs)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    name = "smoke" if args.tiny else "cpu"
    m0, t0 = preset(name)
    m, t = preset(name, typed(m0, parse_sets(args.model)), typed(t0, parse_sets(args.train)))
    if args.tiny:
        args.budget, args.eval_every_s, args.n_eval = min(args.budget, 20), 5, 40
    if not args.data or not os.path.exists(os.path.join(args.data, "manifest.json")):
        args.data = args.data or "/tmp/emergence-data"
        n = 2000 if args.tiny else args.n_train
        karel.generate_dataset(karel.DataConfig(n_train_generated=n, n_val=500, n_test=2000), args.data,
                               workers=min(8, os.cpu_count() or 1), overwrite=True)
    train_samples = karel.load_split(args.data, "train")
    test = karel.load_split(args.data, "test", limit=args.n_eval)
    val = karel.load_split(args.data, "val", limit=200)
    vocab = karel.Vocab()
    device, model, fwd, opt, blocks = setup(m, t, train_samples, compile_model=False)
    init_model = copy.deepcopy(model).eval() if args.grid_epochs else None  # the random-init control
    features, grid_features, grid_semantics, grid_kinds = (tuple(f for f in names.split(",") if f) for names in (
        args.probe_features, args.grid_features, args.grid_semantics, args.grid_kinds))
    grid_offsets = tuple(int(o) for o in args.grid_offsets.split(",") if o.strip())
    items = [x.strip() for x in args.grid_steps.split(",") if x.strip()]
    grid_every = not items  # no list: the probes run at every evaluation
    grid_steps = sorted({int(x) for x in items if x != "end"})
    if any(0 < x < WARMUP_STEPS for x in grid_steps):
        raise ValueError(f"--grid-steps {args.grid_steps}: steps 1-{WARMUP_STEPS - 1} are the timing run's, "
                         "which evaluates nothing; pick 0 or a step after it")
    probe_specs = karel.load_split(args.data, "train", limit=args.grid_specs) if args.grid_specs else None

    def emit(rec):
        rec = {"tag": args.tag, "time": time.time(), **rec}
        print(json.dumps(rec), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")

    emit({"part": "config", "model": asdict(m), "train": asdict(t), "params": m.n_params(),
          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"})
    start = time.perf_counter()
    step = 0

    def evaluate(with_grid: bool):
        e0 = time.perf_counter()
        gen = generate(model, test, vocab, "constrained", batch_size=250)
        g = generation_metrics(gen, test, vocab)
        ppl = perplexity(model, val, vocab, batch_size=50)
        grid = {}
        if args.grid_epochs and with_grid:
            specs, probed = test, gen
            if probe_specs is not None:
                specs, probed = probe_specs, generate(model, probe_specs, vocab, "constrained", batch_size=250)
            grid = grid_scores(probed, specs, init_model, vocab, grid_features, args.grid_epochs, grid_semantics,
                               grid_offsets, args.grid_control, args.grid_chunk, grid_kinds, args.grid_graphs,
                               args.grid_seeds)
        rec = {"part": "eval", "step": step, "tokens_seen": step * t.tokens_per_step,
               "elapsed_s": round(time.perf_counter() - start, 1), "acc_spec": g["acc_spec"],
               "acc_all": g["acc_all"], "acc_spec_len6_10": g["acc_spec_len6_10"],
               "acc_spec_state": g["acc_spec_state"], "acc_spec_len6_10_state": g["acc_spec_len6_10_state"],
               "diversity": g["diversity"], "gen_len_mean": g["gen_len_mean"],
               "program_loss": math.log(ppl["ppl_program"]), "all_loss": math.log(ppl["ppl_all"]),
               **probe_scores(gen, test, features), **grid, "lr": opt.param_groups[0]["lr"]}
        rec["eval_s"] = round(time.perf_counter() - e0, 1)
        emit(rec)
        model.train()

    probed_at = 0 if grid_every or 0 in grid_steps else None  # the step last evaluated with the probes
    evaluate(probed_at == 0)
    # time some steps after a warm-up (the first steps carry CUDA's and the optimizer's start-up:
    # timed alone they made the sized schedules of 2026-12-04 end after 60 of 330 s), then size
    # the schedule so its decay ends with the budget
    for timed in (False, True):
        sync(device)
        t_probe = time.perf_counter()
        for _ in range(WARMUP_STEPS - 10 if timed else 10):
            train_step(fwd, opt, blocks, t, step, device)
            step += 1
        sync(device)
    rate = (WARMUP_STEPS - 10) / (time.perf_counter() - t_probe)
    remaining = args.budget - (time.perf_counter() - start)
    n_evals = remaining / args.eval_every_s
    total = step + int(rate * remaining * 0.85) - int(n_evals * 2 * rate)  # leave time for evals
    if not args.fixed_steps:
        t = replace(t, steps=max(total, step + 1), warmup_steps=min(t.warmup_steps, max(total // 20, 1)))
    emit({"part": "schedule", "steps_per_s": rate, "steps": t.steps, "warmup_steps": t.warmup_steps,
          "tokens_per_s": rate * t.tokens_per_step, "planned_tokens": t.steps * t.tokens_per_step})
    last_eval = time.perf_counter()
    while step < t.steps and time.perf_counter() - start < args.budget:
        train_step(fwd, opt, blocks, t, step, device)
        step += 1
        if step in grid_steps or time.perf_counter() - last_eval > args.eval_every_s:
            with_grid = grid_every or step in grid_steps
            evaluate(with_grid)
            last_eval = time.perf_counter()
            probed_at = step if with_grid else probed_at
    if probed_at != step:  # the end, unless its step was just evaluated with the probes
        evaluate(True)
    emit({"part": "done", "steps": step, "tokens_seen": step * t.tokens_per_step,
          "wall_s": time.perf_counter() - start,
          "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None})


if __name__ == "__main__":
    main()
