"""Training loop: AdamW, linear warmup then linear decay, checkpoints on a schedule, exact resume.

``train`` resumes from the newest checkpoint in ``out_dir`` if there is one. Nothing random is
replayed on resume: the model, optimizer, RNG states and data position all come from the file,
so N steps + resume + N steps gives the same weights as 2N steps straight (on CPU, bit for bit,
on the same CPU and torch thread count: see ``model.threads`` and ``model.machine``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import karel

from .checkpoint import (
    RESUMABLE_CHANGES, check_compatible, checkpoint_path, list_checkpoints, load_checkpoint,
    make_payload, save_checkpoint, set_rng_state, sole_writer,
)
from .config import ModelConfig, TrainConfig, checkpoint_steps, config_to_dict
from .data import PackedBlocks, batch_inputs, load_train_blocks
from .machine import bf16_native, cpu_identity
from .optim import make_optimizer, set_lr
from .progress import ProgressFile
from .threads import pinned_threads
from .transformer import Transformer, sample_mask


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but torch sees no CUDA device")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def precision(cfg: TrainConfig, device: torch.device) -> str:
    """What training computes in: bf16 when autocast is forced, or under "auto" where the device
    has bf16 in hardware (``model.machine.bf16_native``: CUDA, AMX, avx512_bf16); else float32."""
    return "bf16" if cfg.autocast == "bf16" or (cfg.autocast == "auto" and bf16_native(device)) else "float32"


def autocast_context(cfg: TrainConfig, device: torch.device):
    """The forward pass's autocast at ``precision``: bf16, or none (float32)."""
    if precision(cfg, device) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lm_loss(model, tokens, offset, cfg: TrainConfig, device, prompt_len=None) -> tuple[torch.Tensor, float]:
    """(weighted mean loss, weight sum) of one packed batch, for backward and for logging."""
    inputs, targets, weight, doc = batch_inputs(tokens, offset, cfg, prompt_len)
    total = float(weight.sum())  # on the host: no device sync
    inputs, targets, weight = inputs.to(device), targets.to(device), weight.to(device)
    mask = sample_mask(doc.to(device)) if doc is not None else None
    with autocast_context(cfg, device):
        logits, _ = model(inputs, mask=mask)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (nll * weight.flatten()).sum() / max(total, 1.0), total


def train_step(model, optimizer, blocks, cfg: TrainConfig, step: int, device) -> tuple[torch.Tensor, int]:
    """One optimizer step at ``step``'s learning rate on the stream's next batch: (the batch's
    weighted mean loss as a 0-dim tensor on ``device``, target tokens in the batch).

    Micro-batches' losses are weighted by their share of the whole batch's loss weight, so
    ``micro_batch`` changes nothing but memory. The loss stays on the device (reading it is the
    caller's choice: a GPU benchmark does not sync every step).
    """
    set_lr(optimizer, cfg, step)
    tokens, offset = blocks.next_batch(cfg.batch_size)
    micro = cfg.micro_batch or tokens.shape[0]  # spec_pairs: more, shorter rows than batch_size
    denom = None  # one micro-batch is the whole batch: its share is 1
    if micro < tokens.shape[0]:
        denom = float(batch_inputs(tokens, offset, cfg)[2].sum().clamp(min=1.0))
    step_loss = torch.zeros((), device=device)
    for lo in range(0, tokens.shape[0], micro):
        loss, w = lm_loss(model, tokens[lo : lo + micro], offset[lo : lo + micro], cfg, device)
        share = 1.0 if denom is None else w / denom
        (loss * share).backward()
        step_loss += loss.detach() * share
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, tokens.shape[0] * (tokens.shape[1] - 1)


def _resume_state(out_dir, model_cfg, train_cfg, vocab):
    """The newest checkpoint, checked against the configs, or None for a fresh run."""
    found = list_checkpoints(out_dir)
    if not found:
        return None
    step, path = found[-1]
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, model_cfg, vocab, path)
    # a field added after the checkpoint was written counts as its default there
    saved = {**config_to_dict(TrainConfig()), **ckpt["train_config"]}
    want = config_to_dict(train_cfg)
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        raise ValueError(f"{path}: train config differs from the run being resumed in {diff}")
    if ckpt.get("optimizer") is None or ckpt.get("data") is None:
        raise ValueError(f"{path}: checkpoint has no optimizer/data state, cannot resume from it")
    return ckpt


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data_dir,
    out_dir,
    on_checkpoint=None,
    progress: bool = True,
    stop_after: int | None = None,
    blocks: PackedBlocks | None = None,
    should_stop=None,
    threads: int | None = None,
    on_progress=None,
) -> list[tuple[int, Path]]:
    """Train (or resume) and return (step, path) of every checkpoint in ``out_dir``.

    ``on_checkpoint(step, path)`` runs after each scheduled checkpoint is on disk.
    ``stop_after`` ends the run early after that many optimizer steps, writing a checkpoint
    there so a later call resumes (used for interruptions and the resume test).
    ``blocks`` replaces the data read from ``data_dir`` (benchmarks).
    ``should_stop()`` is polled after every step; when it turns true a checkpoint is written at
    that step and training returns, so a SIGTERM loses at most one step of work.
    ``progress.json`` in ``out_dir`` holds the live step, rate and loss (``model.progress``), and
    ``on_progress(row)`` gets each row written (at most every 15 s, and at the last step or a stop).

    Runs on ``threads`` torch threads (default: the process's starting count, not whatever
    ``torch.set_num_threads`` last set), pinned in this thread (``model.threads``); each checkpoint
    records the count, the CPU, the device and the precision, and resuming with another of them
    warns that the curve will differ. A checkpoint written by a stop carries the losses since the
    last scheduled one, so the next scheduled ``train_loss`` is a straight run's.

    One process at a time trains into ``out_dir``: a second one raises ``FolderInUse`` before it
    reads anything (``model.checkpoint.sole_writer``).
    """
    with sole_writer(out_dir), pinned_threads(threads) as threads:
        return _train(model_cfg, train_cfg, data_dir, out_dir, on_checkpoint, progress, stop_after, blocks,
                      should_stop, threads, on_progress)


