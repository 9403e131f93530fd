"""Issue 7's six targets, checked against one run's rows: which the run reaches, and by how much.

Each row says the target, the criterion as checked, what this run measured, and ``met``
(``yes``, ``no`` or ``no data``). The criteria are the issue's, read strictly; a verdict never
rests on a baseline, probe kind or checkpoint that is missing (that is ``no data``, unless what
is there already fails):

1. accuracy on test specs of lengths 6..10 (5 spec pairs) >= 70% at the run's last checkpoint,
   beside it the same lengths with the held-out pairs too;
2. all three phases found by the phase rule, in order, each covering at least one checkpoint
   (babbling before syntax before semantics);
3. current-state probes (offset 0; -1 on fed reference programs, ``RunData.current``) of
   direction, position relative to start and facing a wall, all three kinds: at the last
   checkpoint mlp2 rises above the untrained model, mlp2 >= mlp1 >= linear, and every kind is
   clearly above the majority baseline, its own control task and the untrained model: the lower
   95% bound of its margin over each, paired by seed, is above zero (``*_margin_low`` controls
   rows; a run recorded before them compares the probe's own lower bound with the baseline's
   mean, and so does the first-checkpoint fallback below).
   The untrained model is the random-init control (the step-0 model's states over the last
   checkpoint's own programs and labels: only training differs), else the same probe on the first
   probed checkpoint when that is step 0 (else none: ``activations.probe_step0``). The step-0 model's own programs are no baseline where the control exists:
   they are degenerate (at seed 0 of ``cpu-long``: pick_marker, put_marker seven times for every
   spec; the robot never moves or turns, so probes read its position at 100%): that measures the
   programs, not the model;
4. R^2 of semantic content vs generative accuracy across at least ``R2_MIN_POINTS`` checkpoints
   >= 0.8, with a positive slope (the paper's finding is that content rises with accuracy; R^2
   alone also fits a fall). The fit without step 0 is shown beside it, not judged: the step-0
   model's degenerate programs make its content ~0 by construction (without a turn, ``flip``'s
   labels are the original's), a high-leverage point that alone can set the slope's sign;
   whether it belongs in the fit is the issue author's reading to settle;
5. at the last checkpoint, for every main feature, the ``flip`` and ``adversarial`` drops
   (original - alternative) have 95% CIs above zero, and ``adversarial`` drops more on average;
6. future-state probes (one and two actions past the current offset) at the last checkpoint:
   clearly above (as in 3) the majority baseline and the control task at that offset, and the
   random-init control where the run has it there (``ProbeConfig.init_offsets``), for every main
   feature.

A bound that cannot be computed (one probe seed) is ``no data``, not ``no``. "The last checkpoint"
is the run's (``RunData.last_step``): a stopped run that evaluated it but did not probe it has no
data for targets 3, 5 and 6, not verdicts on an earlier checkpoint.
"""

from __future__ import annotations

import math

import pandas as pd

from tasks.report_data import (MAIN_FEATURES, MEAN_LAYER, PHASE_ORDER, PROBE_KINDS, RunData,
                               content_points, line_fit, pct, pct_ci, pick_kind, trend)

ACC_TARGET, R2_TARGET = 0.70, 0.80
# With 5 points, |r| >= sqrt(0.8) has p ~ 0.04 for uncorrelated values; with 3 points ~ 0.3, so
# R^2 >= 0.8 over 3 or 4 checkpoints says little either way.
R2_MIN_POINTS = 5


def _met(ok: bool, complete: bool) -> bool | None:
    """A verdict: no where what is there fails, else yes if nothing is missing, else no data."""
    return False if not ok else (True if complete else None)


def _row(n, target, criterion, measured, met):
    return {"target": f"{n}. {target}", "criterion": criterion, "measured": measured,
            "met": "no data" if met is None else ("yes" if met else "no")}


