"""The report's key-numbers table: this run's headline numbers beside the paper's
(``shared/PAPER.md``), and the values behind them, read from one run's ``RunData``."""

from __future__ import annotations

import math

import pandas as pd

from tasks.phases import CONTENT_PROBE, MEAN_FEATURE, init_drops
from tasks.report_data import (FEATURE_NAMES, MAIN_FEATURES, MEAN_LAYER, PHASE_ORDER,
                               PLOT_SPLIT, PROBE_KINDS, RunData, content_points, line_fit, num,
                               ordered_features, pct, pct_ci, pick_kind, pp, r_squared, trend)

# The paper's numbers (shared/PAPER.md); text where the paper gives no number.
PAPER = {
    "acc_spec": 0.924,
    "probe.linear": 0.632, "probe.mlp1": 0.791, "probe.mlp2": 0.823,
    "r2": 0.878,
    "majority.direction": 0.255, "majority.facing_wall": 0.609, "majority.rel_start": 0.394,
}
PAPER_TEXT = {
    "acc_all": "not reported",
    "phase.babbling": "start of training",
    "phase.syntax": "~50% of training",
    "phase.semantics": "~75% of training",
    "content.flip": "drops (less than adversarial)",
    "content.adversarial": "drops (more than flip)",
}


def key_numbers(d: RunData) -> tuple[list[dict], dict]:
    """The key-numbers table (metric, this run, paper) and the raw values behind it."""
    rows: list[dict] = []
    values: dict[str, float | None] = {}

    def add(key, label, value, shown, paper=None):
        values[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)
        if paper is None:
            paper = pct(PAPER[key]) if key in PAPER and key != "r2" else (
                num(PAPER[key]) if key in PAPER else PAPER_TEXT.get(key, "not reported"))
        rows.append({"metric": label, "this run": shown, "paper": paper})

    m = d.metric_frame()

    def final(metric, n_metric=None):
        """The metric at the last checkpoint that has it, that checkpoint's label, and
        ``n_metric`` (its sample size) at the same checkpoint."""
        col = m[metric].dropna() if not m.empty and metric in m else pd.Series(dtype=float)
        if col.empty:
            return None, "", None
        step = col.index[-1]
        n = m.at[step, n_metric] if n_metric in m else None
        return float(col.iloc[-1]), f" (step {int(step)})", None if n is None or pd.isna(n) else float(n)

    v, at, n = final("acc_spec", "n_specs")
    add("acc_spec", f"generative accuracy, 5 spec pairs, final checkpoint{at}", v, pct_ci(v, n))
    v, at, _ = final("acc_all")
    add("acc_all", f"generative accuracy incl. 5 held-out pairs, final checkpoint{at}", v, pct(v))
    v, at, n = final("acc_spec_len6_10", "n_specs_len6_10")
    if v is not None:
        add("acc_spec_len6_10", f"generative accuracy, lengths 6-10 (the paper's training lengths){at}", v,
            pct_ci(v, n),
            paper="not reported")
    v, at, _ = final("acc_spec_state")
    if v is not None:
        add("acc_spec_state", "generative accuracy, 5 spec pairs, comparing whole world states (also the "
            f"markers under the robot, which the text hides; the paper compares the text){at}", v, pct(v),
            paper="not reported")

    # probes at the last checkpoint with probe results (original semantics, current offset, layer mean)
    cur = d.probe_curve()
    feats = [f for f in MAIN_FEATURES if f in set(cur["feature"])] if not cur.empty else []
    pstep = int(cur["step"].max()) if not cur.empty else None
    for kind in PROBE_KINDS:
        sel = cur[(cur["step"] == pstep) & (cur["probe"] == kind) & cur["feature"].isin(feats)] \
            if pstep is not None else cur
        have = [f for f in feats if f in set(sel["feature"])] if not sel.empty else []
        v = float(sel["mean"].mean()) if not sel.empty else None
        what = "mean of " + ", ".join(have) if have else "no data"
        add(f"probe.{kind}", f"{kind} probe accuracy, current state ({d.offset_text()}, layer mean, "
            f"{PLOT_SPLIT}; {what}){'' if pstep is None else f', step {pstep}'}", v, pct(v))

    pts = content_points(d)
    fit = line_fit(pts["acc_spec"], pts["semantic_content"]) if len(pts) else None
    r2 = None if fit is None else fit[0]
    how = "" if fit is None else f"; {trend(fit[1])}"
    add("r2", f"R^2, semantic content vs generative accuracy ({len(pts)} checkpoints{how})", r2,
        num(r2))
    probe_fit = _probe_accuracy_fit(m, cur, feats)
    if probe_fit is not None:
        r2, n = probe_fit
        add("r2_probe", f"current-state {CONTENT_PROBE} probe accuracy (mean of {', '.join(feats)}) vs "
            f"generative accuracy: R^2 ({n} checkpoints; another reading of the paper's 'semantic content', "
            "whose formula PAPER.md could not recover)", r2, num(r2))
    pts = content_points(d, "semantic_content_vs_init")
    if len(pts):
        v = float(pts["semantic_content_vs_init"].iloc[-1])
        add("content_vs_init", "semantic content beyond the random-init model on the same programs "
            f"({CONTENT_PROBE}, original - alternative, trained minus random-init; step {int(pts['step'].iloc[-1])})",
            v, pp(v), paper="not measured")
        r2 = r_squared(pts["acc_spec"], pts["semantic_content_vs_init"])
        add("r2_vs_init", f"the same content vs generative accuracy: R^2 ({len(pts)} checkpoints)", r2, num(r2),
            paper="not measured")

    # majority baselines (current offset) at the last checkpoint that has them
    c = d.controls
    maj = c[(c["kind"] == "majority") & (c["offset"] == d.current)] if not c.empty else c
    mstep = int(maj["step"].max()) if not maj.empty else None
    for f in ("direction", "facing_wall", "rel_start"):
        sel = maj[(maj["step"] == mstep) & (maj["feature"] == f)] if mstep is not None else maj
        v = float(sel["value"].mean()) if not sel.empty else None
        add(f"majority.{f}", f"majority baseline, {FEATURE_NAMES[f]} ({d.offset_text()})", v, pct(v))
    _alignment_check(c, add, fed=d.current != 0)

    # phases
    ph = d.phases
    total = d.last_step()
    for p in PHASE_ORDER:
        sel = ph[ph["phase"] == p] if not ph.empty else ph
        if sel.empty:
            add(f"phase.{p}", f"{p} phase starts at step", None, "no data")
            continue
        s = sel["start_step"].iloc[0]
        if s is None or pd.isna(s):
            add(f"phase.{p}", f"{p} phase starts at step", None, "never started")
            continue
        frac = f" ({100 * s / total:.0f}% of {total})" if total else ""
        add(f"phase.{p}", f"{p} phase starts at step", float(s), f"{int(s)}{frac}")

    # interventions: semantic content (original - alternative) at the last checkpoint
    iv = d.interventions
    iv0 = iv[(iv["offset"] == d.current) & (iv["layer"] == MEAN_LAYER)] if not iv.empty else iv
    kind = pick_kind(set(iv0["probe"])) if not iv0.empty else None
    alts = sorted(set(iv0["semantics"])) if not iv0.empty else []
    for alt in ["flip", "adversarial"] + [a for a in alts if a not in ("flip", "adversarial")]:
        sel = iv0[(iv0["semantics"] == alt) & (iv0["probe"] == kind)] if kind else iv0.iloc[:0]
        if not sel.empty:
            sel = sel[sel["step"] == sel["step"].max()]
            sel = sel[sel["feature"].isin(MAIN_FEATURES)] if sel["feature"].isin(
                MAIN_FEATURES).any() else sel
        v = float(sel["content"].mean()) if not sel.empty else None
        what = (f"{kind}, mean of {', '.join(ordered_features(sel))}, step "
                f"{int(sel['step'].iloc[0])}") if not sel.empty else "no data"
        add(f"content.{alt}", f"accuracy drop under {alt} semantics (original - {alt}; {what})",
            v, pp(v))
        init = _init_drop(d.init_controls, sel, alt, kind, d.current) if v is not None else None
        if init is not None:
            mean = _main_mean_row(d.interventions_vs_init, sel, alt, kind, d.current)
            beyond = v - init if mean is None else float(mean.content)
            ci = "" if mean is None else f" (95% CI [{100 * mean.ci_low:+.1f}, {100 * mean.ci_high:+.1f}] over seeds)"
            add(f"content_vs_init.{alt}", f"the {alt} drop beyond the random-init model's states on the same "
                f"programs (trained drop minus their drop, which holds the labels' base rates; {what})",
                beyond, pp(beyond) + ci, paper="not measured")
    return rows, values


