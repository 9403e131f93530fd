"""This run's rows in ``results.duckdb``, and the slicing and formatting shared by the report
page (``tasks.report``) and its figures (``tasks.figures``).

Which rows belong to the run: ``runs.run_id -> runs.train_key``; checkpoint metrics and phases
by ``train_key``, probe rows by ``checkpoint_key`` among that training run's checkpoints; and of
those, when ``stage_runs`` names this run's evaluate, phases or probe keys, only the rows under
them, and the rows stored before stage keys were (key '') of checkpoints those do not cover.
Rows of one checkpoint left from several probe or evaluation configurations are averaged (the
page notes it). The semantic content measures are computed from the run's own interventions and
random-init controls, as its phases stage computed its ``semantic_content`` rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd

from probes.stats import proportion_ci
from tasks.results import ResultsDB
from tasks.probe_config import paper_probe
from tasks.stage_configs import MEAN_LAYER, current_offset, paper_activations

MAIN_FEATURES = ("direction", "rel_start", "facing_wall")
PROBE_KINDS = ("linear", "mlp1", "mlp2")
PREFERRED_KIND = "mlp1"
PLOT_SPLIT = "test"
ORIGINAL = "original"
PHASE_ORDER = ("babbling", "syntax", "semantics")
STAGE_ORDER = ("dataset", "train", "evaluate", "activations", "probes", "phases")
CURRENT = object()  # ``RunData.probe_curve``'s default offset: the run's current one
FEATURE_NAMES = {"direction": "facing direction", "rel_start": "position rel. to start",
                 "facing_wall": "facing a wall"}


# Fields that change how a run executes or is stored, not what is learned from what (any
# section's, or one section's as "section.field").
OPERATIONAL = {"device", "autocast", "seed", "shard_size", "ckpt_every", "ckpt_log_count", "micro_batch",
               "activations.batch_size"}


def setup_differences(run_config) -> list[dict]:
    """``[{"field", "this run", "paper"}]`` for every data, model, training, activations and probe
    field of the run's config that differs from the paper preset (``karel.DataConfig.paper()``,
    ``model.config.paper()``, ``tasks.stage_configs.paper_activations()`` / ``tasks.probe_config.paper_probe()``);
    operational fields (device, seeds, checkpoint schedule, ...) are left out."""
    from karel import DataConfig
    from model.config import paper

    cfg = json.loads(run_config) if isinstance(run_config, str) else (run_config or {})
    m, t = paper()
    reference = {"data": asdict(DataConfig.paper()), "model": asdict(m), "train": asdict(t),
                 "activations": asdict(paper_activations()), "probe": asdict(paper_probe())}
    rows = []
    for section, ref in reference.items():
        mine = cfg.get(section) or {}
        for name, want in ref.items():
            if name in OPERATIONAL or f"{section}.{name}" in OPERATIONAL or name not in mine:
                continue
            have = mine[name]
            if (list(have) if isinstance(have, (list, tuple)) else have) != (
                    list(want) if isinstance(want, (list, tuple)) else want):
                rows.append({"field": f"{section}.{name}", "this run": _show(have), "paper": _show(want)})
    return rows


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if len(v) < 12 else f"{v[0]}..{v[-1]} ({len(v)} values)"
    return str(v)


class RunData:
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
            elif self.run.get("status") != "finished":
                notes.append(f"run {run_id!r} did not finish (status {self.run.get('status')!r}): this report holds "
                             "the evaluations and probe grids it recorded before it stopped; rerun it to finish.")
        self.current = self._current_offset()
        self.stages = db.query("SELECT stage, key, status, seconds, finished_at, machine FROM stage_runs WHERE run_id = ?",
                               [run_id])
        tk = self.train_key
        empty = lambda t: db.query(f'SELECT * FROM "{t}" WHERE false')  # noqa: E731
        if tk is None:
            self.checkpoints = empty("checkpoints")
            self.metrics = empty("checkpoint_metrics")
            self.phases = empty("phases")
            self.summary = empty("probe_summary")
            self.controls = empty("controls")
            self.init_controls = self.controls
            self.interventions = empty("interventions")
            self.interventions_vs_init = empty("interventions_vs_init")
            return
        self.checkpoints = db.query(
            "SELECT * FROM checkpoints WHERE train_key = ? ORDER BY step", [tk])
        run_keys = set(self.stages["key"])
        self.metrics = _own(db.query("SELECT * FROM checkpoint_metrics WHERE train_key = ? ORDER BY step, metric",
                                     [tk]), "eval_key", run_keys)
        self.phases = _own(db.query("SELECT * FROM phases WHERE train_key = ?", [tk]), "phases_key", run_keys)
        self.summary = self._probe_rows(db, "probe_summary", tk, run_keys)
        controls = self._probe_rows(db, "controls", tk, run_keys)
        original = controls["semantics"].isna() | (controls["semantics"] == ORIGINAL)
        # the original grids' controls; and every grid's random-init rows, with their semantics
        self.controls = controls[original].drop(columns="semantics").reset_index(drop=True)
        self.init_controls = controls[controls["kind"] == "random_init"].reset_index(drop=True)
        # derived by the phases stage from the run's grids: its own grids' rows, then its own phases stage's
        self.interventions = _own(self._probe_rows(db, "interventions", tk, run_keys), "phases_key", run_keys)
        self.interventions_vs_init = _own(self._probe_rows(db, "interventions_vs_init", tk, run_keys),
                                          "phases_key", run_keys)
        self.metrics = self._own_content(self.metrics, tk)

    def _own_content(self, metrics: pd.DataFrame, tk: str) -> pd.DataFrame:
        """``metrics`` with this run's semantic content rows added (see the module)."""
        from tasks.phases import content_frame, content_metric_rows

        if self.interventions.empty:
            return metrics
        content = content_frame(self.interventions, self.init_controls, self.probe_features(), self.current)
        own = pd.DataFrame(content_metric_rows(content, tk))
        return pd.concat([metrics, own], ignore_index=True).sort_values(["step", "metric"]).reset_index(drop=True)

    def _config(self) -> dict:
        cfg = self.run.get("config") if self.run else None
        try:
            cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
        except ValueError:
            cfg = None
        return cfg if isinstance(cfg, dict) else {}

    def probe_features(self) -> tuple:
        """The run's ``probe.features`` (its config), else the main features."""
        try:
            return tuple(self._config()["probe"]["features"])
        except (KeyError, TypeError):
            return MAIN_FEATURES

    def offset_text(self) -> str:
        """How the page names the current offset: ``offset 0``, or ``offset -1`` with why."""
        if self.current == 0:
            return "offset 0"
        return f"offset {self.current}, the current state on fed reference programs"

    def _current_offset(self) -> int:
        """The offset of the current state for the run's ``activations.programs`` (see
        ``tasks.stage_configs.current_offset``); 0 when the config does not say."""
        programs = (self._config().get("activations") or {}).get("programs", "generated")
        return current_offset(programs)

    def _probe_rows(self, db: ResultsDB, table: str, tk: str, run_keys: set) -> pd.DataFrame:
        return _own(db.query(f'SELECT t.* FROM "{table}" t JOIN checkpoints c ON t.checkpoint_key = c.key '
                             "WHERE c.train_key = ?", [tk]), "probe_key", run_keys)

    # -- helpers
    def metric_frame(self) -> pd.DataFrame:
        """step x metric (wide), one row per checkpoint."""
        if self.metrics.empty:
            return pd.DataFrame()
        long = dedupe(self.metrics, ["step", "metric"], ["value"], self.notes, "checkpoint metrics",
                      stage="evaluation")
        return long.pivot_table(index="step", columns="metric", values="value").sort_index()

    def last_step(self) -> int | None:
        steps = []
        if not self.checkpoints.empty:
            steps.append(int(self.checkpoints["step"].max()))
        if not self.metrics.empty:
            steps.append(int(self.metrics["step"].max()))
        return max(steps) if steps else None

    def probe_curve(self, *, semantics=ORIGINAL, offset=CURRENT, layer=MEAN_LAYER, split=PLOT_SPLIT):
        """probe_summary rows for one slice (``offset``: ``CURRENT``, the run's current one; a
        number; or None for all), duplicates (several probe keys) averaged."""
        s = self.summary
        if s.empty:
            return s
        s = s[(s["semantics"] == semantics) & (s["split"] == split) & (s["layer"] == layer)]
        offset = self.current if offset is CURRENT else offset
        if offset is not None:
            s = s[s["offset"] == offset]
        return dedupe(s, ["step", "feature", "offset", "probe", "layer"],
                      ["mean", "ci_low", "ci_high"], self.notes, "probe_summary")


