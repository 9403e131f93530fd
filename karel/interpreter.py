"""The plain reference interpreter: one program on one world, written to be read.

It is the oracle the vectorised executor (``karel.batch``) is tested against.
"""

from __future__ import annotations

from .semantics import ACTIONS, parse_program, semantics_table
from .world import DIRECTIONS, World

_DELTA = {"north": (-1, 0), "east": (0, 1), "south": (1, 0), "west": (0, -1)}


def step(world: World, action: str) -> World:
    """The state after performing ``action`` (an action name); ``world`` is not changed."""
    w = world.copy()
    d = DIRECTIONS.index(w.direction)
    if action == "move":
        dr, dc = _DELTA[w.direction]
        if not w.walls[w.row + dr, w.col + dc]:  # moving into a wall does nothing
            w.row, w.col = w.row + dr, w.col + dc
    elif action == "turn_left":
        w.direction = DIRECTIONS[(d - 1) % 4]
    elif action == "turn_right":
        w.direction = DIRECTIONS[(d + 1) % 4]
    elif action == "pick_marker":
        if w.markers[w.row, w.col] > 0:  # picking from an empty cell does nothing
            w.markers[w.row, w.col] -= 1
    elif action == "put_marker":  # the bag is unlimited; markers stack
        w.markers[w.row, w.col] += 1
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    return w


def execute(program, world: World, semantics: str = "original") -> list[World]:
    """The state after each action of ``program`` read under ``semantics``.

    ``program`` is a sequence of action tokens (or ids) or a whitespace-separated string.
    Returns one World per action; the input ``world`` is not mutated.
    """
    table = semantics_table(semantics)
    states, w = [], world
    for token_id in parse_program(program):
        w = step(w, ACTIONS[table[token_id]])
        states.append(w)
    return states
