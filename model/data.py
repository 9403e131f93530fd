"""Training data: Karel samples tokenized and packed into fixed-length rows.

As in the reference (``packing="blocks"``), samples are concatenated (each ends with ``<eos>``)
and cut into ``block_len`` blocks, so attention crosses sample boundaries and a block may start
mid-sample. With ``packing="samples"`` each row holds one whole sample padded to ``block_len``.
Each epoch visits the samples in a fresh order drawn from ``(seed, epoch)``; the position in the
stream is two integers (epoch, next row), which is all a checkpoint needs to resume exactly.
A length curriculum (``SampleRows`` only) draws the first rows of epoch 0 from ``(seed, row)``
among the samples no longer than a rising bound, so it resumes exactly from the same two integers.
A length anneal draws every row from ``anneal_rows`` on (counted from the start of training) from
``(seed, 1, row)`` among the eligible samples (``anneal_pool``), resumable the same way.
With ``spec_pairs`` each batch's rows show the first k spec pairs, k drawn from ``(seed, 2, row)``
at the batch's first row, and a batch holds as many such rows as fit its full rows' tokens.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import karel

from .config import TrainConfig


def tokenize(samples: karel.Samples, vocab: karel.Vocab) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (P, T) int16 padded, lengths (P,))`` of whole samples (spec + program + eos)."""
    if len(samples) == 0:
        raise ValueError("samples: the split is empty")
    return karel.encode_samples(samples.inputs, samples.outputs, samples.programs, vocab)


class PackedBlocks:
    """Deterministic stream of packed blocks over one split.

    ``next_batch(n)`` returns ``(tokens (n, L+1) int64, offset (n, L+1) int64)``: each row is a
    block plus the first token of the next, so inputs are ``[:, :-1]`` and targets ``[:, 1:]``.
    ``offset`` is the index of each token inside its sample (0 at ``Input0``), which gives both
    the sample boundaries (for masking) and which tokens belong to the program (for the loss).
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, block_len: int, seed: int):
        self.ids, self.lengths = ids, lengths.astype(np.int64)
        self.block_len, self.seed = block_len, seed
        self.epoch, self.block = 0, 0
        total = int(self.lengths.sum())
        self.blocks_per_epoch = (total - 1) // block_len
        if self.blocks_per_epoch < 1:
            raise ValueError(f"block_len: {block_len} is longer than the whole split ({total} tokens)")
        self._stream_epoch = None

    def _build(self, epoch: int) -> None:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        lens = self.lengths[order]
        keep = np.arange(self.ids.shape[1])[None, :] < lens[:, None]
        self._tokens = self.ids[order][keep]  # row-major: samples back to back
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        self._offset = (np.arange(len(self._tokens)) - starts).astype(np.int16)
        self._stream_epoch = epoch

    def next_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        toks, offs = [], []
        for _ in range(n):
            lo = self._advance() * self.block_len
            toks.append(self._tokens[lo : lo + self.block_len + 1])
            offs.append(self._offset[lo : lo + self.block_len + 1])
        return torch.from_numpy(np.stack(toks).astype(np.int64)), torch.from_numpy(np.stack(offs).astype(np.int64))

    def _advance(self) -> int:
        """The position of the next row in this epoch's stream (rolling into the next epoch)."""
        if self.block >= self.blocks_per_epoch:
            self.epoch, self.block = self.epoch + 1, 0
        if self._stream_epoch != self.epoch:
            self._build(self.epoch)
        self.block += 1
        return self.block - 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "block": self.block}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.block = int(state["epoch"]), int(state["block"])


