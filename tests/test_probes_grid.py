"""The batched grid, interventions and controls on planted hidden states."""

import numpy as np
import pandas as pd
import pytest

import karel
from probes import LinearProbe, make_labels
from probes.controls import (PROGRAM_START, SURFACES, control_labels, emitted_action, emitted_action_task,
                             layer_curves, majority_baseline, selectivity, surface_types)
from probes.grid import GridConfig, Task, probe_grid, row_splits, split_programs, train_tasks
from probes.interventions import semantic_content
from probes.labels import hidden_rows
from probes.stacked import TrainConfig
from probes.stats import summarize

SMALL = {"linear": (), "mlp1": (32,), "mlp2": (32, 64)}


def cfg(**kw):
    base = dict(semantics=("original",), features=("direction",), offsets=(0,),
                probes=("linear",), seeds=(0, 1), hidden=SMALL,
                train=TrainConfig(epochs=8, batch_size=256))
    base.update(kw)
    return GridConfig(**base)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n_prog, n_worlds, d = 500, 2, 24
    progs = karel.random_programs(rng, rng.integers(3, 11, n_prog), width=14)
    inputs = karel.random_worlds(rng, n_prog * n_worlds)
    labels = make_labels(progs, inputs, ("original", "flip", "adversarial"),
                         ("direction", "facing_wall"), (-1, 0, 1))
    # hidden[p, j] encodes the original direction after action j (offset 0), linearly
    y = np.zeros((n_prog, 14), int)
    y[labels.program, labels.position] = labels.get("original", "direction", 0)[:, 0].clip(0)
    hidden = rng.normal(size=(n_prog, 14, d)) + 5.0 * np.eye(d)[:4][y]
    return progs, inputs, labels, hidden.astype(np.float16)


def test_split_is_by_program():
    s = split_programs(100, 3)
    assert np.bincount(s).tolist() == [80, 10, 10]
    assert (split_programs(100, 3) == s).all() and not (split_programs(100, 4) == s).all()


def test_grid_rows_and_planted_signal(data):
    _, _, labels, hidden = data
    df = probe_grid(hidden, labels, cfg(semantics=("original", "flip"),
                                        features=("direction", "facing_wall"),
                                        probes=("linear", "mlp1")))
    assert {"semantics", "feature", "offset", "probe", "layer", "seed", "split", "accuracy",
            "n"} <= set(df.columns)
    assert len(df) == 2 * 2 * 1 * 2 * 2 * 2  # sem x feat x off x kind x seed x split
    test = df[df.split == "test"].set_index(["semantics", "feature", "probe", "seed"]).sort_index()
    assert (test.loc[("original", "direction"), "accuracy"] > 0.97).all()
    assert (test.loc[("flip", "direction"), "accuracy"] < 0.8).all()
    s = summarize(df.drop(columns="best_epoch"))
    assert {"mean", "ci_low", "ci_high", "n_seeds"} <= set(s.columns)
    assert (s.n_seeds == 2).all() and (s.ci_low <= s["mean"]).all()


def test_batched_equals_one_at_a_time_within_noise(data):
    _, _, labels, hidden = data
    config = cfg(features=("direction", "facing_wall"), offsets=(-1, 0, 1), seeds=(0,),
                 report=("test",))
    grid = probe_grid(hidden, labels, config).set_index(["feature", "offset"])["accuracy"]
    split = row_splits(labels.program, 0)
    x = hidden_rows(hidden, labels).astype(np.float32)
    for (feat, off), acc in grid.items():
        y = labels.get("original", feat, off)[:, 0]
        ok = y >= 0
        tr, va, te = (ok & (split == i) for i in range(3))
        single = LinearProbe(seed=0, epochs=8, batch_size=256).fit(x[tr], y[tr], x[va], y[va])
        assert abs(single.score(x[te], y[te]) - acc) < 0.04, (feat, off)


def test_interventions_relabelling_vs_real_trace(data):
    _, _, labels, hidden = data
    y = labels.get("original", "direction", 0)
    perm = np.array([2, 0, 3, 1])
    relabel = np.where(y >= 0, perm[y.clip(0)], -1)
    tasks = [Task(dict(semantics=s, feature="direction", offset=0, task="real"), (4,), lab)
             for s, lab in [("original", y), ("relabel", relabel),
                            ("flip", labels.get("flip", "direction", 0)),
                            ("adversarial", labels.get("adversarial", "direction", 0))]]
    rows = train_tasks(hidden_rows(hidden, labels), labels.program, tasks, cfg(seeds=(0, 1, 2)))
    content = semantic_content(rows).set_index("semantics")
    assert abs(content.loc["relabel", "content"]) < 0.03  # the probe can translate
    assert content.loc["flip", "content"] > 0.2
    assert content.loc["adversarial", "content"] > 0.2
    assert content.loc["flip", "ci_low"] > 0


