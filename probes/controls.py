"""Controls the paper lacks: majority baselines, control tasks and selectivity, per-layer and
embedding-only probes.

Control task (Hewitt & Liang, 2019): each surface *type* — the pair (action token, its index j
in the program) — gets one fixed random label, drawn once from the feature's empirical label
distribution (joint over heads, over the rows kept at that offset). Every occurrence of a type
carries the same label, so the control task is learnable exactly as far as the hidden state
records the surface form. Which token is the state's surface form depends on who wrote the
program (``SURFACES``): on the model's own programs the state at row (p, j) chose action j
(``"emitted"``: the type is (action j, j)); on a program it is fed (teacher-forced reference
programs) that state has read only actions before j, so its type is (action j-1, or the start of
the program, j) (``"read"``). Keyed on a token the state has not seen, the control would be
unlearnable and the selectivity inflated. Selectivity = real-task accuracy - control-task accuracy (per seed,
paired, with a 95% t-interval). Not i.i.d. random labels per instance (which no probe can learn).

The random-init model is not a separate function: probe the hidden states of checkpoint step 0
with ``probe_grid`` like any other checkpoint.

Emitted action (a positive control of the alignment, on real states): the state at row (p, j)
is the one whose logits chose action j. A probe reads token j from a trained model's state there
(the model decided it) but not from a random-init model's state over the same text (it has not
seen token j). A state taken one position late has read token j and gives it away under either
model. ``emitted_action`` trains the grid's kinds and seeds to read it on the offset-0 rows.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

import karel

from .grid import SPLITS, GridConfig, Task, label_tasks, probe_grid, row_splits, train_tasks
from .labels import LabelSet, check_feature, hidden_rows
from .stats import paired_diff


def majority_baseline(labels: LabelSet, config: GridConfig = GridConfig()) -> pd.DataFrame:
    """Most frequent (joint) train label per semantics/feature/offset/seed, scored on test.

    Rows like ``probe_grid``'s with probe="majority", layer="none". A task with no training rows
    (e.g. offset +2 when every generated program is short) scores NaN, as its probes do.
    """
    return task_majority(labels.program, label_tasks(labels, config), config)


def task_majority(program: np.ndarray, tasks: list[Task], config: GridConfig) -> pd.DataFrame:
    """``majority_baseline`` of any tasks whose rows belong to ``program`` (n,)."""
    config.check()
    out = []
    for seed in config.seeds:
        split = row_splits(program, seed, config.split)
        for t in tasks:
            y = t.labels
            ok = y[:, 0] >= 0
            train = y[ok & (split == 0)]
            mode = None
            if len(train):
                uniq, counts = np.unique(train, axis=0, return_counts=True)
                mode = uniq[np.argmax(counts)]  # ties: the smallest label, deterministic
            for name in config.report:
                rows = ok & (split == SPLITS.index(name))
                acc = float((y[rows] == mode).all(1).mean()) if rows.any() and mode is not None else float("nan")
                out.append({**t.key, "probe": "majority", "layer": "none", "seed": seed,
                            "split": name, "accuracy": acc, "n": int(rows.sum()),
                            "best_epoch": 0})
    return pd.DataFrame(out)


SURFACES = ("emitted", "read")
PROGRAM_START = -1  # the "read" token of the first action's row: nothing read yet


def surface_types(labels: LabelSet, surface: str = "emitted") -> np.ndarray:
    """(n, 2) surface type of each row: (action j, j) for ``"emitted"``, (action j-1 or
    ``PROGRAM_START``, j) for ``"read"`` (see the module docstring)."""
    if surface not in SURFACES:
        raise ValueError(f"surface: {surface!r} is not one of {SURFACES}")
    token = labels.token
    if surface == "read":
        first = labels.position == 0
        prog, pos = labels.program, labels.position
        follows = np.r_[False, (prog[1:] == prog[:-1]) & (pos[1:] == pos[:-1] + 1)]
        if not (first | follows).all():
            raise ValueError("labels: rows are not program-major with consecutive actions")
        token = np.where(first, PROGRAM_START, np.r_[PROGRAM_START, token[:-1]])
    return np.stack([token, labels.position], 1)


def draw_per_type(y: np.ndarray, types: np.ndarray, name: str) -> np.ndarray:
    """(n, H) labels: one fixed draw per type (``types``: each row's type id, 0..T-1) from the
    empirical distribution of ``y``'s kept rows (``y[:, 0] >= 0``), seeded by ``name``; -1 where
    unkept."""
    ok = y[:, 0] >= 0
    if not ok.any():
        return np.full_like(y, -1)
    uniq, counts = np.unique(y[ok], axis=0, return_counts=True)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    draw = rng.choice(len(uniq), size=int(types.max()) + 1, p=counts / counts.sum())
    return np.where(ok[:, None], uniq[draw[types]], -1).astype(y.dtype)


def control_labels(labels: LabelSet, semantics: str, feature: str, offset: int,
                   seed: int = 0, surface: str = "emitted") -> np.ndarray:
    """(n, H) control-task labels: one fixed draw per surface type (``surface_types``); -1 where
    unkept."""
    types = np.unique(surface_types(labels, surface), axis=0, return_inverse=True)[1].reshape(-1)
    return draw_per_type(labels.get(semantics, feature, offset), types,
                         f"control/{seed}/{semantics}/{feature}/{offset}")


def control_tasks(labels: LabelSet, config: GridConfig, seed: int = 0, surface: str = "emitted",
                  semantics=None) -> list[Task]:
    """The control tasks of ``semantics`` (default: every semantics of ``config``)."""
    semantics = config.semantics if semantics is None else tuple(semantics)
    unknown = sorted(set(semantics) - set(config.semantics))
    if unknown:
        raise ValueError(f"control semantics {unknown} are not among the grid's {list(config.semantics)}")
    tasks = []
    for sem in semantics:
        for feat in config.features:
            for off in config.offsets:
                key = dict(semantics=sem, feature=feat, offset=int(off), task="control")
                tasks.append(Task(key, check_feature(feat),
                                  control_labels(labels, sem, feat, int(off), seed, surface)))
    return tasks


def selectivity(hidden: np.ndarray, labels: LabelSet, config: GridConfig = GridConfig(),
                layer="mean", control_seed: int = 0, surface: str = "emitted", control_semantics=None):
    """Real and control tasks (types by ``surface``) trained in one pass; (grid rows, selectivity table).

    Every semantics of ``config`` gets its real tasks; the control tasks only those of
    ``control_semantics`` (default: all of them), and the table only the semantics with both.

    The table has one row per semantics/feature/offset/probe/layer with ``acc_real``,
    ``acc_control``, ``selectivity`` (mean paired difference over seeds), ``ci_low``,
    ``ci_high``, ``n_seeds`` (test split).
    """
    x = hidden_rows(hidden, labels)
    tasks = label_tasks(labels, config) + control_tasks(labels, config, control_seed, surface, control_semantics)
    rows = train_tasks(x, labels.program, tasks, config, layer)
    keys = ["semantics", "feature", "offset", "probe", "layer"]
    test = rows[rows["split"] == "test"]
    table = paired_diff(test[test["task"] == "real"], test[test["task"] == "control"], on=keys, by=keys)
    table = table.rename(columns={"a_mean": "acc_real", "b_mean": "acc_control", "mean": "selectivity"})
    return rows, table


def layer_curves(hidden_layers: np.ndarray, labels: LabelSet,
                 config: GridConfig = GridConfig(), layers=None) -> pd.DataFrame:
    """Grid rows for each layer of ``hidden_layers`` (P, L, n_layer + 1, d); 0 = embeddings."""
    hidden_layers = np.asarray(hidden_layers)
    if hidden_layers.ndim != 4:
        raise ValueError(f"hidden_layers: expected (P, L, layers, d), got {hidden_layers.shape}")
    layers = range(hidden_layers.shape[2]) if layers is None else layers
    frames = []
    for layer in layers:
        if not 0 <= int(layer) < hidden_layers.shape[2]:
            raise ValueError(f"layers: {layer} outside 0..{hidden_layers.shape[2] - 1}")
        frames.append(probe_grid(hidden_layers[:, :, int(layer)], labels, config, int(layer)))
    return pd.concat(frames, ignore_index=True)


def embedding_probes(hidden_layers: np.ndarray, labels: LabelSet,
                     config: GridConfig = GridConfig()) -> pd.DataFrame:
    """Probes on the token-embedding output alone (layer 0): what the surface form gives."""
    return layer_curves(hidden_layers, labels, config, layers=[0])


EMITTED_ACTION = "emitted_action"


def emitted_action_task(labels: LabelSet) -> Task:
    """The action each kept offset-0 state emits (5 classes); -1 on the other rows."""
    y = np.where(labels.valid(0), labels.token, -1)[:, None]
    return Task(dict(semantics="original", feature=EMITTED_ACTION, offset=0, task="real"),
                (len(karel.ACTIONS),), y)


def emitted_action(hidden: np.ndarray, labels: LabelSet, config: GridConfig,
                   hidden_init: np.ndarray | None = None) -> pd.DataFrame:
    """Grid rows (``states``: trained, random_init, majority) of reading the emitted action."""
    task = emitted_action_task(labels)
    frames = [task_majority(labels.program, [task], config).assign(states="majority")]
    for name, h in (("trained", hidden), ("random_init", hidden_init)):
        if h is not None:
            rows = train_tasks(hidden_rows(h, labels), labels.program, [task], config)
            frames.append(rows.assign(states=name))
    return pd.concat(frames, ignore_index=True)