def _own(df: pd.DataFrame, column: str, run_keys: set) -> pd.DataFrame:
    """The rows of ``df`` whose stage key (``column``) this run recorded in ``stage_runs``, and,
    for each checkpoint none of those rows covers, its rows stored before the key was (key '',
    from a migration): a rerun that stopped partway keeps the older rows of the checkpoints it did
    not reach. A run that recorded stages but none of these rows' keys gets only such rows: the
    others belong to other runs of the same training (other code or probe settings). All rows
    only for a run that recorded no stages at all (rows planted without them)."""
    if df.empty:
        return df
    mine = df[column].isin(run_keys)
    if not mine.any():
        return (df[df[column] == ""] if run_keys else df).reset_index(drop=True)
    if "checkpoint_key" not in df:  # phases: no checkpoint left uncovered
        return df[mine].reset_index(drop=True)
    legacy = (df[column] == "") & ~df["checkpoint_key"].isin(set(df.loc[mine, "checkpoint_key"]))
    return df[mine | legacy].reset_index(drop=True)


def dedupe(df, keys, values, notes, what, stage="probe"):
    """``df`` sorted by ``keys``; rows sharing ``keys`` (several ``stage`` configurations)
    averaged over ``values``, with a note saying so. A mean of 95% bounds is no bound, so
    ``ci_low`` and ``ci_high`` become the widest of the configurations' (an interval that holds
    each): a verdict that a bound clears a baseline then holds for every configuration."""
    if df.empty:
        return df
    if df.duplicated(keys).any():
        widened = [v for v in ("ci_low", "ci_high") if v in values]
        msg = (f"{what}: some checkpoints have rows from several {stage} configurations; "
               "their values are averaged" + (", their 95% bounds the widest of theirs." if widened else "."))
        if msg not in notes:
            notes.append(msg)
        # a configuration without a bound (one seed: NaN) leaves the merged row without one
        widest = {"ci_low": lambda b: b.min(skipna=False), "ci_high": lambda b: b.max(skipna=False)}
        how = {v: widest.get(v, "mean") for v in values}
        df = df.groupby(keys, as_index=False).agg(how)
    return df.sort_values(keys).reset_index(drop=True)


