"""The report's matplotlib figures, drawn from a ``RunData`` (``tasks.report_data``).

Each ``fig_*(d, out)`` writes one PNG and returns ``(path or None, note or None)``: ``None`` for
a figure whose data is absent, with the note saying why. ``FIGURES`` lists them in page order as
``(file name, title, function)``.

* ``phases.png``: generative accuracy (spec / all pairs), diversity and perplexity vs step, with
  the phases of the ``phases`` table shaded.
* ``probe_accuracy.png``: probe accuracy vs step per main feature, one line per probe kind
  (original semantics, the current offset ``RunData.current``: 0, or -1 on fed reference
  programs; layer mean, test split), majority and control-task baselines dashed, the random-init
  control marked.
* ``probe_offsets.png``: the same for offsets -2..2, one probe kind (mlp1 when present).
* ``content_vs_accuracy.png``: semantic content vs generative accuracy across checkpoints, with
  the least-squares line and R^2.
* ``interventions.png``: probe accuracy under the original vs each alternative semantics at the
  last checkpoint with interventions (current offset, layer mean, mlp1 when present), 95% CIs.
* ``layers.png``: per-layer probe accuracy at the last checkpoint (when single layers were probed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.report_data import (FEATURE_NAMES, MEAN_LAYER, ORIGINAL, PHASE_ORDER, PLOT_SPLIT,
                               PROBE_KINDS, RunData, content_points, dedupe, num,
                               ordered_features, pct, pick_kind, r_squared)

PHASE_COLORS = {"babbling": "#f2d7d5", "syntax": "#fcf3cf", "semantics": "#d5f5e3"}
KIND_COLORS = {"linear": "tab:blue", "mlp1": "tab:orange", "mlp2": "tab:green"}


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


def _finish_feature_panels(fig, axes, feats, out: Path, suptitle: str,
                           xlabel: str = "training step") -> None:
    """Title, x label and 0-1.1 y range per feature panel, one y label, the shared legend, the
    figure title, and the PNG: the common ending of the one-panel-per-feature probe figures."""
    for ax, f in zip(axes[0], feats):
        ax.set_title(FEATURE_NAMES.get(f, f))
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.1)
    axes[0, 0].set_ylabel(f"probe accuracy ({PLOT_SPLIT})")
    _shared_legend(fig, axes[0])
    fig.suptitle(suptitle)
    fig.savefig(out, dpi=110)


def _shade_phases(ax, d: RunData, steps, label=True):
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


def fig_phases(d: RunData, out: Path):
    m = d.metric_frame()
    wanted = [c for c in ("acc_spec", "acc_all", "diversity") if c in m]
    if m.empty or not wanted:
        return None, "phase plot skipped: no checkpoint metrics (acc_spec, acc_all, diversity)."
    ppl = [c for c in ("ppl_program", "ppl_program_len6_10", "ppl_all") if c in m]
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
        looks = {"ppl_program": ("-o", "tab:purple", "perplexity (program tokens)"),
                 "ppl_program_len6_10": (":v", "tab:red", "perplexity (program tokens, 6..10 actions)"),
                 "ppl_all": ("--s", "tab:gray", "perplexity (all tokens)")}
        for c in ppl:
            col = m[c].dropna()
            style, color, label = looks[c]
            ax2.plot(col.index, col.values, style, ms=4, color=color, label=label)
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


def fig_probe_steps(d: RunData, out: Path):
    cur = d.probe_curve()
    if cur.empty:
        return None, "probe accuracy vs step skipped: no probe_summary rows (original semantics, " \
                     f"{d.offset_text()}, layer mean, {PLOT_SPLIT} split)."
    feats = ordered_features(cur)
    fig, axes = _new_fig(4.2 * len(feats), 4.4, 1, len(feats))
    c = d.controls
    c0 = c[c["offset"] == d.current] if not c.empty else c
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
    _finish_feature_panels(fig, axes, feats, out, "Probe accuracy vs training step "
                           f"(original semantics, {d.offset_text()}, layer mean)")
    return out, None


def fig_probe_offsets(d: RunData, out: Path):
    allo = d.probe_curve(offset=None)
    if allo.empty or allo["offset"].nunique() < 2:
        return None, "probe accuracy per offset skipped: fewer than two offsets probed."
    kind = pick_kind(set(allo["probe"]))
    allo = allo[allo["probe"] == kind]
    feats = ordered_features(allo)
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
            ahead = o - d.current
            name = "current" if ahead == 0 else (f"future {ahead:+d}" if ahead > 0 else f"past {ahead}")
            ax.plot(r["step"], r["mean"], "--o" if ahead < 0 else "-o", ms=3, color=cmap.get(o),
                    lw=2 if ahead == 0 else 1.2,
                    label=f"offset {o} ({name})")
    _finish_feature_panels(fig, axes, feats, out, f"Probe accuracy per offset ({kind} probe, "
                           "original semantics, layer mean)")
    return out, None


def fig_content(d: RunData, out: Path):
    pts = content_points(d)
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
    ax.set_title(f"Semantic content vs accuracy: R$^2$ = {num(r2)} (paper 0.878), "
                 f"n = {len(x)}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=110)
    return out, None if r2 is not None else "R^2 not computed: fewer than 3 points or no spread."


def fig_interventions(d: RunData, out: Path):
    iv = d.interventions
    if iv.empty:
        return None, "intervention bars skipped: no interventions rows."
    iv = iv[(iv["offset"] == d.current) & (iv["layer"] == MEAN_LAYER)]
    if iv.empty:
        return None, f"intervention bars skipped: no interventions at {d.offset_text()}, layer mean."
    kind = pick_kind(set(iv["probe"]))
    iv = iv[iv["probe"] == kind]
    step = int(iv["step"].max())
    iv = dedupe(iv[iv["step"] == step], ["feature", "semantics"],
                ["original", "alternative", "content", "ci_low", "ci_high"], d.notes,
                "interventions")
    feats = ordered_features(iv)
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
        ax.bar_label(bars, labels=[pct(v) for v in vals], fontsize=7, padding=2)
    ax.set_xticks(xs, [FEATURE_NAMES.get(f, f) for f in feats])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"probe accuracy ({kind}, offset {d.current})")
    ax.set_title(f"Probe retrained on original vs alternative semantics, step {step}\n"
                 "(error bars: 95% CI; for an alternative, the CI of its drop from original)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncols=len(alts) + 1)
    fig.savefig(out, dpi=110)
    return out, None


def fig_layers(d: RunData, out: Path):
    s = d.summary
    if s.empty:
        return None, "per-layer curves skipped: no probe_summary rows."
    s = s[(s["semantics"] == ORIGINAL) & (s["split"] == PLOT_SPLIT) & (s["layer"] >= 0)
          & (s["offset"] == d.current)]
    if s.empty:
        return None, "per-layer curves skipped: no single-layer (layer >= 0) probe rows."
    step = int(s["step"].max())
    s = dedupe(s[s["step"] == step], ["feature", "probe", "layer"], ["mean", "ci_low", "ci_high"],
               d.notes, "probe_summary")
    mean_rows = d.probe_curve()
    mean_rows = mean_rows[mean_rows["step"] == step]
    feats = ordered_features(s)
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
    _finish_feature_panels(fig, axes, feats, out, f"Probe accuracy per layer at step {step} "
                           f"(original semantics, {d.offset_text()})", xlabel="layer (0 = token embeddings)")
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
