"""The probe stage on activations with nothing to probe: an artifact that says so, not a crash."""

import numpy as np

import karel
from tasks.probing import train_probes
from tasks.record import Recorder
from tasks.results import ResultsDB
from tasks.probe_config import ProbeConfig


def fake_activations(tmp_path, programs, layers=0, random_init=False):
    """A dump of zero states over ``programs``: with ``layers`` single layers kept, with
    ``random_init`` the random-init model's states too."""
    folder = tmp_path / "acts"
    folder.mkdir()
    n = len(programs)
    worlds = karel.random_worlds(np.random.default_rng(0), n * 10)
    extra = {"hidden_layers": np.zeros((n, programs.shape[1], layers, 8), np.float16)} if layers else {}
    if random_init:
        extra["hidden_init"] = np.zeros((n, programs.shape[1], 8), np.float16)
    np.savez(folder / "activations.npz", programs=programs, lengths=(programs >= 0).sum(1),
             hidden=np.zeros((n, programs.shape[1], 8), np.float16), is_test=np.zeros(n, bool),
             spec_ids=np.arange(n), walls=worlds.walls, markers=worlds.markers, row=worlds.row,
             col=worlds.col, dir=worlds.dir, **extra)
    return {"key": "actsk", "path": str(folder), "status": "cached",
            "meta": {"step": 3, "checkpoint_key": "t-s0000003", "programs": "generated"}}


def test_programs_closed_at_once_give_an_empty_grid(tmp_path):
    acts = fake_activations(tmp_path, np.full((20, 14), -1, np.int8))
    cfg = ProbeConfig(offsets=(0,), kinds=("linear",), seeds=2, epochs=1)
    out = train_probes.fn(str(tmp_path / "ws"), cfg, acts, "original")
    assert out["status"] == "computed" and out["meta"]["n_pairs"] == 0
    db = ResultsDB(tmp_path / "r.duckdb")
    Recorder(db, "run", None).probes(out)  # records the stage, no rows, no error
    assert db.count("probe_results") == 0 and db.count("stage_runs") == 1


def test_alternative_offsets_limit_the_alternative_semantics_only(tmp_path):
    """``probe.alternative_offsets``: flip is probed at those offsets, original at all of them."""
    import pandas as pd
    import pytest

    rng = np.random.default_rng(1)
    programs = rng.integers(0, 5, size=(60, 14)).astype(np.int8)
    programs[:, 6:] = -1
    acts = fake_activations(tmp_path, programs, layers=2, random_init=True)
    seen = {}
    for alt in (0, -1):  # without offset 0 the alternatives get no per-layer grid (it is offset 0's)
        cfg = ProbeConfig(offsets=(-1, 0, 1), alternative_offsets=(alt,), kinds=("linear",), seeds=1, epochs=1)
        for sem in ("original", "flip"):
            out = train_probes.fn(str(tmp_path / f"ws-{sem}{alt}"), cfg, acts, sem)
            res = pd.read_parquet(f"{out['path']}/probe_results.parquet")
            init = set(pd.read_parquet(f"{out['path']}/random_init_results.parquet")["offset"])
            seen[sem, alt] = set(res["offset"]), set(res.loc[res["layer"] >= 0, "offset"]), init
    # the random-init control sits at the alternatives' offsets, where the drops beyond it are read
    assert seen == {("original", 0): ({-1, 0, 1}, {0}, {0}), ("flip", 0): ({0}, {0}, {0}),
                    ("original", -1): ({-1, 0, 1}, {0}, {-1}), ("flip", -1): ({-1}, set(), {-1})}, seen
    with pytest.raises(ValueError, match="alternative_offsets.*\\[2\\]"):
        ProbeConfig(offsets=(0, 1), alternative_offsets=(0, 2))
    # on fed reference programs the current state is offset -1: the per-layer and random-init
    # grids sit there (without alternative_offsets too), not at offset 0
    cfg = ProbeConfig(offsets=(-1, 0, 1), kinds=("linear",), seeds=1, epochs=1)
    ref = {**acts, "meta": {**acts["meta"], "programs": "reference"}}
    out = train_probes.fn(str(tmp_path / "ws-ref"), cfg, ref, "original")
    res = pd.read_parquet(f"{out['path']}/probe_results.parquet")
    init = pd.read_parquet(f"{out['path']}/random_init_results.parquet")
    assert set(res.loc[res["layer"] >= 0, "offset"]) == {-1} and set(init["offset"]) == {-1}


