"""Training data: Karel samples tokenized and packed back to back into fixed-length blocks.

As in the reference, samples are concatenated (each ends with ``<eos>``) and cut into
``block_len`` blocks, so attention crosses sample boundaries and a block may start mid-sample.
Each epoch visits the samples in a fresh order drawn from ``(seed, epoch)``; the position in the
stream is two integers (epoch, next block), which is all a checkpoint needs to resume exactly.
"""

from __future__ import annotations

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
            if self.block >= self.blocks_per_epoch:
                self.epoch, self.block = self.epoch + 1, 0
            if self._stream_epoch != self.epoch:
                self._build(self.epoch)
            lo = self.block * self.block_len
            toks.append(self._tokens[lo : lo + self.block_len + 1])
            offs.append(self._offset[lo : lo + self.block_len + 1])
            self.block += 1
        return torch.from_numpy(np.stack(toks).astype(np.int64)), torch.from_numpy(np.stack(offs).astype(np.int64))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "block": self.block}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.block = int(state["epoch"]), int(state["block"])


def batch_inputs(
    tokens: torch.Tensor, offset: torch.Tensor, cfg: TrainConfig, prompt_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets, loss_weight, doc)`` from a packed batch.

    ``doc`` numbers the samples inside each block (None when attention crosses samples).
    Program tokens are those at offset >= the prompt length: the actions, ``}`` and ``<eos>``.
    """
    prompt_len = karel.prompt_length() if prompt_len is None else prompt_len
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if cfg.loss_on == "program":
        weight = (offset[:, 1:] >= prompt_len).float()
    else:
        weight = torch.ones_like(targets, dtype=torch.float32)
    doc = None
    if not cfg.cross_sample_attention:
        doc = torch.cumsum((offset[:, :-1] == 0).long(), dim=1)
    return inputs, targets, weight, doc


def load_train_blocks(data_dir, cfg: TrainConfig, vocab: karel.Vocab, limit: int | None = None) -> PackedBlocks:
    samples = karel.load_split(data_dir, "train", limit=limit)
    ids, lengths = tokenize(samples, vocab)
    return PackedBlocks(ids, lengths, cfg.block_len, cfg.seed)
