"""Semantic probing interventions: how much of a probe's accuracy is the model's semantics.

Each alternative semantics (``flip``, ``adversarial`` and every other table in
``karel.SEMANTICS``) re-interprets the same generated programs: they are re-executed on the same
Input0 worlds, and probes are retrained on the **same hidden states** against those labels.

Definition (PAPER.md marks the paper's exact formula as not recovered; this is our choice):

    semantic content(alt; feature, offset, probe, layer)
        = test accuracy under ``original`` - test accuracy under ``alt``

computed per seed (same program split, same minibatch order and same initial weights for the
two, see ``probes.grid``), then averaged over seeds with a paired 95% t-interval. A probe that
merely decodes the program text can learn any semantics equally well (content near 0); a
positive content means the hidden states carry the real execution state better than a
re-interpreted one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import karel

from .grid import GridConfig, probe_grid
from .labels import make_labels
from .stats import mean_ci

KEYS = ["feature", "offset", "task", "probe", "layer"]


def alternative_semantics() -> tuple[str, ...]:
    """Every semantics except ``original`` (flip and adversarial first)."""
    rest = [s for s in karel.SEMANTICS if s not in ("original", "flip", "adversarial")]
    return ("flip", "adversarial", *rest)


def semantic_content(results: pd.DataFrame, split: str = "test",
                     reference: str = "original") -> pd.DataFrame:
    """Paired original-minus-alternative accuracy from a grid's rows.

    Returns one row per alternative semantics x feature x offset x task x probe x layer with
    ``acc_original``, ``acc_alternative`` (means over seeds), ``content`` (mean paired
    difference), ``ci_low``, ``ci_high`` (95% t-interval of the paired differences), ``n_seeds``.
    """
    need = set(KEYS) | {"semantics", "seed", "split", "accuracy"}
    missing = need - set(results.columns)
    if missing:
        raise ValueError(f"results: missing columns {sorted(missing)}")
    df = results[results["split"] == split]
    if reference not in set(df["semantics"]):
        raise ValueError(f"results: no rows for reference semantics {reference!r}")
    ref = df[df["semantics"] == reference][KEYS + ["seed", "accuracy"]]
    alt = df[df["semantics"] != reference]
    merged = alt.merge(ref, on=KEYS + ["seed"], suffixes=("_alt", "_ref"))
    rows = []
    for key, g in merged.groupby(["semantics", *KEYS], sort=False):
        diff = (g["accuracy_ref"] - g["accuracy_alt"]).to_numpy()
        m, lo, hi = mean_ci(diff)
        rows.append({**dict(zip(["semantics", *KEYS], key)),
                     "acc_original": float(g["accuracy_ref"].mean()),
                     "acc_alternative": float(g["accuracy_alt"].mean()),
                     "content": m, "ci_low": lo, "ci_high": hi, "n_seeds": int(np.isfinite(diff).sum())})
    return pd.DataFrame(rows)


def run_interventions(hidden: np.ndarray, programs: np.ndarray, inputs: karel.WorldBatch,
                      config: GridConfig | None = None, layer="mean"):
    """Probe ``hidden`` (P, L, d) under original + alternatives; (grid rows, content table).

    ``config.semantics`` defaults to original plus every alternative semantics.
    """
    config = config or GridConfig(semantics=("original", *alternative_semantics()))
    if "original" not in config.semantics:
        raise ValueError(f"semantics: the interventions need 'original', got {config.semantics}")
    labels = make_labels(programs, inputs, config.semantics, config.features, config.offsets)
    rows = probe_grid(hidden, labels, config, layer)
    return rows, semantic_content(rows)
