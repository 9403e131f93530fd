"""The probe stage's config (``ProbeConfig``): which grid each probed checkpoint trains, per
semantics. A module of its own so that its code counts in the keys of the probe grids and the
phases (their ``HELPERS``) and not of the evaluations and activation dumps, which never read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from karel import SEMANTICS
from model.config import check_positive_int
from probes.grid import PROBE_KINDS
from probes.labels import FEATURES
from probes.stacked_training import DEVICES as PROBE_DEVICES


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
    # a cap on the generated programs' action positions (whole programs, before the 80/10/10
    # split by program and the dropped last actions): an offset-0 grid trains on about
    # 0.8 x (1 - 1/mean length) of it, ~0.67x at 6 actions
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
        for name, known in (("semantics", SEMANTICS), ("features", FEATURES), ("kinds", PROBE_KINDS)):
            values = getattr(self, name)
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"probe.{name}: {'empty' if not values else f'unknown {unknown}'}; "
                                 f"known: {', '.join(known)}")
        if not self.offsets:
            raise ValueError("probe.offsets: empty, so no probe would be trained")
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


def paper_probe() -> ProbeConfig:
    """The paper's probes (PAPER.md, "Probing": ~100 epochs; seeds and CIs are ours)."""
    return ProbeConfig(seeds=5, epochs=100)


def probe_config_at(cfg: ProbeConfig, step: int, probed) -> ProbeConfig:
    """The probe config of the checkpoint at ``step`` among the ``probed`` steps."""
    return cfg.at_checkpoint(step == max(probed))
