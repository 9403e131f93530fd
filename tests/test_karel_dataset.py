import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import karel
from karel.dataset import GEN_CHUNK, program_keys

SMALL = dict(n_train_generated=2 * GEN_CHUNK + 600, n_val=700, n_test=900)


def file_hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_bytes_for_any_worker_count(tmp_path):
    cfg = karel.DataConfig(**SMALL, shard_size=3000)
    karel.generate_dataset(cfg, tmp_path / "a", workers=1)
    karel.generate_dataset(cfg, tmp_path / "b", workers=2)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert len([f for f in (tmp_path / "a").iterdir() if f.name.startswith("train")]) == 3


def test_rows_do_not_depend_on_shard_size(tmp_path):
    a = karel.generate_dataset(karel.DataConfig(**SMALL, shard_size=3000), tmp_path / "a")
    b = karel.generate_dataset(karel.DataConfig(**SMALL, shard_size=100_000), tmp_path / "b")
    for split in karel.dataset.SPLITS:
        x, y = karel.load_split(tmp_path / "a", split), karel.load_split(tmp_path / "b", split)
        np.testing.assert_array_equal(x.programs, y.programs)
        np.testing.assert_array_equal(x.inputs.markers, y.inputs.markers)
        np.testing.assert_array_equal(x.outputs.dir, y.outputs.dir)
        assert a["splits"][split]["stats"] == b["splits"][split]["stats"]


def test_seed_changes_data(tmp_path):
    karel.generate_dataset(karel.DataConfig(**SMALL), tmp_path / "a")
    karel.generate_dataset(karel.DataConfig(**SMALL, seed=1), tmp_path / "b")
    assert file_hashes(tmp_path / "a") != file_hashes(tmp_path / "b")


def test_splits_lengths_outputs_and_stats(tmp_path):
    cfg = karel.DataConfig(**SMALL)
    m = karel.generate_dataset(cfg, tmp_path / "d")
    train = karel.load_split(tmp_path / "d", "train", verify=True)
    test = karel.load_split(tmp_path / "d", "test")
    assert len(train) == cfg.n_train == SMALL["n_train_generated"] // 2
    lengths = (train.programs >= 0).sum(1)
    assert set(lengths) == set(range(6, 11)) and np.bincount(lengths).max() - np.bincount(lengths)[6:].min() <= 1
    assert set((test.programs >= 0).sum(1)) == set(range(1, 11))
    assert train.n_worlds == 10
    # stored outputs are the programs' results on the stored inputs
    for i in range(0, len(test), 97):
        prog = test.programs[i][test.programs[i] >= 0].tolist()
        for w in range(10):
            want = karel.execute(prog, test.inputs[i * 10 + w])
            assert test.outputs[i * 10 + w] == (want[-1] if want else test.inputs[i * 10 + w])
    st = m["splits"]["train"]["stats"]
    assert 0.30 < st["blocked_move_rate"] < 0.42  # the reference measured about 36%
    assert 0.70 < st["noop_pick_rate"] < 0.85  # and about 78%
    assert 380 < st["tokens_per_sample_mean"] < 388
    ts = m["splits"]["test"]["stats"]
    keys_train, keys_test = program_keys(train.programs), program_keys(test.programs)
    assert ts["share_in_train_before_removal"] == pytest.approx(np.isin(keys_test, keys_train).mean())
    assert ts["share_in_train_by_length"]["1"] == 0.0  # train holds lengths 6..10 only
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["config"]["seed"] == 0


def test_remove_train_overlap(tmp_path):
    cfg = karel.DataConfig(**SMALL, remove_train_overlap=True)
    karel.generate_dataset(cfg, tmp_path / "d")
    train = karel.load_split(tmp_path / "d", "train")
    test = karel.load_split(tmp_path / "d", "test")
    assert not np.isin(program_keys(test.programs), program_keys(train.programs)).any()
    assert len(test) < cfg.n_test


