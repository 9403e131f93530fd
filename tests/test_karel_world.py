import numpy as np
import pytest

import karel
from karel.world import SIZE


def empty_world(row=3, col=3, direction="north"):
    walls = np.ones((SIZE, SIZE), bool)
    walls[1:-1, 1:-1] = False
    return karel.World(walls=walls, markers=np.zeros((SIZE, SIZE), int), row=row, col=col, direction=direction)


def test_public_api_names():
    assert karel.ACTIONS == ("move", "turn_left", "turn_right", "pick_marker", "put_marker")
    assert {"original", "flip", "adversarial"} <= set(karel.SEMANTICS)


def test_semantics_tables_match_paper():
    s = karel.SEMANTICS
    assert dict(s["original"]) == {a: a for a in karel.ACTIONS}
    assert dict(s["flip"]) == {
        "pick_marker": "put_marker", "put_marker": "pick_marker",
        "turn_right": "turn_left", "turn_left": "turn_right", "move": "move",
    }
    assert dict(s["adversarial"]) == {
        "pick_marker": "turn_right", "put_marker": "turn_left", "turn_right": "move",
        "turn_left": "turn_right", "move": "turn_left",
    }
    # the reference's further permutations (PAPER.md): put<->pick with move->turn_left,
    # turn_left->move; and put<->pick with move->turn_right, turn_right->turn_left, turn_left->move
    markers = {"pick_marker": "put_marker", "put_marker": "pick_marker"}
    assert dict(s["swap_markers_move_left"]) == {
        **markers, "move": "turn_left", "turn_left": "move", "turn_right": "turn_right"}
    assert dict(s["swap_markers_cycle_motions"]) == {
        **markers, "move": "turn_right", "turn_right": "turn_left", "turn_left": "move"}
    for table in s.values():  # every semantics reads every token
        assert set(table) == set(karel.ACTIONS) and set(table.values()) <= set(karel.ACTIONS)


def test_move_north_decreases_row_and_walls_block():
    w = empty_world(row=2, col=3, direction="north")
    (after,) = karel.execute(["move"], w)
    assert (after.row, after.col) == (1, 3)
    blocked = karel.execute(["move"], after)[0]  # row 0 is the border wall
    assert (blocked.row, blocked.col) == (1, 3)
    assert (w.row, w.col) == (2, 3), "input world must not be mutated"


def test_turns():
    w = empty_world(direction="north")
    states = karel.execute("turn_left turn_left turn_left turn_left turn_right", w)
    assert [s.direction for s in states] == ["west", "south", "east", "north", "east"]


def test_markers_pick_noop_put_stacks():
    w = empty_world()
    states = karel.execute("pick_marker put_marker put_marker pick_marker", w)
    assert [int(s.markers[3, 3]) for s in states] == [0, 1, 2, 1]


def test_interior_wall_blocks_east_move():
    w = empty_world(row=4, col=2, direction="east")
    w.walls[4, 3] = True
    assert karel.execute(["move"], w)[0].col == 2


def test_semantics_change_behaviour():
    w = empty_world(direction="north")
    assert karel.execute(["turn_left"], w, semantics="flip")[0].direction == "east"
    assert karel.execute(["move"], w, semantics="adversarial")[0].direction == "west"
    assert karel.execute(["put_marker"], w, semantics="flip")[0].markers.sum() == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(row=0, col=3), "row/col"),
        (dict(row=3, col=7), "row/col"),
        (dict(direction="up"), "direction"),
    ],
)
def test_bad_world_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        empty_world(**kwargs)


def test_robot_on_wall_and_open_border_rejected():
    walls = np.ones((SIZE, SIZE), bool)
    walls[1:-1, 1:-1] = False
    walls[3, 3] = True
    with pytest.raises(ValueError, match="stands on a wall"):
        karel.World(walls=walls, markers=np.zeros((8, 8), int), row=3, col=3, direction="north")
    walls[3, 3] = False
    walls[0, 4] = False
    with pytest.raises(ValueError, match="border"):
        karel.World(walls=walls, markers=np.zeros((8, 8), int), row=3, col=3, direction="north")


def test_unknown_token_and_semantics_are_named():
    w = empty_world()
    with pytest.raises(ValueError, match="'jump'"):
        karel.execute(["move", "jump"], w)
    with pytest.raises(ValueError, match="'backwards'"):
        karel.execute(["move"], w, semantics="backwards")


def test_random_world_distribution():
    rng = np.random.default_rng(1)
    wb = karel.random_worlds(rng, 20000)
    interior = wb.walls[:, 1:-1, 1:-1]
    # the robot cell is forced empty, so the wall rate is a little under 0.1
    assert 0.09 < interior.mean() < 0.1
    assert wb.walls[:, 0].all() and wb.walls[:, -1].all() and wb.walls[:, :, 0].all()
    idx = np.arange(len(wb))
    assert not wb.walls[idx, wb.row, wb.col].any()
    assert (wb.markers[idx, wb.row, wb.col] == 0).all()
    assert (wb.markers[wb.walls] == 0).all() and wb.markers.max() == 1
    free = ~interior
    assert 0.085 < wb.markers[:, 1:-1, 1:-1][free].mean() < 0.1
    assert np.bincount(wb.dir, minlength=4).min() > 4700
    assert set(np.unique(wb.row)) == set(range(1, 7))
    w = karel.random_world(np.random.default_rng(5))
    assert isinstance(w, karel.World)
