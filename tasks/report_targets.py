"""Issue 7's six targets, checked against one run's rows: which the run reaches, and by how much.

Each row says the target, the criterion as checked, what this run measured, and ``met``
(``yes``, ``no`` or ``no data``). The criteria are the issue's, read strictly:

1. accuracy on test specs of lengths 6..10 (5 spec pairs) >= 70% at the last checkpoint;
2. all three phases (babbling, syntax, semantics) found by the phase rule;
3. current-state probes (offset 0; -1 on fed reference programs, ``RunData.current``) of
   direction, position relative to start and facing a wall: the best kind
   rises from the first probed checkpoint to the last; at the last, mlp2 >= mlp1 >= linear; and
   every kind's lower 95% bound is above the majority baseline, its own control task and its
   own value on the first probed checkpoint (the random-init model when that is step 0), and,
   where the run has it, the random-init control (the step-0 model's states over the last
   checkpoint's own programs and labels);
4. R^2 of semantic content vs generative accuracy across checkpoints >= 0.8, with a positive
   slope (the paper's finding is that content rises with accuracy; R^2 alone also fits a fall);
5. at the last checkpoint, for every main feature, the ``flip`` and ``adversarial`` drops
   (original - alternative) have 95% CIs above zero, and ``adversarial`` drops more on average;
6. future-state probes (one and two actions past the current offset) at the last checkpoint:
   lower 95% bound above the majority baseline and the control task at that offset, for every
   main feature.
"""

from __future__ import annotations

import pandas as pd

from tasks.report_data import (MAIN_FEATURES, MEAN_LAYER, PHASE_ORDER, PROBE_KINDS, RunData,
                               content_points, line_fit, pct, pick_kind, trend)

ACC_TARGET, R2_TARGET = 0.70, 0.80


def _row(n, target, criterion, measured, met):
    return {"target": f"{n}. {target}", "criterion": criterion, "measured": measured,
            "met": "no data" if met is None else ("yes" if met else "no")}


def _accuracy(d: RunData) -> dict:
    m = d.metric_frame()
    col = m["acc_spec_len6_10"].dropna() if "acc_spec_len6_10" in m else pd.Series(dtype=float)
    if col.empty:
        return _row(1, "generative accuracy", "lengths 6..10, 5 spec pairs, last checkpoint >= 70%", "", None)
    acc = float(col.iloc[-1])
    held = m["acc_all"].dropna() if "acc_all" in m else pd.Series(dtype=float)
    extra = f"; with held-out pairs (all lengths) {pct(float(held.iloc[-1]))}" if not held.empty else ""
    state = m["acc_spec_len6_10_state"].dropna() if "acc_spec_len6_10_state" in m else pd.Series(dtype=float)
    if not state.empty:
        extra += f"; comparing whole world states (markers under the robot too) {pct(float(state.iloc[-1]))}"
    return _row(1, "generative accuracy", "lengths 6..10, 5 spec pairs, last checkpoint >= 70%",
                f"{pct(acc)} at step {int(col.index[-1])}{extra}", acc >= ACC_TARGET)


def _phases(d: RunData) -> dict:
    ph = d.phases
    if ph.empty:
        return _row(2, "three phases", "babbling, syntax and semantics each start", "", None)
    start = {r.phase: r.start_step for r in ph.itertuples()}
    found = {p: start.get(p) for p in PHASE_ORDER}
    shown = ", ".join(f"{p} {'never' if s is None or pd.isna(s) else int(s)}" for p, s in found.items())
    return _row(2, "three phases", "babbling, syntax and semantics each start", shown,
                all(s is not None and not pd.isna(s) for s in found.values()))


def _baseline(d: RunData, step, feature, offset, kind, probe=None):
    c = d.controls
    if c.empty:
        return None
    sel = c[(c["step"] == step) & (c["feature"] == feature) & (c["offset"] == offset) & (c["kind"] == kind)]
    if probe is not None:
        sel = sel[sel["probe"] == probe]
    return float(sel["value"].mean()) if not sel.empty else None