class SampleRows(PackedBlocks):
    """One whole sample per row, padded to ``row_len`` + 1 tokens (same stream interface).

    Padding has offset -1, so it gets no loss; it sits after the sample's ``<eos>``, so causal
    attention never lets a real token see it.
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, row_len: int, seed: int, curriculum_rows: int = 0,
                 anneal_rows: int | None = None, anneal_pool: np.ndarray | None = None, spec_pairs: tuple[int, ...] = ()):
        self.ids, self.lengths = ids, lengths.astype(np.int64)
        self.spec_pairs = spec_pairs
        self.curriculum_rows = curriculum_rows
        if anneal_rows is not None and (anneal_pool is None or len(anneal_pool) == 0):
            raise ValueError("anneal: no training sample is eligible for the length anneal")
        self.anneal_rows, self.anneal_pool = anneal_rows, anneal_pool
        if curriculum_rows:  # samples by length, for drawing under the curriculum's bound
            self._by_length = np.argsort(self.lengths, kind="stable")
            self._sorted_lengths = self.lengths[self._by_length]
        self.block_len, self.seed = row_len, seed
        self.epoch, self.block = 0, 0
        longest = int(self.lengths.max())
        if longest > row_len + 1:
            raise ValueError(f"block_len: {row_len} is too short for packing='samples' (longest sample "
                             f"has {longest} tokens; need block_len >= {longest - 1})")
        self.blocks_per_epoch = len(self.ids)
        self._stream_epoch = None

    def _build(self, epoch: int) -> None:
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        self._stream_epoch = epoch

    def next_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.block_len + 1
        pairs = self._draw_pairs()
        if pairs is not None:  # shorter rows: as many as fit the n full rows' tokens
            width -= (karel.text.N_SPEC - pairs) * karel.text.PAIR_TOKENS
            n = n * (self.block_len + 1) // width
        toks = np.zeros((n, width), np.int64)
        offs = np.full((n, width), -1, np.int64)
        for r in range(n):
            row = self._advance()  # may build this epoch's order, so before reading it
            overall = self.epoch * self.blocks_per_epoch + row
            if self.anneal_rows is not None and overall >= self.anneal_rows:
                pick = np.random.default_rng([self.seed, 1, overall]).integers(len(self.anneal_pool))
                i = int(self.anneal_pool[pick])
            elif self.epoch == 0 and row < self.curriculum_rows:
                i = self._curriculum_sample(row)
            else:
                i = self._order[row]
            size = self.lengths[i]
            keep = np.arange(size) if pairs is None else _kept_positions(size, pairs)
            toks[r, : len(keep)] = self.ids[i, keep]
            offs[r, : len(keep)] = keep
        return torch.from_numpy(toks), torch.from_numpy(offs)

    def _draw_pairs(self) -> int | None:
        """The spec pairs of the next step's rows (None: all, and rows as before), drawn from
        ``(seed, 2, position)`` so a resumed stream draws the same."""
        if not self.spec_pairs:
            return None
        position = self.epoch * self.blocks_per_epoch + self.block
        return int(self.spec_pairs[np.random.default_rng([self.seed, 2, position]).integers(len(self.spec_pairs))])


    def length_bound(self, row: int) -> int:
        """The longest sample (in tokens) that curriculum row ``row`` may draw: the shortest
        sample's length at row 0, rising linearly to the longest at the last curriculum row."""
        lo, hi = int(self._sorted_lengths[0]), int(self._sorted_lengths[-1])
        return lo + (hi - lo) * (row + 1) // self.curriculum_rows

    def _curriculum_sample(self, row: int) -> int:
        n = int(np.searchsorted(self._sorted_lengths, self.length_bound(row), side="right"))
        return int(self._by_length[np.random.default_rng([self.seed, 0, row]).integers(n)])


def _kept_positions(size: int, pairs: int) -> np.ndarray:
    """The positions of a ``size``-token sample that a row showing its first ``pairs`` spec pairs
    keeps: those pairs, then from ``Code:`` on. They are also the tokens' offsets, as in the whole
    sample, so the loss weights and masks of ``batch_inputs`` read them unchanged."""
    cut = pairs * karel.text.PAIR_TOKENS
    return np.concatenate([np.arange(cut), np.arange(karel.text.N_SPEC * karel.text.PAIR_TOKENS, size)])


@functools.lru_cache(maxsize=1)
def _input_cells() -> torch.Tensor:
    """The prompt's input-cell mask, built once (``batch_inputs`` runs every step)."""
    return torch.from_numpy(karel.text.input_cell_mask())


def batch_inputs(
    tokens: torch.Tensor, offset: torch.Tensor, cfg: TrainConfig, prompt_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets, loss_weight, doc)`` from a packed batch.

    ``doc`` numbers the samples inside each block (None when attention crosses samples, or when
    each row is one sample). Program tokens are those at offset >= the prompt length: the
    actions, ``}`` and ``<eos>``; spec tokens weigh ``prompt_loss_weight`` (0 with
    ``loss_on="program"``, and 0 for the input grids' cells with ``loss_on="outputs"``);
    padding (offset -1) weighs 0.
    """
    prompt_len = karel.prompt_length() if prompt_len is None else prompt_len
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    target_offset = offset[:, 1:]
    spec_weight = 0.0 if cfg.loss_on == "program" else cfg.prompt_loss_weight
    weight = torch.where(target_offset >= prompt_len, 1.0, spec_weight) * (target_offset >= 0)
    if cfg.loss_on == "outputs":
        in_cell = _input_cells()
        if len(in_cell) != prompt_len:
            raise ValueError(f"loss_on='outputs': needs the Karel prompt ({len(in_cell)} tokens), got {prompt_len}")
        spec = (target_offset >= 0) & (target_offset < prompt_len)
        weight = weight * ~(spec & in_cell[target_offset.clamp(0, prompt_len - 1)])
    doc = None
    if not cfg.cross_sample_attention and cfg.packing == "blocks":
        doc = torch.cumsum((offset[:, :-1] == 0).long(), dim=1)
    return inputs, targets, weight, doc


def load_train_blocks(data_dir, cfg: TrainConfig, vocab: karel.Vocab, limit: int | None = None) -> PackedBlocks:
    samples = karel.load_split(data_dir, "train", limit=limit)
    ids, lengths = tokenize(samples, vocab)
    return make_stream(ids, lengths, cfg)


def make_stream(ids: np.ndarray, lengths: np.ndarray, cfg: TrainConfig) -> PackedBlocks:
    """The training stream ``cfg.packing`` asks for."""
    if cfg.packing == "samples":
        anneal_rows = pool = None
        if cfg.anneal_steps:
            anneal_rows = (cfg.steps - cfg.anneal_steps) * cfg.batch_size
            pool = np.flatnonzero(karel.text.program_actions(lengths) >= cfg.anneal_min_actions)
        return SampleRows(ids, lengths, cfg.block_len, cfg.seed, cfg.curriculum_steps * cfg.batch_size, anneal_rows, pool,
                          cfg.spec_pairs)
    return PackedBlocks(ids, lengths, cfg.block_len, cfg.seed)
