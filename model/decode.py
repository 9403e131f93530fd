"""Batched greedy decoding of programs from specs, capturing hidden states as it goes.

Every Karel prompt has the same length (the spec grids are fixed-size), so a batch of specs
decodes in lock-step with a shared KV cache and no padding.

Alignment convention (what the probes rely on): ``hidden[p, j]`` is the hidden state at the
sequence position whose next-token logits emitted action ``j``, i.e. the position of the token
*before* action ``j``: the ``{`` token for ``j = 0``, action ``j-1``'s token for ``j > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import karel

from .transformer import KVCache, Transformer

MAX_ACTIONS = 14  # the reference's cap on generated program length
MODES = ("constrained", "greedy")


@dataclass
class Generation:
    """Decoded programs for P specs, aligned per action slot j = 0..13."""

    programs: np.ndarray  # (P, 14) int8 action ids (karel.ACTIONS order), -1 padded
    lengths: np.ndarray  # (P,) actions emitted
    ended: np.ndarray  # (P,) bool: the model itself chose "}" after at most 14 actions
    parsed: np.ndarray  # (P,) bool: output is actions then "}" (always True when constrained)
    hidden: np.ndarray  # (P, 14, d_model) float16, mean over the n_layer+1 hidden states; 0 past the end
    hidden_layers: np.ndarray | None = None  # (P, 14, n_layer+1, d_model) float16 if asked for

    def __len__(self) -> int:
        return len(self.programs)


def spec_prompts(samples: karel.Samples, vocab: karel.Vocab) -> np.ndarray:
    """(P, prompt_length) int64 token ids: the 5 spec pairs then ``Code: def run() {``."""
    ids, _ = karel.encode_samples(samples.inputs, samples.outputs, samples.programs, vocab)
    return ids[:, : karel.prompt_length()].astype(np.int64)


def _allowed_mask(vocab: karel.Vocab, size: int, device) -> torch.Tensor:
    """(size,) bool: the tokens legal at an action slot (five actions and ``}``)."""
    allowed = torch.zeros(size, dtype=torch.bool, device=device)
    allowed[torch.as_tensor(vocab.action_ids.astype(np.int64))] = True
    allowed[vocab.id("}")] = True
    return allowed


@torch.no_grad()
def decode_batch_modes(
    model: Transformer,
    prompts: torch.Tensor,  # (B, T0) int64, all the same length
    vocab: karel.Vocab,
    modes: tuple[str, ...],
    keep_layers: bool = False,
    use_cache: bool = True,
    autocast: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Greedy-decode one batch in each of ``modes``; returns per mode a dict of tensors (see
    ``Generation`` for the meanings). One pass over the prompts serves every mode: the prompt is
    most of the work (~374 of ~390 tokens), and decoding never writes the cache below the prompt's
    length, so each mode restarts from the same prefix; the results are those of one call per
    mode, bit for bit (tests/test_model_decode.py)."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"mode: {bad[0] if bad else modes!r} is not one of {MODES}")
    cfg, device = model.cfg, prompts.device
    b, t0 = prompts.shape
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else torch.autocast(device.type, enabled=False)
    cache = KVCache.empty(cfg, b, t0 + MAX_ACTIONS + 1, device, _cache_dtype(model, autocast)) if use_cache else None
    with ctx:
        first = model(prompts, cache=cache, return_hidden=True, last_only=True)
    out = {}
    for mode in modes:
        if cache is not None:
            cache.length = t0  # the prefix stays; the previous mode's steps are overwritten
        out[mode] = _decode_steps(model, prompts, first, cache, vocab, mode, keep_layers, ctx)
    return out


def _decode_steps(model: Transformer, prompts: torch.Tensor, first: tuple, cache: KVCache | None,
                  vocab: karel.Vocab, mode: str, keep_layers: bool, ctx) -> dict[str, torch.Tensor]:
    """The greedy loop of one mode after the prompt's pass (``first``: its logits and states at
    the last position)."""
    cfg, device = model.cfg, prompts.device
    b = prompts.shape[0]
    n_states = cfg.n_layer + 1
    close = vocab.id("}")
    action_of = torch.full((cfg.vocab_size,), -1, dtype=torch.long, device=device)
    action_of[torch.as_tensor(vocab.action_ids.astype(np.int64), device=device)] = torch.arange(5, device=device)
    allowed = _allowed_mask(vocab, cfg.vocab_size, device)

    programs = torch.full((b, MAX_ACTIONS), -1, dtype=torch.long, device=device)
    hidden = torch.zeros((b, MAX_ACTIONS, cfg.d_model), dtype=torch.float32, device=device)
    layers = torch.zeros((b, MAX_ACTIONS, n_states, cfg.d_model), dtype=torch.float16, device=device) if keep_layers else None
    active = torch.ones(b, dtype=torch.bool, device=device)  # still writing actions
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    parsed = torch.zeros(b, dtype=torch.bool, device=device)

    seq = prompts
    logits, states = first
    for j in range(MAX_ACTIONS + 1):
        # logits/states belong to the last position, the one that emits slot j.
        scores = logits[:, -1].float()
        if mode == "constrained":
            scores = scores.masked_fill(~allowed, float("-inf"))
        token = scores.argmax(dim=-1)
        if j == MAX_ACTIONS:
            # the 15th slot can only close the program: constrained decoding writes "}" whatever
            # the model chose, and the program counts as ended only if the model chose "}" itself
            closing = active & (token == close)
            ended |= closing
            parsed |= closing
            break
        act = action_of[token]
        writes = active & (act >= 0)
        programs[writes, j] = act[writes]
        stacked = torch.stack([s[:, -1].float() for s in states], dim=1)  # (B, n_states, d)
        hidden[writes, j] = stacked[writes].mean(dim=1)
        if layers is not None:
            layers[writes, j] = stacked[writes].half()
        closing = active & (token == close)
        ended |= closing
        parsed |= closing
        active &= writes
        if not active.any():
            break
        step = token[:, None]
        with ctx:
            if cache is not None:
                logits, states = model(step, cache=cache, return_hidden=True, last_only=True)
            else:
                seq = torch.cat([seq, step], dim=1)
                logits, states = model(seq, return_hidden=True, last_only=True)
    if mode == "constrained":
        parsed[:] = True
    lengths = (programs >= 0).sum(dim=1)
    return {"programs": programs, "lengths": lengths, "ended": ended, "parsed": parsed,
            "hidden": hidden.half(), "hidden_layers": layers}


def _cache_dtype(model: Transformer, autocast: bool) -> torch.dtype:
    return torch.bfloat16 if autocast else next(model.parameters()).dtype


def generate(
    model: Transformer,
    samples: karel.Samples,
    vocab: karel.Vocab,
    mode: str = "constrained",
    batch_size: int = 256,
    keep_layers: bool = False,
    use_cache: bool = True,
    autocast: bool | None = None,
    progress: bool = False,
) -> Generation:
    """Decode a program for every spec in ``samples`` (P of them), ``batch_size`` at a time.

    ``autocast=None`` uses bf16 on CUDA only: decoding is latency-bound, and exact agreement
    with a teacher-forced pass is easier to check in float32.
    """
    return generate_modes(model, samples, vocab, (mode,), batch_size, keep_layers, use_cache, autocast, progress)[mode]


def generate_modes(
    model: Transformer,
    samples: karel.Samples,
    vocab: karel.Vocab,
    modes: tuple[str, ...],
    batch_size: int = 256,
    keep_layers: bool = False,
    use_cache: bool = True,
    autocast: bool | None = None,
    progress: bool = False,
) -> dict[str, Generation]:
    """``generate`` in each of ``modes``, each batch's prompts read once for all of them
    (``decode_batch_modes``); the same Generations as one ``generate`` call per mode."""
    if model.cfg.vocab_size < len(vocab):
        raise ValueError(f"vocab: {len(vocab)} tokens but the model has vocab_size {model.cfg.vocab_size}")
    device = next(model.parameters()).device
    autocast = device.type == "cuda" if autocast is None else autocast
    prompts = torch.from_numpy(spec_prompts(samples, vocab))
    was_training = model.training
    model.eval()
    parts = {mode: [] for mode in modes}
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"decode ({', '.join(modes)})", unit="batch")
    for lo in starts:
        outs = decode_batch_modes(model, prompts[lo : lo + batch_size].to(device), vocab, modes, keep_layers,
                                  use_cache, autocast)
        for mode, out in outs.items():
            parts[mode].append({k: (v.cpu() if v is not None else None) for k, v in out.items()})
    model.train(was_training)

    def cat(mode, key, dtype):
        return torch.cat([p[key] for p in parts[mode]]).numpy().astype(dtype)

    return {mode: Generation(
        programs=cat(mode, "programs", np.int8),
        lengths=cat(mode, "lengths", np.int64),
        ended=cat(mode, "ended", bool),
        parsed=cat(mode, "parsed", bool),
        hidden=cat(mode, "hidden", np.float16),
        hidden_layers=cat(mode, "hidden_layers", np.float16) if keep_layers else None,
    ) for mode in modes}


def forced_hidden(
    model: Transformer,
    samples: karel.Samples,
    programs: np.ndarray,  # (P, 14) action ids, -1 padded (e.g. another model's Generation.programs)
    vocab: karel.Vocab,
    batch_size: int = 256,
    autocast: bool | None = None,
) -> np.ndarray:
    """(P, 14, d_model) float16: ``model``'s layer-mean hidden states reading ``programs`` after
    their specs (teacher forcing), at the positions that emit each action; 0 past each end.
    ``autocast``: bf16, as in ``generate`` (``None``: on CUDA only).

    The same alignment as ``Generation.hidden``, so the states of one model (the random-init
    one) on the programs another model wrote line up with those programs' probe labels. For the
    model that wrote them it reproduces ``generate``'s states (tests check it).
    """
    return forced_states(model, samples, programs, vocab, batch_size, autocast)[0]


@torch.no_grad()
def forced_states(model: Transformer, samples: karel.Samples, programs: np.ndarray, vocab: karel.Vocab,
                  batch_size: int = 256, autocast: bool | None = None,
                  keep_layers: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``forced_hidden``'s layer mean and, with ``keep_layers``, every layer's state too:
    (P, 14, n_layer+1, d_model) float16, as ``Generation.hidden_layers``."""
    programs = np.asarray(programs)
    if programs.ndim != 2 or programs.shape[1] != MAX_ACTIONS or len(programs) != len(samples):
        raise ValueError(f"programs: expected ({len(samples)}, {MAX_ACTIONS}), got {programs.shape}")
    device = next(model.parameters()).device
    prompts = spec_prompts(samples, vocab)
    t0 = prompts.shape[1]
    # position t0 - 1 + j emits action j and has read actions 0..j-1: 13 action tokens suffice
    seq = torch.from_numpy(np.concatenate([prompts, program_tokens(programs, vocab)[:, : MAX_ACTIONS - 1]], axis=1))
    written = torch.from_numpy(programs >= 0)
    n_states, d = model.cfg.n_layer + 1, model.cfg.d_model
    if not len(seq):
        return np.zeros((0, MAX_ACTIONS, d), np.float16), \
            (np.zeros((0, MAX_ACTIONS, n_states, d), np.float16) if keep_layers else None)
    autocast = device.type == "cuda" if autocast is None else autocast
    was_training = model.training
    model.eval()
    means, layers = [], []
    for lo in range(0, len(seq), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            _, states = model(seq[lo : lo + batch_size].to(device), return_hidden=True)
        stacked = torch.stack([s[:, t0 - 1 :].float() for s in states])  # (L+1, B, 14, d), on the device
        keep = written[lo : lo + batch_size, :, None]
        means.append(stacked.mean(0).cpu() * keep)
        if keep_layers:
            layers.append((stacked.cpu() * keep).permute(1, 2, 0, 3).to(torch.float16))
    model.train(was_training)
    mean = torch.cat(means).numpy().astype(np.float16)
    return mean, (torch.cat(layers).numpy() if keep_layers else None)


def program_tokens(programs: np.ndarray, vocab: karel.Vocab) -> np.ndarray:
    """(P, 15) vocab ids of generated programs followed by ``}``, padded with ``<pad>``."""
    programs = np.asarray(programs)
    out = np.full((len(programs), MAX_ACTIONS + 1), vocab.id("<pad>"), dtype=np.int64)
    mask = programs >= 0
    out[:, :MAX_ACTIONS][mask] = vocab.action_ids[programs[mask]]
    out[np.arange(len(programs)), mask.sum(axis=1)] = vocab.id("}")
    return out
