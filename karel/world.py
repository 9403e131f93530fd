"""The Karel world: an 8x8 grid whose border ring is wall, a robot in the 6x6 interior.

Rows grow downward (north is row - 1). Directions are numbered clockwise from north, so
turn_right is +1 and turn_left is -1 modulo 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 8  # grid side including the border walls
INTERIOR = range(1, SIZE - 1)
DIRECTIONS: tuple[str, ...] = ("north", "east", "south", "west")
DIRECTION_ID: dict[str, int] = {d: i for i, d in enumerate(DIRECTIONS)}
D_ROW = np.array([-1, 0, 1, 0], dtype=np.int8)  # indexed by direction id
D_COL = np.array([0, 1, 0, -1], dtype=np.int8)

P_WALL = 0.1
P_MARKER = 0.1


@dataclass(eq=False)
class World:
    """One Karel state. ``walls``: bool (8, 8); ``markers``: int counts (8, 8)."""

    walls: np.ndarray
    markers: np.ndarray
    row: int
    col: int
    direction: str

    def __post_init__(self):
        self.walls = np.asarray(self.walls, dtype=bool)
        self.markers = np.asarray(self.markers)
        if self.walls.shape != (SIZE, SIZE):
            raise ValueError(f"walls: expected shape (8, 8), got {self.walls.shape}")
        if self.markers.shape != (SIZE, SIZE):
            raise ValueError(f"markers: expected shape (8, 8), got {self.markers.shape}")
        if not np.issubdtype(self.markers.dtype, np.integer):
            raise ValueError(f"markers: expected integer counts, got dtype {self.markers.dtype}")
        if (self.markers < 0).any():
            raise ValueError("markers: counts must be >= 0")
        border = np.ones((SIZE, SIZE), dtype=bool)
        border[1:-1, 1:-1] = False
        if not self.walls[border].all():
            raise ValueError("walls: the border ring of the 8x8 grid must be all walls")
        if (self.markers[self.walls] != 0).any():
            raise ValueError("markers: a wall cell cannot hold markers")
        if self.direction not in DIRECTION_ID:
            raise ValueError(f"direction: {self.direction!r} is not one of {DIRECTIONS}")
        self.row, self.col = int(self.row), int(self.col)
        if self.row not in INTERIOR or self.col not in INTERIOR:
            raise ValueError(
                f"row/col: robot at ({self.row}, {self.col}) is outside the interior 1..6"
            )
        if self.walls[self.row, self.col]:
            raise ValueError(f"row/col: robot at ({self.row}, {self.col}) stands on a wall")

    @property
    def dir_id(self) -> int:
        return DIRECTION_ID[self.direction]

    def copy(self) -> "World":
        return World(self.walls.copy(), self.markers.copy(), self.row, self.col, self.direction)

    def __eq__(self, other) -> bool:
        if not isinstance(other, World):
            return NotImplemented
        return (
            (self.row, self.col, self.direction) == (other.row, other.col, other.direction)
            and np.array_equal(self.walls, other.walls)
            and np.array_equal(self.markers, other.markers)
        )

    def __repr__(self) -> str:
        return f"World(row={self.row}, col={self.col}, direction={self.direction!r}, markers={int(self.markers.sum())})"


@dataclass
class WorldBatch:
    """Many worlds as arrays: walls (n, 8, 8) bool, markers (n, 8, 8) uint8, row/col/dir (n,)."""

    walls: np.ndarray
    markers: np.ndarray
    row: np.ndarray
    col: np.ndarray
    dir: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, i: int) -> World:
        return World(
            self.walls[i].copy(),
            self.markers[i].astype(np.int64),
            int(self.row[i]),
            int(self.col[i]),
            DIRECTIONS[int(self.dir[i])],
        )

    @classmethod
    def from_worlds(cls, worlds) -> "WorldBatch":
        worlds = list(worlds)
        return cls(
            walls=np.stack([w.walls for w in worlds]),
            markers=np.stack([w.markers for w in worlds]).astype(np.uint8),
            row=np.array([w.row for w in worlds], dtype=np.int8),
            col=np.array([w.col for w in worlds], dtype=np.int8),
            dir=np.array([w.dir_id for w in worlds], dtype=np.int8),
        )


def random_worlds(rng: np.random.Generator, n: int) -> WorldBatch:
    """``n`` random worlds with the reference parameters.

    Every interior cell is a wall with p=0.1; the robot is uniform over the interior and
    its four directions; its cell is cleared; every other free interior cell gets one
    marker with p=0.1.
    """
    walls = rng.random((n, SIZE, SIZE), dtype=np.float32) < P_WALL
    walls[:, 0, :] = walls[:, -1, :] = walls[:, :, 0] = walls[:, :, -1] = True
    row = rng.integers(1, SIZE - 1, n, dtype=np.int8)
    col = rng.integers(1, SIZE - 1, n, dtype=np.int8)
    direction = rng.integers(0, 4, n, dtype=np.int8)
    idx = np.arange(n)
    walls[idx, row, col] = False
    markers = (rng.random((n, SIZE, SIZE), dtype=np.float32) < P_MARKER) & ~walls
    markers[idx, row, col] = False
    return WorldBatch(walls, markers.astype(np.uint8), row, col, direction)


def random_world(rng: np.random.Generator) -> World:
    """One random world (the same draw as the first of ``random_worlds(rng, 1)``)."""
    return random_worlds(rng, 1)[0]
