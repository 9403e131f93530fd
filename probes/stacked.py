"""Many probes trained in one pass: their weights are stacked along a leading "probe" dim.

All probes of one pass read the same input rows ``X`` (N, d) (the same hidden states) and have
their own labels, row weights and weights. A probe ignores a row by giving it zero weight: the
row then contributes nothing to its loss, its BatchNorm batch statistics or its input
standardisation, so a probe's training depends only on its own rows (and on the shared
minibatch order). Gradients of different probes never mix (the summed loss is separable and
AdamW is elementwise), so stacking changes the arithmetic layout, not the estimators.

Multi-class heads: every probe has one or more heads (``labels.FEATURES``); their logits are
concatenated and padded to the widest probe. Each head's softmax is taken over its own columns
only (the others are masked), the loss is the sum of the heads' cross-entropies, and a
prediction is correct only when every head is right.

The single-probe estimators (``probes.estimators``) are this code with one probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_NEG = -1e9  # masked logit: finite, so fully masked heads never produce NaN gradients
_EPS = 1e-5  # BatchNorm epsilon (as torch.nn.BatchNorm1d)
_MOMENTUM = 0.1  # BatchNorm running-stat momentum (as torch.nn.BatchNorm1d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of every probe (PAPER.md, "Probing"; ``lr_decay`` is [inferred])."""

    epochs: int = 100
    lr: float = 0.02
    weight_decay: float = 0.2
    lr_decay: float = 0.95  # ExponentialLR gamma, stepped once per epoch
    batch_size: int = 1024
    eval_batch: int = 4096


def head_columns(heads: list[tuple[int, ...]]):
    """(col_head (p, K) long: head of each logit column or -1, col_start (p, H) long)."""
    n_out = max(sum(h) for h in heads)
    n_head = max(len(h) for h in heads)
    col_head = torch.full((len(heads), n_out), -1, dtype=torch.long)
    col_start = torch.zeros((len(heads), n_head), dtype=torch.long)
    for i, hs in enumerate(heads):
        start = 0
        for k, size in enumerate(hs):
            col_head[i, start:start + size] = k
            col_start[i, k] = start
            start += size
    return col_head, col_start


