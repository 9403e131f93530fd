"""Stage 4: the probe grid of one checkpoint under one semantics.

All features x offsets x probe kinds x seeds on the layer mean train in one batched grid; with
``per_layer`` a linear grid at the current offset (``current_offset``: 0, or -1 on fed reference
programs) also runs on every single layer (0 = token embeddings).
Under ``original`` the controls (majority baseline, control task, selectivity) are added. Under
every semantics, where the dump has ``hidden_init``, the random-init control: the same grid at
``ProbeConfig.init_offsets`` (``random_init_offsets``, else the alternatives' offsets when
limited, else the current offset; every kind and seed, the same rows and splits) on the random-init model's states over the same
programs: seed means in ``controls``, per-seed test rows in ``random_init_results`` (for the
paired drops beyond random-init of ``tasks.phases``). Under ``original`` also the alignment check:
probes that read the action each offset-0 state emits, on the trained and the random-init states
(``emitted_action_rows``).
Controls rows carry the grid's ``probe_key`` and ``semantics``.
Each (seed, kind) unit of its grids is kept in ``<workspace>/work/probes/<key>/<arithmetic tag>``
as it finishes (``probes.resume``), so a grid killed half way resumes there on a machine whose
arithmetic matches (``tasks.stage.arithmetic_tag``); the folder goes once this process has
computed the artifact.
The artifact holds ``probe_results``, ``probe_summary`` and ``controls`` as Parquet, in the
DuckDB tables' columns (layer -1 = the layer mean).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from probes.controls import EMITTED_ACTION, emitted_action, majority_baseline, selectivity
from probes.grid import GridConfig, probe_grid
from probes.labels import make_labels
from probes.resume import resumable
from probes.stacked import TrainConfig
from probes.stats import paired_diff, summarize
from tasks.activations import load_activations
from tasks.stage import arithmetic_tag, recomputed, run_stage, stage_key
from tasks.probe_config import ProbeConfig
from tasks.stage_configs import MEAN_LAYER, current_offset
from tasks.workspace import Workspace

# task modules whose code counts in the key too (stage_key)
HELPERS = ("tasks.activations", "tasks.stage_configs", "tasks.probe_config")


def probe_key(cfg: ProbeConfig, acts_key: str, semantics: str) -> str:
    return stage_key("probes", {"probe": cfg, "semantics": semantics}, [acts_key], ["karel", "probes"], __name__,
                     HELPERS)


def grid_config(cfg: ProbeConfig, semantics: str, **changes) -> GridConfig:
    """The grid of ``semantics``; one torch thread per grid: the flow trains up to three grids at
    once on threads of one process, and three 2-thread OpenMP teams on 2 cores took 1.26x the
    time of three 1-thread ones (BENCHMARKS.md)."""
    base = dict(semantics=(semantics,), features=cfg.features, offsets=cfg.offsets_for(semantics),
                probes=cfg.kinds, seeds=tuple(range(cfg.seeds)),
                train=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, threads=1, device=cfg.device, patience=cfg.patience))
    return GridConfig(**{**base, **changes})


def subsample(acts: dict, max_pairs: int, seed: int = 0) -> dict:
    """Keep whole programs (never split one) until about ``max_pairs`` action positions."""
    lengths = acts["lengths"]
    if lengths.sum() <= max_pairs:
        return acts
    order = np.random.default_rng(seed).permutation(len(lengths))
    keep = np.sort(order[: int(np.searchsorted(np.cumsum(lengths[order]), max_pairs)) + 1])
    out = {k: v[keep] for k, v in acts.items() if isinstance(v, np.ndarray)}
    w = len(acts["inputs"]) // len(lengths)
    worlds = (keep[:, None] * w + np.arange(w)).reshape(-1)
    inp = acts["inputs"]
    out["inputs"] = type(inp)(inp.walls[worlds], inp.markers[worlds], inp.row[worlds], inp.col[worlds], inp.dir[worlds])
    return out


@task(name="train-probes", cache_policy=NONE)
def train_probes(ws_root: str, cfg: ProbeConfig, acts: dict, semantics: str) -> dict:
    """One semantics' probe grid on one checkpoint's dump. Which programs the dump holds (its
    ``activations.programs``, in its meta: its key names it) sets the current offset and the
    control task's surface (fed reference programs key it on the read token)."""
    key = probe_key(cfg, acts["key"], semantics)
    programs = acts["meta"].get("programs")
    if programs is None:
        raise ValueError(f"activations {acts['key']}: its meta does not say which programs it holds "
                         "(a dump made before they were recorded there); delete it to remake it")
    surface = "read" if programs == "reference" else "emitted"
    current = current_offset(programs)
    step, ckpt_key = acts["meta"]["step"], acts["meta"]["checkpoint_key"]

    units = Workspace.at(ws_root).work_dir / "probes" / key

    def compute(tmp: Path) -> dict:
        with resumable(units / arithmetic_tag()):
            return _compute(tmp)

    def _compute(tmp: Path) -> dict:
        a = subsample(load_activations(acts), cfg.max_train_pairs)
        offsets = cfg.offsets_for(semantics)
        labels = make_labels(a["programs"], a["inputs"], (semantics,), cfg.features, offsets, cfg.drop_last)
        if not any(labels.valid(o).any() for o in offsets):
            # e.g. a babbling model that closes every program at once: nothing to probe, and an
            # artifact that says so (no result files) rather than a failed run
            return {"step": step, "checkpoint_key": ckpt_key, "semantics": semantics, "n_pairs": 0}
        hidden = a["hidden"].astype(np.float32)
        grid = grid_config(cfg, semantics)
        controls, majority = [], None
        if semantics == "original" and cfg.controls:
            # real and control tasks share one stacked pass; its real rows are the probe results
            rows, sel = selectivity(hidden, labels, grid, layer=MEAN_LAYER, surface=surface)
            frames = [rows[rows["task"] == "real"]]
            majority = majority_baseline(labels, grid)
            controls += _control_rows(sel, majority)
        else:
            frames = [probe_grid(hidden, labels, grid, layer=MEAN_LAYER)]
        init = a["hidden_init"].astype(np.float32) if "hidden_init" in a else None
        init_results = None
        if cfg.controls and init is not None and cfg.init_offsets(current, semantics):
            init_results = random_init_results(init, labels, cfg, semantics, current)
            controls += random_init_rows(init_results)
        if semantics == "original" and cfg.controls and 0 in cfg.offsets:
            controls += emitted_action_rows(hidden, init, labels, grid_config(cfg, semantics, offsets=(0,)))
        if cfg.per_layer and current in offsets and "hidden_layers" in a:
            per_layer = grid_config(cfg, semantics, offsets=(current,), probes=("linear",))
            for layer in range(a["hidden_layers"].shape[2]):
                x = a["hidden_layers"][:, :, layer].astype(np.float32)
                frames.append(probe_grid(x, labels, per_layer, layer=layer))
        results = pd.concat(frames, ignore_index=True).drop(columns=["task", "best_epoch"], errors="ignore")
        controls += margin_rows(results, majority, init_results)
        ids = {"probe_key": key, "checkpoint_key": ckpt_key, "step": step}
        summary = summarize(results, "accuracy", "seed")
        results.assign(**ids).to_parquet(tmp / "probe_results.parquet", index=False)
        summary.drop(columns=["n"], errors="ignore").assign(**ids).to_parquet(tmp / "probe_summary.parquet", index=False)
        if semantics == "original" and cfg.per_layer and "hidden_layers" in a:
            emb = summary[(summary["layer"] == 0) & (summary["split"] == "test")]
            controls += [{"feature": r.feature, "offset": r.offset, "kind": "embedding", "probe": r.probe,
                          "value": r.mean} for r in emb.itertuples()]
        if controls:
            pd.DataFrame(controls).assign(**ids, semantics=semantics).to_parquet(tmp / "controls.parquet", index=False)
        if init_results is not None:
            init_results.assign(**ids).to_parquet(tmp / "random_init_results.parquet", index=False)
        return {"step": step, "checkpoint_key": ckpt_key, "semantics": semantics, "n_pairs": len(labels)}

    done = run_stage(ws_root, "probes", key, compute, force=recomputed(acts))
    if done["status"] == "computed":  # found cached, another process may be recomputing it (forced)
        shutil.rmtree(units, ignore_errors=True)
    return done


