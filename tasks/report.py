"""The run report: one self-contained HTML page, every number read from DuckDB.

``build_report(ws_root, run_id, preset)`` reads ``<ws_root>/results.duckdb`` only (no stage
artifacts) and writes ``<ws_root>/reports/<run_id>/``: the PNG figures of ``tasks.figures`` and
``report.html``, which embeds them as base64 PNGs next to the key-numbers table beside the
paper's (``shared/PAPER.md``), probe accuracies per feature, and per-checkpoint metrics.

A figure whose data is absent is skipped and the page says why. No Prefect import here: the
flow turns the returned ``table`` into a Prefect table artifact. Which rows belong to the run is
decided in ``tasks.report_data``.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.figures import FIGURES
from tasks.phases import CONTENT_PROBE, MEAN_FEATURE, init_drops
from tasks.report_data import (FEATURE_NAMES, MAIN_FEATURES, MEAN_LAYER, PHASE_ORDER,
                               PLOT_SPLIT, PROBE_KINDS, RunData, content_points, line_fit, num,
                               ordered_features, pct, pct_ci, pick_kind, pp, r_squared,
                               setup_differences, stage_times, trend)
from tasks.report_targets import issue_targets
from tasks.results import ResultsDB

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


# ---------------------------------------------------------------------------- numbers
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
    last = m.index.max() if not m.empty else None

    def final(metric):
        if m.empty or metric not in m or m[metric].dropna().empty:
            return None
        col = m[metric].dropna()
        return float(col.iloc[-1])

    step_txt = f" (step {last})" if last is not None else ""
    v = final("acc_spec")
    add("acc_spec", f"generative accuracy, 5 spec pairs, final checkpoint{step_txt}", v, pct_ci(v, final("n_specs")))
    v = final("acc_all")
    add("acc_all", "generative accuracy incl. 5 held-out pairs, final checkpoint", v, pct(v))
    v = final("acc_spec_len6_10")
    if v is not None:
        add("acc_spec_len6_10", "generative accuracy, lengths 6-10 (the paper's training lengths)", v,
            pct_ci(v, final("n_specs_len6_10")),
            paper="not reported")
    v = final("acc_spec_state")
    if v is not None:
        add("acc_spec_state", "generative accuracy, 5 spec pairs, comparing whole world states (also the "
            "markers under the robot, which the text hides; the paper compares the text)", v, pct(v),
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


# ---------------------------------------------------------------------------- html
def _html_table(rows: list[dict] | pd.DataFrame) -> str:
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    if not rows:
        return "<p><em>(empty)</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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


def _probe_detail(d: RunData) -> pd.DataFrame:
    cur = d.probe_curve()
    if cur.empty:
        return pd.DataFrame()
    step = cur["step"].max()
    cur = cur[cur["step"] == step]
    tab = cur.pivot_table(index="feature", columns="probe", values="mean", aggfunc="mean")
    tab = tab.map(pct) if hasattr(tab, "map") else tab.applymap(pct)
    tab = tab.reset_index()
    tab.insert(1, "step", int(step))
    c = d.controls
    if not c.empty:
        c = c[(c["offset"] == d.current) & (c["step"] == step)]
        for kind in ("majority", "control_task", "random_init", "selectivity"):
            ck = c[c["kind"] == kind]
            if kind == "majority":
                vals = ck.groupby("feature")["value"].mean()
                tab["majority"] = tab["feature"].map(lambda f: pct(vals.get(f)))
            else:
                for probe, g in ck.groupby("probe"):
                    vals = g.groupby("feature")["value"].mean()
                    tab[f"{kind} ({probe})"] = tab["feature"].map(
                        lambda f: pp(vals.get(f)) if kind == "selectivity"
                        else pct(vals.get(f)))
    return tab


def _beyond_init_detail(d: RunData) -> pd.DataFrame:
    """One row per alternative and feature at the last step of ``interventions_vs_init`` (the
    current offset), a column per probe kind: ``+x pp [lo, hi]``."""
    v = d.interventions_vs_init
    v = v[v["offset"] == d.current] if not v.empty else v
    if v.empty:
        return v
    v = v[v["step"] == v["step"].max()]
    rows = []
    last = lambda k: (k[0], k[1] == MEAN_FEATURE, k[1])  # noqa: E731  (the mean after its features)
    for (alt, feat), g in sorted(v.groupby(["semantics", "feature"]), key=lambda kg: last(kg[0])):
        shown = "mean of the main features" if feat == MEAN_FEATURE else feat
        row = {"alternative": alt, "feature": shown, "step": int(g["step"].iloc[0])}
        for r in g.sort_values("probe").itertuples():
            row[r.probe] = f"{pp(r.content)} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
        rows.append(row)
    return pd.DataFrame(rows)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}
.note{color:#8a4b00}code{background:#f4f4f4;padding:0 3px}
"""


