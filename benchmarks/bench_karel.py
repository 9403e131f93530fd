"""Karel hot paths against named baselines measured in the same run.

1. Batch executor with full traces vs the plain reference interpreter, on the same
   100k programs x 10 worlds, one core. Target: >= 100x.
2. Dataset generation at paper size (2 workers): wall time and peak memory of the whole
   process tree, against a per-program generator built on the plain interpreter (the shape of
   the reference generator) timed on a sample and scaled. Targets: <= 60 s, <= 4 GB.

Run: .venv/bin/python benchmarks/bench_karel.py [--programs 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import karel  # noqa: E402


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class PeakMemory:
    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_executor(n_programs: int) -> None:
    rng = np.random.default_rng(0)
    programs = karel.random_programs(rng, rng.integers(1, 11, n_programs))
    worlds = karel.random_worlds(rng, n_programs * 10)
    t = time.perf_counter()
    karel.execute_batch(programs, worlds, full_markers=False)
    batch = time.perf_counter() - t
    t = time.perf_counter()
    for p in range(n_programs):
        prog = programs[p][programs[p] >= 0].tolist()
        for w in range(10):
            karel.execute(prog, worlds[p * 10 + w])
    plain = time.perf_counter() - t
    print(f"executor: {n_programs} programs x 10 worlds  plain interpreter {plain:.2f}s  "
          f"batch {batch:.3f}s  ratio {plain / batch:.0f}x (target >= 100x)")


def plain_generator_rate(n: int = 2000) -> float:
    """Programs per second of a one-at-a-time generator on the plain interpreter, one core."""
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for i in range(n):
        prog = karel.random_programs(rng, np.array([1 + i % 10]))[0]
        prog = prog[prog >= 0].tolist()
        for _ in range(10):
            w = karel.random_world(rng)
            karel.execute(prog, w)
    return n / (time.perf_counter() - t)


def bench_dataset(name: str, cfg: karel.DataConfig, workers: int, baseline_rate: float) -> None:
    out = Path(tempfile.mkdtemp()) / "data"
    with PeakMemory() as mem:
        t = time.perf_counter()
        m = karel.generate_dataset(cfg, out, workers=workers)
        wall = time.perf_counter() - t
    n = sum(s["stats"]["programs"] for s in m["splits"].values())
    baseline = n / (baseline_rate * workers)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"dataset {name}: {n} programs x 10 worlds  {wall:.1f}s (target <= 60 s)  "
          f"peak RSS {mem.peak / 1e9:.2f} GB (target <= 4 GB)  {size:.0f} MB on disk  "
          f"plain-interpreter generator est. {baseline:.0f}s on {workers} cores -> ratio {baseline / wall:.0f}x")
    shutil.rmtree(out.parent)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    bench_executor(args.programs)
    rate = plain_generator_rate()
    print(f"plain-interpreter generator: {rate:.0f} programs/s/core (reference generator: ~320)")
    bench_dataset("paper preset (1M generated, 500k kept + 10k val + 10k test)", karel.DataConfig.paper(), args.workers, rate)
    bench_dataset("1M programs, all lengths kept", karel.DataConfig.paper(train_lengths=tuple(range(1, 11))), args.workers, rate)


if __name__ == "__main__":
    main()