def test_majority_and_independent_states(data):
    _, _, labels, _ = data
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(labels.n_programs, 14, 24))
    config = cfg(features=("facing_wall",), seeds=(0,), probes=("linear", "mlp1"))
    base = majority_baseline(labels, config)
    grid = probe_grid(noise, labels, config)
    b = base[base.split == "test"]["accuracy"].iloc[0]
    y = labels.get("original", "facing_wall", 0)[:, 0]
    split = row_splits(labels.program, 0)
    te = (y >= 0) & (split == 2)
    assert b == pytest.approx(max((y[te] == 1).mean(), (y[te] == 0).mean()), abs=1e-9) or b < 0.5
    for acc in grid[grid.split == "test"]["accuracy"]:
        assert abs(acc - b) < 0.06


def test_control_task_and_selectivity(data):
    _, _, labels, hidden = data
    c = control_labels(labels, "original", "direction", 0, seed=0)
    ok = c[:, 0] >= 0
    types = pd.DataFrame({"t": labels.token[ok], "j": labels.position[ok], "c": c[ok, 0]})
    assert (types.groupby(["t", "j"])["c"].nunique() == 1).all()  # one label per type
    assert types["c"].nunique() > 1
    rows, sel = selectivity(hidden, labels, cfg())
    assert set(rows["task"]) == {"real", "control"}
    assert (sel["acc_real"] > 0.97).all() and (sel["selectivity"] > 0.2).all()


def test_control_task_under_chosen_semantics_only(data):
    _, _, labels, hidden = data
    grid = cfg(semantics=("original", "flip"), seeds=(0,))
    rows, sel = selectivity(hidden, labels, grid, control_semantics=("original",))
    real, control = rows[rows["task"] == "real"], rows[rows["task"] == "control"]
    assert set(real["semantics"]) == {"original", "flip"}
    assert set(control["semantics"]) == {"original"}
    assert list(sel["semantics"]) == ["original"]
    # the real rows are the ones the full pass trains (controls train beside them, not into them)
    full = selectivity(hidden, labels, grid)[0]
    key = ["semantics", "feature", "offset", "probe", "seed", "split"]
    merged = real.merge(full[full["task"] == "real"], on=key, suffixes=("", "_full"))
    assert len(merged) == len(real) and (merged["accuracy"] == merged["accuracy_full"]).all()
    with pytest.raises(ValueError, match="adversarial"):
        selectivity(hidden, labels, grid, control_semantics=("adversarial",))


def read_type_states(labels, n_prog):
    """States that hold only the read surface type (one-hot of (action j-1 or start, j))."""
    types, inverse = np.unique(surface_types(labels, "read"), axis=0, return_inverse=True)
    x = np.zeros((n_prog, 14, len(types)), np.float32)
    x[labels.program, labels.position] = np.eye(len(types))[inverse.reshape(-1)]
    return x


def test_control_task_on_fed_programs_keys_on_the_read_token(data):
    """On a teacher-forced program the state at (p, j) has read actions < j only: the "read"
    control task types rows by (action j-1, j), which such a state can learn; typed by the action
    it has not read ("emitted") the control would be unlearnable and selectivity inflated."""
    progs, _, labels, _ = data
    read = surface_types(labels, "read")
    first = labels.position == 0
    assert (read[first, 0] == PROGRAM_START).all() and (read[:, 1] == labels.position).all()
    later = np.flatnonzero(~first)
    np.testing.assert_array_equal(read[later, 0], progs[labels.program[later], labels.position[later] - 1])
    np.testing.assert_array_equal(surface_types(labels, "emitted")[:, 0], labels.token)
    x = read_type_states(labels, len(progs))
    control = {s: selectivity(x, labels, cfg(), surface=s)[1]["acc_control"].iloc[0] for s in SURFACES}
    assert control["read"] > 0.95 and control["emitted"] < control["read"] - 0.2, control
    with pytest.raises(ValueError, match="surface.*'typed'"):
        surface_types(labels, "typed")
    shuffled = type(labels)(labels.program[::-1], labels.position[::-1], labels.token[::-1], labels.length[::-1])
    with pytest.raises(ValueError, match="program-major"):
        surface_types(shuffled, "read")