def machine_label(machine: dict | str | None) -> str:
    """A ``meta.machine`` stamp in a few words: CPU, cores, torch threads (stamps since
    2026-12-05), torch, and the GPU it used."""
    m = json.loads(machine) if isinstance(machine, str) else machine
    if not isinstance(m, dict):  # a row recorded before schema 8: NULL
        return ""
    threads = [f"{m['torch_threads']} torch threads"] if m.get("torch_threads") else []
    return ", ".join([f"{m.get('cpu', '?')} x {m.get('cores', '?')}", *threads, f"torch {m.get('torch', '?')}",
                      *([m["cuda"]] if m.get("cuda") else [])])


def stage_times(d: RunData) -> list[dict]:
    """Per stage of the run (pipeline order): tasks computed and cached, their seconds summed
    (tasks overlap, so sums exceed the wall), the wall clock from the first computed task's
    start to the last one's end, and the machines that computed its artifacts (a cached task's
    too: an earlier run's); then the whole run's wall clock, from ``runs``."""
    s = d.stages
    if s.empty:
        return []
    rows = []
    for stage in sorted(set(s["stage"]), key=lambda x: (STAGE_ORDER.index(x) if x in STAGE_ORDER else 99, x)):
        g = s[s["stage"] == stage]
        done = g[g["status"] == "computed"]
        timed = done.dropna(subset=["seconds", "finished_at"])  # rows recorded before either was
        start = (timed["finished_at"] - pd.to_timedelta(timed["seconds"], unit="s")).min()
        wall = clock((timed["finished_at"].max() - start).total_seconds()) if not timed.empty else ""
        on = "; ".join(sorted(set(filter(None, map(machine_label, g["machine"])))))
        rows.append({"stage": stage, "computed": len(done), "cached": len(g) - len(done),
                     "seconds, summed": round(float(done["seconds"].sum()), 1), "wall": wall,
                     "computed on": on})
    run = d.run or {}
    began, ended = run.get("started_at"), run.get("finished_at")
    if pd.notna(began) and pd.notna(ended):
        rows.append({"stage": "whole run", "computed": "", "cached": "", "seconds, summed": "",
                     "wall": clock((pd.Timestamp(ended) - pd.Timestamp(began)).total_seconds()),
                     "computed on": ""})
    return rows


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def line_fit(x, y) -> tuple[float, float] | None:
    """(R^2, slope) of the least-squares line y ~ a x + b; None with fewer than 3 points or no
    spread in x. A flat y tracks nothing: (0, 0). R^2 alone cannot tell content that rises with
    accuracy from content that falls."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    if np.ptp(y) == 0:
        return 0.0, 0.0
    a, b = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (a * x + b)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot, float(a)


def r_squared(x, y) -> float | None:
    """R^2 of the least-squares line y ~ a x + b (see ``line_fit``)."""
    fit = line_fit(x, y)
    return None if fit is None else fit[0]


def trend(slope: float) -> str:
    if slope == 0:
        return "content flat as accuracy rises"
    return "content rises with accuracy" if slope > 0 else "content falls as accuracy rises"


def content_points(d: RunData, metric: str = "semantic_content") -> pd.DataFrame:
    """(step, acc_spec, ``metric``) of the checkpoints that have both."""
    m = d.metric_frame()
    if m.empty or "acc_spec" not in m or metric not in m:
        return pd.DataFrame(columns=["step", "acc_spec", metric])
    pts = m[["acc_spec", metric]].dropna().reset_index()
    return pts


def pick_kind(kinds) -> str | None:
    """The probe kind to show when a figure shows one: mlp1, else the largest known kind."""
    kinds = [k for k in kinds if isinstance(k, str)]
    if not kinds:
        return None
    if PREFERRED_KIND in kinds:
        return PREFERRED_KIND
    known = [k for k in PROBE_KINDS if k in kinds]
    return known[-1] if known else sorted(kinds)[0]


def ordered_features(df) -> list[str]:
    """The features present in ``df``: the main ones in their order, then the rest sorted."""
    present = list(dict.fromkeys(df["feature"])) if not df.empty else []
    main = [f for f in MAIN_FEATURES if f in present]
    return main + sorted(f for f in present if f not in MAIN_FEATURES)


def pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def pct_ci(v, n) -> str:
    """``pct(v)`` and, when ``n`` (how many specs ``v`` is a share of) is known, the share's
    Wilson 95% interval: one decoding per spec, so the spread over specs is all the noise."""
    if v is None or n is None or (isinstance(n, float) and math.isnan(n)) or math.isnan(v):
        return pct(v)
    low, high = proportion_ci(v, int(n))
    return f"{pct(v)} (95% CI {100 * low:.1f}-{100 * high:.1f}%, {int(n)} specs)"


def pp(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f} pp"


def num(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