def test_no_half_written_dataset(tmp_path, monkeypatch):
    out = tmp_path / "d"
    calls = {"n": 0}
    real = karel.dataset._write_table

    def failing(table, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(table, path)

    monkeypatch.setattr(karel.dataset, "_write_table", failing)
    with pytest.raises(RuntimeError):
        karel.generate_dataset(karel.DataConfig(**SMALL), out)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="manifest"):
        karel.load_split(out, "train")


def test_corrupt_shard_detected(tmp_path):
    karel.generate_dataset(karel.DataConfig(**SMALL), tmp_path / "d")
    shard = tmp_path / "d" / "test-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        karel.load_split(tmp_path / "d", "test", verify=True)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="train_lengths"):
        karel.DataConfig(train_lengths=(11,))
    with pytest.raises(ValueError, match="n_spec"):
        karel.DataConfig(n_spec=11)
    with pytest.raises(ValueError, match="split"):
        karel.load_split(".", "holdout")


def test_empty_split_loads_as_empty_samples(tmp_path):
    cfg = karel.DataConfig(n_train_generated=40, n_val=7, n_test=0, n_worlds=4, n_spec=2)
    m = karel.generate_dataset(cfg, tmp_path / "d")
    assert m["splits"]["test"]["shards"] == []
    test, val = karel.load_split(tmp_path / "d", "test"), karel.load_split(tmp_path / "d", "val")
    assert len(test) == 0 and len(val) == 7
    assert test.ids.shape == (0,) and test.ids.dtype == val.ids.dtype
    assert test.programs.shape == (0, max(cfg.lengths)) and test.programs.dtype == val.programs.dtype
    for got, ref in ((test.inputs, val.inputs), (test.outputs, val.outputs)):
        for name in ("walls", "markers", "row", "col", "dir"):
            a, b = getattr(got, name), getattr(ref, name)
            assert a.shape == (0, *b.shape[1:]) and a.dtype == b.dtype, name


def test_wrong_folder_is_named(tmp_path):
    """A stage artifact folder (manifest of the artifact, dataset under data/) is not a dataset."""
    karel.generate_dataset(karel.DataConfig(**SMALL), tmp_path / "art" / "data")
    (tmp_path / "art" / "manifest.json").write_text('{"files": {}}')
    with pytest.raises(ValueError, match="not a karel dataset manifest.*data/ subfolder"):
        karel.load_split(tmp_path / "art", "test")
    with pytest.raises(FileNotFoundError, match="no dataset manifest"):
        karel.load_split(tmp_path / "nowhere", "test")


def _content_digest(s: karel.Samples) -> str:
    h = hashlib.sha256(np.ascontiguousarray(s.ids).tobytes() + np.ascontiguousarray(s.programs).tobytes())
    for w in (s.inputs, s.outputs):
        for f in ("walls", "markers", "row", "col", "dir"):
            h.update(np.ascontiguousarray(getattr(w, f)).tobytes())
    return h.hexdigest()[:32]


def test_dataset_content_and_the_random_streams_are_pinned(tmp_path):
    """A dataset's key names its config and the karel code, not numpy's version, whose Generator
    streams may change between releases (NEP 19): the same key would then name other data, and
    training orders (``model.data``) would change with it. These digests catch that. After an
    intentional change to how karel generates data, update them (its key changes anyway); after
    a numpy upgrade alone, pin numpy instead."""
    karel.generate_dataset(karel.DataConfig(n_train_generated=GEN_CHUNK + 100, n_val=50, n_test=60), tmp_path / "d")
    got = {split: _content_digest(karel.load_split(tmp_path / "d", split)) for split in karel.dataset.SPLITS}
    assert got == {"train": "822777e41074726c99b04dec224a8e82", "val": "f841d7f7665ee50cbe506150db55aecc",
                   "test": "9445ce321e5dfe04118f2a8126ba247e"}
    streams = (np.random.default_rng([3, 1]).permutation(1000).astype(np.int64).tobytes()
               + np.random.default_rng([3, 0, 7]).integers(500, size=50).astype(np.int64).tobytes())
    assert hashlib.sha256(streams).hexdigest()[:32] == "058df6a9aa7b4530ab5698497f901ed9"
