"""Training many probes at once: grouping by shared rows, chunking, AdamW epochs, per-probe
selection of the best epoch on val, and evaluation.

Probes whose train and val rows are the same form a *group*: the group trains on exactly its
rows, with one input standardisation (mean/std over its training rows), one minibatch order
(seeded by ``shuffle_seed``) and no padding rows. A group is split into *chunks* of at most
``TrainConfig.chunk`` probes (``stacked_modules.ProbeChunk``), trained one after another (the
chunk size changes the arithmetic layout, not the estimators: every chunk of a group sees the
same minibatches). Each head's output bias starts at the log prior of its training labels, so a
probe starts from the majority prediction (few steps never leave a probe below the majority
baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .stacked_modules import ProbeChunk, StackedProbes, head_nll, head_scores


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of every probe (PAPER.md, "Probing"; ``lr_decay`` is [inferred]).

    ``chunk``: most probes trained side by side (memory/cache, not results); ``eval_every``:
    val accuracy (model selection) every that many epochs and at the last epoch;
    ``bf16``: bfloat16 matmul inputs (float32 accumulation); ``None``: where the device has bf16
    in hardware (``bf16_native``), else float32; ``threads``: intra-op threads while
    training (1 is the robust choice on a small shared machine: the ops are small and an OpenMP
    team whose other thread is descheduled waits for it at every op); ``device``: where the
    probes train (``cpu``, ``cuda``, or ``auto``: CUDA when torch sees it). Parameters are
    initialised on the CPU, so a probe starts from the same weights on every device, and the
    fitted probes come back to the CPU. ``patience``: with val, a probe whose val accuracy has
    not improved for that many epochs keeps the best epoch it has (later epochs no longer count
    for it), and a chunk stops when all its probes have; 0 trains every epoch. Each probe's
    choice depends on its own val curve only, so a probe still gets the same result in any chunk
    (bit for bit with bf16 matmul inputs; in float32 to the CPU BLAS's rounding of other widths).
    ``layout``: how the layers after the first run (``stacked_modules.LAYOUTS``; ``auto``: per
    probe on the CPU, batched matmuls on CUDA). ``graphs``: on CUDA, each chunk's training step
    on full minibatches replays as one CUDA graph (``_GraphedStep``) instead of hundreds of small
    launches; the optimizer then keeps its learning rate and step count on the device. No effect
    on the CPU.
    """

    epochs: int = 100
    lr: float = 0.02
    weight_decay: float = 0.2
    lr_decay: float = 0.95  # ExponentialLR gamma, stepped once per epoch
    batch_size: int = 1024
    eval_batch: int = 4096
    chunk: int = 16
    eval_every: int = 1
    bf16: bool | None = None
    threads: int | None = None  # torch intra-op threads while training (None: leave as is)
    device: str = "cpu"
    patience: int = 0
    layout: str = "auto"
    graphs: bool = False


DEVICES = ("cpu", "cuda", "auto")