def _current_probes(d: RunData) -> dict:
    crit = ("best kind rises; at the end mlp2 >= mlp1 >= linear, each CI above majority, control "
            "task, first probed checkpoint and the random-init model on the same programs")
    cur = d.probe_curve()
    if cur.empty or cur["step"].nunique() < 2:
        return _row(3, "current-state probes", crit, "", None)
    first, last = int(cur["step"].min()), int(cur["step"].max())
    ok, missing, parts = True, False, []
    for f in MAIN_FEATURES:
        cf = cur[cur["feature"] == f]
        end = cf[cf["step"] == last].set_index("probe")
        start = cf[cf["step"] == first].set_index("probe")
        kinds = [k for k in PROBE_KINDS if k in end.index]
        if not kinds:
            missing = True
            continue
        best = kinds[-1]
        rises = best in start.index and end.loc[best, "mean"] > start.loc[best, "mean"]
        means = [end.loc[k, "mean"] for k in kinds]
        ordered = all(a <= b for a, b in zip(means, means[1:]))
        above = True
        for k in kinds:
            floors = [_baseline(d, last, f, d.current, "majority"),
                      _baseline(d, last, f, d.current, "control_task", k),
                      start.loc[k, "mean"] if k in start.index else None,
                      _baseline(d, last, f, d.current, "random_init", k)]
            above &= all(end.loc[k, "ci_low"] > b for b in floors if b is not None)
        ok = ok and bool(rises and ordered and above)
        init = [_baseline(d, last, f, d.current, "random_init", k) for k in kinds]
        shown_init = "" if all(v is None for v in init) else \
            ", random-init " + "/".join("-" if v is None else pct(v) for v in init)
        parts.append(f"{f}: " + "/".join(pct(m) for m in means) + shown_init
                     + f" ({'rises' if rises else 'no rise'}, {'ordered' if ordered else 'not ordered'}, "
                     + f"{'above baselines' if above else 'not above all baselines'})")
    return _row(3, "current-state probes", crit, f"step {first} -> {last}; linear/mlp1/mlp2 " + "; ".join(parts),
                False if not ok else (None if missing else True))


def _r2(d: RunData) -> dict:
    pts = content_points(d)
    fit = line_fit(pts["acc_spec"], pts["semantic_content"]) if len(pts) else None
    crit = "R^2 of semantic content vs accuracy across checkpoints >= 0.8, content rising with accuracy"
    if fit is None:
        return _row(4, "semantic content tracks accuracy", crit, f"{len(pts)} checkpoints, no fit", None)
    r2, slope = fit
    return _row(4, "semantic content tracks accuracy", crit,
                f"R^2 = {r2:.3f} over {len(pts)} checkpoints, slope {slope:+.3f} ({trend(slope)})",
                r2 >= R2_TARGET and slope > 0)


def _interventions(d: RunData) -> dict:
    crit = "flip and adversarial drops > 0 (95% CI) for every main feature; adversarial > flip"
    iv = d.interventions
    iv = iv[(iv["offset"] == d.current) & (iv["layer"] == MEAN_LAYER)] if not iv.empty else iv
    kind = pick_kind(set(iv["probe"])) if not iv.empty else None
    if kind is None:
        return _row(5, "interventions", crit, "", None)
    iv = iv[(iv["probe"] == kind) & (iv["step"] == iv["step"].max()) & iv["feature"].isin(MAIN_FEATURES)]
    ok, mean = True, {}
    for alt in ("flip", "adversarial"):
        sel = iv[iv["semantics"] == alt]
        if sel.empty:
            return _row(5, "interventions", crit, f"no {alt} rows", None)
        mean[alt] = float(sel["content"].mean())
        ok &= bool((sel["ci_low"] > 0).all()) and sel["feature"].nunique() == len(MAIN_FEATURES)
    ok &= mean["adversarial"] > mean["flip"]
    shown = (f"{kind}, step {int(iv['step'].max())}: drop flip {100 * mean['flip']:+.1f} pp, "
             f"adversarial {100 * mean['adversarial']:+.1f} pp (mean of features)")
    return _row(5, "interventions", crit, shown, ok)


def _future(d: RunData) -> dict:
    ahead = [d.current + 1, d.current + 2]
    crit = (f"offsets {ahead[0]:+d}, {ahead[1]:+d} at the last checkpoint: CI above majority and control task, "
            "every main feature")
    allo = d.probe_curve(offset=None)
    fut = allo[allo["offset"].isin(ahead)] if not allo.empty else allo
    if fut.empty:
        return _row(6, "future-state probes", crit, "", None)
    last = int(fut["step"].max())
    kind = pick_kind(set(fut["probe"]))
    fut = fut[(fut["step"] == last) & (fut["probe"] == kind) & fut["feature"].isin(MAIN_FEATURES)]
    ok, parts = True, []
    for r in fut.itertuples():
        floors = [_baseline(d, last, r.feature, r.offset, "majority"),
                  _baseline(d, last, r.feature, r.offset, "control_task", kind)]
        above = all(r.ci_low > b for b in floors if b is not None)
        ok &= above
        parts.append(f"{r.feature} {r.offset:+d}: {pct(r.mean)} vs "
                     + "/".join("-" if b is None else pct(b) for b in floors))
    return _row(6, "future-state probes", crit, f"{kind}, step {last} (probe vs majority/control): "
                + "; ".join(parts), ok and len(parts) == 2 * len(MAIN_FEATURES))


def issue_targets(d: RunData) -> list[dict]:
    """One row per target of issue 7, in its order."""
    return [f(d) for f in (_accuracy, _phases, _current_probes, _r2, _interventions, _future)]
