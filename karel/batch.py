"""Vectorised execution of many programs on many worlds at once, with full traces.

Programs are an int array ``(P, L)`` of action ids padded with -1; each program runs on ``W``
worlds (``worlds`` holds ``P * W`` of them, program-major: world ``p * W + w``). Padding is a
no-op, so programs of different lengths share one pass.

Trace convention (the one the probe labels rely on): index ``k`` along the step axis is the
state **after k actions**; index 0 is the input world and index ``lengths[p]`` the output.
The state after the j-th action (0-based) is therefore at index ``j + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .semantics import MOVE, PICK_MARKER, PUT_MARKER, TURN_LEFT, TURN_RIGHT, semantics_table
from .world import D_COL, D_ROW, SIZE, WorldBatch

PAD = -1


@dataclass
class Trace:
    """States of ``P`` programs x ``W`` worlds after 0..L actions (see module docstring)."""

    lengths: np.ndarray  # (P,) actions per program
    action: np.ndarray  # (P, L) performed action ids (after the semantics), -1 for padding
    row: np.ndarray  # (P, W, L+1) int8
    col: np.ndarray  # (P, W, L+1) int8
    dir: np.ndarray  # (P, W, L+1) int8, 0=north 1=east 2=south 3=west
    markers_here: np.ndarray  # (P, W, L+1) markers under the robot
    noop: np.ndarray  # (P, W, L) the action changed nothing (blocked move, pick on empty)
    walls: np.ndarray  # (P, W, 8, 8) bool (walls never change)
    final_markers: np.ndarray  # (P, W, 8, 8) uint8 after the whole program
    markers: np.ndarray | None = None  # (P, W, L+1, 8, 8) when asked for

    @property
    def end_index(self) -> np.ndarray:
        """(P, 1, 1) step index of each program's final state, for broadcasting."""
        return self.lengths.astype(np.intp)[:, None, None]

    def final(self, field: np.ndarray) -> np.ndarray:
        """(P, W) value of a (P, W, L+1) field in each program's final state."""
        return np.take_along_axis(field, self.end_index, axis=2)[..., 0]

    def rel_start(self) -> tuple[np.ndarray, np.ndarray]:
        """(drow, dcol) from the input position, each (P, W, L+1) in -5..5."""
        return self.row - self.row[..., :1], self.col - self.col[..., :1]

    def rel_end(self) -> tuple[np.ndarray, np.ndarray]:
        """(drow, dcol) from the final position, each (P, W, L+1) in -5..5."""
        return (
            self.row - self.final(self.row)[..., None],
            self.col - self.final(self.col)[..., None],
        )

    def walls_around(self) -> np.ndarray:
        """(P, W, L+1, 4) bool: a wall to the north, east, south, west of the robot."""
        r = self.row[..., None] + D_ROW
        c = self.col[..., None] + D_COL
        flat = self.walls.reshape(*self.walls.shape[:2], 1, SIZE * SIZE)
        flat = np.broadcast_to(flat, (*self.row.shape, SIZE * SIZE))
        return np.take_along_axis(flat, (r * SIZE + c).astype(np.intp), axis=-1)

    def facing_wall(self) -> np.ndarray:
        """(P, W, L+1) bool: the cell in front of the robot is a wall."""
        around = self.walls_around()
        return np.take_along_axis(around, self.dir[..., None].astype(np.intp), axis=-1)[..., 0]


