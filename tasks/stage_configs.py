"""Configs of the stages that have no library-owned config (evaluation, activations, probes),
and what several stages share about where and how they run (``stage_device``, ``MEAN_LAYER``).

Frozen dataclasses of plain values: they hash into cache keys and print readably. The data,
model and training configs live with their libraries (``karel.DataConfig``, ``model.config``).
This module's code counts in the keys of the stages that read it (their ``HELPERS``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from model.config import check_positive_int
from probes.stacked_training import DEVICES as PROBE_DEVICES

MEAN_LAYER = -1  # the layer column's value for the layer-mean representation


def stage_device() -> str:
    """Where evaluation and the activation dumps run the model: CUDA when torch sees it."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class EvalConfig:
    """Generation metrics per checkpoint."""

    n_test_specs: int = 500  # test specs (lengths 1..10) decoded with the grammar
    n_val_samples: int = 200  # val samples for perplexity
    batch_size: int = 128


@dataclass(frozen=True)
class ActivationConfig:
    """Which specs each checkpoint decodes for probing, and what it keeps of the hidden states."""

    # Probes pool the programs generated for both kinds of spec and split them by program
    # (train/val/test), so no program is in two splits; the reference instead tests probes on the
    # test specs' programs only. ``is_test`` in the dump marks which spec each program came from.
    n_train_specs: int = 2000  # train-split specs (paper: 50,000)
    n_test_specs: int = 500  # test-split specs (unseen in LM training)
    per_layer: bool = True  # keep every layer (for per-layer curves), not only the layer mean
    batch_size: int = 128
    checkpoints: int = 0  # how many checkpoints to dump and probe, spread over the schedule (0 = all)
    # also the random-init model's states on each checkpoint's own generated programs (a control)
    random_init: bool = True
    # bf16 autocast for decoding and the random-init pass on CPU too (always on CUDA): 2.1x / 1.75x
    # faster on avx512_bf16 (BENCHMARKS.md); ~4% of greedy programs differ from float32 decoding
    # (near-ties), so the dumped programs can differ from the evaluate stage's float32 ones
    bf16: bool = False
    # Which programs the states read: "generated" (the paper: each checkpoint's own greedy
    # programs, so the probed programs and their labels change from checkpoint to checkpoint) or
    # "reference" (the specs' reference programs, teacher-forced: the same programs and labels at
    # every checkpoint, so a probe curve measures the states alone). An option, off in the presets.
    # With "reference" the state that emits action j has not read action j and did not choose it
    # (the model might have written another), so offset 0's label (the state after action j) is
    # not in it; offset -1 (after the last action it read) is what it can hold (RESULTS.md).
    programs: str = "generated"

    def __post_init__(self):
        if self.programs not in PROGRAM_SOURCES:
            raise ValueError(f"activations.programs: {self.programs!r} is not one of {PROGRAM_SOURCES}")


PROGRAM_SOURCES = ("generated", "reference")


def current_offset(programs: str) -> int:
    """The offset whose label is the robot's state the probed hidden state stands at, read by
    every current-state measure (the report's probes and targets, the interventions, the semantic
    content, the per-layer grids): 0 on generated programs (the state that emits action j chose
    it; the paper's offset 0) and -1 on fed reference programs (it has read up to action j-1)."""
    if programs not in PROGRAM_SOURCES:
        raise ValueError(f"activations.programs: {programs!r} is not one of {PROGRAM_SOURCES}")
    return -1 if programs == "reference" else 0


