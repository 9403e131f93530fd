"""The five Karel actions and the alternative semantics used by the probing interventions.

A *semantics* maps each program token to the action the robot actually performs when it reads
that token. ``original`` is the identity. The others re-interpret the same program text, so the
same generated program (and the same hidden states) can be labelled with a different trace.
"""

from __future__ import annotations

from types import MappingProxyType

ACTIONS: tuple[str, ...] = ("move", "turn_left", "turn_right", "pick_marker", "put_marker")
ACTION_ID: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
MOVE, TURN_LEFT, TURN_RIGHT, PICK_MARKER, PUT_MARKER = range(5)

# Token -> performed action. `flip` is the reference's `opposite1`; `adversarial` its
# `unsemantic1` (PAPER.md, "Semantic probing interventions"). The two further permutations are
# the reference's other tables, named after what they do.
_TABLES: dict[str, dict[str, str]] = {
    "original": {a: a for a in ACTIONS},
    "flip": {
        "move": "move",
        "turn_left": "turn_right",
        "turn_right": "turn_left",
        "pick_marker": "put_marker",
        "put_marker": "pick_marker",
    },
    "adversarial": {
        "move": "turn_left",
        "turn_left": "turn_right",
        "turn_right": "move",
        "pick_marker": "turn_right",
        "put_marker": "turn_left",
    },
    # put<->pick, move<->turn_left, turn_right unchanged.
    "swap_markers_move_left": {
        "move": "turn_left",
        "turn_left": "move",
        "turn_right": "turn_right",
        "pick_marker": "put_marker",
        "put_marker": "pick_marker",
    },
    # put<->pick, move->turn_right->turn_left->move (a 3-cycle over the motions).
    "swap_markers_cycle_motions": {
        "move": "turn_right",
        "turn_left": "move",
        "turn_right": "turn_left",
        "pick_marker": "put_marker",
        "put_marker": "pick_marker",
    },
}

SEMANTICS: MappingProxyType = MappingProxyType(
    {name: MappingProxyType(dict(table)) for name, table in _TABLES.items()}
)


def semantics_table(semantics: str) -> tuple[int, ...]:
    """Token id -> performed action id for a named semantics (raises on an unknown name)."""
    if semantics not in SEMANTICS:
        raise ValueError(
            f"unknown semantics {semantics!r}; known: {', '.join(sorted(SEMANTICS))}"
        )
    table = SEMANTICS[semantics]
    return tuple(ACTION_ID[table[a]] for a in ACTIONS)


def parse_program(program) -> list[int]:
    """Action ids of a program given as a sequence of tokens, of ids, or a whitespace string."""
    if isinstance(program, str):
        program = program.split()
    ids = []
    for pos, tok in enumerate(program):
        if isinstance(tok, str):
            if tok not in ACTION_ID:
                raise ValueError(
                    f"unknown action token {tok!r} at position {pos}; expected one of {ACTIONS}"
                )
            ids.append(ACTION_ID[tok])
        else:
            i = int(tok)
            if not 0 <= i < len(ACTIONS):
                raise ValueError(f"action id {tok!r} at position {pos} is outside 0..4")
            ids.append(i)
    return ids
