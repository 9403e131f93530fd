"""``semprobe estimate``: how long a preset will take on this machine, measured before it runs.

Preset times are machine-bound (the ``cpu`` preset end to end at 2,000 steps: 45-48 minutes on a
2-core Xeon, 55-59 on a 2-core Zen 5 EPYC, 78 on a 2-core Zen 4 EPYC; RESULTS.md). This runs each stage's own code at a
small scale in a temporary workspace and scales it to the preset's size:

- dataset: the stage's task on two shares of the preset's programs (``_fractions``), linear in them;
- train: the preset's model, optimizer, data and batch for one step, then ``train_steps`` more
  resumed from its checkpoint: the first step (setup included) + seconds a step x the rest;
- evaluate, activations: the stage's task on two shares of the preset's specs (``_fractions``),
  linear in the share of them, times the checkpoints it runs at (evaluate: every scheduled one;
  activations: the probed ones, each timed with the random-init pass, which step 0's lacks);
- probes: every distinct grid of the run (per probed checkpoint and semantics: its offsets, the
  controls, the random-init control where the dump has it, the per-layer grids), run by the
  stage's task for one and two epochs on synthetic states of the run's width over real programs
  and worlds, as many action positions as the run will probe (reference programs' lengths,
  capped by ``probe.max_train_pairs``), linear in epochs (an upper bound with ``probe.patience``).

End to end is the sum of the stages, with the probe grids ``min(WORKERS, cores)`` at a time after
training as the flow runs them. On a machine whose cores every stage keeps busy (the 2-core CPUs)
evaluating beside training shares the cores rather than saving time (the `cpu` preset: 57:03
estimated, 57:23 measured; BENCHMARKS.md), so the sum is what a run takes there; where training
has a GPU to itself the overlap hides part of evaluation and the sum is an upper bound. Recording
and the report (seconds) are left out. Nothing is written outside the temporary folder, whatever
``SEMPROBE_ARTIFACTS`` says.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import karel
from karel.dataset import GEN_CHUNK
from flows.pipeline import WORKERS
from flows.presets import StudyConfig
from model.checkpoint import list_checkpoints
from model.config import checkpoint_steps
from model.train import train
from tasks.activations import ACTIVATIONS_FILE, dump_activations, reference_programs
from tasks.dataset import data_dir, generate_dataset
from tasks.evaluation import evaluate
from tasks.probing import train_probes
from tasks.probe_config import probe_config_at
from tasks.training import published_checkpoint, publish_checkpoint
from tasks.workspace import ARTIFACT_CACHE_ENV, ARTIFACTS_ENV, Workspace

TRAIN_KEY = "estimate"  # the temporary training run's key: its checkpoints are TRAIN_KEY-s<step>


@dataclass(frozen=True)
class Part:
    """One stage of the run: ``runs`` times ``each`` seconds, ``seconds`` in all (probes: wall)."""

    stage: str
    runs: int
    each: float
    seconds: float
    detail: str = ""


def linear(t1: float, n1: float, t2: float, n2: float, n: float) -> float:
    """Seconds at size ``n`` of a cost measured as ``t1`` at ``n1`` and ``t2`` at ``n2`` (> n1):
    a fixed part plus a part per unit, neither below zero. Timing noise can make ``t2 < t1`` (all
    fixed cost then), or make ``t2`` too long: a fixed part >= 0 bounds the part per unit by
    ``t1 / n1``, so the cost at ``n`` never exceeds ``n / n1`` times ``t1``. The bound matters where
    ``n`` is far past ``n2`` (the probe grids' 30 epochs from timings at 1 and 2, where noise in
    the second timing is multiplied by 29)."""
    per_unit = min(max(t2 - t1, 0.0) / (n2 - n1), t1 / n1)
    return t1 - per_unit * n1 + per_unit * n


# What grids run side by side get done, as a share of the same grids alone: three one-thread
# grids on 2 cores did 1.67x (benchmarks/bench_probe_threads.py) and 1.56x (the cpu preset's
# probe stage, 18:34 for grids whose alone-time this module puts at 1,737 s) one grid's work a
# second, not 2x: they share the memory bandwidth and caches (BENCHMARKS.md).
SIDE_BY_SIDE = 0.8


def probe_wall(grids: list[float], slots: int) -> float:
    """Wall seconds of grids run ``slots`` at a time (at ``SIDE_BY_SIDE`` efficiency when more
    than one): no less than the longest grid."""
    rate = slots * SIDE_BY_SIDE if slots > 1 else 1.0
    return max(max(grids, default=0.0), sum(grids) / rate)


def steps_within(seconds: float, parts: list[Part], cfg: StudyConfig, first: float, per_step: float) -> int:
    """The most training steps whose whole run fits ``seconds``: training and evaluation (one per
    scheduled checkpoint) scale with the steps, the other stages stay as estimated (0: none fit)."""
    fixed = sum(p.seconds for p in parts if p.stage not in ("train", "evaluate"))
    eval_each = next(p.each for p in parts if p.stage == "evaluate")

    def total(steps: int) -> float:  # grows with the steps: the schedule's checkpoints do too
        return fixed + first + per_step * (steps - 1) + eval_each * len(checkpoint_steps(replace(cfg.train, steps=steps)))

    lo, hi = 0, max(int((seconds - fixed - first) / per_step) + 1, 0)  # hi: no evaluation at all
    while lo < hi:  # the largest steps with total(steps) <= seconds
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(mid) <= seconds else (lo, mid - 1)
    return lo


def _timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def _fractions(n: int, batch: int) -> tuple[float, float]:
    """Two shares of ``n`` items (specs, programs) to time: two batches (a batch of programs is a
    generator chunk) or an eighth of them, whichever is more, and half of that. Smaller shares cost less but their noise, scaled up, does not: the
    cpu preset's dump timed at 50 and 100 specs scaled to 260 s, at 200 and 400 to 167 s, and
    took 164 s."""
    f2 = min(1.0, max(2 * batch, n / 8) / max(n, 1))
    return f2 / 2, f2


def _share(n: int, f: float) -> int:
    return max(1, math.ceil(n * f))


@contextmanager
def _isolated_store(root: Path):
    """Point the artifact store at ``root`` for the duration (the stages read it from the environment)."""
    saved = {k: os.environ.get(k) for k in (ARTIFACTS_ENV, ARTIFACT_CACHE_ENV)}
    os.environ[ARTIFACTS_ENV] = str(root / "artifacts")
    os.environ[ARTIFACT_CACHE_ENV] = str(root / "artifact-cache")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _small_data(cfg: StudyConfig, fe: float, fa: float) -> karel.DataConfig:
    """A dataset just large enough for the timed shares of evaluation and activations."""
    ev, ac, d = cfg.eval, cfg.activations, cfg.data
    n_train = max(_share(ac.n_train_specs, fa), 2 * cfg.train.batch_size, 64)
    return replace(d, n_train_generated=math.ceil(n_train * len(d.lengths) / len(d.train_lengths)),
                   n_val=max(_share(ev.n_val_samples, fe), 8),
                   n_test=max(_share(ev.n_test_specs, fe), _share(ac.n_test_specs, fa), 8))


def synthetic_activations(folder: Path, ds: dict, cfg: StudyConfig, random_init: bool) -> dict:
    """An activations artifact as ``tasks.activations`` writes it, of the run's size: real
    programs (the train split's references, repeated) and worlds, random states of the model's
    width. Only enough programs that ``probe.max_train_pairs`` positions are reached."""
    specs = karel.load_split(data_dir(ds), "train")
    lengths = (specs.programs >= 0).sum(1)
    wanted = cfg.activations.n_train_specs + cfg.activations.n_test_specs
    n = min(wanted, math.ceil(1.2 * cfg.probe.max_train_pairs / max(lengths.mean(), 1.0)))
    idx = np.arange(n) % len(specs)
    w = specs.n_worlds
    worlds = (idx[:, None] * w + np.arange(w)).reshape(-1)
    programs = reference_programs(specs)[idx]
    rng = np.random.default_rng(0)
    states = lambda *shape: rng.standard_normal((n, programs.shape[1], *shape), dtype=np.float32).astype(np.float16)
    d = cfg.model.d_model
    arrays = dict(programs=programs, lengths=(programs >= 0).sum(1), hidden=states(d),
                  is_test=np.arange(n) >= n * cfg.activations.n_train_specs // max(wanted, 1),
                  spec_ids=specs.ids[idx], **{f: getattr(specs.inputs, f)[worlds] for f in ("walls", "markers", "row", "col", "dir")})
    if cfg.activations.per_layer:
        arrays["hidden_layers"] = states(cfg.model.n_layer + 1, d)
    if random_init:
        arrays["hidden_init"] = states(d)
    folder.mkdir(parents=True)
    np.savez(folder / ACTIVATIONS_FILE, **arrays)
    return {"key": f"estimate-acts-{folder.name}", "path": str(folder), "status": "cached",
            "meta": {"step": 1, "checkpoint_key": f"{TRAIN_KEY}-s0000001", "programs": cfg.activations.programs}}


def estimate(cfg: StudyConfig, train_steps: int = 3, cores: int | None = None) -> dict:
    """Measure and scale every stage of ``cfg``'s run (module doc); returns the parts, the end-to-end
    seconds and the training figures ``steps_within`` needs."""
    cores = cores or os.cpu_count() or 1
    ev, ac = cfg.eval, cfg.activations
    fe, fa = _fractions(ev.n_test_specs, ev.batch_size), _fractions(ac.n_train_specs + ac.n_test_specs, ac.batch_size)
    with tempfile.TemporaryDirectory(prefix="semprobe-estimate-") as tmp, _isolated_store(Path(tmp)):
        root = str(Path(tmp) / "ws")
        parts = [_dataset_part(root, cfg.data)]
        ds = generate_dataset.fn(root, _small_data(cfg, fe[1], fa[1]))
        train_part, first, per_step, ckpt = _train_part(root, Path(tmp) / "train", cfg, ds, train_steps)
        parts.append(train_part)

        schedule = checkpoint_steps(cfg.train)
        t = [_timed(evaluate.fn, root, replace(ev, n_test_specs=_share(ev.n_test_specs, f),
                                               n_val_samples=_share(ev.n_val_samples, f)), ds, ckpt) for f in fe]
        each = linear(t[0], fe[0], t[1], fe[1], 1.0)
        parts.append(Part("evaluate", len(schedule), each, each * len(schedule),
                          f"{ev.n_test_specs:,} test specs, {ev.n_val_samples:,} val samples"))

        probed = sorted(cfg.probed_steps())
        t = [_timed(dump_activations.fn, root, replace(ac, n_train_specs=_share(ac.n_train_specs, f),
                                                       n_test_specs=_share(ac.n_test_specs, f)), ds, ckpt) for f in fa]
        each = linear(t[0], fa[0], t[1], fa[1], 1.0)
        parts.append(Part("activations", len(probed), each, each * len(probed),
                          f"{ac.n_train_specs + ac.n_test_specs:,} specs at steps {', '.join(map(str, probed))}"))
        parts.append(_probe_part(root, Path(tmp), cfg, ds, probed, min(WORKERS, cores)))
    return {"parts": parts, "seconds": sum(p.seconds for p in parts), "cores": cores,
            "train_first": first, "train_per_step": per_step}


def _dataset_part(root: str, d: karel.DataConfig) -> Part:
    programs = d.n_train_generated + d.n_val + d.n_test
    fd = _fractions(programs, GEN_CHUNK)
    scaled = [replace(d, n_train_generated=_share(d.n_train_generated, f), n_val=_share(d.n_val, f),
                      n_test=_share(d.n_test, f)) for f in fd]
    t = [_timed(generate_dataset.fn, root, s) for s in scaled]
    seconds = linear(t[0], fd[0], t[1], fd[1], 1.0)
    return Part("dataset", 1, seconds, seconds, f"{programs:,} programs")


def _train_part(root: str, work: Path, cfg: StudyConfig, ds: dict, train_steps: int):
    """(the part, the first step's seconds, seconds a step after it, the last timed checkpoint
    published in ``root``'s store, where evaluation and the dump read it)."""
    first = _timed(train, cfg.model, cfg.train, data_dir(ds), work, progress=False, stop_after=1)
    more = min(train_steps, cfg.train.steps - 1)
    per_step = first
    if more > 0:
        per_step = _timed(train, cfg.model, cfg.train, data_dir(ds), work, progress=False, stop_after=1 + more) / more
    seconds = first + per_step * (cfg.train.steps - 1)
    tokens = cfg.train.steps * cfg.train.tokens_per_step
    part = Part("train", 1, seconds, seconds, f"{per_step:.2f} s a step x {cfg.train.steps:,} steps, "
                                              f"{tokens / 1e6:.1f}M tokens")
    ws = Workspace.at(root)
    for step, path in list_checkpoints(work):
        publish_checkpoint(ws, TRAIN_KEY, step, path, cfg.train.tokens_per_step)
    return part, first, per_step, published_checkpoint(root, TRAIN_KEY, 1 + max(more, 0))


def _probe_part(root: str, tmp: Path, cfg: StudyConfig, ds: dict, probed: list[int], slots: int) -> Part:
    """Every grid of the run, each distinct one timed at one and two epochs (module doc)."""
    ac = cfg.activations
    acts = {init: synthetic_activations(tmp / f"acts-{int(init)}", ds, cfg, init)
            for init in {ac.random_init and s > 0 for s in probed}}
    measured, grids = {}, []
    for step in probed:
        pcfg = probe_config_at(cfg.probe, step, probed)
        init = ac.random_init and step > 0
        for sem in cfg.probe.semantics:
            if (pcfg, sem, init) not in measured:
                t = [_timed(train_probes.fn, root, replace(pcfg, epochs=e), acts[init], sem) for e in (1, 2)]
                measured[pcfg, sem, init] = linear(t[0], 1, t[1], 2, pcfg.epochs)
            grids.append(measured[pcfg, sem, init])
    return Part("probes", len(grids), sum(grids) / max(len(grids), 1), probe_wall(grids, slots),
                f"{len(grids)} grids on one thread each, {sum(grids):,.0f} s summed, {slots} at a time")
