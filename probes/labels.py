"""Probe labels: the robot's state in Input0's world, aligned to the hidden states.

Alignment (the one thing that must never be off by one)
-------------------------------------------------------
``hidden[p, j]`` is the hidden state at the position that *emits* action ``j`` (0-based) of
generated program ``p``. ``karel.execute_batch`` records the state after ``k`` actions at trace
index ``k`` (index 0 = the input world). At **offset** ``o`` the hidden state emitting action
``j`` is labelled with the state after action ``j + o``, i.e. trace index ``t = j + 1 + o``:

* offset 0: the state right after the emitted action (the paper's "current" state);
* offset -1: the state before it (after action ``j - 1``; for ``j = 0`` the input world,
  trace index 0, a row only with ``drop_last=False``);
* offsets +1, +2: the states after the next actions ("future").

With ``drop_last=True`` (the reference's choice, the default) a pair is kept when its label is a
state strictly between the input and the final state, ``1 <= j + 1 + o <= length - 1``, and its
hidden state does not emit the program's last action, ``j <= length - 2``. These are the pairs of
the reference (``probe/dataset.py``: it removes the input state from the trace and drops the last
pair of each offset's list after shifting). Both ends of the trace can be read off the prompt
(the input world is Input0, the final state of a correct program is Output0). At offsets >= 0 the
second condition follows from the first; at the past offsets it drops one more pair per program,
the last action's, as the reference does. For a 4-action program this keeps j = 0 at +2; 0, 1 at
+1; 0, 1, 2 at offset 0; 1, 2 at -1; 2 at -2. (The reference also pairs, at +1 and +2, the hidden
state before the program's first action with the state after action 0 or 1; that state emits no
action, so it is not a row here.) With ``drop_last=False`` every pair with
``0 <= j + 1 + o <= length`` is kept. Validity depends on the offset only, never on the feature or
semantics, so probes of one offset share exactly the same rows.

Features and their encodings
----------------------------
Every feature is a tuple of *heads*, each a small class count; a prediction is correct only if
every head is right (joint accuracy):

=================  ==============  ===========================================================
feature            heads           meaning
=================  ==============  ===========================================================
``direction``      (4,)            0 north, 1 east, 2 south, 3 west
``rel_start``      (13, 13)        (drow + 6, dcol + 6) from the input position (paper: 13 each)
``rel_end``        (13, 13)        (drow + 6, dcol + 6) from the final position
``abs_position``   (6, 6)          (row - 1, col - 1) in the 6x6 interior (36 cells jointly)
``facing_wall``    (2,)            the cell in front is a wall
``walls_around``   (2, 2, 2, 2)    a wall north, east, south, west (16 configurations jointly)
=================  ==============  ===========================================================

Row is the y axis (grows southward), col the x axis, so ``rel_start`` = (dy, dx).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import karel
from karel.world import WorldBatch

MAIN_FEATURES: tuple[str, ...] = ("direction", "rel_start", "facing_wall")
OFFSETS: tuple[int, ...] = (-2, -1, 0, 1, 2)
REL_SHIFT = 6  # rel_start/rel_end classes are delta + 6 in 0..12 (deltas are in -5..5)


def _rel(pair):
    return np.stack([pair[0] + REL_SHIFT, pair[1] + REL_SHIFT], axis=-1)


# feature -> (heads, function of a Trace (P, 1, L+1, ...) returning (P, L+1, H) ints)
FEATURES: dict[str, tuple[tuple[int, ...], object]] = {
    "direction": ((4,), lambda tr: tr.dir[:, 0, :, None]),
    "rel_start": ((13, 13), lambda tr: _rel(tr.rel_start())[:, 0]),
    "rel_end": ((13, 13), lambda tr: _rel(tr.rel_end())[:, 0]),
    "abs_position": ((6, 6), lambda tr: np.stack([tr.row - 1, tr.col - 1], -1)[:, 0]),
    "facing_wall": ((2,), lambda tr: tr.facing_wall()[:, 0, :, None]),
    "walls_around": ((2, 2, 2, 2), lambda tr: tr.walls_around()[:, 0]),
}


def check_feature(name: str) -> tuple[int, ...]:
    """The head sizes of a feature; ValueError naming it when unknown."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
    return FEATURES[name][0]


def check_semantics(name: str) -> str:
    if name not in karel.SEMANTICS:
        raise ValueError(f"unknown semantics {name!r}; known: {', '.join(karel.SEMANTICS)}")
    return name


def input0(inputs: WorldBatch, n_programs: int) -> WorldBatch:
    """Input0 of every program from the program-major spec inputs (world ``p * W + 0``)."""
    if n_programs <= 0 or len(inputs) % n_programs:
        raise ValueError(
            f"inputs: {len(inputs)} worlds do not split evenly over {n_programs} programs"
        )
    step = len(inputs) // n_programs
    return WorldBatch(
        walls=inputs.walls[::step], markers=inputs.markers[::step],
        row=inputs.row[::step], col=inputs.col[::step], dir=inputs.dir[::step],
    )


