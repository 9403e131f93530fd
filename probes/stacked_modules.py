"""The stacked probe modules: many probes' parameters side by side, and their multi-head scoring.

A ``ProbeChunk`` holds ``p`` independent probes on one shared, standardised input, each layer's
weights as one (p, in, out) tensor: the first layer of every probe is one wide (B, d) @
(d, p * width) product; deeper layers run per probe on a CPU and as batched matmuls on a GPU
(``ProbeChunk``'s ``layout``), with per-probe BatchNorm statistics and loss either way.
``StackedProbes`` gathers the chunks of one ``fit_stacked`` call (``probes.stacked_training``)
back into the order of its probes.

Arithmetic: matmuls take bfloat16 inputs with float32 accumulation where the device has bf16
in hardware (``stacked_training.bf16_native``: AMX, avx512_bf16, CUDA), float32 inputs elsewhere;
parameters, optimizer state, BatchNorm statistics and the loss are float32. Inputs are
standardised in float32 before the cast. The bias of a layer followed by BatchNorm is omitted
(BatchNorm removes it exactly).

Multi-class heads: every probe has one or more heads (``labels.FEATURES``); their logits are
concatenated and padded to the widest probe. Each head's softmax is taken over its own columns
only, the loss is the sum of the heads' cross-entropies, and a prediction is correct only when
every head is right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NEG = -1e9  # masked logit: finite, so fully masked heads never produce NaN gradients
_EPS = 1e-5  # BatchNorm epsilon (as torch.nn.BatchNorm1d)
_MOMENTUM = 0.1  # BatchNorm running-stat momentum (as torch.nn.BatchNorm1d)


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
    nll = torch.zeros(logits.shape[:2], device=logits.device)
    correct = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
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


def full_heads(col_head: torch.Tensor, n_head: int) -> tuple[bool, ...]:
    """For each head, whether it spans every logit column of every probe (nothing to mask)."""
    return tuple(bool((col_head == k).all()) for k in range(n_head))


def head_nll(logits: torch.Tensor, target: torch.Tensor, col_head, col_start,
             full: tuple[bool, ...] | None = None) -> torch.Tensor:
    """Per-row summed cross-entropy (p, B) (``head_scores`` without the correctness).

    ``full``: ``full_heads`` of ``col_head``, read once on the host (on CUDA, computing it here
    would wait for the device at every step)."""
    logits = logits.float()
    nll = None
    full = full_heads(col_head, col_start.shape[1]) if full is None else full
    for k in range(col_start.shape[1]):
        in_head = col_head == k
        lg = logits if full[k] else logits.masked_fill(~in_head[:, None, :], _NEG)
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


LAYOUTS = ("auto", "per_probe", "batched")


class ProbeChunk(nn.Module):
    """``p`` independent MLPs (Linear -> BatchNorm -> ReLU per hidden layer, then a linear
    head) on one shared, standardised input. ``hidden=()`` gives linear probes.

    Layer 0 of all probes is one wide matmul; its BatchNorm runs over the p * width columns at
    once (per-column statistics are per probe). Deeper layers (``layout``) run per probe on
    contiguous tensors (``per_probe``: fastest on a CPU, where a (B, p * 1024) transpose costs
    more than the matmuls), or for all probes at once by batched matmuls (``batched``: a few
    kernels a layer instead of a few per probe, for a GPU, where launches dominate);
    ``auto``: batched on CUDA inputs. Both compute each probe from its own parameters only.
    """

    def __init__(self, d_in: int, hidden: tuple[int, ...], heads: list[tuple[int, ...]], seeds,
                 bf16: bool = True, layout: str = "auto"):
        super().__init__()
        n = len(heads)
        if len(seeds) != n:
            raise ValueError(f"seeds: expected {n} seeds, got {len(seeds)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: {layout!r} is not one of {LAYOUTS}")
        self.layout = layout
        self.hidden = tuple(int(h) for h in hidden)
        self.heads = [tuple(h) for h in heads]
        self.bf16 = bool(bf16)
        col_head, col_start = head_columns(self.heads)
        self.full_heads = full_heads(col_head, col_start.shape[1])
        self.register_buffer("col_head", col_head)
        self.register_buffer("col_start", col_start)
        self.n_out = col_head.shape[1]
        dims = [d_in, *self.hidden, self.n_out]
        # weight[layer][probe] (in, out), torch.nn.Linear's default init, seeded per probe. The
        # output layer is drawn at the probe's own width and zero-padded to n_out, so a probe
        # starts from the same weights whatever shares its chunk (padded columns are never read)
        ws = [[None] * n for _ in range(len(dims) - 1)]
        self.out_bias = nn.Parameter(torch.zeros(n, self.n_out))
        for p, seed in enumerate(seeds):
            for i in range(len(dims) - 1):
                last = i == len(dims) - 2
                width = sum(self.heads[p]) if last else dims[i + 1]
                g = torch.Generator().manual_seed(int(seed) * 1000 + i)
                bound = 1.0 / dims[i] ** 0.5
                w = torch.empty(dims[i], width).uniform_(-bound, bound, generator=g)
                b = torch.empty(width).uniform_(-bound, bound, generator=g)
                ws[i][p] = F.pad(w, (0, dims[i + 1] - width)) if last else w
                if last:
                    with torch.no_grad():
                        self.out_bias[p, :width].copy_(b)
        # one tensor a layer, probe-major (p, in, out): a few tensors to accumulate and update
        # a step, whatever the number of probes
        self.w0 = nn.Parameter(torch.stack(ws[0]))
        self.deep = nn.ParameterList([nn.Parameter(torch.stack(layer)) for layer in ws[1:]])
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
        return self.stacked_weight(layer)[probe]

    def stacked_weight(self, layer: int) -> torch.Tensor:
        """(p, in, out) weights of ``layer`` for every probe."""
        return self.w0 if layer == 0 else self.deep[layer - 1]

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
        wide = self._cast(self.w0).transpose(0, 1).reshape(xs.shape[1], -1)  # (d, n * width0)
        h = xs @ wide  # (B, n * width0)
        if not self.hidden:
            h = h.view(B, n, self.n_out).transpose(0, 1).float()
            return h + self.out_bias[:, None, :]
        h = self._bn_relu(0, h)
        if self.layout == "batched" or (self.layout == "auto" and xs.is_cuda):
            return self._deep_batched(h) + self.out_bias[:, None, :]
        w0 = self.hidden[0]
        outs = []
        # unbind: contiguous per-probe views whose backward is one stack
        ws = [self._cast(self.stacked_weight(k)).unbind(0) for k in range(1, len(self.hidden) + 1)]
        for p, hp in enumerate(h.split(w0, dim=1)):  # split: its backward is one concat
            for k in range(1, len(self.hidden)):
                width = self.hidden[k]
                hp = hp @ ws[k - 1][p]
                hp = self._bn_relu(k, hp, slice(p * width, (p + 1) * width))
            outs.append(hp @ ws[-1][p])
        return torch.stack(outs).float() + self.out_bias[:, None, :]

    def _deep_batched(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (p, B, K) (float32, without the output bias) from the layer-0 activations
        ``h`` (B, p * width0), every deeper layer as one batched matmul over the probes and one
        BatchNorm over all their columns (the same per-column statistics as per probe)."""
        n, B = self.n_probes, h.shape[0]
        for k in range(1, len(self.hidden)):
            hp = torch.bmm(h.view(B, n, self.hidden[k - 1]).transpose(0, 1), self._cast(self.stacked_weight(k)))
            h = self._bn_relu(k, hp.transpose(0, 1).reshape(B, n * self.hidden[k]))
        hp = h.view(B, n, self.hidden[-1]).transpose(0, 1)
        return torch.bmm(hp, self._cast(self.stacked_weight(len(self.hidden)))).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_standardised(self.standardise(x))


class StackedProbes(nn.Module):
    """All probes of one ``fit_stacked`` call: chunks (each with its own standardisation).

    ``model(x)`` gives logits (p, B, K) of every probe (K padded to the widest probe), in the
    order of the probes given to ``fit_stacked``; ``mean``/``scale`` (p, d) their input
    standardisation; ``n_train`` (p,) how many rows each probe trained on.
    """

    def __init__(self, chunks: list[ProbeChunk], index: list[list[int]], heads, n_train):
        super().__init__()
        self.chunks = nn.ModuleList(chunks)
        self.index = [list(i) for i in index]  # probes of each chunk (positions in the call)
        self.heads = [tuple(h) for h in heads]
        # training rows per probe: a probe with none is untrained and scores NaN
        self.register_buffer("n_train", torch.as_tensor(n_train).long())
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