def random_init_results(hidden_init: np.ndarray, labels, cfg: ProbeConfig, semantics: str = "original",
                        current: int = 0) -> pd.DataFrame:
    """Test rows (one per feature, offset, kind and seed) of the grid at
    ``cfg.init_offsets(current, semantics)`` on the random-init states."""
    grid = grid_config(cfg, semantics, offsets=cfg.init_offsets(current, semantics))
    rows = probe_grid(hidden_init, labels, grid, layer=MEAN_LAYER)
    return rows[rows["split"] == "test"].drop(columns=["task", "best_epoch"], errors="ignore").reset_index(drop=True)


def random_init_rows(init_results: pd.DataFrame) -> list[dict]:
    """``controls`` rows (kind random_init): test accuracy, mean over seeds, per feature, offset and kind."""
    return [{"feature": feat, "offset": int(off), "kind": "random_init", "probe": kind, "value": float(g["accuracy"].mean())}
            for (feat, off, kind), g in init_results.groupby(["feature", "offset", "probe"])]


EMITTED_KINDS = {"trained": "emitted_action", "random_init": "emitted_action_init",
                 "majority": "emitted_action_majority"}


def emitted_action_rows(hidden: np.ndarray, hidden_init, labels, grid) -> list[dict]:
    """``controls`` rows (feature ``emitted_action``, offset 0) of the alignment check: test
    accuracy, mean over seeds, of reading the action each state emits, from the trained states
    (kind ``emitted_action``), the random-init states over the same programs
    (``emitted_action_init``) and the majority (``emitted_action_majority``)."""
    rows = emitted_action(hidden, labels, grid, hidden_init)
    test = rows[rows["split"] == "test"]
    return [{"feature": EMITTED_ACTION, "offset": 0, "kind": EMITTED_KINDS[states], "probe": probe,
             "value": float(g["accuracy"].mean())} for (states, probe), g in test.groupby(["states", "probe"])]


