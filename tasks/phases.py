"""Stage 5: interventions, semantic content per checkpoint and the training phases.

Semantic content of a checkpoint = the mean, over the main features at the current offset
(``tasks.stage_configs.current_offset``: 0, or -1 on fed reference programs) on the layer mean,
of (test accuracy of the probe under ``original``) - (under the alternative semantics),
averaged over the alternatives; the probe kind is ``CONTENT_PROBE``. Per-alternative
differences with paired 95% CIs (over seeds: same split, same initial weights, only the labels
differ) form the ``interventions`` rows.

Semantic content beyond the random-init model (``semantic_content_vs_init``) subtracts the same
difference measured on the random-init model's states over the same programs (the
``random_init`` controls of each semantics' grid). Some labels are easier to read from the text
itself, whatever the model learned: for a correct program the original semantics' end state is
Output0's robot, printed in the prompt, and an alternative semantics has no such copy. Per
feature and probe kind the same difference has paired 95% CIs over seeds (each seed's grids share
their split and initial weights on both states): the ``interventions_vs_init`` rows, plus one
row per checkpoint and kind for the mean over the main features (feature ``main_mean``; per seed
the mean of the features' drops, then the CI over seeds), which the report's key number reads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from model.phases import label_phases
from probes.labels import MAIN_FEATURES
from probes.stats import mean_ci
from tasks.stage import recomputed, run_stage, stage_key
from tasks.probe_config import ProbeConfig
from tasks.stage_configs import MEAN_LAYER

HELPERS = ("tasks.stage_configs", "tasks.probe_config")  # task modules whose code counts in the key too (stage_key)

CONTENT_PROBE = "mlp1"
MEAN_FEATURE = "main_mean"  # interventions_vs_init rows over the mean of the main features
KEYS = ["checkpoint_key", "step", "feature", "offset", "probe", "layer"]


def interventions(results: pd.DataFrame) -> pd.DataFrame:
    """Original minus each alternative semantics, paired by seed, on the test split."""
    test = results[results["split"] == "test"]
    orig = test[test["semantics"] == "original"].set_index(KEYS + ["seed"])["accuracy"]
    rows = []
    for alt, g in test[test["semantics"] != "original"].groupby("semantics"):
        alt_acc = g.set_index(KEYS + ["seed"])["accuracy"]
        paired = pd.concat({"original": orig, "alternative": alt_acc}, axis=1, join="inner").reset_index()
        pk = g.drop_duplicates(KEYS).set_index(KEYS)["probe_key"]
        for key, grp in paired.groupby(KEYS):
            content, lo, hi = mean_ci((grp["original"] - grp["alternative"]).to_numpy())
            rows.append({**dict(zip(KEYS, key)), "probe_key": pk.loc[key], "semantics": alt,
                         "original": grp["original"].mean(), "alternative": grp["alternative"].mean(),
                         "content": content, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def _seed_drops(test: pd.DataFrame) -> pd.DataFrame:
    """Original minus each alternative's test accuracy, per ``KEYS`` and seed (a column per
    alternative), over the layer-mean rows of ``test``."""
    sel = test[test["layer"] == MEAN_LAYER]
    wide = sel.pivot_table(index=KEYS + ["seed"], columns="semantics", values="accuracy")
    if "original" not in wide.columns:
        return wide.iloc[:, :0]
    return wide.drop(columns="original").rsub(wide["original"], axis=0)


def interventions_vs_init(results: pd.DataFrame, init_results: pd.DataFrame) -> pd.DataFrame:
    """Per alternative, checkpoint, feature, offset and kind (layer mean; the offsets of the
    random-init grid, ``ProbeConfig.init_offsets``): the trained drop minus the random-init
    states' drop, paired by seed, with a 95% CI; ``probe_key`` is the alternative's grid, as in
    ``interventions``."""
    test = results[results["split"] == "test"]
    trained, init = _seed_drops(test), _seed_drops(init_results[init_results["split"] == "test"])
    pk = test[test["semantics"] != "original"].drop_duplicates(KEYS + ["semantics"]) \
        .set_index(KEYS + ["semantics"])["probe_key"]
    rows = []
    for alt in [a for a in trained.columns if a in init.columns]:
        both = pd.concat({"trained": trained[alt], "init": init[alt]}, axis=1, join="inner").dropna().reset_index()
        for key, grp in [*both.groupby(KEYS), *_main_mean(both).groupby(KEYS)]:
            content, lo, hi = mean_ci((grp["trained"] - grp["init"]).to_numpy())
            ids = dict(zip(KEYS, key))
            grid = {**ids, "feature": MAIN_FEATURES[0]} if ids["feature"] == MEAN_FEATURE else ids  # any feature names it
            rows.append({**ids, "probe_key": pk.loc[(*(grid[k] for k in KEYS), alt)], "semantics": alt,
                         "trained_drop": grp["trained"].mean(), "init_drop": grp["init"].mean(),
                         "content": content, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def _main_mean(both: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint, kind and seed, the mean over every main feature of the trained and the
    random-init drops (feature ``MEAN_FEATURE``); seeds missing a main feature are left out, and
    so is a checkpoint and kind without all of them. Averaging within a seed before the CI keeps
    the pairing: the main features' probes of one seed share its split and initial weights."""
    main = both[both["feature"].isin(MAIN_FEATURES)]
    group = [k for k in KEYS if k != "feature"] + ["seed"]
    agg = main.groupby(group).agg(trained=("trained", "mean"), init=("init", "mean"),
                                  n=("feature", "nunique")).reset_index()
    agg = agg[agg["n"] == len(MAIN_FEATURES)].drop(columns="n")
    return agg.assign(feature=MEAN_FEATURE)


