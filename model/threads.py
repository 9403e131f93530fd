"""Torch's intra-op thread count, pinned per piece of work so results do not depend on neighbours.

On CPU a computation's bits depend on how many threads split it (one vs two threads differ by
~1e-11 after 4 training steps of the ``cpu`` preset, and training amplifies that). Torch keeps
the count per thread, but a thread takes its first count from the value *any* thread set last
(``torch.set_num_threads`` stores it process-wide, and each thread adopts it at its first parallel
op). The flow trains, evaluates and probes on threads of one process, and probe grids run on one
thread each, so without pinning, a stage's count (and its bits) depended on which grid had
started before it. Every stage that must be reproducible runs inside ``pinned_threads``.
"""

from __future__ import annotations

import contextlib

import torch

# The count this process started with (OMP_NUM_THREADS, or torch's choice for this machine), read
# when ``model`` is first imported, before any stage has changed it.
PROCESS_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def pinned_threads(n: int | None = None):
    """Run the block on ``n`` intra-op threads (default: the process's starting count), set in
    this thread so that counts other threads set meanwhile do not reach it; restored after."""
    n = PROCESS_THREADS if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads: must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
