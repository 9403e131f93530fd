"""Configs of the evaluation and activations stages, which have no library-owned config, and what
several stages share about where and how they run (``stage_device``, ``MEAN_LAYER``, the current
offset of a dump's programs). Which checkpoints are probed is the flows' (``flows.presets``). The probe stage's config is in
``tasks.probe_config``, so an edit to it re-keys the probe grids and phases, not the evaluations
and dumps.

Frozen dataclasses of plain values: they hash into cache keys and print readably. The data,
model and training configs live with their libraries (``karel.DataConfig``, ``model.config``).
This module's code counts in the keys of the stages that read it (their ``HELPERS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import check_nonnegative_int, check_positive_int


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

    def __post_init__(self):  # a bad value fails here, not in the first evaluation after training
        for name in ("n_test_specs", "n_val_samples", "batch_size"):
            check_positive_int(self, name, "eval.")


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
    # bf16 autocast for decoding and the random-init pass on CPU too (always on CUDA), where the
    # CPU has bf16 in hardware (model.machine.bf16_native; AVX2-only CPUs emulate it, several
    # times slower, and stay in float32): 2.1x / 1.75x faster on avx512_bf16 (BENCHMARKS.md); ~4%
    # of greedy programs differ from float32 decoding (near-ties), so the dumped programs can
    # differ from the evaluate stage's float32 ones
    bf16: bool = False
    # Which programs the states read: "generated" (the paper: each checkpoint's own greedy
    # programs, so the probed programs and their labels change from checkpoint to checkpoint) or
    # "reference" (the specs' reference programs, teacher-forced: the same programs and labels at
    # every checkpoint, so a probe curve measures the states alone). An option, off in the presets.
    # With "reference" the state that emits action j has not read action j and did not choose it
    # (the model might have written another), so offset 0's label (the state after action j) is
    # not in it; offset -1 (after the last action it read) is what it can hold (RESULTS.md).
    programs: str = "generated"
    # also dump and probe the step-0 checkpoint on its own programs. Where ``random_init`` (and
    # ``probe.controls``, which runs its grids) is on,
    # no target reads them (tasks/report_targets.py: they are degenerate, the robot barely moves;
    # the random-init control reads the untrained model on the trained model's programs), so
    # ``cpu`` leaves them out to fit its hour; ``checkpoints`` then counts the others
    probe_step0: bool = True

    def __post_init__(self):  # a bad value fails here, not in the first dump after training
        for name in ("n_train_specs", "n_test_specs", "batch_size"):
            check_positive_int(self, name, "activations.")
        check_nonnegative_int(self, "checkpoints", "activations.")  # 0: all
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


def paper_activations() -> ActivationConfig:
    """The paper's probed specs (PAPER.md, "Probing": 50,000 train-split specs and the test specs)."""
    return ActivationConfig(n_train_specs=50_000, n_test_specs=10_000, batch_size=512)
