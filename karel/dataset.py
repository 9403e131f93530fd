"""Dataset generation: splits of random programs x random worlds, written as Parquet shards.

Determinism: every block of ``GEN_CHUNK`` programs draws from its own random streams seeded by
``(seed, split, chunk)``, and program lengths cycle by global index, so the bytes depend only
on the config, never on the number of worker processes (nor, for the rows, on the shard size).
Programs and worlds use separate streams, so the train programs can be enumerated cheaply when
measuring or removing the train/test overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import multiprocessing as mp

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .batch import PAD, execute_batch, output_worlds
from .programs import TOKEN_WEIGHTS, lengths_cycle, random_programs
from .semantics import MOVE, PICK_MARKER
from .text import N_SPEC, prompt_length
from .world import SIZE, WorldBatch, random_worlds

GEN_CHUNK = 8192  # programs per random stream; part of the data format, do not change lightly
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """What to generate. Paper sizes: ``DataConfig.paper()``."""

    seed: int = 0
    n_train_generated: int = 20_000  # generated over all lengths; only train_lengths are kept
    n_val: int = 1_000
    n_test: int = 1_000
    lengths: tuple[int, ...] = tuple(range(1, 11))
    train_lengths: tuple[int, ...] = tuple(range(6, 11))
    n_worlds: int = 10  # per program: the first n_spec are the spec, the rest held out
    n_spec: int = N_SPEC
    token_weights: tuple[float, ...] = TOKEN_WEIGHTS
    remove_train_overlap: bool = False  # drop val/test programs that also occur in train
    shard_size: int = 100_000

    def __post_init__(self):
        if not set(self.train_lengths) <= set(self.lengths):
            raise ValueError(f"train_lengths {self.train_lengths} must be a subset of lengths {self.lengths}")
        if min(self.lengths) < 1 or max(self.lengths) > 14:
            raise ValueError(f"lengths: must lie in 1..14, got {self.lengths}")
        if not 1 <= self.n_spec <= self.n_worlds:
            raise ValueError(f"n_spec: must be in 1..n_worlds ({self.n_worlds}), got {self.n_spec}")
        for name in ("n_train_generated", "n_val", "n_test", "shard_size"):
            if getattr(self, name) < (1 if name == "shard_size" else 0):
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not self.train_lengths:
            raise ValueError("train_lengths: empty, so no program would be kept for training")
        if len(self.token_weights) != len(TOKEN_WEIGHTS) or not all(w > 0 for w in self.token_weights):
            raise ValueError(f"token_weights: need {len(TOKEN_WEIGHTS)} positive weights (one per action), "
                             f"got {self.token_weights}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: must be an int >= 0, got {self.seed!r}")

    @classmethod
    def paper(cls, **overrides) -> "DataConfig":
        base = dict(n_train_generated=1_000_000, n_val=10_000, n_test=10_000)
        return cls(**{**base, **overrides})

    @property
    def n_train(self) -> int:
        """Programs kept for training (the share of generated programs with a train length)."""
        return self.n_train_generated * len(self.train_lengths) // len(self.lengths)

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def split_lengths(self, split: str) -> tuple[int, ...]:
        return self.train_lengths if split == "train" else self.lengths


def _streams(cfg: DataConfig, split: str, chunk: int) -> tuple[np.random.Generator, np.random.Generator]:
    seq = np.random.SeedSequence([cfg.seed, SPLITS.index(split), chunk])
    prog_seq, world_seq = seq.spawn(2)
    return np.random.default_rng(prog_seq), np.random.default_rng(world_seq)


def chunk_programs(cfg: DataConfig, split: str, chunk: int) -> np.ndarray:
    """(n, max_len) programs of one chunk of a split (-1 padded to the split's longest length)."""
    start = chunk * GEN_CHUNK
    n = min(GEN_CHUNK, cfg.split_size(split) - start)
    lengths = lengths_cycle(start, n, cfg.split_lengths(split))
    rng, _ = _streams(cfg, split, chunk)
    return random_programs(rng, lengths, cfg.token_weights, width=max(cfg.lengths))


def program_keys(programs: np.ndarray) -> np.ndarray:
    """One int64 per program (base-6 digits of ids+1), equal iff the programs are equal."""
    digits = programs.astype(np.int64) + 1  # PAD -> 0
    return (digits * 6 ** np.arange(programs.shape[1], dtype=np.int64)).sum(axis=1)


def split_keys(cfg: DataConfig, split: str) -> np.ndarray:
    n_chunks = -(-cfg.split_size(split) // GEN_CHUNK)
    return np.concatenate([program_keys(chunk_programs(cfg, split, c)) for c in range(n_chunks)] or [np.zeros(0, np.int64)])


def _interior(a: np.ndarray, n_prog: int) -> np.ndarray:
    return np.ascontiguousarray(a[:, 1:-1, 1:-1]).reshape(n_prog, -1)


def _generate_rows(cfg: DataConfig, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """Arrays for programs ``start..stop`` of a split (generated chunk by chunk)."""
    parts = []
    for chunk in range(start // GEN_CHUNK, -(-stop // GEN_CHUNK)):
        programs = chunk_programs(cfg, split, chunk)
        _, world_rng = _streams(cfg, split, chunk)
        worlds = random_worlds(world_rng, len(programs) * cfg.n_worlds)
        rows = _rows(programs, worlds, execute_batch(programs, worlds), chunk * GEN_CHUNK)
        lo, hi = max(start - chunk * GEN_CHUNK, 0), min(stop - chunk * GEN_CHUNK, len(programs))
        parts.append({k: v[lo:hi] for k, v in rows.items()})
    if not parts:  # an empty range (a split of size 0): the same columns with no rows
        rng = np.random.default_rng(0)
        programs = random_programs(rng, np.ones(1, int), cfg.token_weights, width=max(cfg.lengths))
        worlds = random_worlds(rng, cfg.n_worlds)
        rows = _rows(programs, worlds, execute_batch(programs, worlds), start)
        return {k: v[:0] for k, v in rows.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _rows(programs, worlds: WorldBatch, trace, first_id: int) -> dict[str, np.ndarray]:
    """Columns of one chunk; keys starting with ``_`` are per-program counts for statistics."""
    p = len(programs)
    out = output_worlds(trace)

    def robot(w: WorldBatch) -> np.ndarray:
        return np.stack([w.row, w.col, w.dir], axis=1).reshape(p, -1)

    n_worlds = len(worlds) // p
    moves = trace.action[:, None, :] == MOVE  # (P, 1, L)
    picks = trace.action[:, None, :] == PICK_MARKER
    same = (
        (out.markers == worlds.markers).all(axis=(1, 2))
        & (out.row == worlds.row) & (out.col == worlds.col) & (out.dir == worlds.dir)
    ).reshape(p, -1)
    return {
        "id": np.arange(first_id, first_id + p, dtype=np.int64),
        "length": trace.lengths.astype(np.int8),
        "program": programs,
        "walls": _interior(worlds.walls, p),
        "in_markers": _interior(worlds.markers, p),
        "in_robot": robot(worlds),
        "out_markers": _interior(out.markers, p),
        "out_robot": robot(out),
        "_moves": moves.sum(axis=(1, 2)) * n_worlds,
        "_blocked": (trace.noop & moves).sum(axis=(1, 2)),
        "_picks": picks.sum(axis=(1, 2)) * n_worlds,
        "_noop_picks": (trace.noop & picks).sum(axis=(1, 2)),
        "_identity": same.sum(axis=1),
    }


def _fixed(a: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(a).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, a.shape[1])


def _table(rows: dict[str, np.ndarray]) -> pa.Table:
    programs, lengths = rows["program"], rows["length"].astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = programs[np.arange(programs.shape[1])[None, :] < lengths[:, None]]
    cols = {
        "id": pa.array(rows["id"]),
        "length": pa.array(rows["length"]),
        "program": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "walls": _fixed(rows["walls"].astype(bool)),
    }
    for k in ("in_markers", "in_robot", "out_markers", "out_robot"):
        cols[k] = _fixed(rows[k])
    return pa.table(cols)


def _write_table(table: pa.Table, path: Path) -> str:
    """Write Parquet (temporary name, then rename) and return its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=False, write_statistics=False)
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_job(args) -> dict:
    cfg, split, index, start, stop, out_dir, drop_keys = args
    rows = _generate_rows(cfg, split, start, stop)
    if drop_keys is not None:
        keep = ~np.isin(program_keys(rows["program"]), drop_keys)
        rows = {k: v[keep] for k, v in rows.items()}
    name = f"{split}-{index:05d}.parquet"
    sha = _write_table(_table(rows), Path(out_dir) / name)
    counts = {k[1:]: int(v.sum()) for k, v in rows.items() if k.startswith("_")}
    hist = np.bincount(rows["length"], minlength=15)
    return {"file": name, "sha256": sha, "rows": len(rows["id"]), "length_hist": hist.tolist(), **counts}


def _split_stats(cfg: DataConfig, split: str, shards: list[dict], train_keys: np.ndarray) -> dict:
    total = lambda k: sum(s[k] for s in shards)
    hist = np.sum([s["length_hist"] for s in shards], axis=0) if shards else np.zeros(15, int)
    n = total("rows")
    pairs = n * cfg.n_worlds
    lengths = cfg.split_lengths(split)
    stats = {
        "programs": n,
        "length_histogram": {str(k): int(hist[k]) for k in lengths},
        "tokens_per_sample_mean": prompt_length(cfg.n_spec) + 2 + float((hist * np.arange(15)).sum()) / max(n, 1),
        "blocked_move_rate": total("blocked") / max(total("moves"), 1),
        "noop_pick_rate": total("noop_picks") / max(total("picks"), 1),
        "output_equals_input_rate": total("identity") / max(pairs, 1),
    }
    if split != "train":
        keys = split_keys(cfg, split)
        in_train = np.isin(keys, train_keys)
        lens = lengths_cycle(0, len(keys), lengths)
        stats["share_in_train_before_removal"] = float(in_train.mean()) if len(keys) else 0.0
        stats["share_in_train_by_length"] = {
            str(k): float(in_train[lens == k].mean()) for k in lengths if (lens == k).any()
        }
    return stats


def generate_dataset(cfg: DataConfig, out_dir, workers: int = 1, overwrite: bool = False) -> dict:
    """Write all splits of ``cfg`` under ``out_dir`` and return the manifest.

    The folder appears only complete: everything is written to a temporary sibling first and
    renamed at the end, so a killed run never leaves a dataset that looks finished.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train_keys = split_keys(cfg, "train")
    jobs = []
    for split in SPLITS:
        size = cfg.split_size(split)
        drop = train_keys if (cfg.remove_train_overlap and split != "train") else None
        for i, start in enumerate(range(0, size, cfg.shard_size)):
            jobs.append((cfg, split, i, start, min(start + cfg.shard_size, size), str(tmp), drop))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            results = list(pool.map(_shard_job, jobs))
    else:
        results = [_shard_job(j) for j in jobs]
    manifest = {"format_version": FORMAT_VERSION, "config": asdict(cfg), "splits": {}}
    for split in SPLITS:
        shards = [r for r, j in zip(results, jobs) if j[1] == split]
        manifest["splits"][split] = {
            "shards": [{k: s[k] for k in ("file", "sha256", "rows")} for s in shards],
            "stats": _split_stats(cfg, split, shards, train_keys),
        }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest


def read_manifest(data_dir) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        hint = " (the dataset lives in its data/ subfolder)" if (Path(data_dir) / "data" / "manifest.json").exists() else ""
        raise FileNotFoundError(f"{path}: no dataset manifest (was the dataset generated?){hint}")
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or not {"config", "splits"} <= set(manifest):
        hint = " (did you mean its data/ subfolder?)" if (Path(data_dir) / "data" / "manifest.json").exists() else ""
        raise ValueError(f"{path}: not a karel dataset manifest (no 'config'/'splits'){hint}")
    return manifest


def config_from_manifest(manifest: dict) -> DataConfig:
    raw = manifest["config"]
    names = {f.name for f in fields(DataConfig)}
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names})


@dataclass
class Samples:
    """One split in memory: programs (P, L) padded with -1, inputs/outputs (P * W worlds)."""

    ids: np.ndarray
    programs: np.ndarray
    inputs: WorldBatch
    outputs: WorldBatch

    def __len__(self) -> int:
        return len(self.programs)

    @property
    def n_worlds(self) -> int:
        return len(self.inputs) // max(len(self.programs), 1)


def _grid(interior: np.ndarray, fill) -> np.ndarray:
    n = len(interior)
    g = np.full((n, SIZE, SIZE), fill, dtype=interior.dtype)
    g[:, 1:-1, 1:-1] = interior.reshape(n, 6, 6)
    return g


def load_split(data_dir, split: str, limit: int | None = None, verify: bool = False) -> Samples:
    """Read a split back; ``verify`` checks every shard's sha256 against the manifest."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    manifest = read_manifest(data_dir)
    cfg = config_from_manifest(manifest)
    tables, n = [], 0
    for shard in manifest["splits"][split]["shards"]:
        path = Path(data_dir) / shard["file"]
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            raise ValueError(f"{path}: sha256 does not match the manifest (corrupt shard)")
        tables.append(pq.read_table(path))
        n += shard["rows"]
        if limit is not None and n >= limit:
            break
    table = pa.concat_tables(tables) if tables else _table(_generate_rows(cfg, split, 0, 0))
    if limit is not None:
        table = table.slice(0, limit)
    p, w = table.num_rows, cfg.n_worlds
    lengths = table["length"].to_numpy().astype(np.intp)
    programs = np.full((p, max(cfg.lengths)), PAD, np.int8)
    flat = table["program"].combine_chunks().flatten().to_numpy()
    programs[np.arange(programs.shape[1])[None, :] < lengths[:, None]] = flat

    def col(name):
        return table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)

    walls = _grid(col("walls").reshape(p * w, 36), True)

    def worlds(prefix):
        robot = col(f"{prefix}_robot").reshape(p * w, 3)
        return WorldBatch(walls, _grid(col(f"{prefix}_markers").reshape(p * w, 36), 0), *robot.T.copy())

    return Samples(table["id"].to_numpy(), programs, worlds("in"), worlds("out"))