def test_layer_curves_and_bad_names(data):
    _, _, labels, hidden = data
    layers = np.stack([hidden, np.zeros_like(hidden)], axis=2)
    df = layer_curves(layers, labels, cfg(seeds=(0,), report=("test",)))
    acc = df.set_index("layer")["accuracy"]
    assert acc[0] > 0.97 and acc[1] < 0.6
    with pytest.raises(ValueError, match="nope"):
        probe_grid(hidden, labels, cfg(features=("nope",)))
    with pytest.raises(ValueError, match="mlp9"):
        probe_grid(hidden, labels, cfg(probes=("mlp9",)))
    with pytest.raises(ValueError, match="hidden"):
        probe_grid(hidden[:10], labels, cfg())


def test_majority_baseline_scores_the_probes_test_rows_when_last_programs_are_empty():
    # a babbling checkpoint can close programs at once: empty programs have no rows, and the last
    # ones must not shift the split of the baseline away from the probes'
    rng = np.random.default_rng(3)
    progs = karel.random_programs(rng, rng.integers(3, 11, 60), width=14)
    progs[-5:] = -1
    labels = make_labels(progs, karel.random_worlds(rng, 60), ("original",), ("direction",), (0,))
    assert labels.n_programs == 60 and labels.program.max() == 54
    config = cfg(features=("direction",), offsets=(0,), seeds=(0, 1), probes=("linear",), report=("test",))
    base = majority_baseline(labels, config).set_index("seed")["n"]
    grid = probe_grid(np.zeros((60, 14, 4), np.float32), labels, config).set_index("seed")["n"]
    assert base.to_dict() == grid.to_dict()


def test_offset_without_training_rows_scores_nan_not_an_error():
    # programs of 1..2 actions have no pair at offset +1 (it would label with the final state)
    rng = np.random.default_rng(4)
    progs = karel.random_programs(rng, rng.integers(1, 3, 40), width=14)
    labels = make_labels(progs, karel.random_worlds(rng, 40), ("original",), ("direction",), (0, 1))
    assert labels.valid(0).any() and not labels.valid(1).any()
    config = cfg(features=("direction",), offsets=(0, 1), seeds=(0,), probes=("linear",), report=("test",))
    base = majority_baseline(labels, config).set_index("offset")
    grid = probe_grid(np.zeros((40, 14, 4), np.float32), labels, config).set_index("offset")
    assert np.isnan(base.loc[1, "accuracy"]) and base.loc[1, "n"] == 0
    assert np.isnan(grid.loc[1, "accuracy"]) and not np.isnan(base.loc[0, "accuracy"])


def test_emitted_action_control_tells_aligned_from_late_states(data):
    """The alignment check reads the emitted action from states that decided it, and tells them
    from states taken one position late (which have read it, as a random-init model's do)."""
    progs, _, labels, _ = data
    rng = np.random.default_rng(1)
    d = 24
    emitted = np.where(progs >= 0, progs, 0)  # hidden[p, j] chose action j: it encodes token j
    read = np.concatenate([np.full((len(progs), 1), 5), emitted[:, :-1]], 1)  # token j-1 (5: "{")
    aligned = rng.normal(size=(len(progs), 14, d)) + 5.0 * np.eye(d)[emitted]
    early_only = rng.normal(size=(len(progs), 14, d)) + 5.0 * np.eye(d)[read]
    rows = emitted_action(aligned, labels, cfg(), hidden_init=early_only)
    test = rows[rows.split == "test"].groupby("states")["accuracy"].mean()
    assert test["trained"] > 0.97
    assert test["random_init"] < test["majority"] + 0.1  # token j-1 says little of token j
    assert 0.2 < test["majority"] < 0.6
    # one position late: the state has read token j, so even the "untrained" states give it away
    late = rng.normal(size=(len(progs), 14, d)) + 5.0 * np.eye(d)[emitted]
    late_rows = emitted_action(aligned, labels, cfg(), hidden_init=late)
    assert late_rows[(late_rows.split == "test") & (late_rows.states == "random_init")]["accuracy"].mean() > 0.97
    # the rows are the offset-0 rows of the main probes
    task = emitted_action_task(labels)
    assert ((task.labels[:, 0] >= 0) == labels.valid(0)).all()
    assert (task.labels[labels.valid(0), 0] == progs[labels.program, labels.position][labels.valid(0)]).all()
