"""The run report: one self-contained HTML page, every number read from DuckDB.

``build_report(ws_root, run_id, preset)`` reads ``<ws_root>/results.duckdb`` only (no stage
artifacts) and writes ``<ws_root>/reports/<run_id>/``: the PNG figures of ``tasks.figures`` and
``report.html``, which embeds them as base64 PNGs next to the key-numbers table beside the
paper's (``tasks.report_numbers``), probe accuracies per feature, and per-checkpoint metrics.

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
from tasks.phases import MEAN_FEATURE
from tasks.report_data import RunData, pct, pp, setup_differences, stage_times
from tasks.report_numbers import key_numbers
from tasks.report_targets import issue_targets
from tasks.results import ResultsDB


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
