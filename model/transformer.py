"""Decoder-only transformer with the CodeGen block, in one file.

CodeGen (and GPT-J) compute attention and the MLP in parallel from one LayerNorm:
``x + attn(ln(x)) + mlp(ln(x))``. Rotary position embeddings act on the first ``rotary_dim``
dims of each head only; the rest of the head carries content unrotated. The LM head is untied.

Hidden states as Hugging Face returns them (and the reference averages): ``hidden[0]`` is the
embedding output, ``hidden[i]`` the output of block ``i`` for i < n_layer, and ``hidden[n_layer]``
the last block's output *after* the final LayerNorm (what the LM head reads); n_layer+1 in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cells import CellEmbedding
from .config import ModelConfig


def rotary_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, rotary_dim/2) cos and sin, the GPT-NeoX frequency schedule (base 10000)."""
    half = cfg.rotary_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32, device=device) / max(half, 1)))
    angles = torch.arange(cfg.context, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*half dims of ``x`` (B, H, T, hd) by position; cos/sin are (T, half).

    Pairs are (i, i + half) rather than GPT-J's interleaved (2i, 2i+1): the same function
    class for a model trained from scratch, and it avoids a strided gather.
    """
    half = cos.shape[-1]
    if half == 0:
        return x
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


@dataclass
class KVCache:
    """Preallocated keys/values per layer, (B, H, max_len, hd); ``length`` tokens are filled.

    All rows share one length: every Karel prompt has the same number of tokens, so batched
    decoding needs no padding.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> "KVCache":
        if max_len > cfg.context:
            raise ValueError(f"max_len: {max_len} exceeds the model context {cfg.context}")
        shape = (batch, cfg.n_head, max_len, cfg.head_dim)
        return cls(
            [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
            [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
        )


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # CodeGen: no qkv bias
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # ModelConfig.qk_norm: one gain per head dim, shared by the heads (off: CodeGen)
        self.q_norm, self.k_norm = ((nn.RMSNorm(cfg.head_dim), nn.RMSNorm(cfg.head_dim)) if cfg.qk_norm
                                    else (None, None))

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, layer: int = 0):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:  # gains cast to q's dtype: under bf16 autocast the fused kernel runs
            q = F.rms_norm(q, (self.head_dim,), self.q_norm.weight.to(q.dtype), self.q_norm.eps)
            k = F.rms_norm(k, (self.head_dim,), self.k_norm.weight.to(k.dtype), self.k_norm.eps)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            k = cache.keys[layer][:, :, : start + t]
            v = cache.values[layer][:, :, : start + t]
            # A prefill (start 0) is causal; a one-token step sees the whole prefix.
            causal = start == 0 and t > 1
            if start > 0 and t > 1:
                raise ValueError("KV cache: multi-token chunks after the prefill are not supported")
        else:
            causal = mask is None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """CodeGen block: one LayerNorm feeding attention and MLP in parallel."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.relu2 = cfg.mlp_act == "relu2"

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0):
        h = self.ln(x)
        u = self.fc_in(h)
        u = F.relu(u).square() if self.relu2 else F.gelu(u, approximate="tanh")  # gelu: CodeGen's gelu_new
        return x + self.attn(h, cos, sin, mask, cache, layer) + self.fc_out(u)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.cells = CellEmbedding(cfg.vocab_size, cfg.d_model) if cfg.cell_embeddings else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)  # untied, as CodeGen
        cos, sin = rotary_tables(cfg)
        # Buffers follow .to(device) but stay out of the state dict (derived from the config).
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 scaling: two residual writes per block
            nn.init.normal_(block.attn.out.weight, std=0.02 / (2 * cfg.n_layer) ** 0.5)
            nn.init.normal_(block.fc_out.weight, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        idx: torch.Tensor,  # (B, T) token ids
        mask: torch.Tensor | None = None,  # (B, 1, T, T) bool, True = may attend; None = causal
        cache: KVCache | None = None,
        return_hidden: bool = False,
        last_only: bool = False,  # logits and hidden states at the last position only
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Logits (B, T or 1, V) and, if asked, the n_layer+1 hidden states (B, T or 1, d)."""
        b, t = idx.shape
        start = cache.length if cache is not None else 0
        if start + t > self.cfg.context:
            raise ValueError(f"sequence: {start + t} tokens exceed the model context {self.cfg.context}")
        cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
        x = self.embed(idx)
        if self.cells is not None:
            x = x + self.cells(idx)
        pick = (lambda h: h[:, -1:]) if last_only else (lambda h: h)
        hidden = [pick(x)] if return_hidden else None
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
            if return_hidden:
                hidden.append(pick(x))
        if cache is not None:
            cache.length += t
        last = self.ln_f(pick(x))
        if return_hidden:
            hidden[-1] = last
        return self.lm_head(last), hidden

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices only; LayerNorm, biases and embeddings are not decayed (nanoGPT)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith(("embed", "cells.")) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sample_mask(doc: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: causal attention restricted to tokens of the same sample.

    ``doc`` (B, T) numbers the samples along each block; used when cross-sample attention is
    switched off.
    """
    t = doc.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]