@dataclass(frozen=True)
class ProbeConfig:
    """The probe grid trained per checkpoint and semantics."""

    semantics: tuple[str, ...] = ("original", "flip", "adversarial")
    features: tuple[str, ...] = ("direction", "rel_start", "facing_wall")
    offsets: tuple[int, ...] = (-2, -1, 0, 1, 2)
    # the offsets probed under the alternative semantics (empty: all of ``offsets``); every
    # intervention measure (semantic content, its R^2, the report's drops) reads the current
    # offset (``current_offset``: 0, or -1 on fed reference programs)
    alternative_offsets: tuple[int, ...] = ()
    # the offsets probed at the checkpoints before the last (empty: all of ``offsets``; the last
    # checkpoint always gets them all): every issue-7 target reads the current offset over
    # training and the other offsets at the last checkpoint only (``at_checkpoint``)
    offsets_before_last: tuple[int, ...] = ()
    # the offsets of the random-init control grid (empty: the alternatives' offsets when limited,
    # else the current offset), each where the grid probes it (``init_offsets``): with the future
    # offsets here, target 6 gets its random-init floor
    random_init_offsets: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ("linear", "mlp1", "mlp2")
    seeds: int = 3
    epochs: int = 30
    # the paper's 1,024; with a few thousand pairs that is ~2 optimizer steps an epoch (RESULTS.md)
    batch_size: int = 1024
    max_train_pairs: int = 100_000
    drop_last: bool = True
    per_layer: bool = True  # also probe each layer (linear, offset 0) for per-layer curves
    controls: bool = True  # majority, control task and selectivity
    # where the probes train: "auto" (CUDA when torch sees it, else the CPU), "cpu" or "cuda"
    device: str = "auto"
    # stop a probe after this many epochs without a better val accuracy (0: train every epoch;
    # at the cpu settings the MLP chunks still trained 93-98% of their epochs and lost up to 4 pp,
    # BENCHMARKS.md, so no preset uses it)
    patience: int = 0

    def __post_init__(self):
        for name in ("seeds", "epochs", "batch_size", "max_train_pairs"):
            check_positive_int(self, name, "probe.")
        if self.device not in PROBE_DEVICES:
            raise ValueError(f"probe.device: {self.device!r} is not one of {PROBE_DEVICES}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"probe.patience: expected an int >= 0 (0: off), got {self.patience!r}")
        for name in ("alternative_offsets", "offsets_before_last", "random_init_offsets"):
            extra = sorted(set(getattr(self, name)) - set(self.offsets))
            if extra:
                raise ValueError(f"probe.{name}: {extra} not in probe.offsets {self.offsets}")
        if self.alternative_offsets and self.offsets_before_last \
                and not set(self.alternative_offsets) & set(self.offsets_before_last):
            raise ValueError(f"probe.alternative_offsets {self.alternative_offsets}: none is in "
                             f"probe.offsets_before_last {self.offsets_before_last}, so checkpoints "
                             "before the last would probe no alternative semantics")

    def offsets_for(self, semantics: str) -> tuple[int, ...]:
        """The offsets probed under ``semantics``."""
        return self.offsets if semantics == "original" or not self.alternative_offsets else self.alternative_offsets

    def at_checkpoint(self, last: bool) -> "ProbeConfig":
        """The config of one checkpoint's grids, without ``offsets_before_last`` (so the same grid
        has the same key with or without it): before the last checkpoint, ``offsets`` become
        ``offsets_before_last`` and the alternatives keep the offsets of theirs among them."""
        if last or not self.offsets_before_last:
            return replace(self, offsets_before_last=())
        keep = self.offsets_before_last
        return replace(self, offsets=keep, alternative_offsets=tuple(o for o in self.alternative_offsets if o in keep),
                       random_init_offsets=tuple(o for o in self.random_init_offsets if o in keep),
                       offsets_before_last=())

    def init_offsets(self, current: int = 0, semantics: str = "original") -> tuple[int, ...]:
        """The offsets of ``semantics``' random-init control grid: ``random_init_offsets``, else
        the alternatives' offsets when they are limited (where the drops beyond it are read),
        else the current offset (``current_offset``); only those the grid probes."""
        base = self.random_init_offsets or self.alternative_offsets or (current,)
        return tuple(o for o in base if o in self.offsets_for(semantics))

    def grid_cost(self, semantics: str, current: int = 0) -> int:
        """The relative cost of ``semantics``' grid in stacked passes over one offset's rows (the
        flow starts the costliest ready grid first, so only the order matters): its offsets,
        twice under ``original`` with controls (the control task trains beside the real task),
        plus the random-init control's offsets. The per-layer linear grids, the same at every
        checkpoint, are left out."""
        main = len(self.offsets_for(semantics)) * (2 if semantics == "original" and self.controls else 1)
        return main + (len(self.init_offsets(current, semantics)) if self.controls else 0)


def paper_activations() -> ActivationConfig:
    """The paper's probed specs (PAPER.md, "Probing": 50,000 train-split specs and the test specs)."""
    return ActivationConfig(n_train_specs=50_000, n_test_specs=10_000, batch_size=512)


def paper_probe() -> ProbeConfig:
    """The paper's probes (PAPER.md, "Probing": ~100 epochs; seeds and CIs are ours)."""
    return ProbeConfig(seeds=5, epochs=100)


def probe_config_at(cfg: ProbeConfig, step: int, probed) -> ProbeConfig:
    """The probe config of the checkpoint at ``step`` among the ``probed`` steps."""
    return cfg.at_checkpoint(step == max(probed))


def probed_steps(schedule: list[int], n: int) -> set[int]:
    """The ``n`` checkpoint steps to probe (all when ``n`` is 0 or covers the schedule).

    Always step 0 (the random-init baseline) and the last; the rest are the scheduled steps
    nearest to evenly spaced points of training (the phases fill its later part, not the
    log-spaced start)."""
    steps = sorted(schedule)
    if n <= 0 or n >= len(steps):
        return set(steps)
    chosen = {steps[0], steps[-1]}
    for i in range(1, n - 1):
        target = steps[-1] * i / (n - 1)
        chosen.add(min((s for s in steps if s not in chosen), key=lambda s: abs(s - target)))
    return chosen