def execute_batch(
    programs: np.ndarray,
    worlds: WorldBatch,
    semantics: str = "original",
    full_markers: bool = False,
) -> Trace:
    """Run ``programs`` (P, L) on ``worlds`` (P * W of them) under ``semantics``."""
    programs = np.asarray(programs)
    if programs.ndim != 2:
        raise ValueError(f"programs: expected a 2-d (P, L) array, got shape {programs.shape}")
    n_prog, n_steps = programs.shape
    if n_prog == 0 or len(worlds) % n_prog:
        raise ValueError(f"worlds: {len(worlds)} worlds do not split evenly over {n_prog} programs")
    bad = (programs < PAD) | (programs > PUT_MARKER)
    if bad.any():
        p, t = np.argwhere(bad)[0]
        raise ValueError(f"programs[{p}, {t}] = {programs[p, t]} is not an action id or -1")
    n_worlds = len(worlds) // n_prog
    table = np.array(semantics_table(semantics) + (PAD,), dtype=np.int8)  # [-1] -> PAD
    performed = table[programs.astype(np.intp)]
    lengths = (programs != PAD).sum(axis=1)

    n = len(worlds)
    ar = np.arange(n)
    act = np.repeat(performed, n_worlds, axis=0)  # (N, L)
    walls = worlds.walls.reshape(n, SIZE * SIZE)
    markers = worlds.markers.reshape(n, SIZE * SIZE).astype(np.uint8, copy=True)
    r = worlds.row.astype(np.int8, copy=True)
    c = worlds.col.astype(np.int8, copy=True)
    d = worlds.dir.astype(np.int8, copy=True)

    rows = np.empty((n, n_steps + 1), np.int8)
    cols = np.empty_like(rows)
    dirs = np.empty_like(rows)
    here = np.empty((n, n_steps + 1), np.uint8)
    noop = np.zeros((n, n_steps), bool)
    full = np.empty((n, n_steps + 1, SIZE * SIZE), np.uint8) if full_markers else None

    def record(k):
        rows[:, k], cols[:, k], dirs[:, k] = r, c, d
        here[:, k] = markers[ar, r.astype(np.intp) * SIZE + c]
        if full is not None:
            full[:, k] = markers

    record(0)
    for t in range(n_steps):
        a = act[:, t]
        mv = np.flatnonzero(a == MOVE)
        if mv.size:
            nr = r[mv] + D_ROW[d[mv]]
            nc = c[mv] + D_COL[d[mv]]
            blocked = walls[mv, nr.astype(np.intp) * SIZE + nc]
            go = mv[~blocked]
            r[go], c[go] = nr[~blocked], nc[~blocked]
            noop[mv[blocked], t] = True
        d[a == TURN_LEFT] = (d[a == TURN_LEFT] + 3) % 4
        d[a == TURN_RIGHT] = (d[a == TURN_RIGHT] + 1) % 4
        pk = np.flatnonzero(a == PICK_MARKER)
        if pk.size:
            cell = r[pk].astype(np.intp) * SIZE + c[pk]
            empty = markers[pk, cell] == 0
            markers[pk[~empty], cell[~empty]] -= 1
            noop[pk[empty], t] = True
        pt = np.flatnonzero(a == PUT_MARKER)
        if pt.size:
            markers[pt, r[pt].astype(np.intp) * SIZE + c[pt]] += 1
        record(t + 1)

    shape = (n_prog, n_worlds)
    return Trace(
        lengths=lengths,
        action=performed,
        row=rows.reshape(*shape, -1),
        col=cols.reshape(*shape, -1),
        dir=dirs.reshape(*shape, -1),
        markers_here=here.reshape(*shape, -1),
        noop=noop.reshape(*shape, -1),
        walls=worlds.walls.reshape(*shape, SIZE, SIZE),
        final_markers=markers.reshape(*shape, SIZE, SIZE),
        markers=None if full is None else full.reshape(*shape, n_steps + 1, SIZE, SIZE),
    )


def output_worlds(trace: Trace) -> WorldBatch:
    """The final state of every (program, world) as a flat WorldBatch (program-major)."""
    p, w = trace.row.shape[:2]
    return WorldBatch(
        walls=trace.walls.reshape(p * w, SIZE, SIZE),
        markers=trace.final_markers.reshape(p * w, SIZE, SIZE),
        row=trace.final(trace.row).reshape(-1),
        col=trace.final(trace.col).reshape(-1),
        dir=trace.final(trace.dir).reshape(-1),
    )