def _accuracy(d: RunData) -> dict:
    crit = "lengths 6..10, 5 spec pairs, last checkpoint >= 70%"
    m = d.metric_frame()
    col = m["acc_spec_len6_10"].dropna() if "acc_spec_len6_10" in m else pd.Series(dtype=float)
    if col.empty:
        return _row(1, "generative accuracy", crit, "", None)
    step, last = int(col.index[-1]), d.last_step()
    if last is not None and step < last:
        return _row(1, "generative accuracy", crit,
                    f"the last checkpoint (step {last}) is not evaluated; step {step}: {pct(float(col.iloc[-1]))}", None)
    acc = float(col.iloc[-1])
    n = m.loc[step, "n_specs_len6_10"] if "n_specs_len6_10" in m else None
    extra = ""
    for column, what in (("acc_all_len6_10", "with held-out pairs"),
                         ("acc_spec_len6_10_state", "comparing whole world states (markers under the robot too)")):
        if column in m and pd.notna(m.loc[step, column]):
            extra += f"; {what} {pct(float(m.loc[step, column]))}"
    return _row(1, "generative accuracy", crit, f"{pct_ci(acc, n)} at step {step}{extra}", acc >= ACC_TARGET)


def _phases(d: RunData) -> dict:
    crit = "babbling, syntax and semantics each start, in that order"
    ph = d.phases
    if ph.empty:
        return _row(2, "three phases", crit, "", None)
    start = {r.phase: r.start_step for r in ph.itertuples()}
    found = [None if start.get(p) is None or pd.isna(start.get(p)) else int(start[p]) for p in PHASE_ORDER]
    shown = ", ".join(f"{p} {'never' if s is None else s}" for p, s in zip(PHASE_ORDER, found))
    # babbling starts at the first checkpoint by definition: it is a phase only when syntax starts later
    met = None not in found and found[0] < found[1] < found[2]
    return _row(2, "three phases", crit, shown + ("" if met or None in found else " (a phase covers no checkpoint)"), met)


def _baseline(d: RunData, step, feature, offset, kind, probe=None):
    c = d.controls
    if c.empty:
        return None
    sel = c[(c["step"] == step) & (c["feature"] == feature) & (c["offset"] == offset) & (c["kind"] == kind)]
    if probe is not None:
        sel = sel[sel["probe"] == probe]
    if sel.empty:
        return None
    # several probe configurations at one checkpoint: a mean of lower bounds is no bound, the
    # lowest is one for each (a NaN one, from a single seed, stays NaN: no bound)
    return float(sel["value"].min(skipna=False)) if kind.endswith("_margin_low") else float(sel["value"].mean())


UNPAIRED = " (compared unpaired: the run was recorded before the paired margins)"


def _at_the_end(d: RunData, row: dict, step: int) -> dict:
    """``row``, a target read "at the end" from rows whose last step is ``step``: no data when the
    run has a later checkpoint (a stopped run), whose probes would decide it."""
    last = d.last_step()
    if last is None or step >= last:
        return row
    return dict(row, met="no data", measured=f"the last checkpoint (step {last}) is not probed: {row['measured']}")


def _above(d: RunData, step, feature, offset, probe, kind: str | None, ci_low, base,
           unpaired: list) -> bool | None:
    """Is ``probe`` clearly above the baseline ``kind`` (value ``base``, its mean over seeds):
    the paired margin's lower bound (controls ``<kind>_margin_low``) above zero where the run
    stored it, else the probe's own lower bound ``ci_low`` above ``base`` (noted in
    ``unpaired`` when ``kind`` should have had a margin); None where neither can be computed
    (no baseline, one seed)."""
    margin = _baseline(d, step, feature, offset, f"{kind}_margin_low", probe) if kind else None
    if margin is not None:
        return None if math.isnan(margin) else margin > 0
    if base is None or ci_low is None or math.isnan(ci_low):
        return None
    if kind is not None:
        unpaired.append(kind)
    return bool(ci_low > base)


