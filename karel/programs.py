"""Random straight-line programs with the reference token weights."""

from __future__ import annotations

import numpy as np

from .batch import PAD
from .semantics import ACTIONS

# move 5, turn_left 3, turn_right 3, pick_marker 2, put_marker 2 (PAPER.md, "Programs and data").
TOKEN_WEIGHTS: tuple[float, ...] = (5.0, 3.0, 3.0, 2.0, 2.0)


def lengths_cycle(start: int, count: int, allowed: tuple[int, ...]) -> np.ndarray:
    """Program lengths for global indices ``start .. start+count`` cycling over ``allowed``.

    Cycling by global index gives equal counts per length over a split however it is chunked.
    """
    idx = np.arange(start, start + count)
    return np.asarray(allowed, dtype=np.int8)[idx % len(allowed)]


def random_programs(
    rng: np.random.Generator, lengths: np.ndarray, weights=TOKEN_WEIGHTS, width: int | None = None
) -> np.ndarray:
    """(n, width) action ids with token i drawn i.i.d. with probability ∝ weights[i], -1 padded."""
    lengths = np.asarray(lengths)
    width = int(lengths.max(initial=0)) if width is None else width
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (len(ACTIONS),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights: expected {len(ACTIONS)} non-negative numbers, got {weights!r}")
    tokens = rng.choice(len(ACTIONS), size=(len(lengths), width), p=p / p.sum()).astype(np.int8)
    tokens[np.arange(width)[None, :] >= lengths[:, None]] = PAD
    return tokens


def program_text(program_ids) -> str:
    """A program's action tokens joined by spaces (padding dropped)."""
    return " ".join(ACTIONS[i] for i in program_ids if i != PAD)
