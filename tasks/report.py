"""The run report: PNG figures and one self-contained HTML page, every number read from DuckDB.

``build_report(ws_root, run_id, preset)`` reads ``<ws_root>/results.duckdb`` only (no stage
artifacts) and writes ``<ws_root>/reports/<run_id>/``:

* ``phases.png``: generative accuracy (spec / all pairs), diversity and perplexity vs step, with
  the phases of the ``phases`` table shaded.
* ``probe_accuracy.png``: probe accuracy vs step per main feature, one line per probe kind
  (original semantics, offset 0, layer mean, test split), majority and control-task baselines
  dashed, the random-init control marked.
* ``probe_offsets.png``: the same for offsets -2..2, one probe kind (mlp1 when present).
* ``content_vs_accuracy.png``: semantic content vs generative accuracy across checkpoints, with
  the least-squares line and R^2.
* ``interventions.png``: probe accuracy under the original vs each alternative semantics at the
  last checkpoint with interventions (offset 0, layer mean, mlp1 when present), 95% CIs.
* ``layers.png``: per-layer probe accuracy at the last checkpoint (when single layers were probed).
* ``report.html``: all of the above embedded as base64 PNGs, the key-numbers table next to the
  paper's (``shared/PAPER.md``), probe accuracies per feature, and per-checkpoint metrics.

A figure whose data is absent is skipped and the page says why. No Prefect import here: the
flow turns the returned ``table`` into a Prefect table artifact.

Which rows belong to the run: ``runs.run_id -> runs.train_key``; checkpoint metrics and phases
by ``train_key``; probe rows by ``checkpoint_key`` among that training run's checkpoints, and,
when ``stage_runs`` names probe keys for this run, only those probe keys. Rows of one checkpoint
left from several probe configurations are averaged (the page notes it).
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.results import ResultsDB

MEAN_LAYER = -1
MAIN_FEATURES = ("direction", "rel_start", "facing_wall")
PROBE_KINDS = ("linear", "mlp1", "mlp2")
PREFERRED_KIND = "mlp1"
PLOT_SPLIT = "test"
ORIGINAL = "original"
PHASE_ORDER = ("babbling", "syntax", "semantics")
PHASE_COLORS = {"babbling": "#f2d7d5", "syntax": "#fcf3cf", "semantics": "#d5f5e3"}
KIND_COLORS = {"linear": "tab:blue", "mlp1": "tab:orange", "mlp2": "tab:green"}
FEATURE_NAMES = {"direction": "facing direction", "rel_start": "position rel. to start",
                 "facing_wall": "facing a wall"}

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


# ---------------------------------------------------------------------------- reading
class _Data:
    """This run's rows, read once from DuckDB."""

    def __init__(self, db: ResultsDB, run_id: str, preset: str, notes: list[str]):
        self.notes = notes
        self.run_id = run_id
        self.preset = preset
        runs = db.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if runs.empty:
            notes.append(f"run {run_id!r} is not in the runs table; nothing to report.")
            self.run = None
            self.train_key = None
        else:
            self.run = runs.iloc[0].to_dict()
            self.train_key = self.run.get("train_key")
            if self.run.get("preset") and preset and self.run["preset"] != preset:
                notes.append(f"run {run_id!r} was recorded with preset {self.run['preset']!r}, "
                             f"the report was asked for preset {preset!r}.")
            if not isinstance(self.train_key, str) or not self.train_key:
                notes.append(f"run {run_id!r} has no training key (status "
                             f"{self.run.get('status')!r}); no checkpoints to report.")
                self.train_key = None
        tk = self.train_key
        empty = lambda t: db.query(f'SELECT * FROM "{t}" WHERE false')  # noqa: E731
        if tk is None:
            self.checkpoints = empty("checkpoints")
            self.metrics = empty("checkpoint_metrics")
            self.phases = empty("phases")
            self.summary = empty("probe_summary")
            self.controls = empty("controls")
            self.interventions = empty("interventions")
            return
        self.checkpoints = db.query(
            "SELECT * FROM checkpoints WHERE train_key = ? ORDER BY step", [tk])
        self.metrics = db.query(
            "SELECT * FROM checkpoint_metrics WHERE train_key = ? ORDER BY step, metric", [tk])
        self.phases = db.query("SELECT * FROM phases WHERE train_key = ?", [tk])
        run_keys = set(db.query("SELECT DISTINCT key FROM stage_runs WHERE run_id = ?",
                                [run_id])["key"])
        self.summary = self._probe_rows(db, "probe_summary", tk, run_keys)
        self.controls = self._probe_rows(db, "controls", tk, run_keys)
        self.interventions = self._probe_rows(db, "interventions", tk, run_keys)

    def _probe_rows(self, db: ResultsDB, table: str, tk: str, run_keys: set) -> pd.DataFrame:
        df = db.query(f'SELECT t.* FROM "{table}" t JOIN checkpoints c ON t.checkpoint_key = c.key '
                      "WHERE c.train_key = ?", [tk])
        if df.empty:
            return df
        mine = df["probe_key"].isin(run_keys)
        if mine.any():
            df = df[mine]
        return df.reset_index(drop=True)

    # -- helpers
    def metric_frame(self) -> pd.DataFrame:
        """step x metric (wide), one row per checkpoint."""
        if self.metrics.empty:
            return pd.DataFrame()
        wide = self.metrics.pivot_table(index="step", columns="metric", values="value",
                                        aggfunc="mean")
        return wide.sort_index()

    def last_step(self) -> int | None:
        steps = []
        if not self.checkpoints.empty:
            steps.append(int(self.checkpoints["step"].max()))
        if not self.metrics.empty:
            steps.append(int(self.metrics["step"].max()))
        return max(steps) if steps else None

    def probe_curve(self, *, semantics=ORIGINAL, offset=0, layer=MEAN_LAYER, split=PLOT_SPLIT):
        """probe_summary rows for one slice, duplicates (several probe keys) averaged."""
        s = self.summary
        if s.empty:
            return s
        s = s[(s["semantics"] == semantics) & (s["split"] == split) & (s["layer"] == layer)]
        if offset is not None:
            s = s[s["offset"] == offset]
        return _dedupe(s, ["step", "feature", "offset", "probe", "layer"],
                       ["mean", "ci_low", "ci_high"], self.notes, "probe_summary")