def _train(model_cfg, train_cfg, data_dir, out_dir, on_checkpoint, progress, stop_after, blocks, should_stop,
           threads: int, on_progress) -> list[tuple[int, Path]]:
    vocab = karel.Vocab(train_cfg.robot_markers)
    if model_cfg.vocab_size < len(vocab):
        raise ValueError(f"vocab_size: {model_cfg.vocab_size} is smaller than the vocabulary ({len(vocab)})")
    if train_cfg.block_len > model_cfg.context:
        raise ValueError(f"block_len: {train_cfg.block_len} exceeds the model context {model_cfg.context}")
    device = resolve_device(train_cfg)
    out_dir = Path(out_dir)
    live = ProgressFile(out_dir, train_cfg.steps, on_progress)
    schedule = set(checkpoint_steps(train_cfg))
    last = train_cfg.steps if stop_after is None else min(stop_after, train_cfg.steps)

    ckpt = _resume_state(out_dir, model_cfg, train_cfg, vocab)
    where = {"threads": threads, "cpu": cpu_identity(), "device": device.type, "precision": precision(train_cfg, device)}
    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg)  # built on CPU so the init is the same on every device
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device).train()
    optimizer = make_optimizer(model, train_cfg)
    blocks = blocks if blocks is not None else load_train_blocks(data_dir, train_cfg, vocab)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        blocks.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"], device)
        step = ckpt["step"]
        saved = ckpt["extra"].get("threads")
        if device.type == "cpu" and saved is not None and saved != threads:
            warnings.warn(f"training resumes at step {step} on {threads} torch threads, its checkpoint was "
                          f"trained on {saved}: the curve will differ from a straight run on {saved} "
                          f"(OMP_NUM_THREADS={saved} follows it)", stacklevel=3)
        cpu = ckpt["extra"].get("cpu")
        if device.type == "cpu" and cpu is not None and cpu != cpu_identity():
            warnings.warn(f"training resumes at step {step} on another CPU ({cpu_identity()['cpu']}) than its "
                          f"checkpoint's ({cpu['cpu']}): its rounding differs, so the curve will differ from "
                          "a straight run on either", stacklevel=3)
        for name in ("device", "precision"):
            was = ckpt["extra"].get(name)
            if was is not None and was != where[name]:
                warnings.warn(f"training resumes at step {step} with {name} {where[name]}, its checkpoint was "
                              f"trained with {was}: the curve will differ from a straight run", stacklevel=3)
    else:
        step = 0

    def checkpoint(step: int, extra: dict) -> Path:
        payload = make_payload(step, model_cfg, train_cfg, vocab, model, optimizer, blocks.state_dict(), extra,
                               device)
        path = save_checkpoint(checkpoint_path(out_dir, step), payload)
        if on_checkpoint is not None and step in schedule:
            on_checkpoint(step, path)
        return path

    if ckpt is None:
        checkpoint(0, where)
    bar = None
    if progress and step < last:
        from tqdm.auto import tqdm

        bar = tqdm(total=last, initial=step, desc="train", unit="step", dynamic_ncols=True)
    t0, tokens_since = time.perf_counter(), 0
    live.start(step, last)
    loss_sum, loss_n = ckpt["extra"].get("losses_since_scheduled", (0.0, 0)) if ckpt is not None else (0.0, 0)
    while step < last:
        loss, n_tokens = train_step(model, optimizer, blocks, train_cfg, step, device)
        step_loss = float(loss)
        step += 1
        loss_sum, loss_n = loss_sum + step_loss, loss_n + 1
        tokens_since += n_tokens
        if bar is not None:
            rate = tokens_since / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            bar.update(1)
        stopping = should_stop is not None and should_stop()
        live.update(step, step_loss, tokens_since, force=stopping)
        if step in schedule or step == last or stopping:
            extra = {"train_loss": loss_sum / loss_n, "last_loss": step_loss, **where}
            if step in schedule:  # a stop's checkpoint carries them to the resumed run
                loss_sum, loss_n = 0.0, 0
            checkpoint(step, {**extra, "losses_since_scheduled": [loss_sum, loss_n]})
        if stopping:
            break
    if bar is not None:
        bar.close()
    return list_checkpoints(out_dir)