def _current_probes(d: RunData) -> dict:
    crit = ("mlp2 rises from the untrained model; at the end mlp2 >= mlp1 >= linear, each CI above "
            "majority, control task and the untrained model (the random-init model's states on the "
            "same programs, else the first probed checkpoint), paired by seed")
    cur = d.probe_curve()
    if cur.empty:
        return _row(3, "current-state probes", crit, "", None)
    first, last = int(cur["step"].min()), int(cur["step"].max())
    ok, missing, parts, unpaired = True, [], [], []
    for f in MAIN_FEATURES:
        cf = cur[cur["feature"] == f]
        end = cf[cf["step"] == last].set_index("probe")
        # the first probed checkpoint is the untrained model only at step 0
        start = cf[cf["step"] == first].set_index("probe") if first == 0 < last else cf.iloc[:0]
        init = {k: _baseline(d, last, f, d.current, "random_init", k) for k in PROBE_KINDS}
        untrained = {k: init[k] if init[k] is not None else (start.loc[k, "mean"] if k in start.index else None)
                     for k in PROBE_KINDS}
        gone = [k for k in PROBE_KINDS if k not in end.index or untrained[k] is None]
        if gone:
            missing.append(f"{f}: no {'/'.join(gone)} rows at step {last}, or none untrained")
            continue
        rises = end.loc["mlp2", "mean"] > untrained["mlp2"]
        means = [end.loc[k, "mean"] for k in PROBE_KINDS]
        ordered = all(a <= b for a, b in zip(means, means[1:]))
        order = "ordered" if ordered else "not ordered: " + _reversals(end)
        below = []  # the floors some probe kind is not clearly above, in the order checked
        for k in PROBE_KINDS:
            floors = {"majority": ("majority", _baseline(d, last, f, d.current, "majority")),
                      "control task": ("control_task", _baseline(d, last, f, d.current, "control_task", k)),
                      "untrained model": ("random_init" if init[k] is not None else None, untrained[k])}
            for name, (kind, base) in floors.items():
                res = _above(d, last, f, d.current, k, kind, end.loc[k, "ci_low"], base, unpaired)
                if res is False and name not in below:
                    below.append(name)
                if res is None:
                    why = f"no {name} baseline" if base is None else f"no 95% bound vs the {name}"
                    missing.append(f"{f} {k}: {why}")
        ok = ok and bool(rises and ordered and not below)
        has_init = [init[k] is not None for k in PROBE_KINDS]
        what = "random-init" if all(has_init) else (f"step {first}" if not any(has_init) else f"random-init/step {first}")
        parts.append(f"{f}: " + "/".join(pct(m) for m in means)
                     + f", {what} " + "/".join(pct(untrained[k]) for k in PROBE_KINDS)
                     + f" ({'rises' if rises else 'no rise'}, {order}, "
                     + f"{'above baselines' if not below else 'not above the ' + ', '.join(below)})")
    shown = (f"step {first} -> {last}" if first < last else f"step {last}") + "; linear/mlp1/mlp2 " + "; ".join(parts + missing) + (UNPAIRED if unpaired else "")
    return _at_the_end(d, _row(3, "current-state probes", crit, shown, _met(ok, not missing)), last)


def _reversals(end: pd.DataFrame) -> str:
    """The adjacent probe kinds of ``end`` (indexed by kind: mean, ci_low, ci_high) whose means
    break the order linear <= mlp1 <= mlp2, each said with whether their 95% CIs overlap: the
    verdict reads the means, as the issue does; a reversal inside the seeds' spread is shown as such."""
    out = []
    for a, b in zip(PROBE_KINDS, PROBE_KINDS[1:]):
        lo, hi = end.loc[a], end.loc[b]
        if lo["mean"] > hi["mean"]:
            if pd.isna(lo["ci_low"]) or pd.isna(hi["ci_high"]):
                spread = ", no 95% CIs"
            else:
                spread = ", within their 95% CIs" if lo["ci_low"] <= hi["ci_high"] else ", their 95% CIs apart"
            out.append(f"{a} {pct(lo['mean'])} > {b} {pct(hi['mean'])}{spread}")
    return " and ".join(out)


def _r2(d: RunData) -> dict:
    pts = content_points(d)
    fit = line_fit(pts["acc_spec"], pts["semantic_content"]) if len(pts) else None
    crit = (f"R^2 of semantic content vs accuracy across >= {R2_MIN_POINTS} checkpoints >= 0.8, "
            "content rising with accuracy")
    if fit is None:
        return _row(4, "semantic content tracks accuracy", crit, f"{len(pts)} checkpoints, no fit", None)
    r2, slope = fit
    shown = f"R^2 = {r2:.3f} over {len(pts)} checkpoints, slope {slope:+.3f} ({trend(slope)})"
    trained = pts[pts["step"] > 0]
    fit0 = line_fit(trained["acc_spec"], trained["semantic_content"]) if len(trained) < len(pts) else None
    if fit0 is not None:  # shown, not judged: the step-0 programs' content measures the programs (see 3.)
        shown += (f"; without step 0 R^2 = {fit0[0]:.3f} over {len(trained)} checkpoints, slope "
                  f"{fit0[1]:+.3f}")
    if len(pts) < R2_MIN_POINTS:
        return _row(4, "semantic content tracks accuracy", crit, shown + "; too few checkpoints to judge "
                    f"(--set activations.checkpoints={R2_MIN_POINTS} probes {R2_MIN_POINTS})", None)
    return _row(4, "semantic content tracks accuracy", crit, shown, r2 >= R2_TARGET and slope > 0)