def _control_rows(sel: pd.DataFrame, majority: pd.DataFrame) -> list[dict]:
    """``controls`` rows: majority baseline, control-task accuracy and selectivity (test split)."""
    out = []
    for r in sel.itertuples():
        out.append({"feature": r.feature, "offset": r.offset, "kind": "control_task", "probe": r.probe, "value": r.acc_control})
        out.append({"feature": r.feature, "offset": r.offset, "kind": "selectivity", "probe": r.probe, "value": r.selectivity})
        out.append({"feature": r.feature, "offset": r.offset, "kind": "control_task_margin_low", "probe": r.probe,
                    "value": r.ci_low})
    test = majority[majority["split"] == "test"]
    for (feat, off), g in test.groupby(["feature", "offset"]):
        out.append({"feature": feat, "offset": int(off), "kind": "majority", "probe": "majority",
                    "value": float(g["accuracy"].mean())})
    return out


def margin_rows(results: pd.DataFrame, majority: pd.DataFrame | None, init_results: pd.DataFrame | None) -> list[dict]:
    """``controls`` rows ``majority_margin_low`` and ``random_init_margin_low``: per feature,
    offset and kind, the lower 95% bound of the probe's test accuracy minus the baseline's, paired
    by seed (a seed's probe and its majority baseline share that seed's split; its probe on the
    random-init states shares the split and the initial weights). What "clearly above a baseline"
    reads (tasks/report_targets.py); the control task's is ``control_task_margin_low``."""
    real = results[(results["split"] == "test") & (results["layer"] == MEAN_LAYER)]
    keys = ["feature", "offset", "probe"]
    out = []
    for kind, base, on in (("majority_margin_low", majority, ["feature", "offset"]),
                           ("random_init_margin_low", init_results, keys)):
        if base is None or base.empty:
            continue
        base = base[base["split"] == "test"]
        for r in paired_diff(real, base, on=on, by=keys).itertuples():
            out.append({"feature": r.feature, "offset": int(r.offset), "kind": kind, "probe": r.probe,
                        "value": r.ci_low})
    return out
