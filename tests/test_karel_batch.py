"""The vectorised executor must agree with the plain interpreter on everything."""

import numpy as np
import pytest

import karel
from karel.world import DIRECTIONS


def reference_arrays(programs, worlds, semantics):
    """Rows/cols/dirs/markers after k actions from the plain interpreter, padded like Trace."""
    n, width = programs.shape
    rows = np.zeros((n, width + 1), int)
    cols, dirs = rows.copy(), rows.copy()
    markers = np.zeros((n, width + 1, 8, 8), int)
    for i in range(n):
        w = worlds[i]
        prog = programs[i][programs[i] >= 0].tolist()
        states = [w] + karel.execute(prog, w, semantics=semantics)
        states += [states[-1]] * (width + 1 - len(states))  # padding is a no-op
        for k, s in enumerate(states):
            rows[i, k], cols[i, k], dirs[i, k] = s.row, s.col, DIRECTIONS.index(s.direction)
            markers[i, k] = s.markers
    return rows, cols, dirs, markers


def check_agreement(n, seed, semantics):
    rng = np.random.default_rng(seed)
    programs = karel.random_programs(rng, rng.integers(0, 15, n))
    worlds = karel.random_worlds(rng, n)
    trace = karel.execute_batch(programs, worlds, semantics=semantics, full_markers=True)
    rows, cols, dirs, markers = reference_arrays(programs, worlds, semantics)
    np.testing.assert_array_equal(trace.row[:, 0], rows)
    np.testing.assert_array_equal(trace.col[:, 0], cols)
    np.testing.assert_array_equal(trace.dir[:, 0], dirs)
    np.testing.assert_array_equal(trace.markers[:, 0], markers)
    np.testing.assert_array_equal(trace.final_markers[:, 0], markers[:, -1])


@pytest.mark.parametrize("semantics", sorted(karel.SEMANTICS))
def test_batch_agrees_with_reference(semantics):
    # 20k programs x worlds per semantics: 100k cases over the five semantics.
    check_agreement(20_000, seed=sorted(karel.SEMANTICS).index(semantics), semantics=semantics)


@pytest.mark.slow
@pytest.mark.parametrize("semantics", sorted(karel.SEMANTICS))
def test_batch_agrees_with_reference_100k(semantics):
    check_agreement(100_000, seed=7, semantics=semantics)


def test_several_worlds_per_program_and_derived_fields():
    rng = np.random.default_rng(3)
    programs = karel.random_programs(rng, np.array([3, 5, 0, 14]))
    worlds = karel.random_worlds(rng, 4 * 3)
    trace = karel.execute_batch(programs, worlds)
    assert trace.row.shape == (4, 3, 15)
    for p in range(4):
        for w in range(3):
            world = worlds[p * 3 + w]
            states = [world] + karel.execute(programs[p][programs[p] >= 0].tolist(), world)
            end = states[-1]
            for k, s in enumerate(states):
                dr, dc = trace.rel_start()
                assert (dr[p, w, k], dc[p, w, k]) == (s.row - world.row, s.col - world.col)
                er, ec = trace.rel_end()
                assert (er[p, w, k], ec[p, w, k]) == (s.row - end.row, s.col - end.col)
                around = [s.walls[s.row - 1, s.col], s.walls[s.row, s.col + 1], s.walls[s.row + 1, s.col], s.walls[s.row, s.col - 1]]
                assert trace.walls_around()[p, w, k].tolist() == around
                assert trace.facing_wall()[p, w, k] == around[DIRECTIONS.index(s.direction)]
                assert trace.markers_here[p, w, k] == s.markers[s.row, s.col]
    out = karel.output_worlds(trace)
    assert out[5] == karel.execute(programs[1][programs[1] >= 0].tolist(), worlds[5])[-1]


def test_noop_flags_blocked_moves_and_empty_picks():
    walls = np.ones((8, 8), bool)
    walls[1:-1, 1:-1] = False
    w = karel.World(walls, np.zeros((8, 8), int), 1, 1, "north")
    wb = karel.WorldBatch.from_worlds([w])
    prog = np.array([[karel.ACTION_ID[a] for a in ("move", "pick_marker", "put_marker", "pick_marker", "turn_right", "move")]])
    trace = karel.execute_batch(prog, wb)
    assert trace.noop[0, 0].tolist() == [True, True, False, False, False, False]


def test_bad_program_array_is_named():
    wb = karel.random_worlds(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match=r"programs\[1, 0\]"):
        karel.execute_batch(np.array([[0], [7]]), wb)
    with pytest.raises(ValueError, match="worlds"):
        karel.execute_batch(np.array([[0], [1], [2]]), wb)