def _dedupe(df, keys, values, notes, what):
    if df.empty:
        return df
    if df.duplicated(keys).any():
        msg = (f"{what}: some checkpoints have rows from several probe configurations; "
               "their values are averaged.")
        if msg not in notes:
            notes.append(msg)
        df = df.groupby(keys, as_index=False)[values].mean()
    return df.sort_values(keys).reset_index(drop=True)


# ---------------------------------------------------------------------------- numbers
def r_squared(x, y) -> float | None:
    """R^2 of the least-squares line y ~ a x + b; None with fewer than 3 points or no spread."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    a, b = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (a * x + b)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot


def _content_points(d: _Data) -> pd.DataFrame:
    m = d.metric_frame()
    if m.empty or "acc_spec" not in m or "semantic_content" not in m:
        return pd.DataFrame(columns=["step", "acc_spec", "semantic_content"])
    pts = m[["acc_spec", "semantic_content"]].dropna().reset_index()
    return pts


def _pick_kind(kinds) -> str | None:
    kinds = [k for k in kinds if isinstance(k, str)]
    if not kinds:
        return None
    if PREFERRED_KIND in kinds:
        return PREFERRED_KIND
    known = [k for k in PROBE_KINDS if k in kinds]
    return known[-1] if known else sorted(kinds)[0]


def _features(df) -> list[str]:
    present = list(dict.fromkeys(df["feature"])) if not df.empty else []
    main = [f for f in MAIN_FEATURES if f in present]
    return main + sorted(f for f in present if f not in MAIN_FEATURES)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _pp(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f} pp"


def _num(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def key_numbers(d: _Data) -> tuple[list[dict], dict]:
    """The key-numbers table (metric, this run, paper) and the raw values behind it."""
    rows: list[dict] = []
    values: dict[str, float | None] = {}

    def add(key, label, value, shown, paper=None):
        values[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)
        if paper is None:
            paper = _pct(PAPER[key]) if key in PAPER and key != "r2" else (
                _num(PAPER[key]) if key in PAPER else PAPER_TEXT.get(key, "not reported"))
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
    add("acc_spec", f"generative accuracy, 5 spec pairs, final checkpoint{step_txt}", v, _pct(v))
    v = final("acc_all")
    add("acc_all", "generative accuracy incl. 5 held-out pairs, final checkpoint", v, _pct(v))
    v = final("acc_spec_len6_10")
    if v is not None:
        add("acc_spec_len6_10", "generative accuracy, lengths 6-10 (training lengths)", v, _pct(v),
            paper="not reported")

    # probes at the last checkpoint with probe results (original semantics, offset 0, layer mean)
    cur = d.probe_curve()
    feats = [f for f in MAIN_FEATURES if f in set(cur["feature"])] if not cur.empty else []
    pstep = int(cur["step"].max()) if not cur.empty else None
    for kind in PROBE_KINDS:
        sel = cur[(cur["step"] == pstep) & (cur["probe"] == kind) & cur["feature"].isin(feats)] \
            if pstep is not None else cur
        have = [f for f in feats if f in set(sel["feature"])] if not sel.empty else []
        v = float(sel["mean"].mean()) if not sel.empty else None
        what = "mean of " + ", ".join(have) if have else "no data"
        add(f"probe.{kind}", f"{kind} probe accuracy, current state (offset 0, layer mean, "
            f"{PLOT_SPLIT}; {what}){'' if pstep is None else f', step {pstep}'}", v, _pct(v))

    pts = _content_points(d)
    r2 = r_squared(pts["acc_spec"], pts["semantic_content"]) if len(pts) else None
    add("r2", f"R^2, semantic content vs generative accuracy ({len(pts)} checkpoints)", r2,
        _num(r2))

    # majority baselines (offset 0) at the last checkpoint that has them
    c = d.controls
    maj = c[(c["kind"] == "majority") & (c["offset"] == 0)] if not c.empty else c
    mstep = int(maj["step"].max()) if not maj.empty else None
    for f in ("direction", "facing_wall", "rel_start"):
        sel = maj[(maj["step"] == mstep) & (maj["feature"] == f)] if mstep is not None else maj
        v = float(sel["value"].mean()) if not sel.empty else None
        add(f"majority.{f}", f"majority baseline, {FEATURE_NAMES[f]} (offset 0)", v, _pct(v))

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
    iv0 = iv[(iv["offset"] == 0) & (iv["layer"] == MEAN_LAYER)] if not iv.empty else iv
    kind = _pick_kind(set(iv0["probe"])) if not iv0.empty else None
    alts = sorted(set(iv0["semantics"])) if not iv0.empty else []
    for alt in ["flip", "adversarial"] + [a for a in alts if a not in ("flip", "adversarial")]:
        sel = iv0[(iv0["semantics"] == alt) & (iv0["probe"] == kind)] if kind else iv0.iloc[:0]
        if not sel.empty:
            sel = sel[sel["step"] == sel["step"].max()]
            sel = sel[sel["feature"].isin(MAIN_FEATURES)] if sel["feature"].isin(
                MAIN_FEATURES).any() else sel
        v = float(sel["content"].mean()) if not sel.empty else None
        what = (f"{kind}, mean of {', '.join(_features(sel))}, step "
                f"{int(sel['step'].iloc[0])}") if not sel.empty else "no data"
        add(f"content.{alt}", f"accuracy drop under {alt} semantics (original - {alt}; {what})",
            v, _pp(v))
    return rows, values


# ---------------------------------------------------------------------------- figures
def _new_fig(w, h, nrows=1, ncols=1, **kw):
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _shared_legend(fig, axes, ncols=4):
    """One legend under the panels, with each label once (keeps the data uncovered)."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", fontsize=8,
                   ncols=min(ncols, len(seen)))