class StackedProbes(nn.Module):
    """``n`` independent MLPs (Linear -> BatchNorm -> ReLU per hidden layer) evaluated at once.

    ``hidden=()`` gives linear probes. Inputs are standardised per probe with ``mean``/``scale``
    (set from the training rows); the affine map is folded into the first layer, so the
    shared input is never copied per probe.
    """

    def __init__(self, d_in: int, hidden: tuple[int, ...], heads: list[tuple[int, ...]], seeds):
        super().__init__()
        n = len(heads)
        if len(seeds) != n:
            raise ValueError(f"seeds: expected {n} seeds, got {len(seeds)}")
        self.hidden = tuple(int(h) for h in hidden)
        self.heads = [tuple(h) for h in heads]
        col_head, col_start = head_columns(self.heads)
        self.register_buffer("col_head", col_head)
        self.register_buffer("col_start", col_start)
        dims = [d_in, *self.hidden, col_head.shape[1]]
        ws, bs = [], []
        for i in range(len(dims) - 1):
            w = torch.empty(n, dims[i], dims[i + 1])
            b = torch.empty(n, dims[i + 1])
            bound = 1.0 / dims[i] ** 0.5  # torch.nn.Linear's default init, per probe
            for p, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(int(seed) * 1000 + i)
                w[p].uniform_(-bound, bound, generator=g)
                b[p].uniform_(-bound, bound, generator=g)
            ws.append(nn.Parameter(w))
            bs.append(nn.Parameter(b))
        self.weight, self.bias = nn.ParameterList(ws), nn.ParameterList(bs)
        self.bn_weight = nn.ParameterList([nn.Parameter(torch.ones(n, h)) for h in self.hidden])
        self.bn_bias = nn.ParameterList([nn.Parameter(torch.zeros(n, h)) for h in self.hidden])
        for k, h in enumerate(self.hidden):
            self.register_buffer(f"running_mean{k}", torch.zeros(n, h))
            self.register_buffer(f"running_var{k}", torch.ones(n, h))
        self.register_buffer("mean", torch.zeros(n, d_in))
        self.register_buffer("scale", torch.ones(n, d_in))

    @property
    def n_probes(self) -> int:
        return len(self.heads)

    def _batchnorm(self, k: int, h: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Masked BatchNorm as one affine map per probe (statistics by batched matmul)."""
        rm, rv = getattr(self, f"running_mean{k}"), getattr(self, f"running_var{k}")
        if self.training:
            cnt = w.sum(-1)  # (p, 1)
            denom = cnt.clamp_min(1.0)
            mu = torch.bmm(w, h)[:, 0] / denom  # (p, h)
            var = (torch.bmm(w, h.square())[:, 0] / denom - mu.square()).clamp_min(0.0)
            with torch.no_grad():
                has = cnt > 0
                unbiased = var * (denom / (denom - 1).clamp_min(1.0))
                rm.copy_(torch.where(has, (1 - _MOMENTUM) * rm + _MOMENTUM * mu, rm))
                rv.copy_(torch.where(has, (1 - _MOMENTUM) * rv + _MOMENTUM * unbiased, rv))
        else:
            mu, var = rm, rv
        a = torch.rsqrt(var + _EPS) * self.bn_weight[k]
        c = self.bn_bias[k] - mu * a
        return torch.addcmul(c[:, None, :], h, a[:, None, :])

    def forward(self, x: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (p, B, K) of every probe for the shared rows ``x`` (B, d).

        ``row_weight`` (p, B) is needed in training mode (BatchNorm statistics per probe).
        """
        inv = 1.0 / self.scale
        w0 = self.weight[0]
        shift = torch.einsum("pd,pdh->ph", self.mean * inv, w0)
        n, d, width = w0.shape
        # one wide (B, d) @ (d, p * width) product instead of p copies of the shared input
        wide = (w0 * inv[:, :, None]).permute(1, 0, 2).reshape(d, n * width)
        h = (x @ wide).view(x.shape[0], n, width).transpose(0, 1)
        h = h + (self.bias[0] - shift)[:, None, :]
        w = None if row_weight is None else row_weight[:, None, :]  # (p, 1, B)
        for k in range(len(self.hidden)):
            h = torch.relu(self._batchnorm(k, h, w))
            h = torch.baddbmm(self.bias[k + 1][:, None, :], h, self.weight[k + 1])
        return h

    def head_scores(self, logits: torch.Tensor, target: torch.Tensor):
        """Per-row summed cross-entropy (p, B) and joint correctness (p, B) of ``target``.

        ``target`` (p, B, H) holds the class within each head, -1 for a head the probe lacks
        (rows without a label are excluded by their weight, not here).
        """
        nll = torch.zeros(logits.shape[:2], dtype=logits.dtype)
        correct = torch.ones(logits.shape[:2], dtype=torch.bool)
        for k in range(self.col_start.shape[1]):
            in_head = self.col_head == k  # (p, K)
            lg = logits.masked_fill(~in_head[:, None, :], _NEG)
            tgt = target[..., k]
            has = tgt >= 0
            col = (self.col_start[:, k:k + 1] + tgt.clamp_min(0))[..., None]
            logp = torch.log_softmax(lg, dim=-1).gather(-1, col)[..., 0]
            nll = nll - torch.where(has, logp, torch.zeros_like(logp))
            correct &= (lg.argmax(-1) == col[..., 0]) | ~has
        return nll, correct

    def predict_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """(p, B, H) predicted class within each head (-1 for heads a probe lacks)."""
        out = []
        for k in range(self.col_start.shape[1]):
            in_head = self.col_head == k
            lg = logits.masked_fill(~in_head[:, None, :], _NEG)
            pred = lg.argmax(-1) - self.col_start[:, k:k + 1]
            out.append(torch.where(in_head.any(1)[:, None], pred, torch.full_like(pred, -1)))
        return torch.stack(out, -1)


def _standardise(model: StackedProbes, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Per-probe mean/std of the inputs over the rows each probe trains on (float64 sums)."""
    w = weight.double()
    cnt = w.sum(1, keepdim=True).clamp_min(1.0)
    xd = x.double()
    mean = (w @ xd) / cnt
    var = (w @ xd.square()) / cnt - mean.square()
    std = var.clamp_min(0).sqrt()
    model.mean.copy_(mean.float())
    model.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())


@torch.no_grad()
def evaluate(model: StackedProbes, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             batch: int = 4096):
    """(accuracy (p,), n (p,)) over the rows with weight > 0, in eval mode."""
    model.eval()
    hits = torch.zeros(model.n_probes, dtype=torch.float64)
    for s in range(0, x.shape[0], batch):
        _, correct = model.head_scores(model(x[s:s + batch]), target[:, s:s + batch])
        hits += (correct & (weight[:, s:s + batch] > 0)).sum(1).double()
    n = (weight > 0).sum(1).double()
    acc = torch.where(n > 0, hits / n.clamp_min(1), torch.full_like(hits, float("nan")))
    return acc.numpy(), n.long().numpy()


@dataclass
class Fitted:
    model: StackedProbes
    best_epoch: np.ndarray  # (p,) 1-based epoch chosen on val (last epoch without val)
    val_accuracy: np.ndarray | None  # (p,) at the chosen epoch
    history: list  # per-epoch val accuracy (p,) arrays


def fit_stacked(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    heads: list[tuple[int, ...]],
    hidden: tuple[int, ...],
    seeds,
    shuffle_seed: int,
    config: TrainConfig = TrainConfig(),
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Fitted:
    """Train one stacked model on rows ``x`` (N, d) with ``target`` (p, N, H), ``weight`` (p, N).

    With ``val`` = (x_val, target_val, weight_val) every probe keeps its own best epoch on val
    (strictly best, so the earliest among ties).
    """
    if x.ndim != 2 or target.shape[1] != x.shape[0] or weight.shape != target.shape[:2]:
        raise ValueError(
            f"shapes: x {tuple(x.shape)}, target {tuple(target.shape)}, weight {tuple(weight.shape)}"
        )
    model = StackedProbes(x.shape[1], hidden, heads, seeds)
    _standardise(model, x, weight)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    g = torch.Generator().manual_seed(int(shuffle_seed))
    n = x.shape[0]
    p = model.n_probes
    best_acc = np.full(p, -np.inf)
    best_epoch = np.full(p, config.epochs)
    best_state = None
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g)
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            w = weight[:, idx]
            nll, _ = model.head_scores(model(x[idx], w), target[:, idx])
            loss = ((nll * w).sum(1) / w.sum(1).clamp_min(1.0)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if val is not None:
            acc, _ = evaluate(model, *val, batch=config.eval_batch)
            history.append(acc)
            better = np.nan_to_num(acc, nan=-1.0) > best_acc
            if best_state is None or better.any():
                state = model.state_dict()
                if best_state is None:
                    best_state = {k: v.clone() for k, v in state.items()}
                else:
                    mask = torch.from_numpy(better)
                    for k, v in state.items():
                        if v.ndim and v.shape[0] == p and k not in ("col_head", "col_start"):
                            m = mask.view(-1, *([1] * (v.ndim - 1)))
                            best_state[k] = torch.where(m, v, best_state[k])
            best_acc = np.where(better, acc, best_acc)
            best_epoch = np.where(better, epoch, best_epoch)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Fitted(model, best_epoch, None if val is None else best_acc, history)
