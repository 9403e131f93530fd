"""Many probes trained in one pass: probes that share their rows are stacked side by side.

All probes of a call read the same input rows ``x`` (N, d) (the same hidden states) and have
their own labels and 0/1 row weights (a probe ignores a row by giving it weight 0). Probes whose
train and val rows are the same (in the grid: the features and semantics of one offset) form a
*group*: the group trains on exactly its rows, with one input standardisation (mean/std over
its training rows), one minibatch order (seeded by ``shuffle_seed``) and no padding rows. A
group is split into *chunks* of at most ``TrainConfig.chunk`` probes, trained one after another
(the chunk size changes the arithmetic layout, not the estimators: every chunk of a group sees
the same minibatches). Within a chunk the first layer of every probe is one wide
(B, d) @ (d, p * width) product of the shared input; deeper layers, BatchNorm and the loss run
per probe. Gradients of different probes never mix (the summed loss is separable and AdamW is
elementwise), so a probe trained in a grid is the same estimator as one trained alone on its
rows (``probes.estimators``, this code with one probe).

Arithmetic: matmuls take bfloat16 inputs with float32 accumulation (AMX on recent x86);
parameters, optimizer state, BatchNorm statistics and the loss are float32. Inputs are
standardised in float32 before the cast. The bias of a layer followed by BatchNorm is omitted
(BatchNorm removes it exactly). Each head's output bias starts at the log prior of its
training labels, so a probe starts from the majority prediction (few steps never leave a
probe below the majority baseline).

Multi-class heads: every probe has one or more heads (``labels.FEATURES``); their logits are
concatenated and padded to the widest probe. Each head's softmax is taken over its own columns
only, the loss is the sum of the heads' cross-entropies, and a prediction is correct only when
every head is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_NEG = -1e9  # masked logit: finite, so fully masked heads never produce NaN gradients
_EPS = 1e-5  # BatchNorm epsilon (as torch.nn.BatchNorm1d)
_MOMENTUM = 0.1  # BatchNorm running-stat momentum (as torch.nn.BatchNorm1d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of every probe (PAPER.md, "Probing"; ``lr_decay`` is [inferred]).

    ``chunk``: most probes trained side by side (memory/cache, not results); ``eval_every``:
    val accuracy (model selection) every that many epochs and at the last epoch;
    ``bf16``: bfloat16 matmul inputs (float32 accumulation); ``threads``: intra-op threads while
    training (1 is the robust choice on a small shared machine: the ops are small and an OpenMP
    team whose other thread is descheduled waits for it at every op).
    """

    epochs: int = 100
    lr: float = 0.02
    weight_decay: float = 0.2
    lr_decay: float = 0.95  # ExponentialLR gamma, stepped once per epoch
    batch_size: int = 1024
    eval_batch: int = 4096
    chunk: int = 16
    eval_every: int = 1
    bf16: bool = True
    threads: int | None = None  # torch intra-op threads while training (None: leave as is)


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


def head_scores(logits: torch.Tensor, target: torch.Tensor, col_head, col_start):
    """Per-row summed cross-entropy (p, B) and joint correctness (p, B) of ``target``.

    ``logits`` (p, B, K); ``target`` (p, B, H) holds the class within each head, -1 for a head
    the probe lacks (rows without a label are excluded by their weight, not here).
    """
    logits = logits.float()
    nll = torch.zeros(logits.shape[:2])
    correct = torch.ones(logits.shape[:2], dtype=torch.bool)
    for k in range(col_start.shape[1]):
        in_head = col_head == k  # (p, K)
        lg = logits.masked_fill(~in_head[:, None, :], _NEG)
        tgt = target[..., k]
        has = tgt >= 0
        col = (col_start[:, k:k + 1] + tgt.clamp_min(0))[..., None]
        logp = torch.log_softmax(lg, dim=-1).gather(-1, col)[..., 0]
        nll = nll - torch.where(has, logp, torch.zeros_like(logp))
        correct &= (lg.argmax(-1) == col[..., 0]) | ~has
    return nll, correct