def _shade_phases(ax, d: _Data, steps, label=True):
    ph = d.phases
    if ph.empty or not len(steps):
        return
    ph = ph.dropna(subset=["start_step"])
    ph = ph.assign(order=ph["phase"].map({p: i for i, p in enumerate(PHASE_ORDER)}).fillna(99))
    ph = ph.sort_values(["start_step", "order"])
    end_all = max(steps)
    starts = list(ph.itertuples())
    for i, r in enumerate(starts):
        lo = float(r.start_step)
        hi = float(starts[i + 1].start_step) if i + 1 < len(starts) else float(end_all)
        if hi <= lo and i + 1 < len(starts):
            continue
        hi = max(hi, lo)
        ax.axvspan(lo, hi if hi > lo else lo + 1e-9, color=PHASE_COLORS.get(r.phase, "#eeeeee"),
                   alpha=0.8, zorder=0, lw=0)
        if label:
            ax.text((lo + hi) / 2 if hi > lo else lo, 0.98, r.phase, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="0.3")


def fig_phases(d: _Data, out: Path):
    m = d.metric_frame()
    wanted = [c for c in ("acc_spec", "acc_all", "diversity") if c in m]
    if m.empty or not wanted:
        return None, "phase plot skipped: no checkpoint metrics (acc_spec, acc_all, diversity)."
    ppl = [c for c in ("ppl_program", "ppl_all") if c in m]
    fig, axes = _new_fig(8, 6 if ppl else 3.6, 2 if ppl else 1, 1, sharex=True)
    steps = list(m.index)
    ax = axes[0, 0]
    _shade_phases(ax, d, steps)
    labels = {"acc_spec": "accuracy (5 spec pairs)", "acc_all": "accuracy (all 10 pairs)",
              "diversity": "diversity (distinct programs / specs)"}
    for c, style in zip(wanted, ("-o", "--s", ":^")):
        col = m[c].dropna()
        ax.plot(col.index, col.values, style, ms=4, label=labels[c])
    ax.set_ylim(-0.02, 1.12)
    ax.set_ylabel("fraction")
    ax.legend(loc="center left", fontsize=8)
    ax.set_title(f"Training phases, run {d.run_id[:8]}" + (
        "" if not d.phases.dropna(subset=["start_step"]).empty else " (no phases recorded)"))
    if ppl:
        ax2 = axes[1, 0]
        _shade_phases(ax2, d, steps, label=False)
        for c, style in zip(ppl, ("-o", "--s")):
            col = m[c].dropna()
            ax2.plot(col.index, col.values, style, ms=4, color="tab:purple" if c == "ppl_program"
                     else "tab:gray", label={"ppl_program": "perplexity (program tokens)",
                                             "ppl_all": "perplexity (all tokens)"}[c])
        vals = m[ppl].to_numpy(float)
        vals = vals[np.isfinite(vals)]
        if len(vals) and vals.min() > 0 and vals.max() / vals.min() > 20:
            ax2.set_yscale("log")
        ax2.set_ylabel("perplexity")
        ax2.legend(loc="upper right", fontsize=8)
        ax2.set_xlabel("training step")
    else:
        ax.set_xlabel("training step")
    fig.savefig(out, dpi=110)
    note = None if ppl else "phase plot: no perplexity metrics recorded."
    return out, note