def _interventions(d: RunData) -> dict:
    crit = "flip and adversarial drops > 0 (95% CI) for every main feature; adversarial > flip"
    iv = d.interventions
    iv = iv[(iv["offset"] == d.current) & (iv["layer"] == MEAN_LAYER)] if not iv.empty else iv
    kind = pick_kind(set(iv["probe"])) if not iv.empty else None
    if kind is None:
        return _row(5, "interventions", crit, "", None)
    last = int(iv["step"].max())
    iv = iv[(iv["probe"] == kind) & (iv["step"] == last) & iv["feature"].isin(MAIN_FEATURES)]
    ok, complete, mean = True, True, {}
    for alt in ("flip", "adversarial"):
        sel = iv[iv["semantics"] == alt]
        if sel.empty:
            return _row(5, "interventions", crit, f"no {alt} rows", None)
        mean[alt] = float(sel["content"].mean())
        ok &= bool((sel["ci_low"].dropna() > 0).all())
        # a bound one seed cannot give, or a main feature without rows: no data unless another fails
        complete &= bool(sel["ci_low"].notna().all()) and sel["feature"].nunique() == len(MAIN_FEATURES)
    ok &= mean["adversarial"] > mean["flip"]
    shown = (f"{kind}, step {last}: drop flip {100 * mean['flip']:+.1f} pp, "
             f"adversarial {100 * mean['adversarial']:+.1f} pp (mean of features)"
             + ("" if complete else "; a feature's rows or 95% bound missing"))
    return _at_the_end(d, _row(5, "interventions", crit, shown, _met(ok, complete)), last)


def _future(d: RunData) -> dict:
    ahead = [d.current + 1, d.current + 2]
    crit = (f"offsets {ahead[0]:+d}, {ahead[1]:+d} at the last checkpoint: CI above majority, control task "
            "and, where the run has it, the random-init model on the same programs, paired by seed; every main feature")
    allo = d.probe_curve(offset=None)
    fut = allo[allo["offset"].isin(ahead)] if not allo.empty else allo
    if fut.empty:
        return _row(6, "future-state probes", crit, "", None)
    last = int(fut["step"].max())
    kind = pick_kind(set(fut["probe"]))
    fut = fut[(fut["step"] == last) & (fut["probe"] == kind) & fut["feature"].isin(MAIN_FEATURES)]
    ok, complete, parts, unpaired = True, True, [], []
    for r in fut.itertuples():
        floors = [_baseline(d, last, r.feature, r.offset, "majority"),
                  _baseline(d, last, r.feature, r.offset, "control_task", kind),
                  _baseline(d, last, r.feature, r.offset, "random_init", kind)]
        above = [_above(d, last, r.feature, r.offset, kind, k, r.ci_low, b, unpaired)
                 for k, b in zip(("majority", "control_task", "random_init"), floors)]
        ok &= False not in above
        complete &= None not in above[:2] and (floors[2] is None or above[2] is not None)
        parts.append(f"{r.feature} {r.offset:+d}: {pct(r.mean)} vs "
                     + "/".join("-" if b is None else pct(b) for b in floors))
    complete &= len(parts) == 2 * len(MAIN_FEATURES)
    return _at_the_end(d, _row(6, "future-state probes", crit, f"{kind}, step {last} (probe vs majority/control/random-init): "
                               + "; ".join(parts) + (UNPAIRED if unpaired else ""),
                               _met(ok, complete)), last)


def issue_targets(d: RunData) -> list[dict]:
    """One row per target of issue 7, in its order."""
    return [f(d) for f in (_accuracy, _phases, _current_probes, _r2, _interventions, _future)]


def side_by_side(runs: list[tuple[str, list[dict]]]) -> str:
    """A Markdown table of several runs' ``issue_targets`` rows: one line per target, one column
    per run (``runs``: (column title, its rows)), each cell what the run measured and its verdict."""
    if not runs:
        raise ValueError("side_by_side: no runs to compare")
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| target | " + " | ".join(cell(title) for title, _ in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for i, first in enumerate(runs[0][1]):
        cells = []
        for _, rows in runs:
            r = rows[i]
            cells.append(f"**{r['met']}**" + (f": {cell(r['measured'])}" if r["measured"] else ""))
        lines.append(f"| {cell(first['target'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