def _alignment_check(c: pd.DataFrame, add, fed: bool = False) -> None:
    """Key number: probes read the action each state emits (tasks.probing.emitted_action_rows)
    from the trained states, at the last step that has it, next to the random-init states and
    the majority. Near the majority for the trained model means the states are misaligned (or
    the model has learned nothing); high for the random-init model means they are taken late.
    On ``fed`` reference programs the model did not choose the action: the trained states read
    it as far as the model predicts it, so the row is named for what it measures there."""
    em = c[c["feature"] == "emitted_action"] if not c.empty else c
    if em.empty:
        return
    step = int(em["step"].max())
    em = em[em["step"] == step].sort_values("probe")

    def shown(kind):
        return " / ".join(pct(v) for v in em[em["kind"] == kind]["value"])

    trained = em[em["kind"] == "emitted_action"]
    text = f"{shown('emitted_action')} ({'/'.join(trained['probe'])})"
    if (em["kind"] == "emitted_action_init").any():
        text += f"; random-init states {shown('emitted_action_init')}"
    text += f"; majority {shown('emitted_action_majority')}"
    what = ("the next action of the fed program, as each state predicts it" if fed
            else "the action each state emits")
    add("alignment", f"alignment check: probes read {what} (offset-0 rows, step {step})",
        float(trained["value"].mean()) if len(trained) else None, text, paper="not measured")


