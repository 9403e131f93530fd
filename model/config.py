"""Model and training configs, and the model and training halves of the presets (smoke, cpu, cpu-long, paper).

Configs are frozen dataclasses of plain values so they hash for cache keys, print readably and
round-trip through a checkpoint as a dict (checkpoints are loaded with ``weights_only=True``,
which only admits plain containers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from karel.text import N_SPEC

LOSS_ON = ("all", "program", "outputs")
PACKING = ("blocks", "samples")
DEVICES = ("auto", "cpu", "cuda")
MLP_ACTS = ("gelu", "relu2")
AUTOCAST = ("auto", "bf16", "off")
OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder-only transformer (CodeGen block)."""

    vocab_size: int = 64  # >= len(karel.Vocab()); a round number keeps the LM head aligned
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 8
    rotary_dim: int = 16  # rotary embedding on the first rotary_dim dims of each head
    d_mlp: int = 1024
    context: int = 1024  # longest sequence the rotary table covers
    # Add learned row, column and side (input/output) embeddings to the spec's grid cells
    # (model/cells.py): the model is told where each cell is instead of learning it from rotary
    # offsets. Same text, one token per cell; an option, off in the paper preset.
    cell_embeddings: bool = False
    # Two block options from small-model practice (modded-nanogpt), on in the cpu preset since
    # session 45 and off in the others: RMS-normalise each head's queries and keys (learned gains,
    # before rotary), which bounds the attention logits; and the MLP's activation, "gelu" (CodeGen's
    # tanh approximation) or "relu2" (ReLU squared). On the cpu preset at seeds 1 and 0: at step
    # 1,000 the program perplexity the baseline reaches at 1,500 (~1.5x fewer tokens; sessions
    # 42-43). End to end at seed 0 on one machine (the Zen 3, float32): 52.0% on lengths 6..10
    # against the baseline's 32.7%, the phases 250 steps earlier, and the probes net of the
    # random-init states level with the baseline's (direction, mlp2: +9.0 against +9.3 points;
    # RESULTS.md, sessions 44-45).
    qk_norm: bool = False
    mlp_act: str = "gelu"

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "d_mlp", "context"):
            check_positive_int(self, name)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_head {self.n_head}")
        for name in ("cell_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be a bool, got {getattr(self, name)!r}")
        if self.mlp_act not in MLP_ACTS:
            raise ValueError(f"mlp_act: {self.mlp_act!r} is not one of {MLP_ACTS}")
        if not (0 <= self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim: must be even and in 0..head_dim ({self.head_dim}), got {self.rotary_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def n_params(self) -> int:
        """Parameters (embedding and LM head included)."""
        d, v = self.d_model, self.vocab_size
        block = 2 * d + 3 * d * d + d * d + (d * self.d_mlp + self.d_mlp) + (self.d_mlp * d + d)
        cells = (2 * 6 + 2) * d if self.cell_embeddings else 0  # model/cells.py: row, col, side
        block += 2 * self.head_dim if self.qk_norm else 0  # the query and key gains
        return v * d + cells + self.n_layer * block + 2 * d + d * v + v

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), attention included."""
        d = self.d_model
        matmul = self.n_layer * (4 * d * d + 2 * d * self.d_mlp) + d * self.vocab_size
        attention = self.n_layer * seq_len * d  # QK^T and AV, causal: half of 2 * T * d
        return 3 * 2 * (matmul + attention)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data packing, checkpoint schedule and device choices."""

    seed: int = 0
    lr: float = 1e-3
    min_lr: float = 0.0  # linear decay ends here (the reference's linear schedule decays to 0)
    warmup_steps: int = 100
    steps: int = 2000
    batch_size: int = 8  # sequences (blocks, or sample rows) per optimizer step
    micro_batch: int = 0  # blocks per forward/backward (gradient accumulation); 0 = batch_size
    block_len: int = 1024  # tokens per packed block (per padded sample row with packing="samples")
    # "blocks" (paper): samples back to back, cut into block_len blocks, attention across them.
    # "samples": one whole sample per row, padded to block_len; no block starts mid-sample and
    # attention spans one sample (~390 tokens), so steps are cheaper and every program token
    # sees its whole specification. An option, off in the paper preset.
    packing: str = "blocks"
    # Length curriculum (packing="samples" only; 0 = off, as in the paper): over the first K steps
    # each row is drawn from the programs no longer than a bound that rises linearly from the
    # shortest training length to the longest; after that the usual shuffled order resumes.
    curriculum_steps: int = 0
    # Length anneal (packing="samples" only; 0 = off, as in the paper): over the last K steps each
    # row is drawn from the training programs of at least ``anneal_min_actions`` actions (the
    # paper's test lengths are 6..10), so the decay phase trains on the lengths that are scored.
    # Measured harmful on the cpu preset (500 steps: 19% accuracy against 57% without; RESULTS.md).
    anneal_steps: int = 0
    anneal_min_actions: int = 6
    # Spec pairs a training sample shows (packing="samples" only; () = all 5, as in the paper): each
    # step draws k from this tuple (repeat a value to weight it) and its rows keep the first k
    # input/output pairs and the program, as many rows as fit the step's batch_size x block_len
    # tokens, so a step sees more programs for the same tokens. Evaluation always shows 5 pairs.
    # Measured on the cpu preset: 1..5 behind at 500 steps; 3..5 ahead at 7 of 8 paired checkpoints
    # up to step 1,500 over seeds 0 and 1 (+20.2 and -5.4 points at step 1,000; +7.4 at 1,500), and
    # level at the schedule's end (seed 1, step 1,850: 61.6% both; RESULTS.md, sessions 39-42).
    spec_pairs: tuple[int, ...] = ()
    weight_decay: float = 0.0
    # "adamw" (paper) or "muon": Muon for the blocks' weight matrices (model/optim.py), AdamW for
    # embeddings, LM head, norms and biases. An option, off in the paper preset.
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # peak lr of the Muon groups (same warmup and decay as lr)
    muon_momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    # "all" tokens (paper), "program" tokens only, or "outputs": the output grids and the program,
    # no loss on the input grids (random worlds: past their cell frequencies, unpredictable).
    # "outputs" is an option for learning efficiency (issue 7), off in the paper preset.
    loss_on: str = "all"
    prompt_loss_weight: float = 1.0  # with loss_on="all": weight of spec (grid) tokens; program tokens weigh 1
    cross_sample_attention: bool = True  # the reference packs and attends across samples
    robot_markers: str = "hide"  # karel.Vocab mode: the tokenizer the model reads
    ckpt_every: int = 250  # regular checkpoints every K steps ...
    ckpt_log_count: int = 8  # ... plus this many log-spaced ones in 1..ckpt_every (step 0 always)
    device: str = "auto"
    autocast: str = "auto"  # bf16 / off; auto: bf16 where the device has it in hardware (model.machine)

    def __post_init__(self):
        for name in ("steps", "batch_size", "block_len", "ckpt_every"):
            check_positive_int(self, name)
        for name in ("warmup_steps", "ckpt_log_count", "seed", "micro_batch", "curriculum_steps", "anneal_steps"):
            check_nonnegative_int(self, name)
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"lr/min_lr: need lr > 0 and 0 <= min_lr <= lr, got {self.lr}, {self.min_lr}")
        if self.micro_batch and self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch: {self.micro_batch} does not divide batch_size {self.batch_size}")
        if not 0 <= self.prompt_loss_weight <= 1:
            raise ValueError(f"prompt_loss_weight: must be in [0, 1], got {self.prompt_loss_weight}")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):  # NaN fails too: it would switch clipping off
            raise ValueError(f"weight_decay/grad_clip: must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1/beta2: must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not (self.muon_lr > 0 and 0 <= self.muon_momentum < 1):
            raise ValueError(f"muon_lr/muon_momentum: need muon_lr > 0 and momentum in [0, 1), "
                             f"got {self.muon_lr}, {self.muon_momentum}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("loss_on", LOSS_ON), ("packing", PACKING), ("device", DEVICES), ("autocast", AUTOCAST)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {allowed}")
        if any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= N_SPEC for k in self.spec_pairs):
            raise ValueError(f"spec_pairs: each must be an int in 1..{N_SPEC}, got {self.spec_pairs!r}")
        for name in ("curriculum_steps", "anneal_steps", "spec_pairs"):
            if getattr(self, name) and self.packing != "samples":
                raise ValueError(f"{name}: needs packing='samples' (one whole sample per row), "
                                 f"not packing={self.packing!r}")
        for name in ("curriculum_steps", "anneal_steps"):  # counted in rows of batch_size a step
            if self.spec_pairs and getattr(self, name):
                raise ValueError(f"spec_pairs: cannot be combined with {name} (its steps are counted in "
                                 "rows, and a step of fewer pairs holds more rows)")
        if self.anneal_steps > self.steps:
            raise ValueError(f"anneal_steps: {self.anneal_steps} is more than steps ({self.steps})")
        check_positive_int(self, "anneal_min_actions")
        if self.robot_markers not in ("hide", "show"):
            raise ValueError(f"robot_markers: {self.robot_markers!r} is not 'hide' or 'show'")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_len