def test_fed_programs_key_the_control_task_on_the_read_token(tmp_path):
    """``programs="reference"`` (the dump's ``activations.programs``, in its meta) reaches the control task:
    states holding only the read surface type learn its control labels, not the emitted ones."""
    import pandas as pd

    from probes import make_labels
    from probes.controls import surface_types

    rng = np.random.default_rng(2)
    programs = rng.integers(0, 5, size=(150, 14)).astype(np.int8)
    programs[:, 8:] = -1
    acts = fake_activations(tmp_path, programs)
    data = np.load(f"{acts['path']}/activations.npz")
    labels = make_labels(programs, karel.WorldBatch(data["walls"], data["markers"], data["row"], data["col"],
                                                    data["dir"]), ("original",), ("direction",), (0,))
    types, inverse = np.unique(surface_types(labels, "read"), axis=0, return_inverse=True)
    hidden = np.zeros((len(programs), 14, len(types)), np.float16)
    hidden[labels.program, labels.position] = np.eye(len(types))[inverse.reshape(-1)]
    np.savez(f"{acts['path']}/activations.npz", **{**dict(data), "hidden": hidden})
    cfg = ProbeConfig(offsets=(0,), features=("direction",), kinds=("linear",), seeds=2, epochs=30,
                      per_layer=False)
    control = {}
    for programs_from in ("reference", "generated"):
        dump = {**acts, "meta": {**acts["meta"], "programs": programs_from}}
        out = train_probes.fn(str(tmp_path / f"ws-{programs_from}"), cfg, dump, "original")
        c = pd.read_parquet(f"{out['path']}/controls.parquet")
        control[programs_from] = float(c[c["kind"] == "control_task"]["value"].iloc[0])
    assert control["reference"] > 0.9 and control["generated"] < control["reference"] - 0.2, control


def test_offsets_before_last_probe_the_last_checkpoint_in_full():
    import pytest

    from tasks.probing import probe_key
    from tasks.probe_config import probe_config_at

    full = ProbeConfig(alternative_offsets=(0,))
    plan = ProbeConfig(alternative_offsets=(0,), offsets_before_last=(0,))
    probed = {0, 500, 1000}
    last, early = probe_config_at(plan, 1000, probed), probe_config_at(plan, 500, probed)
    assert last == full and early.offsets == (0,) and early.alternative_offsets == (0,)
    # the last checkpoint's grids are the plain config's (same keys: nothing recomputed)
    assert probe_key(last, "a", "original") == probe_key(full, "a", "original")
    assert probe_key(early, "a", "original") != probe_key(full, "a", "original")
    assert probe_config_at(full, 500, probed) == full
    # alternatives at every offset keep every offset before the last; limited ones keep theirs
    assert ProbeConfig(offsets_before_last=(0, 1)).at_checkpoint(False).alternative_offsets == ()
    assert ProbeConfig(alternative_offsets=(0, 2), offsets_before_last=(0, 1)).at_checkpoint(False) \
        .alternative_offsets == (0,)
    with pytest.raises(ValueError, match=r"probe.offsets_before_last: \[3\] not in probe.offsets"):
        ProbeConfig(offsets_before_last=(0, 3))
    with pytest.raises(ValueError, match="none is in probe.offsets_before_last"):
        ProbeConfig(alternative_offsets=(1,), offsets_before_last=(0,))


