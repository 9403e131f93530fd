"""Grid-cell embeddings: where each spec cell sits, given to the model instead of learned.

The prompt shows each grid as a header token (``Input{k}`` / ``Output{k}``) followed by its 36
interior cells in row order. With rotary positions alone the value vectors carry no position, so
the model must learn to turn "the robot glyph is 17 tokens after ``Input0``" into a row and a
column before it can plan a path. ``CellEmbedding`` adds a learned row, column and side (input or
output grid) vector to every cell token, computed from the token ids themselves, so it is the same
in training, teacher forcing and cached decoding. Still one token per cell; an option
(``ModelConfig.cell_embeddings``), off in the paper preset.

A cell's coordinates are only known when its header is in the same forward call: a packed block
that starts mid-grid leaves those cells without the embedding (``packing="samples"`` never does).
"""

from __future__ import annotations

import torch
import torch.nn as nn

import karel
from karel.text import N_SPEC
from karel.world import SIZE

SIDE = SIZE - 2  # interior cells per grid row and column (the border walls are not shown)
CELLS = SIDE * SIDE


def header_kinds(vocab_size: int) -> torch.Tensor:
    """(vocab_size,) long: 1 for an ``Input{k}`` header id, 2 for ``Output{k}``, else 0.

    Header ids are the same in every ``robot_markers`` mode of ``karel.Vocab``.
    """
    vocab = karel.Vocab()
    kinds = torch.zeros(vocab_size, dtype=torch.long)
    for k in range(N_SPEC):
        kinds[vocab.id(f"Input{k}")] = 1
        kinds[vocab.id(f"Output{k}")] = 2
    return kinds


def cell_coordinates(idx: torch.Tensor, kinds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(row, col, side, valid) per token of ``idx`` (B, T), each (B, T).

    ``side`` is 0 for an input grid and 1 for an output grid; ``valid`` marks the 36 tokens after
    each header seen in ``idx`` (row, col and side are 0 elsewhere).
    """
    kind = kinds[idx.long()]
    pos = torch.arange(idx.shape[1], device=idx.device).expand_as(kind)
    last = torch.where(kind > 0, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    dist = pos - last - 1
    valid = (last >= 0) & (dist >= 0) & (dist < CELLS)
    dist = torch.where(valid, dist, torch.zeros_like(dist))
    side = torch.where(valid, kind.gather(1, last.clamp(min=0)) - 1, torch.zeros_like(dist))
    return dist // SIDE, dist % SIDE, side, valid


class CellEmbedding(nn.Module):
    """Row + column + side embeddings added to the interior-cell tokens of each grid."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.row = nn.Embedding(SIDE, d_model)
        self.col = nn.Embedding(SIDE, d_model)
        self.side = nn.Embedding(2, d_model)
        self.register_buffer("kinds", header_kinds(vocab_size), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        row, col, side, valid = cell_coordinates(idx, self.kinds)
        emb = self.row(row) + self.col(col) + self.side(side)
        return emb * valid.unsqueeze(-1).to(emb.dtype)