def bf16_native(device: torch.device) -> bool:
    """CUDA, or a CPU with bf16 dot products (AMX or avx512_bf16). Elsewhere (AVX2 only) torch
    emulates bf16 matmuls: a probe trained ~10x slower than in float32 on a 2-core Zen 1 EPYC."""
    return device.type == "cuda" or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_device(name: str) -> torch.device:
    """The torch device of ``TrainConfig.device``; a clear error for an unknown name or a CUDA
    device torch cannot see."""
    if name not in DEVICES:
        raise ValueError(f"device: {name!r} is not one of {DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _standardise(chunk: ProbeChunk, x: torch.Tensor) -> None:
    """Mean/std of the training inputs of a group (float64 sums)."""
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    sq = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
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
    hits = torch.zeros(chunk.n_probes, dtype=torch.float64, device=xs.device)
    for s in range(0, xs.shape[0], batch):
        _, correct = head_scores(chunk.forward_standardised(xs[s:s + batch]),
                                 target[:, s:s + batch], chunk.col_head, chunk.col_start)
        hits += correct.sum(1).double()
    return hits


@torch.no_grad()
def evaluate(model: StackedProbes, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             batch: int = 4096):
    """(accuracy (p,), n (p,)) over the rows with weight > 0, in eval mode.

    Each chunk scores only the rows its probes use (their union). A probe that had no training
    rows scores NaN, as one with no rows here does: its weights are its initialisation.
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
    scored = (n > 0) & (model.n_train > 0)
    acc = torch.where(scored, hits / n.clamp_min(1), torch.full_like(hits, float("nan")))
    return acc.numpy(), n.long().numpy()


@dataclass
class Fitted:
    model: StackedProbes
    best_epoch: np.ndarray  # (p,) 1-based epoch chosen on val (the last epoch without val rows; 0: no training rows)
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


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each training batch over ``n`` rows; a last batch of one row joins the
    one before it (BatchNorm cannot train on a single row: n % batch_size == 1 used to fail)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _fit_chunk(chunk: ProbeChunk, xs, target, val, config: TrainConfig, shuffle_seed: int):
    """Train one chunk on its rows (standardised ``xs``, ``target`` (p, n, H)); val = (xs, target).

    Returns (best_epoch (p,), best val accuracy (p,) or None, history).
    """
    graphed = bool(config.graphs) and xs.is_cuda
    # fused: one pass over each tensor (same update rule); a CUDA graph needs the learning rate
    # and the step count on the device (capturable), where the scheduler updates them in place
    lr = torch.tensor(config.lr, dtype=torch.float32, device=xs.device) if graphed else config.lr
    opt = torch.optim.AdamW(chunk.parameters(), lr=lr, weight_decay=config.weight_decay, fused=True,
                            capturable=graphed)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    g = torch.Generator().manual_seed(int(shuffle_seed))
    n, p = xs.shape[0], chunk.n_probes
    graph = _GraphedStep(chunk, xs, target, opt, config.batch_size) if graphed else None
    best_acc = np.full(p, -np.inf)
    best_epoch = np.full(p, config.epochs)
    best_state = None
    history = []
    every = max(1, int(config.eval_every))
    patience = int(config.patience) if val is not None else 0
    stopped = np.zeros(p, dtype=bool)
    for epoch in range(1, config.epochs + 1):
        if patience and stopped.all():
            break
        chunk.train()
        order = torch.randperm(n, generator=g).to(xs.device)  # drawn on the CPU: the same on every device
        for s, e in batch_bounds(n, config.batch_size):
            if graph is not None:
                graph.step(order[s:e])
            else:
                _train_step(chunk, xs, target, order[s:e], opt)
        sched.step()
        if val is not None and (epoch % every == 0 or epoch == config.epochs):
            n_val = val[0].shape[0]
            hits = _chunk_hits(chunk, *val, batch=config.eval_batch)
            acc = (hits / n_val).cpu().numpy() if n_val else np.full(p, np.nan)
            history.append(acc)
            better = (np.nan_to_num(acc, nan=-1.0) > best_acc) & ~stopped
            if best_state is None or better.any():
                state = chunk.state_dict()
                if best_state is None:
                    best_state = {k: v.clone() for k, v in state.items()}
                else:
                    for k, v in state.items():
                        if k in ("col_head", "col_start", "mean", "scale"):
                            continue
                        best_state[k] = _select(v, best_state[k], better, p)
            best_acc = np.where(better, acc, best_acc)
            best_epoch = np.where(better, epoch, best_epoch)
            if patience:
                stopped |= epoch - best_epoch >= patience
    if best_state is not None:
        chunk.load_state_dict(best_state)
    chunk.eval()
    return best_epoch, (None if val is None else best_acc), history


def _train_step(chunk: ProbeChunk, xs, target, idx, opt, set_to_none: bool = True) -> None:
    """One AdamW step of every probe of ``chunk`` on rows ``idx`` of ``xs`` / ``target``."""
    nll = head_nll(chunk.forward_standardised(xs[idx]), target[:, idx],
                   chunk.col_head, chunk.col_start, chunk.full_heads)
    loss = nll.mean(1).sum()
    opt.zero_grad(set_to_none=set_to_none)
    loss.backward()
    opt.step()


class _GraphedStep:
    """``_train_step`` on minibatches of exactly ``size`` rows as a CUDA graph: the gather, the
    forward, the loss, the backward and AdamW replay as one launch, where eager they are
    hundreds of small ones that leave the GPU waiting on the host (BENCHMARKS.md, "probes").
    The rows come in through one static index tensor. The first ``WARMUP`` calls run eagerly on
    a side stream (capture needs the allocator and the optimizer's state warmed up), the next
    captures the step and replays it: every call is one real training step, in order. A
    minibatch of another size (an epoch's last) runs eagerly between replays, on the same
    parameter, gradient and optimizer tensors, updated in place."""

    WARMUP = 3

    def __init__(self, chunk: ProbeChunk, xs, target, opt, size: int):
        self.chunk, self.xs, self.target, self.opt = chunk, xs, target, opt
        self.idx = torch.zeros(size, dtype=torch.long, device=xs.device)
        self.graph = None
        self.warm = 0
        self.side = torch.cuda.Stream(device=xs.device)

    def _step(self) -> None:
        _train_step(self.chunk, self.xs, self.target, self.idx, self.opt)

    def step(self, idx: torch.Tensor) -> None:
        if len(idx) != len(self.idx):
            # after capture the gradients are the graph's own tensors: zeroed in place, not replaced
            _train_step(self.chunk, self.xs, self.target, idx, self.opt, set_to_none=self.graph is None)
            return
        self.idx.copy_(idx)
        if self.graph is None and self.warm < self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._step()
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            return
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the grads it reuses
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the step without running it
                self._step()
        self.graph.replay()


def _select(new: torch.Tensor, old: torch.Tensor, better: np.ndarray, n: int):
    """Per-probe choice between two states of one chunk tensor (``better`` (n,) bool). Every
    per-probe tensor is probe-major: weights (n, in, out), out_bias (n, K), BatchNorm vectors
    (n * width,)."""
    m = torch.from_numpy(better).to(new.device).repeat_interleave(new.shape[0] // n)
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
    (strictly best, so the earliest among ties); a probe with no val rows keeps its last epoch
    (val accuracy NaN), and one with no training rows trains nothing and scores NaN.
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
    device = resolve_device(config.device)
    prev_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        return _fit_groups(x, target, weight, heads, hidden, seeds, shuffle_seed, config, val, device)
    finally:
        torch.set_num_threads(prev_threads)


def _fit_groups(x, target, weight, heads, hidden, seeds, shuffle_seed, config, val, device) -> Fitted:
    p = target.shape[0]
    bf16 = bf16_native(device) if config.bf16 is None else config.bf16
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
                               [seeds[i] for i in idx], bf16=bf16,
                               layout=config.layout).to(device)
            if xs is None:
                xg = x[rows].to(device)
                _standardise(chunk, xg)
                xs = chunk.standardise(xg)
                del xg
                if val is not None:
                    xv = chunk.standardise(val[0][vrows].to(device))
                mean, scale = chunk.mean.clone(), chunk.scale.clone()
            else:
                chunk.mean.copy_(mean)
                chunk.scale.copy_(scale)
            tgt = target[idx][:, rows].to(device)
            _prior_bias(chunk, tgt)
            # no val rows: nothing to choose on, so the last epoch (not the first) is kept
            v = None if val is None or not len(vrows) else (xv, val[1][idx][:, vrows].to(device))
            if len(rows):
                be, ba, hist = _fit_chunk(chunk, xs, tgt, v, config, shuffle_seed)
            else:  # nothing to train on: left at its initialisation, scored NaN by ``evaluate``
                be, ba, hist = 0, None, []
                chunk.eval()
            chunk.cpu()
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
    model = StackedProbes(chunks, index, heads, n_train=(weight > 0).sum(1))
    model.eval()
    return Fitted(model, best_epoch, None if val is None else best_acc, history)