def _write_html(path: Path, d: RunData, preset: str, table, targets, figures, notes) -> None:
    run = d.run or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>semprobe report "
             f"{html.escape(d.run_id)}</title><style>{_CSS}</style></head><body>",
             "<h1>semprobe report</h1>",
             "<p>Reproduction of Jin &amp; Rinard (ICML 2024), <em>Emergent Representations of "
             "Program Semantics in Language Models Trained on Programs</em>. Every number on this "
             "page is read from <code>results.duckdb</code>.</p>",
             _html_table([{"run": d.run_id, "preset": preset, "recorded preset": run.get("preset"),
                           "status": run.get("status"), "train key": d.train_key,
                           "checkpoints": len(d.checkpoints),
                           "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}])]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    diffs = setup_differences(run.get("config"))
    if diffs:
        parts += ["<h2>Setup differences from the paper</h2>",
                  "<p>Data, model, training, probed-spec and probe fields of this run that "
                  "differ from the <code>paper</code> preset (the reference's setup); device, "
                  "seeds and the checkpoint schedule are left out.</p>", _html_table(diffs)]
    parts += ["<h2>Issue 7 targets</h2>", "<p>What a laptop reproduction must show "
              "(<code>tasks/report_targets.py</code> states each criterion as checked).</p>",
              _html_table(targets)]
    times = stage_times(d)
    if times:
        parts += ["<h2>Time per stage</h2>", "<p>Tasks this run computed or found cached; seconds "
                  "summed over a stage's tasks (up to three run at once) and its wall clock, from "
                  "the first computed task's start to the last one's end.</p>", _html_table(times)]
    parts += [
              "<h2>Key numbers next to the paper</h2>", _html_table(table),
              "<p>Probe accuracy is the test-split mean over seeds of probes on the layer-mean "
              f"hidden state at the token that emits each action, {html.escape(d.offset_text())} "
              f"({'state after that action' if d.current == 0 else 'state after the action before it'}), "
              "original semantics, last probed checkpoint. Paper numbers from "
              "<code>shared/PAPER.md</code>; its probe numbers are second-hand.</p>"]
    detail = _probe_detail(d)
    if not detail.empty:
        parts += [f"<h2>Probe accuracy per feature (last checkpoint, {html.escape(d.offset_text())})</h2>",
                  _html_table(detail)]
    beyond = _beyond_init_detail(d)
    if not beyond.empty:
        parts += [f"<h2>Accuracy drops beyond the random-init states (last checkpoint, "
                  f"{html.escape(d.offset_text())})</h2>",
                  "<p>Original minus alternative test accuracy on the trained states, minus the same "
                  "difference on the random-init model's states over the same programs (which holds "
                  "the labels' base rates), paired by seed: mean [95% CI].</p>", _html_table(beyond)]
    for name, title, path_or_none in figures:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if path_or_none is None:
            parts.append("<p class='note'><em>Not drawn (see notes).</em></p>")
            continue
        b64 = base64.b64encode(Path(path_or_none).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
    m = d.metric_frame()
    if not m.empty:
        parts.append("<h2>Per-checkpoint metrics</h2>")
        parts.append(_html_table(m.reset_index()))
    parts.append("</body></html>")
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------- entry point
def build_report(ws_root: str, run_id: str, preset: str) -> dict:
    """Write the figures and ``report.html`` of ``run_id`` under ``<ws_root>/reports/<run_id>/``.

    Returns ``{"folder", "html", "figures": [png paths], "table": [{"metric", "this run",
    "paper"}], "numbers": {key: float | None}, "targets": [{"target", "criterion", "measured",
    "met"}]}``; ``table`` is the key-numbers table (strings, for a Prefect table artifact),
    ``numbers`` the raw values behind it, ``targets`` issue 7's targets as this run meets them.
    """
    db = ResultsDB(Path(ws_root) / "results.duckdb")
    folder = Path(ws_root) / "reports" / str(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    d = RunData(db, str(run_id), preset, notes)
    table, numbers = key_numbers(d)
    targets = issue_targets(d)
    drawn, figures = [], []
    for fname, title, fn in FIGURES:
        out = folder / fname
        try:
            path, note = fn(d, out)
        except Exception as e:  # a figure must never lose the report
            path, note = None, f"{title}: figure failed ({type(e).__name__}: {e})."
        if note:
            notes.append(note)
        if path is None and out.exists():
            out.unlink()  # a stale figure from an earlier report of this run
        drawn.append((fname, title, path))
        if path is not None:
            figures.append(str(path))
    html_path = folder / "report.html"
    _write_html(html_path, d, preset, table, targets, drawn, notes)
    return {"folder": str(folder), "html": str(html_path), "figures": figures, "table": table,
            "numbers": numbers, "targets": targets}


def export_reports(reports_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy each run's ``report.html`` (self-contained: figures inlined) under ``reports_dir`` into
    ``out_dir`` as ``report-<first 8 characters of the run id>.html``; returns the files written."""
    out = Path(out_dir)
    written = []
    for html_path in sorted(Path(reports_dir).glob("*/report.html")):
        dest = out / f"report-{html_path.parent.name[:8]}.html"
        out.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(html_path.read_bytes())
        written.append(dest)
    return written