def semantic_content(inter: pd.DataFrame, features, offset: int = 0) -> pd.DataFrame:
    """One ``semantic_content`` value per checkpoint at ``offset`` (see module docstring)."""
    sel = inter[(inter["offset"] == offset) & (inter["layer"] == MEAN_LAYER) & (inter["probe"] == CONTENT_PROBE)
                & inter["feature"].isin(features)]
    return sel.groupby(["checkpoint_key", "step"], as_index=False)["content"].mean()


def init_drops(controls: pd.DataFrame, features, probe: str = CONTENT_PROBE, offset: int = 0) -> pd.DataFrame:
    """Per checkpoint, feature and alternative semantics: the random-init model's
    original-minus-alternative accuracy (at ``offset``, ``probe``), column ``init_drop``;
    ``controls`` carries each row's grid ``semantics``."""
    ri = controls[(controls["kind"] == "random_init") & (controls["offset"] == offset)
                  & (controls["probe"] == probe) & controls["feature"].isin(features)] \
        if not controls.empty else controls
    if ri.empty or "original" not in set(ri["semantics"]):
        return pd.DataFrame(columns=["checkpoint_key", "step", "feature", "semantics", "init_drop"])
    wide = ri.pivot_table(index=["checkpoint_key", "step", "feature"], columns="semantics", values="value")
    alts = [c for c in wide.columns if c != "original"]
    return wide[alts].rsub(wide["original"], axis=0).stack().rename("init_drop").reset_index()


def init_content(controls: pd.DataFrame, features, offset: int = 0) -> pd.DataFrame:
    """Per checkpoint: ``init_drops`` of ``CONTENT_PROBE`` at ``offset``, the mean over
    ``features`` (``content_frame`` passes the main ones) and the alternatives: column
    ``init_content``."""
    drops = init_drops(controls, features, offset=offset)
    return drops.groupby(["checkpoint_key", "step"], as_index=False)["init_drop"].mean() \
        .rename(columns={"init_drop": "init_content"})


def content_frame(inter: pd.DataFrame, controls: pd.DataFrame, features, offset: int = 0) -> pd.DataFrame:
    """Per checkpoint at ``offset`` (the current one): ``content`` (``semantic_content``),
    ``init_content`` and ``content_vs_init`` (content minus init_content, NaN without the
    random-init controls), over the main features among ``features`` (a run that probes more
    features has the same content)."""
    features = set(features) & set(MAIN_FEATURES)
    content = semantic_content(inter, features, offset)
    content = content.merge(init_content(controls, features, offset), on=["checkpoint_key", "step"], how="left")
    content["content_vs_init"] = content["content"] - content["init_content"]
    return content


