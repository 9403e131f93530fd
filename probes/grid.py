"""The probe grid: every feature x offset x semantics (x task) probe of one set of hidden states,
trained in one stacked call per (seed, probe kind). Inside it (``probes.stacked``) the probes
that share their rows (one offset: all features, semantics and tasks) train side by side on
exactly those rows, one group after another.

Splits are by **program**: a seed draws a train/val/test assignment of program indices, so no
program contributes rows to two splits of a probe. The seed also fixes the minibatch order and
(with the kind, feature and offset, but *not* the semantics) each probe's initial weights, so a
probe under ``original`` and under an alternative semantics start alike and differ only in their
labels: differences between them are paired. The epoch is chosen on val, accuracy reported on
test (the reference chose on test).

Returned rows (``probe_grid`` / ``train_tasks``): semantics, feature, offset, task, probe
(linear | mlp1 | mlp2), layer ("mean" or an int), seed, split (val | test, optionally train),
accuracy (joint over heads), n (rows scored), best_epoch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import resume
from .labels import MAIN_FEATURES, OFFSETS, LabelSet, check_feature, check_semantics, hidden_rows
from .stacked import TrainConfig, evaluate, fit_stacked
from .stacked_training import resolve_device

PROBE_KINDS: dict[str, tuple[int, ...]] = {"linear": (), "mlp1": (256,), "mlp2": (256, 1024)}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GridConfig:
    """Which probes to train and how (defaults: the paper's grid with 3 seeds)."""

    semantics: tuple[str, ...] = ("original", "flip", "adversarial")
    features: tuple[str, ...] = MAIN_FEATURES
    offsets: tuple[int, ...] = OFFSETS
    probes: tuple[str, ...] = ("linear", "mlp1", "mlp2")
    seeds: tuple[int, ...] = (0, 1, 2)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test programs
    report: tuple[str, ...] = ("val", "test")
    train: TrainConfig = field(default_factory=TrainConfig)
    hidden: dict = field(default_factory=lambda: dict(PROBE_KINDS))  # kind -> hidden widths

    def check(self) -> None:
        for s in self.semantics:
            check_semantics(s)
        for f in self.features:
            check_feature(f)
        for k in self.probes:
            if k not in self.hidden:
                raise ValueError(f"unknown probe kind {k!r}; known: {', '.join(self.hidden)}")
        for s in self.report:
            if s not in SPLITS:
                raise ValueError(f"unknown split {s!r} in report; known: {SPLITS}")
        if len(self.split) != 3 or min(self.split) < 0 or self.split[1] <= 0 or self.split[2] <= 0:
            raise ValueError(f"split: expected 3 fractions with val, test > 0, got {self.split}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")


@dataclass
class Task:
    """One probe's labels: ``key`` names it, ``heads`` its classes, ``labels`` (n, H), -1 unused."""

    key: dict
    heads: tuple[int, ...]
    labels: np.ndarray


def split_programs(n_programs: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """(n_programs,) split id per program (0 train, 1 val, 2 test), a seeded permutation."""
    f = np.asarray(fractions, dtype=np.float64)
    f = f / f.sum()
    perm = np.random.default_rng(seed).permutation(n_programs)
    n_val = max(1, int(round(f[1] * n_programs)))
    n_test = max(1, int(round(f[2] * n_programs)))
    if n_val + n_test >= n_programs:
        raise ValueError(f"split: {n_programs} programs are too few for a train/val/test split")
    out = np.zeros(n_programs, dtype=np.int8)
    out[perm[:n_val]] = 1
    out[perm[n_val:n_val + n_test]] = 2
    return out


def row_splits(program: np.ndarray, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """(n,) split id of each row, from its program's split. The permutation runs over program ids
    0..max(program), the same for the probes and for every baseline scored against them."""
    program = np.asarray(program)
    return split_programs(int(program.max()) + 1, seed, fractions)[program]


def probe_seed(seed: int, kind: str, key: dict) -> int:
    """Initial-weight seed of one probe: stable, independent of the grid it is trained in."""
    name = f"{seed}/{kind}/{key.get('feature')}/{key.get('offset')}"
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def label_tasks(labels: LabelSet, config: GridConfig) -> list[Task]:
    """The real-task probes of a grid from a LabelSet."""
    tasks = []
    for sem in config.semantics:
        for feat in config.features:
            heads = check_feature(feat)
            for off in config.offsets:
                key = dict(semantics=sem, feature=feat, offset=int(off), task="real")
                tasks.append(Task(key, heads, labels.get(sem, feat, int(off))))
    return tasks


def _stack_targets(tasks: list[Task], rows: np.ndarray, n_head: int):
    target = torch.full((len(tasks), len(rows), n_head), -1, dtype=torch.long)
    for i, t in enumerate(tasks):
        target[i, :, :t.labels.shape[1]] = torch.from_numpy(t.labels[rows])
    weight = (target[:, :, 0] >= 0).float()
    return target, weight


def train_tasks(x: np.ndarray, program: np.ndarray, tasks: list[Task], config: GridConfig,
                layer="mean") -> pd.DataFrame:
    """Train every task's probes at once on rows ``x`` (n, d); ``program`` (n,) for the split.

    One stacked call per (seed, probe kind) holds all tasks (grouped by shared rows inside).
    Inside ``probes.resume.resumable`` each such unit is saved as it finishes and reused.
    """
    config.check()
    x = np.asarray(x)
    program = np.asarray(program)
    if x.ndim != 2 or len(x) != len(program):
        raise ValueError(f"x: expected (n, d) rows matching program ({len(program)},), got {x.shape}")
    for t in tasks:
        if t.labels.shape != (len(x), len(t.heads)):
            raise ValueError(f"labels of {t.key}: shape {t.labels.shape}, expected "
                             f"({len(x)}, {len(t.heads)})")
    if not tasks:
        raise ValueError("tasks: nothing to train")
    n_head = max(len(t.heads) for t in tasks)
    x = np.ascontiguousarray(x, dtype=np.float32)
    xt = torch.from_numpy(x)
    folder = resume.active()
    digest = None if folder is None else resume.inputs_digest(x, program, tasks, layer, config, _arithmetic(config))
    out = []
    for seed in config.seeds:
        data = None
        for kind in config.probes:
            path = None if folder is None else resume.unit_path(folder, digest, seed, kind)
            rows = None if path is None else resume.load_unit(path)
            if rows is None:
                if data is None:
                    data = _split_data(xt, program, tasks, n_head, seed, config.split)
                rows = _fit_unit(data, tasks, config, seed, kind, layer)
                if path is not None:
                    resume.save_unit(path, rows)
            out.append(rows)
    return pd.concat(out, ignore_index=True)


def _arithmetic(config: GridConfig) -> str:
    """Where a grid's arithmetic runs (its bits depend on it): ``cpu`` or the CUDA device's name."""
    device = resolve_device(config.train.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _split_data(xt: torch.Tensor, program: np.ndarray, tasks: list[Task], n_head: int, seed: int, fractions) -> dict:
    """Per split name: (x rows, stacked targets, weights) of one seed's split by program."""
    split = row_splits(program, seed, fractions)
    data = {}
    for i, name in enumerate(SPLITS):
        r = np.flatnonzero(split == i)
        target, weight = _stack_targets(tasks, r, n_head)
        data[name] = (xt[r], target, weight)
    return data


def _fit_unit(data: dict, tasks: list[Task], config: GridConfig, seed: int, kind: str, layer) -> pd.DataFrame:
    """The rows of one (seed, kind) unit: every task's probe trained and scored on ``config.report``."""
    seeds = [probe_seed(seed, kind, t.key) for t in tasks]
    fitted = fit_stacked(*data["train"], [t.heads for t in tasks], config.hidden[kind],
                         seeds, shuffle_seed=seed, config=config.train, val=data["val"])
    out = []
    for name in config.report:
        acc, n = evaluate(fitted.model, *data[name], batch=config.train.eval_batch)
        for i, t in enumerate(tasks):
            out.append({**t.key, "probe": kind, "layer": layer, "seed": seed,
                        "split": name, "accuracy": float(acc[i]), "n": int(n[i]),
                        "best_epoch": int(fitted.best_epoch[i])})
    return pd.DataFrame(out)


def probe_grid(hidden: np.ndarray, labels: LabelSet, config: GridConfig = GridConfig(),
               layer="mean") -> pd.DataFrame:
    """All probes of ``config`` on ``hidden`` (P, L, d), labels from ``make_labels``.

    ``labels`` must hold every (semantics, feature, offset) of the config.
    """
    x = hidden_rows(hidden, labels)
    if x.ndim != 2:
        raise ValueError(f"hidden: expected (P, L, d), got {np.shape(hidden)}; pick a layer")
    return train_tasks(x, labels.program, label_tasks(labels, config), config, layer)