def state_features(programs: np.ndarray, inputs: WorldBatch, semantics: str, features) -> dict:
    """feature -> (P, L+1, H) int labels of the state after 0..L actions on Input0."""
    programs = np.asarray(programs)
    check_semantics(semantics)
    for f in features:
        check_feature(f)
    trace = karel.execute_batch(programs, input0(inputs, len(programs)), semantics)
    return {f: np.asarray(FEATURES[f][1](trace), dtype=np.int64) for f in features}


@dataclass
class LabelSet:
    """Labels for every (program, action) pair of the generated programs.

    ``program``/``position``/``token`` name the rows (all pairs with ``j < length``; row order is
    program-major). ``labels[(semantics, feature, offset)]`` is ``(n, H)`` int64, ``-1`` where the
    pair is not kept at that offset (see module docstring).
    """

    program: np.ndarray  # (n,) program index p
    position: np.ndarray  # (n,) action index j
    token: np.ndarray  # (n,) action id at (p, j)
    length: np.ndarray  # (n,) length of program p
    labels: dict = field(default_factory=dict)
    drop_last: bool = True
    n_programs: int = 0

    def __len__(self) -> int:
        return len(self.program)

    def get(self, semantics: str, feature: str, offset: int) -> np.ndarray:
        key = (semantics, feature, offset)
        if key not in self.labels:
            raise ValueError(f"no labels for semantics/feature/offset {key!r}")
        return self.labels[key]

    def valid(self, offset: int) -> np.ndarray:
        """(n,) bool rows kept at ``offset`` (independent of feature and semantics)."""
        t = self.position + 1 + offset
        if self.drop_last:
            return (t >= 1) & (t <= self.length - 1) & (self.position <= self.length - 2)
        return (t >= 0) & (t <= self.length)

    def triples(self, semantics: str, feature: str, offset: int):
        """(program index, action index, labels (m, H)) of the kept pairs."""
        y = self.get(semantics, feature, offset)
        ok = self.valid(offset)
        return self.program[ok], self.position[ok], y[ok]


def program_lengths(programs: np.ndarray) -> np.ndarray:
    programs = np.asarray(programs)
    if programs.ndim != 2:
        raise ValueError(f"programs: expected a (P, L) array, got shape {programs.shape}")
    is_pad = programs == karel.PAD
    if (is_pad[:, :-1] & ~is_pad[:, 1:]).any():
        raise ValueError("programs: padding (-1) must only trail the actions")
    return (~is_pad).sum(axis=1)


def make_labels(
    programs: np.ndarray,
    inputs: WorldBatch,
    semantics=("original",),
    features=MAIN_FEATURES,
    offsets=OFFSETS,
    drop_last: bool = True,
) -> LabelSet:
    """Execute ``programs`` (P, L) on Input0 under each semantics and align the labels.

    Row i of the result corresponds to ``hidden[program[i], position[i]]``.
    """
    programs = np.asarray(programs)
    lengths = program_lengths(programs)
    n_prog, n_steps = programs.shape
    p, j = np.nonzero(np.arange(n_steps)[None, :] < lengths[:, None])
    out = LabelSet(p, j, programs[p, j].astype(np.int64), lengths[p], drop_last=drop_last,
                   n_programs=n_prog)
    for sem in semantics:
        states = state_features(programs, inputs, sem, features)
        for feat, arr in states.items():
            for o in offsets:
                t = np.clip(j + 1 + o, 0, n_steps)
                y = arr[p, t].copy()
                y[~out.valid(o)] = -1
                out.labels[(sem, feat, int(o))] = y
    return out


def aligned_labels(programs, inputs, semantics="original", feature="direction", offset=0,
                   drop_last=True):
    """The kept (program index, action index, label (m, H)) triples of one feature/offset."""
    ls = make_labels(programs, inputs, (semantics,), (feature,), (offset,), drop_last)
    return ls.triples(semantics, feature, offset)


def hidden_rows(hidden: np.ndarray, labels: LabelSet) -> np.ndarray:
    """(n, ...) hidden states of the label rows from ``hidden`` (P, L, ...)."""
    hidden = np.asarray(hidden)
    if hidden.ndim < 3:
        raise ValueError(f"hidden: expected (P, L, d) or (P, L, layers, d), got {hidden.shape}")
    max_pos = int(labels.position.max(initial=-1)) + 1
    if hidden.shape[0] != labels.n_programs or hidden.shape[1] < max_pos:
        raise ValueError(
            f"hidden: shape {hidden.shape} does not match {labels.n_programs} programs x "
            f">= {max_pos} actions"
        )
    return hidden[labels.program, labels.position]