CONTENT_METRICS = {"content": "semantic_content", "content_vs_init": "semantic_content_vs_init"}


def content_metric_rows(content: pd.DataFrame, train_key: str) -> list[dict]:
    """``checkpoint_metrics`` rows of a ``content_frame`` (NaN values left out)."""
    rows = []
    for r in content.itertuples():
        ids = {"checkpoint_key": r.checkpoint_key, "train_key": train_key, "step": int(r.step)}
        for column, metric in CONTENT_METRICS.items():
            value = getattr(r, column, float("nan"))
            if pd.notna(value):
                rows.append({**ids, "metric": metric, "value": float(value)})
    return rows


def _grid_files(probe_outs: list[dict], name: str) -> pd.DataFrame:
    """Every grid's ``name`` Parquet file, with the grid's semantics (a grid with no pairs has none)."""
    frames = []
    for o in probe_outs:
        f = Path(o["path"]) / name
        if f.exists():
            frames.append(pd.read_parquet(f).assign(semantics=o["meta"]["semantics"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@task(name="phase-metrics", cache_policy=NONE)
def phase_metrics(ws_root: str, cfg: ProbeConfig, probe_outs: list[dict], checkpoint_rows: list[dict],
                  current: int = 0) -> dict:
    """Interventions, semantic content at the ``current`` offset (``current_offset`` of the
    run's ``activations.programs``) and the phases of one training run."""
    upstream = sorted(o["key"] for o in probe_outs) + sorted(r["eval_key"] for r in checkpoint_rows)
    # this module computes the interventions and content itself, so its source keys them too
    key = stage_key("phases", {"probe": cfg, "content_probe": CONTENT_PROBE, "current": current}, upstream,
                    ["model.phases", "probes.stats"], __name__, HELPERS)
    train_key = checkpoint_rows[0]["checkpoint_key"].rsplit("-s", 1)[0] if checkpoint_rows else ""

    def compute(tmp: Path) -> dict:
        results = _grid_files(probe_outs, "probe_results.parquet")
        inter = interventions(results) if not results.empty else pd.DataFrame()
        meta: dict = {}
        if not inter.empty:
            inter.to_parquet(tmp / "interventions.parquet", index=False)
            init_results = _grid_files(probe_outs, "random_init_results.parquet")
            if not init_results.empty:
                vs_init = interventions_vs_init(results, init_results)
                if not vs_init.empty:
                    vs_init.to_parquet(tmp / "interventions_vs_init.parquet", index=False)
            content = content_frame(inter, _grid_files(probe_outs, "controls.parquet"), cfg.features, current)
            content.assign(offset=current).to_parquet(tmp / "semantic_content.parquet", index=False)
        ph = label_phases(checkpoint_rows).as_dict() if checkpoint_rows else {}
        starts = {"babbling": ph["steps"][0] if ph else None, "syntax": ph.get("syntax_start"),
                  "semantics": ph.get("semantics_start")}
        pd.DataFrame([{"train_key": train_key, "phase": p, "start_step": s} for p, s in starts.items()]) \
            .to_parquet(tmp / "phases.parquet", index=False)
        meta.update({f"phase_start.{p}": s for p, s in starts.items()})
        return meta

    return run_stage(ws_root, "phases", key, compute, force=recomputed(*probe_outs))


def content_rows(out: dict, train_key: str) -> list[dict]:
    """``semantic_content`` table rows of one phases stage (for the recorder), under its key."""
    path = Path(out["path"]) / "semantic_content.parquet"
    if not path.exists():
        return []
    return [{"phases_key": out["key"], "checkpoint_key": r.checkpoint_key, "train_key": train_key,
             "step": int(r.step), "offset": int(r.offset), "content": r.content,
             "content_vs_init": r.content_vs_init} for r in pd.read_parquet(path).itertuples()]