def check_positive_int(cfg, name: str, prefix: str = "") -> None:
    """Raise a ValueError naming ``prefix + name`` unless the field is an int >= 1 (not a bool)."""
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{prefix}{name}: must be a positive int, got {value!r}")


def check_nonnegative_int(cfg, name: str, prefix: str = "") -> None:
    """Raise a ValueError naming ``prefix + name`` unless the field is an int >= 0 (not a bool)."""
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{prefix}{name}: must be a non-negative int, got {value!r}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then linear decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr + (cfg.min_lr - cfg.lr) * frac


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Steps that get a checkpoint: 0 (random init), log-spaced early ones, every K, the last.

    Phase changes can be fast, so the early part is dense: ``ckpt_log_count`` steps spaced
    geometrically between 1 and ``ckpt_every``.
    """
    steps = {0, cfg.steps}
    n = cfg.ckpt_log_count
    if n:
        steps |= {round(cfg.ckpt_every ** (i / n)) for i in range(n)}
    steps |= set(range(cfg.ckpt_every, cfg.steps + 1, cfg.ckpt_every))
    return sorted(s for s in steps if 0 <= s <= cfg.steps)


def replace_fields(cfg, overrides: dict):
    """``cfg`` with ``overrides`` applied; an unknown key is a ValueError naming it."""
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(cfg).__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    return replace(cfg, **overrides)


def config_from_dict(cls, data: dict):
    """Rebuild a config from ``asdict`` output (e.g. from a checkpoint); unknown keys raise."""
    return replace_fields(cls(), dict(data))


def config_to_dict(cfg) -> dict:
    return asdict(cfg)


# ---- presets -----------------------------------------------------------------------------
# A sample is prompt_length() = 374 tokens + up to 10 actions + "}" + "<eos>", so a context of
# 512 fits one whole sample plus room for decoding 14 actions.


def smoke() -> tuple[ModelConfig, TrainConfig]:
    """Tiny: trains in seconds inside tests."""
    return (
        ModelConfig(vocab_size=48, n_layer=2, d_model=32, n_head=4, rotary_dim=4, d_mlp=64, context=512),
        TrainConfig(lr=3e-3, warmup_steps=2, steps=12, batch_size=2, block_len=512,
                    ckpt_every=6, ckpt_log_count=2, device="cpu", autocast="off"),
    )


def cpu() -> tuple[ModelConfig, TrainConfig]:
    """Small enough for a laptop CPU: the default preset's model, sized for 60 minutes end to end on
    a 2-core Zen 4 EPYC without AMX (1,850 steps, 15.0M training tokens at ~6k tokens/s with bf16
    autocast, ~11k on the Xeon with AMX; on the Zen 4 2,000 steps took 1:18, 1,500 took 52 minutes
    and 1,750 57, RESULTS.md, "The `cpu` preset in an hour"; 1,850 took 58 since evaluation decodes
    both modes from one pass over the prompts, 1.8x faster). An AVX2-only CPU (a Zen 1 EPYC) trains
    it in float32 at ~1/3 of the Zen 4's speed (BENCHMARKS.md). One
    whole sample per row (``packing="samples"``, 21 x 386 tokens a step): 1.6x the program tokens
    that see their whole spec per second of packed 1,024-token blocks (benchmarks/bench_packing.py).
    Muon for the hidden matrices: about 1.7x fewer steps to the same program loss than AdamW at lr
    0.02, more at 0.01 (RESULTS.md, lever rounds 5 and 6; end to end at 0.01 and 2,000 steps: 71% /
    68% accuracy by the paper's check at seeds 0 / 1 on the Zen 5 EPYC, 45-78 minutes end to end on
    the 2-core machines).
    Normalised queries and keys with a squared-ReLU MLP (since session 45): on one machine and
    seed, 52.0% on lengths 6..10 against 32.7% without them, at 0.96x the speed a step, the probes
    as strong (RESULTS.md). Before them, 1,850 steps read 32.7% on the Zen 4.
    Emergence at this size took a few hundred million tokens on a GPU with the paper's recipe
    (RESULTS.md); issue 7 is the work of closing that gap."""
    return (
        ModelConfig(vocab_size=64, n_layer=4, d_model=256, n_head=8, rotary_dim=16, d_mlp=1024, context=1024,
                    qk_norm=True, mlp_act="relu2"),
        TrainConfig(lr=1e-3, warmup_steps=100, steps=1850, batch_size=21, block_len=386, packing="samples",
                    optimizer="muon", muon_lr=0.01, weight_decay=0.1, ckpt_every=250, ckpt_log_count=4),
    )


def cpu_long() -> tuple[ModelConfig, TrainConfig]:
    """The ``cpu`` recipe (Muon at lr 0.01, 21 whole-sample rows a step, the same data) with six
    layers instead of four, for 6,000 steps (48.6M tokens): the smallest budget measured to reach
    issue 7's accuracy target. On the 2-core Xeon, seed 0, training took 2:01 and ended at 89.0%
    accuracy, 80.0% on lengths 6..10 (70.7% with the held-out pairs); step 5,000 of the same
    schedule read 70.0% there (RESULTS.md). Longer: ``--set train.steps=N`` (the schedule
    stretches with it). Its blocks stay CodeGen's (no ``qk_norm``, GELU): its figures are theirs."""
    m, t = cpu()
    return replace(m, n_layer=6, qk_norm=False, mlp_act="gelu"), replace(t, steps=6000, ckpt_every=500)


