"""tasks.report: figures and HTML from a synthetic results database, numbers traced to DuckDB."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tasks import report
from tasks.report import build_report
from tasks.phases import MEAN_FEATURE
from tasks.results import ResultsDB

from report_db import RUN, STEPS, TK, populate, row, ws  # noqa: F401 (ws: a fixture)


def test_full_report(ws):
    root, db = ws
    out = build_report(str(root), RUN, "smoke")
    folder = Path(out["folder"])
    assert folder == root / "reports" / RUN
    names = sorted(Path(p).name for p in out["figures"])
    assert names == sorted(["phases.png", "probe_accuracy.png", "probe_offsets.png",
                            "content_vs_accuracy.png", "interventions.png", "layers.png"])
    for p in out["figures"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = Path(out["html"]).read_text()
    assert html.count("data:image/png;base64,") == 6
    assert "<table>" in html and "Notes" not in html
    assert "random_init (mlp1)" in html and "63.0%" in html  # the random-init control, facing_wall
    assert {tuple(r) for r in out["table"]} == {("metric", "this run", "paper")}

    # R^2 equals a numpy fit on the same DB rows
    # (semantic content: mlp1, offset 0, layer mean, mean over features and alternatives)
    pts = db.query("SELECT a.value AS x, avg(i.content) AS y FROM checkpoint_metrics a JOIN "
                   "interventions i USING (checkpoint_key) WHERE a.train_key = ? AND "
                   "a.metric = 'acc_spec' AND i.probe = 'mlp1' AND i.\"offset\" = 0 AND i.layer = -1 "
                   "GROUP BY a.checkpoint_key, a.value", [TK])
    x, y = pts["x"].to_numpy(), pts["y"].to_numpy()
    assert len(x) == len(STEPS)
    yhat = np.polyval(np.polyfit(x, y, 1), x)
    r2 = 1 - ((y - yhat) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert out["numbers"]["r2"] == pytest.approx(r2, abs=1e-12)
    assert row(out["table"], "R^2")["this run"] == f"{r2:.3f}"
    assert row(out["table"], "R^2")["paper"] == "0.878"

    t = out["table"]
    assert row(t, "generative accuracy, 5 spec")["this run"] == "85.0%"
    assert row(t, "generative accuracy, 5 spec")["paper"] == "92.4%"
    assert row(t, "majority baseline, facing direction")["this run"] == "25.0%"
    assert row(t, "majority baseline, facing direction")["paper"] == "25.5%"
    assert row(t, "syntax phase")["this run"].startswith("200 ")
    assert row(t, "semantics phase")["this run"].startswith("600 ")
    # probe accuracy: mean over the three main features at the last step, offset 0, test split
    expect = db.query("SELECT avg(mean) AS m FROM probe_summary WHERE step = 800 AND probe = "
                      "'mlp1' AND \"offset\" = 0 AND layer = -1 AND split = 'test' AND "
                      "semantics = 'original'")["m"][0]
    assert out["numbers"]["probe.mlp1"] == pytest.approx(expect)
    assert "direction, rel_start, facing_wall" in row(t, "mlp1 probe")["metric"]
    assert out["numbers"]["content.flip"] == pytest.approx(0.1 * 0.85 ** 2)
    assert out["numbers"]["content.adversarial"] == pytest.approx(0.2 * 0.85 ** 2)
    adv = row(t, "accuracy drop under adv")["metric"]
    assert "mlp1, mean of direction, rel_start, facing_wall, step 800" in adv
    assert "the other training run" not in html


def test_numbers_follow_the_db(ws, monkeypatch):
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])  # only the table matters here (and it is faster)
    first = build_report(str(root), RUN, "smoke")
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck800", eval_key="ev800", train_key=TK, step=800,
                                          metric="acc_spec", value=0.5)])
    db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                feature="facing_wall", offset=0, kind="majority", probe="none",
                                value=0.7)])
    second = build_report(str(root), RUN, "smoke")
    assert row(second["table"], "generative accuracy, 5 spec")["this run"] == "50.0%"
    assert row(second["table"], "majority baseline, facing a wall")["this run"] == "70.0%"
    assert second["numbers"]["r2"] != first["numbers"]["r2"]
    changed = [a["metric"] for a, b in zip(first["table"], second["table"]) if a != b]
    assert len(changed) == 4, changed  # accuracy, majority, R^2 of content and of probe accuracy


def test_empty_db_still_reports(tmp_path):
    root = tmp_path / "ws"
    out = build_report(str(root), "nope", "cpu")
    html = Path(out["html"]).read_text()
    assert out["figures"] == []
    assert "not in the runs table" in html and "skipped" in html
    assert all(r["this run"] in ("n/a", "no data") for r in out["table"])
    assert "92.4%" in html  # the paper column is still there


def test_partial_db_notes_missing_parts(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    db = ResultsDB(root / "results.duckdb")
    populate(db, steps=STEPS[:2], layers=False, interventions=False, phases=False)
    out = build_report(str(root), RUN, "smoke")
    names = {Path(p).name for p in out["figures"]}
    assert "phases.png" in names and "probe_accuracy.png" in names
    assert "interventions.png" not in names and "layers.png" not in names
    html = Path(out["html"]).read_text()
    assert "intervention bars skipped" in html and "per-layer curves skipped" in html
    # no interventions: no semantic content of this run (another run's stored values do not count)
    assert "semantic content vs accuracy skipped" in html
    assert row(out["table"], "R^2")["this run"] == "n/a"
    assert row(out["table"], "syntax phase")["this run"] == "no data"
    # a phase that never started: NULL start_step
    db.upsert("phases", [dict(phases_key="ph", train_key=TK, phase="babbling", start_step=0),
                         dict(phases_key="ph", train_key=TK, phase="syntax", start_step=200),
                         dict(phases_key="ph", train_key=TK, phase="semantics", start_step=None)])
    monkeypatch.setattr(report, "FIGURES", report.FIGURES[:1])
    out = build_report(str(root), RUN, "smoke")
    assert row(out["table"], "semantics phase")["this run"] == "never started"
    assert row(out["table"], "syntax phase")["this run"] == "200 (100% of 200)"
    assert [Path(p).name for p in out["figures"]] == ["phases.png"]
    # a failed run without training key
    db.upsert("runs", [dict(run_id="failed", preset="smoke", status="failed")])
    out = build_report(str(root), "failed", "smoke")
    assert "no training key" in Path(out["html"]).read_text()
    assert out["figures"] == []


def test_stale_figures_removed_and_html_escaped(ws, monkeypatch):
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [f for f in report.FIGURES
                                            if f[0] == "interventions.png"])
    build_report(str(root), RUN, "smoke")
    db.query("DELETE FROM interventions")
    out = build_report(str(root), RUN, "<b>smoke</b>")
    assert not (root / "reports" / RUN / "interventions.png").exists()
    html = Path(out["html"]).read_text()
    assert "&lt;b&gt;smoke&lt;/b&gt;" in html and "<b>smoke</b>" not in html
    assert not re.search(r"content\.flip", html)


def test_setup_differences_name_what_departs_from_the_paper():
    from flows.presets import load_preset
    from tasks.report_data import setup_differences

    assert setup_differences(load_preset("paper").as_dict()) == []
    cfg = load_preset("cpu", ["train.packing=samples", "train.block_len=386", "data.train_lengths=1,2,3"])
    rows = {r["field"]: r for r in setup_differences(cfg.as_dict())}
    assert rows["train.packing"] == {"field": "train.packing", "this run": "samples", "paper": "blocks"}
    assert rows["data.train_lengths"]["this run"] == "1,2,3" and rows["data.train_lengths"]["paper"] == "6,7,8,9,10"
    assert {"model.n_layer", "train.lr", "train.steps"} <= set(rows)
    assert not {"train.seed", "train.device", "train.ckpt_every"} & set(rows)  # operational
    # how probing departs from the paper is named too (what is probed where, and how long)
    assert rows["probe.offsets_before_last"] == {"field": "probe.offsets_before_last", "this run": "0", "paper": ""}
    assert rows["probe.epochs"]["paper"] == "100" and rows["activations.n_train_specs"]["paper"] == "50000"
    assert not {"probe.device", "activations.batch_size"} & set(rows)
    assert setup_differences(json.dumps(cfg.as_dict())) == list(rows.values())  # runs.config is JSON text


def test_issue_targets_read_strictly_from_the_db(ws, monkeypatch):
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    out = build_report(str(root), RUN, "smoke")
    met = [t["met"] for t in out["targets"]]
    # accuracy on lengths 6..10 ends at 0.85 * 0.8 = 68% < 70%; every other target is planted as met
    assert met == ["no", "yes", "yes", "yes", "yes", "yes"], out["targets"]
    assert "68.0% at step 800" in out["targets"][0]["measured"]
    assert "Issue 7 targets" in Path(out["html"]).read_text()
    # each target fails when its own rows say so
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck800", eval_key="ev800", train_key=TK, step=800,
                                          metric="acc_spec_len6_10", value=0.71)])
    db.upsert("phases", [dict(phases_key="ph", train_key=TK, phase="semantics", start_step=None)])
    # mlp2 on direction ends below its start and below mlp1: no rise, not ordered
    db.query("UPDATE probe_summary SET mean = 0.2, ci_low = 0.19 WHERE step = 800 AND feature = "
             "'direction' AND probe = 'mlp2' AND \"offset\" = 0 AND layer = -1")
    db.query("UPDATE interventions SET ci_low = -0.01 WHERE step = 800 AND semantics = 'flip' "
             "AND feature = 'rel_start'")
    db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                feature="facing_wall", offset=2, kind="majority", probe="none", value=0.99)])
    out = build_report(str(root), RUN, "smoke")
    assert [t["met"] for t in out["targets"]] == ["yes", "no", "no", "yes", "no", "no"], out["targets"]
    assert "semantics never" in out["targets"][1]["measured"]
    # content that falls as accuracy rises fits a line as well (the same R^2) but is not the finding
    r2 = out["targets"][3]["measured"].split(",")[0]
    db.query("UPDATE interventions SET content = -content")
    target = build_report(str(root), RUN, "smoke")["targets"][3]
    assert target["met"] == "no" and target["measured"].startswith(r2) and "falls" in target["measured"], target


def test_random_init_control_is_a_floor_of_target_3(ws, monkeypatch):
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    assert build_report(str(root), RUN, "smoke")["targets"][2]["met"] == "yes"
    # the random-init model reads facing_wall on the same programs as well as mlp1 does at the end
    db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                feature="facing_wall",
                                offset=0, kind="random_init", probe="mlp1", value=0.95)])
    target = build_report(str(root), RUN, "smoke")["targets"][2]
    assert target["met"] == "no" and "random-init 63.0%/95.0%/63.0%" in target["measured"], target


def test_alternative_semantics_controls_stay_out_of_the_original_floors(ws, monkeypatch):
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    # a flip grid of step 800 whose random-init control reads facing_wall perfectly
    db.upsert("probe_summary", [dict(probe_key="pk800-flip", checkpoint_key="ck800", step=800,
                                     semantics="flip", feature="facing_wall", offset=0, probe="mlp1",
                                     layer=-1, split="test", mean=0.5, ci_low=0.48, ci_high=0.52, n_seeds=3)])
    db.upsert("controls", [dict(probe_key="pk800-flip", checkpoint_key="ck800", step=800, semantics="flip",
                                feature="facing_wall",
                                offset=0, kind="random_init", probe="mlp1", value=0.99)])
    out = build_report(str(root), RUN, "smoke")
    assert out["targets"][2]["met"] == "yes", out["targets"][2]
    assert "99.0%" not in out["targets"][2]["measured"]


def test_drop_beyond_the_random_init_states(ws, monkeypatch):
    """The report subtracts the random-init states' own original-minus-flip accuracy (the labels'
    base rates) from the trained drop; without an adversarial random-init control, no such row."""
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    assert "content_vs_init.flip" not in build_report(str(root), RUN, "smoke")["numbers"]
    rows = []
    for feat, base in (("direction", 0.25), ("rel_start", 0.39), ("facing_wall", 0.61)):
        db.upsert("probe_summary", [dict(probe_key="pk800-flip", checkpoint_key="ck800", step=800,
                                         semantics="flip", feature=feat, offset=0, probe="mlp1", layer=-1,
                                         split="test", mean=0.5, ci_low=0.48, ci_high=0.52, n_seeds=3)])
        # the random-init states read flip 5 pp worse than original (original: base + 0.02)
        rows.append(dict(probe_key="pk800-flip", checkpoint_key="ck800", step=800, semantics="flip", feature=feat,
                         offset=0, kind="random_init", probe="mlp1", value=base + 0.02 - 0.05))
    db.upsert("controls", rows)
    out = build_report(str(root), RUN, "smoke")
    # trained flip drop at step 800: 0.1 x accuracy 0.85 for every feature
    assert out["numbers"]["content_vs_init.flip"] == pytest.approx(0.1 * 0.85 ** 2 - 0.05)
    assert "content_vs_init.adversarial" not in out["numbers"]
    # the per-feature drops with their CIs over seeds (interventions_vs_init), last step only
    assert "Accuracy drops beyond the random-init states" not in Path(out["html"]).read_text()
    db.upsert("interventions_vs_init", [dict(phases_key="ph", probe_key=f"pk{step}-flip", checkpoint_key=f"ck{step}", step=step,
                                             semantics="flip", feature="direction", offset=0, probe="mlp2", layer=-1,
                                             trained_drop=0.1, init_drop=0.02, content=0.08 + step / 1e4,
                                             ci_low=0.061, ci_high=0.099) for step in (600, 800)])
    html = Path(build_report(str(root), RUN, "smoke")["html"]).read_text()
    assert "Accuracy drops beyond the random-init states" in html
    assert "+16.0 pp [+6.1, +9.9]" in html and "+14.0 pp" not in html
    assert "over seeds)" not in html  # the key number has no CI without the mean-of-features row
    # the mean over the main features, paired by seed (main_mean): the key number shows its CI,
    # the table lists it after the features
    db.upsert("interventions_vs_init", [dict(phases_key="ph", probe_key="pk800-flip", checkpoint_key="ck800", step=800,
                                             semantics="flip", feature=MEAN_FEATURE, offset=0, probe=kind, layer=-1,
                                             trained_drop=0.07, init_drop=-0.05, content=0.0234,
                                             ci_low=0.0123, ci_high=0.0321) for kind in ("mlp1", "mlp2")])
    out = build_report(str(root), RUN, "smoke")
    html = Path(out["html"]).read_text()
    # value and CI both come from that row (a seed lacking a feature makes it differ from the
    # mean of the features' seed means, 0.1 x 0.85^2 - 0.05 here)
    assert out["numbers"]["content_vs_init.flip"] == pytest.approx(0.0234)
    assert "+2.3 pp (95% CI [+1.2, +3.2] over seeds)" in html
    table = html[html.index("Accuracy drops beyond the random-init states"):]
    assert "<td>direction</td>" in table and \
        table.index("<td>direction</td>") < table.index("<td>mean of the main features</td>")


def test_issue_targets_without_data(tmp_path):
    out = build_report(str(tmp_path / "ws"), "nope", "cpu")
    assert [t["met"] for t in out["targets"]] == ["no data"] * 6


def test_fed_reference_programs_are_read_at_offset_minus_one(tmp_path, monkeypatch):
    """A run with ``activations.programs=reference`` has its current state at offset -1: the
    same rows one offset lower give the same targets and key numbers as a generated run's at 0,
    and the page says which offset it reads."""
    monkeypatch.setattr(report, "FIGURES", [])
    outs = {}
    for programs in ("generated", "reference"):
        root = tmp_path / programs
        db = ResultsDB(root / "results.duckdb")
        populate(db, programs=programs)
        db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                    feature="emitted_action", offset=0, kind=kind, probe="mlp1", value=v)
                               for kind, v in (("emitted_action", 0.9), ("emitted_action_majority", 0.3))])
        outs[programs] = build_report(str(root), RUN, "smoke")
    gen, ref = outs["generated"], outs["reference"]
    assert [t["met"] for t in ref["targets"]] == [t["met"] for t in gen["targets"]] \
        == ["no", "yes", "yes", "yes", "yes", "yes"], ref["targets"]
    assert ref["numbers"] == gen["numbers"]
    assert "offsets +0, +1" in ref["targets"][5]["criterion"] and "+1, +2" in gen["targets"][5]["criterion"]
    page = Path(ref["html"]).read_text()
    assert "offset -1, the current state on fed reference programs" in page
    assert "offset -1" not in Path(gen["html"]).read_text()
    # the alignment check reads what the state chose, or on fed programs what it predicts
    assert "probes read the next action of the fed program, as each state predicts it" in page
    assert "probes read the action each state emits" in Path(gen["html"]).read_text()


def test_probe_accuracy_fit_reads_the_current_state_content_probe(ws, monkeypatch):
    """The context R^2 fits the current-state mlp1 accuracy (mean of the main features, layer
    mean, test split) against accuracy, per checkpoint: checked against numpy on the DB rows after
    one checkpoint's direction probe is moved off the line (and other kinds' rows moved far more)."""
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    moved = db.query("SELECT * FROM probe_summary WHERE step = 400 AND feature = 'direction' AND \"offset\" = 0 "
                     "AND layer = -1")
    moved["mean"] = np.where(moved["probe"] == "mlp1", 0.9, 0.01)
    db.upsert("probe_summary", moved)
    pts = db.query("SELECT a.value AS x, avg(p.mean) AS y FROM checkpoint_metrics a JOIN probe_summary p "
                   "USING (checkpoint_key) WHERE a.metric = 'acc_spec' AND a.train_key = ? AND p.probe = 'mlp1' "
                   "AND p.\"offset\" = 0 AND p.layer = -1 AND p.split = 'test' AND p.semantics = 'original' "
                   "GROUP BY a.checkpoint_key, a.value", [TK])
    x, y = pts["x"].to_numpy(), pts["y"].to_numpy()
    yhat = np.polyval(np.polyfit(x, y, 1), x)
    want = 1 - ((y - yhat) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    out = build_report(str(root), RUN, "smoke")
    assert len(x) == len(STEPS) and 0.1 < want < 0.99
    assert out["numbers"]["r2_probe"] == pytest.approx(want, abs=1e-12)
    assert row(out["table"], "current-state mlp1 probe accuracy")["this run"] == f"{want:.3f}"
