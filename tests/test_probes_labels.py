"""Label alignment against the plain reference interpreter (never off by one)."""

import numpy as np
import pytest

import karel
from karel.world import D_COL, D_ROW
from probes import FEATURES, aligned_labels, make_labels
from probes.labels import hidden_rows


def open_world(row=3, col=3, direction="north"):
    walls = np.zeros((8, 8), bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    return karel.World(walls, np.zeros((8, 8), int), row, col, direction)


def batch(programs, worlds_per_program):
    rows = [[karel.ACTION_ID[a] for a in p.split()] for p in programs]
    width = 14
    arr = np.full((len(rows), width), -1, np.int8)
    for i, r in enumerate(rows):
        arr[i, :len(r)] = r
    return arr, karel.WorldBatch.from_worlds([w for ws in worlds_per_program for w in ws])


def test_turn_right_move_by_hand():
    # Input0 at (3, 3) facing north; Input1 differs and must be ignored.
    progs, inputs = batch(["turn_right move"], [[open_world(), open_world(5, 5, "south")]])
    ls = make_labels(progs, inputs, ("original",), ("direction", "rel_start", "abs_position"),
                     (-2, -1, 0, 1, 2))
    p, j, y = ls.triples("original", "direction", 0)
    assert list(p) == [0] and list(j) == [0]  # drop_last: only the first action's state
    assert y[0, 0] == 1  # after turn_right: east
    for o in (-2, -1, 1, 2):  # the input or the final state, or the last action's hidden state: dropped
        assert len(ls.triples("original", "direction", o)[0]) == 0, o
    full = make_labels(progs, inputs, ("original",), ("direction", "rel_start", "abs_position"),
                       (-1, 1), drop_last=False)
    assert full.triples("original", "direction", -1)[2][0, 0] == 0  # j=0: the input, north
    _, _, rel = full.triples("original", "rel_start", 1)  # after move: one cell east
    assert tuple(rel[0]) == (6, 7)
    _, _, pos = full.triples("original", "abs_position", 1)
    assert tuple(pos[0]) == (2, 3)  # row 3, col 4 -> (2, 3)
    # flip reads turn_right as turn_left: west, then a move west.
    lf = make_labels(progs, inputs, ("flip",), ("direction", "rel_start"), (0, 1), drop_last=False)
    assert lf.get("flip", "direction", 0)[0, 0] == 3
    assert tuple(lf.get("flip", "rel_start", 1)[0]) == (6, 5)


def test_kept_pairs_never_label_with_the_input_or_final_state():
    # 4 actions from (3, 3) north: east, (3, 4), (3, 5), north. Trace index t = j + 1 + offset.
    progs, inputs = batch(["turn_right move move turn_left"], [[open_world()]])
    ls = make_labels(progs, inputs, ("original",), ("rel_start",), (-2, -1, 0, 1, 2))
    kept = {o: ls.triples("original", "rel_start", o)[1].tolist() for o in (-2, -1, 0, 1, 2)}
    # the reference's pairs (its probe/dataset.py, less its pairs of the state before action 0)
    assert kept == {2: [0], 1: [0, 1], 0: [0, 1, 2], -1: [1, 2], -2: [2]}
    states = {1: (6, 6), 2: (6, 7), 3: (6, 8)}  # after actions 1..3 (t = 1..3), rel. to start
    for o, js in kept.items():
        got = [tuple(r) for r in ls.triples("original", "rel_start", o)[2]]
        assert got == [states[j + 1 + o] for j in js], o
    full = make_labels(progs, inputs, ("original",), ("rel_start",), (-2, 2), drop_last=False)
    assert full.triples("original", "rel_start", 2)[1].tolist() == [0, 1]  # t = 3, 4 (final)
    assert full.triples("original", "rel_start", -2)[1].tolist() == [1, 2, 3]  # t = 0 (input), 1, 2


def reference_pairs(n: int, offset: int) -> list[tuple]:
    """The reference's probe pairs for an n-action program, by its list mechanics: its programs
    read ``def run() {`` and a newline, then each action indented on its own line, then ``}``;
    hidden state m emits token m; at ``offset`` actions (3 tokens each) hidden state m is paired
    with the state after the action at token m + 3 * offset; the last pair is dropped.
    Returns (what hidden state m emits: an action index or a token, the action the label follows)."""
    toks = ["def", "run()", "{", "\n"] + [x for k in range(n) for x in ("  ", k, "\n")] + ["}"]
    shift = 3 * offset
    pairs = [(toks[m], toks[m + shift]) for m in range(len(toks))
             if 0 <= m + shift < len(toks) and isinstance(toks[m + shift], int)]
    return pairs[:-1]


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_drop_last_keeps_the_reference_pairs(offset):
    lengths = np.arange(1, 15)
    progs = np.full((len(lengths), 14), -1, np.int8)
    for i, n in enumerate(lengths):
        progs[i, :n] = karel.ACTION_ID["move"]
    ls = make_labels(progs, karel.random_worlds(np.random.default_rng(0), len(lengths)),
                     ("original",), ("direction",), (offset,))
    p, j, _ = ls.triples("original", "direction", offset)
    for i, n in enumerate(lengths):
        ours = [(int(a), int(a) + offset) for a in j[p == i]]
        ref = reference_pairs(int(n), offset)
        # the reference's only other rows: the state emitting "{", at the future offsets
        assert [r for r in ref if not isinstance(r[0], int)] == ([("{", offset - 1)] if offset > 0 and n > offset else [])
        assert ours == [r for r in ref if isinstance(r[0], int)], (n, offset)


def test_drop_last_false_keeps_last_action():
    progs, inputs = batch(["turn_right move"], [[open_world()]])
    p, j, y = aligned_labels(progs, inputs, "original", "direction", 0, drop_last=False)
    assert list(j) == [0, 1] and list(y[:, 0]) == [1, 1]
    p, j, y = aligned_labels(progs, inputs, "original", "direction", 1, drop_last=False)
    assert list(j) == [0]  # j=1 at offset +1 would be past the end


@pytest.mark.parametrize("semantics", ["original", "flip", "adversarial"])
def test_random_programs_match_reference_interpreter(semantics):
    rng = np.random.default_rng(1)
    n_prog, n_worlds = 40, 3
    progs = karel.random_programs(rng, rng.integers(1, 11, n_prog), width=14)
    inputs = karel.random_worlds(rng, n_prog * n_worlds)
    feats = ("direction", "rel_start", "rel_end", "abs_position", "facing_wall", "walls_around")
    offsets = (-2, -1, 0, 1, 2)
    ls = make_labels(progs, inputs, (semantics,), feats, offsets)
    n_checked = 0
    for o in offsets:
        for f in feats:
            for p, j, y in zip(*ls.triples(semantics, f, o)):
                world = inputs[p * n_worlds]  # Input0
                prog = [int(a) for a in progs[p] if a >= 0]
                states = [world] + karel.execute(prog, world, semantics)
                assert 1 <= j + 1 + o <= len(prog) - 1 and 0 <= j < len(prog)
                s, end = states[j + 1 + o], states[-1]
                d = s.dir_id
                around = [bool(s.walls[s.row + D_ROW[k], s.col + D_COL[k]]) for k in range(4)]
                expect = {
                    "direction": [d],
                    "rel_start": [s.row - world.row + 6, s.col - world.col + 6],
                    "rel_end": [s.row - end.row + 6, s.col - end.col + 6],
                    "abs_position": [s.row - 1, s.col - 1],
                    "facing_wall": [around[d]],
                    "walls_around": around,
                }[f]
                assert list(y) == list(map(int, expect)), (p, j, o, f)
                n_checked += 1
    assert n_checked > 500


def test_validity_counts_and_rows():
    rng = np.random.default_rng(2)
    lengths = np.array([1, 2, 5, 10])
    progs = karel.random_programs(rng, lengths, width=14)
    ls = make_labels(progs, karel.random_worlds(rng, 4))
    assert len(ls) == lengths.sum()
    # kept per offset: j in [max(0, -o), min(len-2, len-2-o)]
    for o in (-2, -1, 0, 1, 2):
        expect = sum(max(0, min(n - 2, n - 2 - o) - max(0, -o) + 1) for n in lengths)
        assert ls.valid(o).sum() == expect
        assert ((ls.get("original", "direction", o)[:, 0] >= 0) == ls.valid(o)).all()


def test_bad_inputs_raise_naming_them():
    progs, inputs = batch(["move"], [[open_world()]])
    with pytest.raises(ValueError, match="nope"):
        make_labels(progs, inputs, features=("nope",))
    with pytest.raises(ValueError, match="bogus"):
        make_labels(progs, inputs, semantics=("bogus",))
    with pytest.raises(ValueError, match="inputs"):
        make_labels(np.zeros((2, 14), np.int8), inputs)
    ls = make_labels(progs, inputs)
    with pytest.raises(ValueError, match="hidden"):
        hidden_rows(np.zeros((2, 14, 4)), ls)
    assert set(FEATURES) >= {"direction", "rel_start", "facing_wall"}