def fig_probe_steps(d: _Data, out: Path):
    cur = d.probe_curve()
    if cur.empty:
        return None, "probe accuracy vs step skipped: no probe_summary rows (original semantics, " \
                     f"offset 0, layer mean, {PLOT_SPLIT} split)."
    feats = _features(cur)
    fig, axes = _new_fig(4.2 * len(feats), 4.4, 1, len(feats))
    c = d.controls
    c0 = c[c["offset"] == 0] if not c.empty else c
    steps = sorted(set(cur["step"]))
    for ax, f in zip(axes[0], feats):
        _shade_phases(ax, d, steps)
        cf = cur[cur["feature"] == f]
        for kind in [k for k in PROBE_KINDS if k in set(cf["probe"])] + sorted(
                set(cf["probe"]) - set(PROBE_KINDS)):
            r = cf[cf["probe"] == kind].sort_values("step")
            color = KIND_COLORS.get(kind)
            line, = ax.plot(r["step"], r["mean"], "-o", ms=4, color=color, label=kind)
            if r["ci_low"].notna().any():
                ax.fill_between(r["step"], r["ci_low"], r["ci_high"], color=line.get_color(),
                                alpha=0.15, lw=0)
            if not c0.empty:
                ct = c0[(c0["feature"] == f) & (c0["kind"] == "control_task") & (c0["probe"] == kind)]
                ct = ct.groupby("step", as_index=False)["value"].mean()
                if not ct.empty:
                    ax.plot(ct["step"], ct["value"], "--", color=line.get_color(), alpha=0.6, lw=1,
                            label=f"{kind} control task")
                ri = c0[(c0["feature"] == f) & (c0["kind"] == "random_init") & (c0["probe"] == kind)]
                if not ri.empty:
                    x = ri["step"].fillna(0).astype(float)
                    ax.plot(x, ri["value"], "X", ms=9, color=line.get_color(), mec="k", mew=0.5,
                            label=f"{kind} random-init model")
        if not c0.empty:
            mj = c0[(c0["feature"] == f) & (c0["kind"] == "majority")]
            mj = mj.groupby("step", as_index=False)["value"].mean()
            if not mj.empty:
                ax.plot(mj["step"], mj["value"], "--", color="k", lw=1.2, label="majority")
        ax.set_title(FEATURE_NAMES.get(f, f))
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.1)
    axes[0, 0].set_ylabel(f"probe accuracy ({PLOT_SPLIT})")
    _shared_legend(fig, axes[0])
    fig.suptitle("Probe accuracy vs training step (original semantics, offset 0, layer mean)")
    fig.savefig(out, dpi=110)
    return out, None