def paper() -> tuple[ModelConfig, TrainConfig]:
    """CodeGen-350M-mono shape trained from scratch, with the reference's optimiser settings."""
    return (
        ModelConfig(vocab_size=64, n_layer=20, d_model=1024, n_head=16, rotary_dim=32, d_mlp=4096, context=2048),
        TrainConfig(lr=5e-6, warmup_steps=6000, steps=80_000, batch_size=16, block_len=2048,
                    weight_decay=0.0, ckpt_every=2000, ckpt_log_count=8),
    )


PRESETS = {"smoke": smoke, "cpu": cpu, "cpu-long": cpu_long, "paper": paper}


def preset(name: str, model: dict | None = None, train: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
    """A preset by name, with optional field overrides for each config."""
    if name not in PRESETS:
        raise ValueError(f"preset: {name!r} is not one of {sorted(PRESETS)}")
    m, t = PRESETS[name]()
    return replace_fields(m, model or {}), replace_fields(t, train or {})


def estimate_train_flops(model: ModelConfig, train: TrainConfig) -> float:
    """Total training FLOPs of a run (for sizing runs; ~6 N D plus attention)."""
    return model.flops_per_token(train.block_len) * train.tokens_per_step * train.steps


__all__ = [
    "AUTOCAST", "DEVICES", "LOSS_ON", "ModelConfig", "OPTIMIZERS", "PACKING", "PRESETS", "TrainConfig", "check_positive_int", "checkpoint_steps",
    "config_from_dict", "config_to_dict", "cpu", "cpu_long", "estimate_train_flops", "lr_at", "paper", "preset",
    "replace_fields", "smoke",
]