def test_random_init_offsets_give_the_future_offsets_their_random_init_floor(tmp_path):
    """``probe.random_init_offsets``: the original grid's random-init control covers them (where
    target 6 reads it); an alternative's stays at its own offsets, and the drops beyond
    random-init pair only where both semantics have it."""
    import pandas as pd

    from tasks.phases import interventions_vs_init

    rng = np.random.default_rng(2)
    programs = rng.integers(0, 5, size=(60, 14)).astype(np.int8)
    programs[:, 7:] = -1
    acts = fake_activations(tmp_path, programs, random_init=True)
    cfg = ProbeConfig(offsets=(-1, 0, 1), alternative_offsets=(0,), random_init_offsets=(0, 1),
                      kinds=("linear",), seeds=2, epochs=1)
    assert cfg.init_offsets(0, "original") == (0, 1) and cfg.init_offsets(0, "flip") == (0,)
    assert ProbeConfig(offsets=(-1, 0, 1)).init_offsets(0, "flip") == (0,)  # the current offset, as before
    results, init, controls = [], [], []
    for sem in ("original", "flip"):
        out = train_probes.fn(str(tmp_path / "ws"), cfg, acts, sem)
        init.append(pd.read_parquet(f"{out['path']}/random_init_results.parquet").assign(semantics=sem))
        results.append(pd.read_parquet(f"{out['path']}/probe_results.parquet").assign(probe_key=out["key"]))
        controls.append(pd.read_parquet(f"{out['path']}/controls.parquet"))
    assert sorted(set(init[0]["offset"])) == [0, 1] and set(init[1]["offset"]) == {0}
    c = pd.concat(controls)
    assert set(c.loc[c["kind"] == "random_init", "offset"]) == {0, 1}
    iv = interventions_vs_init(pd.concat(results), pd.concat(init))
    assert set(iv["offset"]) == {0}
    # before the last checkpoint they keep only the offsets probed there
    assert ProbeConfig(offsets=(-1, 0, 1), random_init_offsets=(0, 1), offsets_before_last=(0,)) \
        .at_checkpoint(False).init_offsets(0, "original") == (0,)


def test_the_margins_over_each_baseline_are_paired_by_seed(tmp_path):
    """``*_margin_low`` controls rows: for every feature, offset and kind of the original grid, the
    lower 95% bound of probe minus baseline over seeds; the random-init one checked by hand from
    the stage's own per-seed rows (3 seeds: t = 4.303)."""
    import pandas as pd

    rng = np.random.default_rng(4)
    programs = rng.integers(0, 5, size=(90, 14)).astype(np.int8)
    programs[:, 8:] = -1
    acts = fake_activations(tmp_path, programs, random_init=True)
    path = tmp_path / "acts" / "activations.npz"
    arrays = dict(np.load(path))  # states that differ, so the paired differences vary by seed
    arrays["hidden"] = rng.normal(size=arrays["hidden"].shape).astype(np.float16)
    arrays["hidden_init"] = rng.normal(size=arrays["hidden"].shape).astype(np.float16)
    np.savez(path, **arrays)
    cfg = ProbeConfig(offsets=(0, 1), features=("direction", "facing_wall"), kinds=("linear", "mlp1"),
                      seeds=3, epochs=2, random_init_offsets=(0, 1))
    out = train_probes.fn(str(tmp_path / "ws"), cfg, acts, "original")
    c = pd.read_parquet(f"{out['path']}/controls.parquet")
    res = pd.read_parquet(f"{out['path']}/probe_results.parquet")
    init = pd.read_parquet(f"{out['path']}/random_init_results.parquet")
    for kind in ("majority_margin_low", "control_task_margin_low", "random_init_margin_low"):
        got = c[c["kind"] == kind]
        assert len(got) == 2 * 2 * 2 and set(got["probe"]) == {"linear", "mlp1"}, kind
    keys = ["feature", "offset", "probe", "seed"]
    real = res[(res["split"] == "test") & (res["layer"] == -1)].set_index(keys)["accuracy"]
    diff = (real - init.set_index(keys)["accuracy"]).dropna()
    assert len(diff) == 2 * 2 * 2 * 3 and diff.std() > 0
    for (feat, off, probe), d in diff.groupby(level=["feature", "offset", "probe"]):
        want = d.mean() - 4.302653 * d.std(ddof=1) / np.sqrt(3)
        row = c[(c["kind"] == "random_init_margin_low") & (c["feature"] == feat) & (c["offset"] == off)
                & (c["probe"] == probe)]
        assert np.isclose(row["value"].iloc[0], want, atol=1e-5, equal_nan=True), (feat, off, probe)


def test_the_dump_says_which_programs_it_holds(tmp_path):
    """The probe stage reads the current offset and the control task's surface from the dump's
    own meta (its key names its programs), never from an argument that could disagree with it."""
    import pytest

    acts = fake_activations(tmp_path, np.full((20, 14), -1, np.int8))
    del acts["meta"]["programs"]
    cfg = ProbeConfig(offsets=(0,), kinds=("linear",), seeds=2, epochs=1)
    with pytest.raises(ValueError, match="actsk: its meta does not say which programs"):
        train_probes.fn(str(tmp_path / "ws"), cfg, acts, "original")


