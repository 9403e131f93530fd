"""The three phases of training (babbling, syntax, semantics), from per-checkpoint metrics.

The paper describes them qualitatively: *babbling* (repetitive output, e.g. one program for
every spec), *syntax acquisition* (diversity up, perplexity down, accuracy ~10% -> ~25%) and
*semantics acquisition* (accuracy ~25% -> >90%). We turn that into a rule on the curves that
``metrics.evaluate_checkpoint`` produces, relative to each run's own range so that it works for
a small CPU model as well as the paper's:

1. **syntax** starts at the first checkpoint where diversity has reached ``syntax_frac`` (0.5)
   of its maximum over the run, and at least ``syntax_min_diversity`` (0.05: 15 distinct
   programs for 300 specs; the paper's babbling writes one program for every spec, and a
   babbling model's output parses, so the parse rate alone cannot tell the two apart), *and* at
   least ``parse_min`` (0.5) of unconstrained greedy outputs parse (when ``parse_rate`` was
   measured: a missing, None or NaN one does not count against it). A run whose first
   checkpoint is its most diverse has no syntax start. Before it the model is **babbling**.
2. **semantics** starts at the first checkpoint at or after the syntax start where accuracy on
   the spec (``acc_spec``) has covered ``semantics_frac`` (0.25) of its rise from the syntax
   start to its maximum; that is where the sharp climb is under way. If accuracy rises by less
   than ``min_rise`` (0.1) after the syntax start, there is no semantics phase.

Each checkpoint is labelled by the phase its step falls in. A phase that never starts is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASES = ("babbling", "syntax", "semantics")


@dataclass(frozen=True)
class PhaseRule:
    syntax_frac: float = 0.5
    syntax_min_diversity: float = 0.05
    parse_min: float = 0.5
    semantics_frac: float = 0.25
    min_rise: float = 0.1


@dataclass
class Phases:
    steps: list[int]
    labels: list[str]  # one of PHASES per checkpoint
    syntax_start: int | None
    semantics_start: int | None

    def as_dict(self) -> dict:
        return {"steps": self.steps, "labels": self.labels,
                "syntax_start": self.syntax_start, "semantics_start": self.semantics_start}


def label_phases(rows: list[dict], rule: PhaseRule = PhaseRule()) -> Phases:
    """Phases from per-checkpoint metric dicts, each with ``step``, ``diversity``, ``acc_spec``
    and optionally ``parse_rate``."""
    if not rows:
        raise ValueError("rows: no checkpoints to label")
    for key in ("step", "diversity", "acc_spec"):
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"rows: checkpoint(s) {missing} lack {key!r}")
        bad = [r.get("step", i) for i, r in enumerate(rows) if r[key] is None or not np.isfinite(r[key])]
        if bad:  # a NaN would fail every comparison below and silently move a phase
            raise ValueError(f"rows: {key!r} is not a number at checkpoint step(s) {bad}")
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [int(r["step"]) for r in rows]
    div = np.array([r["diversity"] for r in rows], float)
    acc = np.array([r["acc_spec"] for r in rows], float)
    # a parse rate that was not measured (absent, None or NaN: no unconstrained outputs) does not
    # hold the syntax start back
    parse = np.array([np.nan if r.get("parse_rate") is None else r["parse_rate"] for r in rows], float)
    parse[~np.isfinite(parse)] = 1.0

    syntax_i = None
    ok = ((div >= rule.syntax_frac * div.max()) & (div >= rule.syntax_min_diversity)
          & (parse >= rule.parse_min) & (div.max() > div[0]))
    if ok.any():
        syntax_i = int(np.argmax(ok))
    semantics_i = None
    if syntax_i is not None:
        base, top = acc[syntax_i], acc[syntax_i:].max()
        if top - base >= rule.min_rise - 1e-9:  # a rise of exactly min_rise counts, whatever the rounding
            later = np.flatnonzero(acc[syntax_i:] >= base + rule.semantics_frac * (top - base))
            semantics_i = syntax_i + int(later[0])
    labels = []
    for i in range(len(rows)):
        if semantics_i is not None and i >= semantics_i:
            labels.append("semantics")
        elif syntax_i is not None and i >= syntax_i:
            labels.append("syntax")
        else:
            labels.append("babbling")
    return Phases(
        steps, labels,
        steps[syntax_i] if syntax_i is not None else None,
        steps[semantics_i] if semantics_i is not None else None,
    )