def head_nll(logits: torch.Tensor, target: torch.Tensor, col_head, col_start) -> torch.Tensor:
    """Per-row summed cross-entropy (p, B) (``head_scores`` without the correctness)."""
    logits = logits.float()
    nll = None
    for k in range(col_start.shape[1]):
        in_head = col_head == k
        lg = logits if bool(in_head[:, :].all()) else logits.masked_fill(~in_head[:, None, :], _NEG)
        tgt = target[..., k]
        has = tgt >= 0
        col = (col_start[:, k:k + 1] + tgt.clamp_min(0))[..., None]
        logp = torch.log_softmax(lg, dim=-1).gather(-1, col)[..., 0]
        term = torch.where(has, -logp, torch.zeros_like(logp))
        nll = term if nll is None else nll + term
    return nll


def predict_columns(logits: torch.Tensor, col_head, col_start) -> torch.Tensor:
    """(p, B, H) predicted class within each head (-1 for heads a probe lacks)."""
    out = []
    for k in range(col_start.shape[1]):
        in_head = col_head == k
        lg = logits.float().masked_fill(~in_head[:, None, :], _NEG)
        pred = lg.argmax(-1) - col_start[:, k:k + 1]
        out.append(torch.where(in_head.any(1)[:, None], pred, torch.full_like(pred, -1)))
    return torch.stack(out, -1)