def test_a_grid_killed_half_way_resumes_from_its_saved_units(tmp_path, monkeypatch):
    """A probe stage stopped after some (seed, kind) units keeps them in the workspace's work
    folder, under this machine's arithmetic tag; the rerun trains only the rest, gives the
    straight run's results, and removes the folder when it has computed the artifact. A damaged
    unit, other inputs, or another machine's units train again."""
    import dataclasses

    import pandas as pd
    import pytest

    import probes.grid as grid
    from probes.resume import resumable, saved_units
    from tasks.probing import probe_key
    from tasks.stage import arithmetic_tag

    rng = np.random.default_rng(5)
    programs = rng.integers(0, 5, size=(60, 14)).astype(np.int8)
    programs[:, 7:] = -1
    acts = fake_activations(tmp_path, programs, random_init=True)
    path = tmp_path / "acts" / "activations.npz"
    arrays = dict(np.load(path))
    arrays["hidden"] = rng.normal(size=arrays["hidden"].shape).astype(np.float16)
    np.savez(path, **arrays)
    cfg = ProbeConfig(offsets=(0, 1), kinds=("linear", "mlp1"), seeds=2, epochs=2)

    fit, trained, stop_after = grid._fit_unit, [], [None]

    def fit_unit(*args, **kw):
        if stop_after[0] is not None and len(trained) == stop_after[0]:
            raise KeyboardInterrupt  # the process is stopped here
        trained.append(args[3:5])  # (seed, kind)
        return fit(*args, **kw)

    monkeypatch.setattr(grid, "_fit_unit", fit_unit)
    straight = train_probes.fn(str(tmp_path / "straight"), cfg, acts, "original")
    total = len(trained)  # the main grid, the random-init and the alignment grids: 2 seeds x 2 kinds each
    assert total >= 3 * 4 and not list((tmp_path / "straight" / "work" / "probes").glob("*"))

    ws = tmp_path / "ws"
    units = ws / "work" / "probes" / probe_key(cfg, acts["key"], "original")
    trained.clear()
    stop_after[0] = 5
    with pytest.raises(KeyboardInterrupt):
        train_probes.fn(str(ws), cfg, acts, "original")
    here = units / arithmetic_tag()
    assert saved_units(here) == 5
    # units kept by a machine whose arithmetic differs (another CPU, thread count or torch) are not mixed in
    here.rename(units / "another-machine")
    trained.clear()
    stop_after[0] = 2
    with pytest.raises(KeyboardInterrupt):
        train_probes.fn(str(ws), cfg, acts, "original")
    assert saved_units(here) == 2 and saved_units(units) == 7
    trained.clear()
    stop_after[0] = None
    resumed = train_probes.fn(str(ws), cfg, acts, "original")
    assert len(trained) == total - 2 and not units.exists()
    # found cached, the stage leaves a units folder alone (a forced recompute elsewhere may be writing it)
    (here / "x.parquet").parent.mkdir(parents=True)
    (here / "x.parquet").write_bytes(b"")
    assert train_probes.fn(str(ws), cfg, acts, "original")["status"] == "cached" and saved_units(units) == 1
    for name in ("probe_results", "controls", "random_init_results"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(f"{straight['path']}/{name}.parquet").drop(columns="probe_key", errors="ignore"),
            pd.read_parquet(f"{resumed['path']}/{name}.parquet").drop(columns="probe_key", errors="ignore"))

    # the library alone: a damaged unit file trains again; other labels share no unit
    from probes.labels import make_labels
    a = np.load(path)
    labels = make_labels(programs, karel.random_worlds(np.random.default_rng(0), 600), ("original", "flip"),
                         ("direction",), (0,))
    hidden = a["hidden"].astype(np.float32)
    conf = grid.GridConfig(semantics=("original",), features=("direction",), offsets=(0,), probes=("linear",),
                           seeds=(0, 1), train=grid.TrainConfig(epochs=2))
    with resumable(tmp_path / "lib") as folder:
        trained.clear()
        first = grid.probe_grid(hidden, labels, conf)
        next(folder.glob("*-s1-linear.parquet")).write_bytes(b"not parquet")
        again = grid.probe_grid(hidden, labels, conf)
        assert trained == [(0, "linear"), (1, "linear"), (1, "linear")]
        pd.testing.assert_frame_equal(first, again)
        grid.probe_grid(hidden, labels, dataclasses.replace(conf, semantics=("flip",)))
        assert len(trained) == 5