def fig_probe_offsets(d: _Data, out: Path):
    allo = d.probe_curve(offset=None)
    if allo.empty or allo["offset"].nunique() < 2:
        return None, "probe accuracy per offset skipped: fewer than two offsets probed."
    kind = _pick_kind(set(allo["probe"]))
    allo = allo[allo["probe"] == kind]
    feats = _features(allo)
    fig, axes = _new_fig(4.2 * len(feats), 4.4, 1, len(feats))
    offsets = sorted(set(allo["offset"]))
    cmap = {o: c for o, c in zip(offsets, ["#2166ac", "#67a9cf", "#000000", "#ef8a62", "#b2182b",
                                           "#7b3294", "#008837"])}
    for ax, f in zip(axes[0], feats):
        _shade_phases(ax, d, sorted(set(allo["step"])))
        for o in offsets:
            r = allo[(allo["feature"] == f) & (allo["offset"] == o)].sort_values("step")
            if r.empty:
                continue
            name = "current" if o == 0 else (f"future +{o}" if o > 0 else f"past {o}")
            ax.plot(r["step"], r["mean"], "--o" if o < 0 else "-o", ms=3, color=cmap.get(o),
                    lw=2 if o == 0 else 1.2,
                    label=f"offset {o} ({name})")
        ax.set_title(FEATURE_NAMES.get(f, f))
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.1)
    axes[0, 0].set_ylabel(f"probe accuracy ({PLOT_SPLIT})")
    _shared_legend(fig, axes[0])
    fig.suptitle(f"Probe accuracy per offset ({kind} probe, original semantics, layer mean)")
    fig.savefig(out, dpi=110)
    return out, None