def _probe_accuracy_fit(m: pd.DataFrame, cur: pd.DataFrame, feats: list[str]) -> tuple[float, int] | None:
    """(R^2, checkpoints) of the current-state ``CONTENT_PROBE`` accuracy, mean of ``feats``,
    against ``acc_spec`` (of ``m``, the run's ``metric_frame``), over the checkpoints probed for
    every one of ``feats``."""
    if cur.empty or not feats or m.empty or "acc_spec" not in m:
        return None
    sel = cur[(cur["probe"] == CONTENT_PROBE) & cur["feature"].isin(feats)]
    per_step = sel.groupby("step").agg(probe=("mean", "mean"), n=("feature", "nunique"))
    pts = per_step[per_step["n"] == len(feats)].join(m["acc_spec"], how="inner").dropna()
    r2 = r_squared(pts["acc_spec"], pts["probe"])
    return None if r2 is None else (r2, len(pts))


def _main_mean_row(beyond: pd.DataFrame, sel: pd.DataFrame, alt: str, kind: str, offset: int):
    """``interventions_vs_init``'s ``main_mean`` row at ``sel``'s step (the drop beyond random-init
    averaged over the main features within each seed, with its CI over seeds), when ``sel`` holds
    every main feature and the row exists; else None (then the value is the mean of the features'
    seed means, which equals the row's when every seed has every feature)."""
    if beyond.empty or set(sel["feature"]) != set(MAIN_FEATURES):
        return None
    row = beyond[(beyond["feature"] == MEAN_FEATURE) & (beyond["semantics"] == alt) & (beyond["probe"] == kind)
                 & (beyond["step"] == int(sel["step"].iloc[0])) & (beyond["offset"] == offset)]
    return None if row.empty else row.iloc[0]


def _init_drop(init: pd.DataFrame, sel: pd.DataFrame, alt: str, kind: str, offset: int) -> float | None:
    """The random-init states' original-minus-``alt`` accuracy at ``offset``
    (``tasks.phases.init_drops``), the mean over the features and step of the trained drop's rows
    ``sel``; None where one is missing."""
    drops = init_drops(init, set(sel["feature"]), kind, offset)
    drops = drops[(drops["step"] == int(sel["step"].iloc[0])) & (drops["semantics"] == alt)]
    if drops.empty or drops["feature"].nunique() != sel["feature"].nunique():
        return None
    return float(drops["init_drop"].mean())