class ProbeChunk(nn.Module):
    """``p`` independent MLPs (Linear -> BatchNorm -> ReLU per hidden layer, then a linear
    head) on one shared, standardised input. ``hidden=()`` gives linear probes.

    Layer 0 of all probes is one wide matmul; its BatchNorm runs over the p * width columns at
    once (per-column statistics are per probe). Deeper layers run per probe.
    """

    def __init__(self, d_in: int, hidden: tuple[int, ...], heads: list[tuple[int, ...]], seeds,
                 bf16: bool = True):
        super().__init__()
        n = len(heads)
        if len(seeds) != n:
            raise ValueError(f"seeds: expected {n} seeds, got {len(seeds)}")
        self.hidden = tuple(int(h) for h in hidden)
        self.heads = [tuple(h) for h in heads]
        self.bf16 = bool(bf16)
        col_head, col_start = head_columns(self.heads)
        self.register_buffer("col_head", col_head)
        self.register_buffer("col_start", col_start)
        self.n_out = col_head.shape[1]
        dims = [d_in, *self.hidden, self.n_out]
        # weight[layer][probe] (in, out), torch.nn.Linear's default init, seeded per probe
        ws = [[None] * n for _ in range(len(dims) - 1)]
        self.out_bias = nn.Parameter(torch.empty(n, self.n_out))
        for p, seed in enumerate(seeds):
            for i in range(len(dims) - 1):
                g = torch.Generator().manual_seed(int(seed) * 1000 + i)
                bound = 1.0 / dims[i] ** 0.5
                w = torch.empty(dims[i], dims[i + 1]).uniform_(-bound, bound, generator=g)
                b = torch.empty(dims[i + 1]).uniform_(-bound, bound, generator=g)
                ws[i][p] = w
                if i == len(dims) - 2:
                    with torch.no_grad():
                        self.out_bias[p].copy_(b)
        self.w0 = nn.ParameterList([nn.Parameter(w) for w in ws[0]])
        self.deep = nn.ParameterList([nn.Parameter(w) for layer in ws[1:] for w in layer])
        self.bn_weight = nn.ParameterList([nn.Parameter(torch.ones(n * h)) for h in self.hidden])
        self.bn_bias = nn.ParameterList([nn.Parameter(torch.zeros(n * h)) for h in self.hidden])
        for k, h in enumerate(self.hidden):
            self.register_buffer(f"running_mean{k}", torch.zeros(n * h))
            self.register_buffer(f"running_var{k}", torch.ones(n * h))
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))

    @property
    def n_probes(self) -> int:
        return len(self.heads)

    def layer_weight(self, layer: int, probe: int) -> torch.Tensor:
        return self.w0[probe] if layer == 0 else self.deep[(layer - 1) * self.n_probes + probe]

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        xs = (x - self.mean) / self.scale
        return xs.bfloat16() if self.bf16 else xs

    def _cast(self, w: torch.Tensor) -> torch.Tensor:
        return w.bfloat16() if self.bf16 else w

    def _bn_relu(self, k: int, h: torch.Tensor, sl: slice = slice(None)) -> torch.Tensor:
        rm, rv = getattr(self, f"running_mean{k}")[sl], getattr(self, f"running_var{k}")[sl]
        h = F.batch_norm(h, rm, rv, self.bn_weight[k][sl], self.bn_bias[k][sl], self.training,
                         _MOMENTUM, _EPS)
        return torch.relu_(h)

    def forward_standardised(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits (p, B, K) (float32) of every probe for standardised rows ``xs`` (B, d)."""
        n, B = self.n_probes, xs.shape[0]
        wide = torch.cat([self._cast(w) for w in self.w0], 1)
        h = xs @ wide  # (B, n * width0)
        if not self.hidden:
            h = h.view(B, n, self.n_out).transpose(0, 1).float()
            return h + self.out_bias[:, None, :]
        h = self._bn_relu(0, h)
        w0 = self.hidden[0]
        outs = []
        for p, hp in enumerate(h.split(w0, dim=1)):  # split: its backward is one concat
            for k in range(1, len(self.hidden)):
                width = self.hidden[k]
                hp = hp @ self._cast(self.layer_weight(k, p))
                hp = self._bn_relu(k, hp, slice(p * width, (p + 1) * width))
            outs.append(hp @ self._cast(self.layer_weight(len(self.hidden), p)))
        return torch.stack(outs).float() + self.out_bias[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_standardised(self.standardise(x))


class StackedProbes(nn.Module):
    """All probes of one ``fit_stacked`` call: chunks (each with its own standardisation).

    ``model(x)`` gives logits (p, B, K) of every probe (K padded to the widest probe), in the
    order of the probes given to ``fit_stacked``; ``mean``/``scale`` (p, d) their input
    standardisation.
    """

    def __init__(self, chunks: list[ProbeChunk], index: list[list[int]], heads):
        super().__init__()
        self.chunks = nn.ModuleList(chunks)
        self.index = [list(i) for i in index]  # probes of each chunk (positions in the call)
        self.heads = [tuple(h) for h in heads]
        col_head, col_start = head_columns(self.heads)
        self.register_buffer("col_head", col_head)
        self.register_buffer("col_start", col_start)
        order = [p for idx in self.index for p in idx]
        self.register_buffer("_inverse", torch.argsort(torch.tensor(order)))

    @property
    def n_probes(self) -> int:
        return len(self.heads)

    @property
    def mean(self) -> torch.Tensor:
        return torch.stack([c.mean for c, idx in zip(self.chunks, self.index) for _ in idx])[
            self._inverse]

    @property
    def scale(self) -> torch.Tensor:
        return torch.stack([c.scale for c, idx in zip(self.chunks, self.index) for _ in idx])[
            self._inverse]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = self.col_head.shape[1]
        out = []
        for c in self.chunks:
            lg = c(x)
            out.append(F.pad(lg, (0, K - lg.shape[-1]), value=_NEG))
        return torch.cat(out)[self._inverse]

    def head_scores(self, logits, target):
        return head_scores(logits, target, self.col_head, self.col_start)

    def predict_columns(self, logits):
        return predict_columns(logits, self.col_head, self.col_start)


def _standardise(chunk: ProbeChunk, x: torch.Tensor) -> None:
    """Mean/std of the training inputs of a group (float64 sums)."""
    mean = torch.zeros(x.shape[1], dtype=torch.float64)
    sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for s in range(0, x.shape[0], 16384):
        xd = x[s:s + 16384].double()
        mean += xd.sum(0)
        sq += xd.square().sum(0)
    n = max(x.shape[0], 1)
    mean /= n
    std = (sq / n - mean.square()).clamp_min(0).sqrt()
    chunk.mean.copy_(mean.float())
    chunk.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())


def _prior_bias(chunk: ProbeChunk, target: torch.Tensor) -> None:
    """Each head's output bias := log prior of its training labels (``target`` (p, n, H))."""
    with torch.no_grad():
        for p, hs in enumerate(chunk.heads):
            start = 0
            for k, size in enumerate(hs):
                counts = torch.bincount(target[p, :, k].clamp_min(0), minlength=size)[:size]
                prior = counts.double() / max(int(counts.sum()), 1)
                chunk.out_bias[p, start:start + size] = prior.clamp_min(1e-6).log().float()
                start += size


@torch.no_grad()
def _chunk_hits(chunk: ProbeChunk, xs: torch.Tensor, target: torch.Tensor, batch: int):
    """(p,) correct rows of standardised ``xs`` (all rows scored), eval mode."""
    chunk.eval()
    hits = torch.zeros(chunk.n_probes, dtype=torch.float64)
    for s in range(0, xs.shape[0], batch):
        _, correct = head_scores(chunk.forward_standardised(xs[s:s + batch]),
                                 target[:, s:s + batch], chunk.col_head, chunk.col_start)
        hits += correct.sum(1).double()
    return hits


@torch.no_grad()
def evaluate(model: StackedProbes, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             batch: int = 4096):
    """(accuracy (p,), n (p,)) over the rows with weight > 0, in eval mode.

    Each chunk scores only the rows its probes use (their union).
    """
    model.eval()
    hits = torch.zeros(model.n_probes, dtype=torch.float64)
    for c, idx in zip(model.chunks, model.index):
        rows = torch.nonzero((weight[idx] > 0).any(0))[:, 0]
        w, tgt = weight[idx][:, rows] > 0, target[idx][:, rows]
        xs = c.standardise(x[rows])
        for s in range(0, len(rows), batch):
            _, correct = head_scores(c.forward_standardised(xs[s:s + batch]),
                                     tgt[:, s:s + batch], c.col_head, c.col_start)
            hits[idx] += (correct & w[:, s:s + batch]).sum(1).double()
    n = (weight > 0).sum(1).double()
    acc = torch.where(n > 0, hits / n.clamp_min(1), torch.full_like(hits, float("nan")))
    return acc.numpy(), n.long().numpy()


@dataclass
class Fitted:
    model: StackedProbes
    best_epoch: np.ndarray  # (p,) 1-based epoch chosen on val (last epoch without val)
    val_accuracy: np.ndarray | None  # (p,) at the chosen epoch
    history: list  # per-evaluated-epoch val accuracy (p,) arrays


def _groups(weight: torch.Tensor, val_weight: torch.Tensor | None) -> list[list[int]]:
    """Probes with identical train (and val) rows, in first-appearance order."""
    keys: dict[bytes, list[int]] = {}
    w = (weight > 0).numpy()
    vw = None if val_weight is None else (val_weight > 0).numpy()
    for p in range(w.shape[0]):
        key = np.packbits(w[p]).tobytes() + (b"" if vw is None else np.packbits(vw[p]).tobytes())
        keys.setdefault(key, []).append(p)
    return list(keys.values())


def _fit_chunk(chunk: ProbeChunk, xs, target, val, config: TrainConfig, shuffle_seed: int):
    """Train one chunk on its rows (standardised ``xs``, ``target`` (p, n, H)); val = (xs, target).

    Returns (best_epoch (p,), best val accuracy (p,) or None, history).
    """
    opt = torch.optim.AdamW(chunk.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True)  # one pass over each tensor (same update rule)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    g = torch.Generator().manual_seed(int(shuffle_seed))
    n, p = xs.shape[0], chunk.n_probes
    best_acc = np.full(p, -np.inf)
    best_epoch = np.full(p, config.epochs)
    best_state = None
    history = []
    every = max(1, int(config.eval_every))
    for epoch in range(1, config.epochs + 1):
        chunk.train()
        order = torch.randperm(n, generator=g)
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            nll = head_nll(chunk.forward_standardised(xs[idx]), target[:, idx],
                           chunk.col_head, chunk.col_start)
            loss = nll.mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if val is not None and (epoch % every == 0 or epoch == config.epochs):
            n_val = val[0].shape[0]
            hits = _chunk_hits(chunk, *val, batch=config.eval_batch)
            acc = (hits / n_val).numpy() if n_val else np.full(p, np.nan)
            history.append(acc)
            better = np.nan_to_num(acc, nan=-1.0) > best_acc
            if best_state is None or better.any():
                state = chunk.state_dict()
                if best_state is None:
                    best_state = {k: v.clone() for k, v in state.items()}
                else:
                    for k, v in state.items():
                        if k in ("col_head", "col_start", "mean", "scale"):
                            continue
                        best_state[k] = _select(k, v, best_state[k], better, p)
            best_acc = np.where(better, acc, best_acc)
            best_epoch = np.where(better, epoch, best_epoch)
    if best_state is not None:
        chunk.load_state_dict(best_state)
    chunk.eval()
    return best_epoch, (None if val is None else best_acc), history


def _select(key: str, new: torch.Tensor, old: torch.Tensor, better: np.ndarray, n: int):
    """Per-probe choice between two states of one chunk tensor (``better`` (n,) bool)."""
    name, _, sub = key.partition(".")
    if name in ("w0", "deep"):  # one tensor per probe (deep: layer-major)
        return new.clone() if better[int(sub) % n] else old
    # probe-major: out_bias (n, K); BatchNorm vectors (n * width,)
    m = torch.from_numpy(better).repeat_interleave(new.shape[0] // n)
    return torch.where(m.view(-1, *([1] * (new.ndim - 1))), new, old)


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
    """Train probes on rows ``x`` (N, d) with ``target`` (p, N, H), 0/1 ``weight`` (p, N).

    With ``val`` = (x_val, target_val, weight_val) every probe keeps its own best epoch on val
    (strictly best, so the earliest among ties).
    """
    if x.ndim != 2 or target.shape[1] != x.shape[0] or weight.shape != target.shape[:2]:
        raise ValueError(
            f"shapes: x {tuple(x.shape)}, target {tuple(target.shape)}, weight {tuple(weight.shape)}"
        )
    if not bool(((weight == 0) | (weight == 1)).all()):
        raise ValueError("weight: expected 0/1 row weights (a probe uses a row or not)")
    p = target.shape[0]
    if len(seeds) != p or len(heads) != p:
        raise ValueError(f"seeds/heads: expected {p} of each, got {len(seeds)}, {len(heads)}")
    prev_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        return _fit_groups(x, target, weight, heads, hidden, seeds, shuffle_seed, config, val)
    finally:
        torch.set_num_threads(prev_threads)


def _fit_groups(x, target, weight, heads, hidden, seeds, shuffle_seed, config, val) -> Fitted:
    p = target.shape[0]
    best_epoch = np.full(p, config.epochs)
    best_acc = np.full(p, np.nan)
    histories = []
    chunks, index = [], []
    for group in _groups(weight, None if val is None else val[2]):
        rows = torch.nonzero(weight[group[0]] > 0)[:, 0]
        vrows = None if val is None else torch.nonzero(val[2][group[0]] > 0)[:, 0]
        xs = xv = None
        for s in range(0, len(group), max(1, int(config.chunk))):
            idx = group[s:s + max(1, int(config.chunk))]
            chunk = ProbeChunk(x.shape[1], hidden, [heads[i] for i in idx],
                               [seeds[i] for i in idx], bf16=config.bf16)
            if xs is None:
                _standardise(chunk, x[rows])
                xs = chunk.standardise(x[rows])
                if val is not None:
                    xv = chunk.standardise(val[0][vrows])
                mean, scale = chunk.mean.clone(), chunk.scale.clone()
            else:
                chunk.mean.copy_(mean)
                chunk.scale.copy_(scale)
            tgt = target[idx][:, rows]
            _prior_bias(chunk, tgt)
            v = None if val is None else (xv, val[1][idx][:, vrows])
            be, ba, hist = _fit_chunk(chunk, xs, tgt, v, config, shuffle_seed)
            best_epoch[idx] = be
            if ba is not None:
                best_acc[idx] = ba
            histories.append((idx, hist))
            chunks.append(chunk)
            index.append(idx)
    history = []
    n_eval = max((len(h) for _, h in histories), default=0)
    for e in range(n_eval):
        a = np.full(p, np.nan)
        for idx, h in histories:
            if e < len(h):
                a[idx] = h[e]
        history.append(a)
    model = StackedProbes(chunks, index, heads)
    model.eval()
    return Fitted(model, best_epoch, None if val is None else best_acc, history)