def fig_content(d: _Data, out: Path):
    pts = _content_points(d)
    if len(pts) < 2:
        return None, ("semantic content vs accuracy skipped: fewer than two checkpoints with both "
                      "acc_spec and semantic_content.")
    x, y = pts["acc_spec"].to_numpy(float), pts["semantic_content"].to_numpy(float)
    r2 = r_squared(x, y)
    fig, axes = _new_fig(5.5, 4.2)
    ax = axes[0, 0]
    sc = ax.scatter(x, y, c=pts["step"], cmap="viridis", s=40, zorder=3)
    fig.colorbar(sc, ax=ax, label="training step")
    if r2 is not None:
        a, b = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, a * xs + b, "r-", lw=1.2, label=f"least squares: y = {a:.3f} x + {b:.3f}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("generative accuracy (acc_spec)")
    ax.set_ylabel("semantic content (original - alternative)")
    ax.set_title(f"Semantic content vs accuracy: R$^2$ = {_num(r2)} (paper 0.878), "
                 f"n = {len(x)}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=110)
    return out, None if r2 is not None else "R^2 not computed: fewer than 3 points or no spread."


def fig_interventions(d: _Data, out: Path):
    iv = d.interventions
    if iv.empty:
        return None, "intervention bars skipped: no interventions rows."
    iv = iv[(iv["offset"] == 0) & (iv["layer"] == MEAN_LAYER)]
    if iv.empty:
        return None, "intervention bars skipped: no interventions at offset 0, layer mean."
    kind = _pick_kind(set(iv["probe"]))
    iv = iv[iv["probe"] == kind]
    step = int(iv["step"].max())
    iv = _dedupe(iv[iv["step"] == step], ["feature", "semantics"],
                 ["original", "alternative", "content", "ci_low", "ci_high"], d.notes,
                 "interventions")
    feats = _features(iv)
    alts = [a for a in ("flip", "adversarial") if a in set(iv["semantics"])] + sorted(
        set(iv["semantics"]) - {"flip", "adversarial"})
    orig_ci = d.probe_curve()
    orig_ci = orig_ci[(orig_ci["step"] == step) & (orig_ci["probe"] == kind)]
    fig, axes = _new_fig(min(12, max(6, 1.1 * len(feats) * (len(alts) + 1))), 4)
    ax = axes[0, 0]
    width = 0.8 / (len(alts) + 1)
    colors = ["0.35", "tab:orange", "tab:red", "tab:purple", "tab:brown"]
    xs = np.arange(len(feats))
    for j, name in enumerate([ORIGINAL] + alts):
        vals, lo, hi = [], [], []
        for f in feats:
            rows = iv[iv["feature"] == f]
            if name == ORIGINAL:
                v = rows["original"].mean() if not rows.empty else np.nan
                oc = orig_ci[orig_ci["feature"] == f]
                if not oc.empty and oc["ci_low"].notna().all():
                    lo.append(v - oc["ci_low"].mean())
                    hi.append(oc["ci_high"].mean() - v)
                else:
                    lo.append(0.0)
                    hi.append(0.0)
            else:
                r = rows[rows["semantics"] == name]
                v = r["alternative"].mean() if not r.empty else np.nan
                # alternative = original - content, so its interval is original - content CI
                if not r.empty and r["ci_low"].notna().all():
                    orig = r["original"].mean()
                    lo.append(v - (orig - r["ci_high"].mean()))
                    hi.append((orig - r["ci_low"].mean()) - v)
                else:
                    lo.append(0.0)
                    hi.append(0.0)
            vals.append(v)
        err = np.clip(np.array([lo, hi], float), 0, None)
        bars = ax.bar(xs + (j - len(alts) / 2) * width, vals, width, yerr=err, capsize=3,
                      color=colors[j % len(colors)], label=name)
        ax.bar_label(bars, labels=[_pct(v) for v in vals], fontsize=7, padding=2)
    ax.set_xticks(xs, [FEATURE_NAMES.get(f, f) for f in feats])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"probe accuracy ({kind}, offset 0)")
    ax.set_title(f"Probe retrained on original vs alternative semantics, step {step}\n"
                 "(error bars: 95% CI; for an alternative, the CI of its drop from original)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncols=len(alts) + 1)
    fig.savefig(out, dpi=110)
    return out, None


def fig_layers(d: _Data, out: Path):
    s = d.summary
    if s.empty:
        return None, "per-layer curves skipped: no probe_summary rows."
    s = s[(s["semantics"] == ORIGINAL) & (s["split"] == PLOT_SPLIT) & (s["layer"] >= 0)
          & (s["offset"] == 0)]
    if s.empty:
        return None, "per-layer curves skipped: no single-layer (layer >= 0) probe rows."
    step = int(s["step"].max())
    s = _dedupe(s[s["step"] == step], ["feature", "probe", "layer"], ["mean", "ci_low", "ci_high"],
                d.notes, "probe_summary")
    mean_rows = d.probe_curve()
    mean_rows = mean_rows[mean_rows["step"] == step]
    feats = _features(s)
    fig, axes = _new_fig(4.2 * len(feats), 3.6, 1, len(feats))
    for ax, f in zip(axes[0], feats):
        for kind in sorted(set(s["probe"]), key=lambda k: (k not in PROBE_KINDS, k)):
            r = s[(s["feature"] == f) & (s["probe"] == kind)].sort_values("layer")
            if r.empty:
                continue
            line, = ax.plot(r["layer"], r["mean"], "-o", ms=3, color=KIND_COLORS.get(kind),
                            label=kind)
            if r["ci_low"].notna().any():
                ax.fill_between(r["layer"], r["ci_low"], r["ci_high"], color=line.get_color(),
                                alpha=0.15, lw=0)
            mr = mean_rows[(mean_rows["feature"] == f) & (mean_rows["probe"] == kind)]
            if not mr.empty:
                ax.axhline(float(mr["mean"].mean()), ls=":", color=line.get_color(), lw=1,
                           label=f"{kind}, layer mean")
        ax.set_title(FEATURE_NAMES.get(f, f))
        ax.set_xlabel("layer (0 = token embeddings)")
        ax.set_ylim(0, 1.1)
    axes[0, 0].set_ylabel(f"probe accuracy ({PLOT_SPLIT})")
    _shared_legend(fig, axes[0])
    fig.suptitle(f"Probe accuracy per layer at step {step} (original semantics, offset 0)")
    fig.savefig(out, dpi=110)
    return out, None


FIGURES = [
    ("phases.png", "Training phases", fig_phases),
    ("probe_accuracy.png", "Probe accuracy vs training step", fig_probe_steps),
    ("probe_offsets.png", "Probe accuracy per offset (past / current / future states)",
     fig_probe_offsets),
    ("content_vs_accuracy.png", "Semantic content vs generative accuracy", fig_content),
    ("interventions.png", "Semantic probing interventions", fig_interventions),
    ("layers.png", "Probe accuracy per layer", fig_layers),
]


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


def _probe_detail(d: _Data) -> pd.DataFrame:
    cur = d.probe_curve()
    if cur.empty:
        return pd.DataFrame()
    step = cur["step"].max()
    cur = cur[cur["step"] == step]
    tab = cur.pivot_table(index="feature", columns="probe", values="mean", aggfunc="mean")
    tab = tab.map(_pct) if hasattr(tab, "map") else tab.applymap(_pct)
    tab = tab.reset_index()
    tab.insert(1, "step", int(step))
    c = d.controls
    if not c.empty:
        c = c[(c["offset"] == 0) & (c["step"] == step)]
        for kind in ("majority", "control_task", "selectivity"):
            ck = c[c["kind"] == kind]
            if kind == "majority":
                vals = ck.groupby("feature")["value"].mean()
                tab["majority"] = tab["feature"].map(lambda f: _pct(vals.get(f)))
            else:
                for probe, g in ck.groupby("probe"):
                    vals = g.groupby("feature")["value"].mean()
                    tab[f"{kind} ({probe})"] = tab["feature"].map(
                        lambda f: _pct(vals.get(f)) if kind == "control_task"
                        else _pp(vals.get(f)))
    return tab


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}
.note{color:#8a4b00}code{background:#f4f4f4;padding:0 3px}
"""


def _write_html(path: Path, d: _Data, preset: str, table, figures, notes) -> None:
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
    parts += ["<h2>Key numbers next to the paper</h2>", _html_table(table),
              "<p>Probe accuracy is the test-split mean over seeds of probes on the layer-mean "
              "hidden state at the token that emits each action, offset 0 (state after that "
              "action), original semantics, last probed checkpoint. Paper numbers from "
              "<code>shared/PAPER.md</code>; its probe numbers are second-hand.</p>"]
    detail = _probe_detail(d)
    if not detail.empty:
        parts += ["<h2>Probe accuracy per feature (last checkpoint, offset 0)</h2>",
                  _html_table(detail)]
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
    "paper"}], "numbers": {key: float | None}}``; ``table`` is the key-numbers table (strings,
    for a Prefect table artifact), ``numbers`` the raw values behind it.
    """
    db = ResultsDB(Path(ws_root) / "results.duckdb")
    folder = Path(ws_root) / "reports" / str(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    d = _Data(db, str(run_id), preset, notes)
    table, numbers = key_numbers(d)
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
    _write_html(html_path, d, preset, table, drawn, notes)
    return {"folder": str(folder), "html": str(html_path), "figures": figures, "table": table,
            "numbers": numbers}
