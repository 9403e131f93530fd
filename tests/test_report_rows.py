"""tasks.report_data: which rows of a shared results database are the run's own, when several
runs evaluate, probe or label the same checkpoints, or a rerun stopped partway."""

import pytest

from tasks import report, report_data
from tasks.report import build_report

from report_db import RUN, STEPS, TK, ws  # noqa: F401 (ws: a fixture)


def test_semantic_content_is_the_runs_own(ws, monkeypatch):
    """Two runs probe the same checkpoints with different probe configurations: each report's
    content comes from its own grids, not from the last value written per checkpoint."""
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    other = "run-2"
    db.upsert("runs", [dict(run_id=other, preset="smoke", config={"probe": {"features": ["direction"]}},
                            data_key="d", train_key=TK, status="finished")])
    stage, inter, ctrl = [], [], []
    for run, prefix in ((RUN, "pk"), (other, "qk")):
        stage += [dict(run_id=run, stage="probes", key=f"{prefix}{step}", status="computed", seconds=1.0)
                  for step in STEPS]
        stage += [dict(run_id=run, stage="evaluate", key=f"ev{step}", status="cached", seconds=0.0) for step in STEPS]
    stage += [dict(run_id=run, stage="phases", key=k, status="computed", seconds=1.0) for run, k in ((RUN, "ph"),
                                                                                                  (other, "ph2"))]
    for i, r in db.query("SELECT * FROM interventions").iterrows():
        # run-2's grids read direction with a constant 0.3 drop under both alternatives
        inter.append(dict(r, probe_key="q" + r["probe_key"][1:], phases_key="ph2", content=0.3))
    for step in STEPS[1:]:
        for sem, value in (("original", 0.5), ("flip", 0.45), ("adversarial", 0.35)):
            key = f"qk{step}" + ("" if sem == "original" else f"-{sem}")
            stage.append(dict(run_id=other, stage="probes", key=key, status="computed", seconds=1.0))
            db.upsert("probe_summary", [dict(probe_key=key, checkpoint_key=f"ck{step}", step=step, semantics=sem,
                                             feature="direction", offset=0, probe="mlp1", layer=-1, split="test",
                                             mean=0.6, ci_low=0.5, ci_high=0.7, n_seeds=3)])
            ctrl.append(dict(probe_key=key, checkpoint_key=f"ck{step}", step=step, semantics=sem,
                             feature="direction",
                             offset=0, kind="random_init", probe="mlp1", value=value))
    db.upsert("stage_runs", stage)
    db.upsert("interventions", inter)
    db.upsert("controls", ctrl)
    mine, theirs = (build_report(str(root), r, "smoke")["numbers"] for r in (RUN, other))
    # this run: content 0.15 acc^2 at each checkpoint (no random-init rows of the alternatives)
    assert mine["r2"] == pytest.approx(report_data.line_fit([0, .05, .2, .6, .85], [.15 * a * a for a in
                                                      (0, .05, .2, .6, .85)])[0])
    assert "content_vs_init" not in mine
    # run-2: 0.3 trained, minus the random-init drop (0.05 flip, 0.15 adversarial: 0.1), at step 800
    assert theirs["content_vs_init"] == pytest.approx(0.3 - 0.1)
    assert theirs["content.flip"] == pytest.approx(0.3)


def test_evaluation_and_phases_are_the_runs_own(ws, monkeypatch):
    """A second run evaluates the same checkpoints with another evaluate stage and labels their
    phases in another phases stage: each report reads the rows under its own stage keys."""
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    other = "run-2"
    db.upsert("runs", [dict(run_id=other, preset="smoke", config={"x": 1}, data_key="d", train_key=TK,
                            status="finished")])
    db.upsert("stage_runs", [dict(run_id=r, stage="evaluate", key=f"{prefix}{step}", status="computed", seconds=1.0)
                             for r, prefix in ((RUN, "ev"), (other, "fv")) for step in STEPS]
              + [dict(run_id=r, stage="phases", key=k, status="computed", seconds=1.0)
                 for r, k in ((RUN, "ph"), (other, "ph2"))])
    db.upsert("checkpoint_metrics", [dict(checkpoint_key=f"ck{step}", eval_key=f"fv{step}", train_key=TK, step=step,
                                          metric="acc_spec", value=0.25) for step in STEPS])
    db.upsert("phases", [dict(phases_key="ph2", train_key=TK, phase=p, start_step=s)
                         for p, s in (("babbling", 0), ("syntax", 600), ("semantics", None))])
    mine, theirs = (build_report(str(root), r, "smoke")["numbers"] for r in (RUN, other))
    assert mine["acc_spec"] == pytest.approx(0.85) and theirs["acc_spec"] == pytest.approx(0.25)
    assert mine["phase.syntax"] == 200 and theirs["phase.syntax"] == 600
    assert mine["phase.semantics"] == 600 and theirs["phase.semantics"] is None


def test_a_rerun_that_stopped_partway_keeps_the_older_rows_of_the_checkpoints_it_did_not_reach(ws, monkeypatch):
    """Rows recorded before the stage key was stored sit under key '' (the schema 5 migration). A
    rerun records keyed rows for its first checkpoints and stops: the report reads its own rows
    there and the older rows elsewhere, and never averages the two."""
    root, db = ws
    monkeypatch.setattr(report, "FIGURES", [])
    with db.connect() as con:
        con.execute("UPDATE checkpoint_metrics SET eval_key = '' WHERE train_key = ?", [TK])
    db.upsert("stage_runs", [dict(run_id=RUN, stage="evaluate", key=f"re{step}", status="computed", seconds=1.0)
                             for step in STEPS[:2]])
    db.upsert("checkpoint_metrics", [dict(checkpoint_key=f"ck{step}", eval_key=f"re{step}", train_key=TK,
                                          step=step, metric="acc_spec", value=0.5) for step in STEPS[:2]])
    assert build_report(str(root), RUN, "smoke")["numbers"]["acc_spec"] == pytest.approx(0.85)  # an older row
    notes = []
    m = report_data.RunData(db, RUN, "smoke", notes).metric_frame()
    assert list(m["acc_spec"]) == pytest.approx([0.5, 0.5, 0.2, 0.6, 0.85])
    assert m[["diversity"]].loc[[0, 200]].isna().all().all()  # the rerun wrote no diversity there
    assert list(m["diversity"].loc[[400, 600, 800]]) == pytest.approx([0.7, 1.0, 1.0])
    assert not notes


def test_metrics_from_several_evaluations_are_averaged_with_a_note(ws):
    """Rows no stage of the run names (planted, or another run's) are all read; where two
    evaluations of one checkpoint meet, the page says their values are averaged."""
    root, db = ws
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck800", eval_key="again", train_key=TK, step=800,
                                          metric="acc_spec", value=0.65)])
    notes = []
    m = report_data.RunData(db, RUN, "smoke", notes).metric_frame()
    assert m.loc[800, "acc_spec"] == pytest.approx(0.75) and m.loc[600, "acc_spec"] == pytest.approx(0.6)
    assert any("several evaluation configurations" in n for n in notes)
    with db.connect() as con:
        con.execute("DELETE FROM checkpoint_metrics WHERE eval_key = 'again'")
    notes.clear()
    report_data.RunData(db, RUN, "smoke", notes).metric_frame()
    assert not notes


def test_time_per_stage_is_the_runs_own(ws):
    """Tasks computed and cached per stage, their summed seconds, the wall clock from the first
    computed task's start to the last one's end and the machines that computed them, then the
    whole run; another run's rows stay out."""
    from datetime import datetime, timedelta

    from tasks.report_data import RunData, stage_times

    _, db = ws
    t0 = datetime(2026, 12, 3, 12, 0, 0)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    db.upsert("runs", [dict(run_id=RUN, preset="smoke", config={"x": 1}, data_key="d", train_key=TK,
                            status="finished", started_at=t0, finished_at=at(3725))])
    cpu = {"cpu": "AMD EPYC (family 25, model 17)", "cores": 2, "torch_threads": 2, "torch": "2.13.0+cpu",
           "cuda": None}
    gpu = {"cpu": "AMD EPYC (family 25, model 17)", "cores": 16, "torch": "2.11.0+cu130",
           "cuda": "NVIDIA H200"}  # stamped before the thread count was
    db.upsert("stage_runs", [
        dict(run_id=RUN, stage="probes", key="p1", status="computed", seconds=50.0, finished_at=at(160), machine=cpu),
        dict(run_id=RUN, stage="probes", key="p2", status="computed", seconds=50.0, finished_at=at(170), machine=gpu),
        dict(run_id=RUN, stage="train", key="t", status="computed", seconds=100.0, finished_at=at(100), machine=gpu),
        dict(run_id=RUN, stage="evaluate", key="e", status="cached", seconds=0.01, finished_at=at(101)),
        dict(run_id=RUN, stage="phases", key="ph", status="computed", seconds=2.0),  # no finish time
        dict(run_id="other", stage="train", key="t2", status="computed", seconds=9e4, finished_at=at(9e4))])
    rows = stage_times(RunData(db, RUN, "smoke", []))
    assert [(r["stage"], r["computed"], r["cached"], r["seconds, summed"], r["wall"]) for r in rows] == [
        ("train", 1, 0, 100.0, "0:01:40"), ("evaluate", 0, 1, 0.0, ""),
        ("probes", 2, 0, 100.0, "0:01:00"), ("phases", 1, 0, 2.0, ""), ("whole run", "", "", "", "1:02:05")]
    on_cpu, on_gpu = "AMD EPYC (family 25, model 17) x 2, 2 torch threads, torch 2.13.0+cpu", \
        "AMD EPYC (family 25, model 17) x 16, torch 2.11.0+cu130, NVIDIA H200"
    assert [r["computed on"] for r in rows] == [on_gpu, "", "; ".join(sorted([on_cpu, on_gpu])), "", ""]


def test_a_run_that_probed_nothing_reads_no_other_runs_probes(ws):
    """A run that recorded its stages but no probe grid (``--set probe.semantics=`` empty, or grids
    with no pairs) shares the training and evaluation of another run: its report has that
    evaluation and none of the other run's probe rows, which came from other grids."""
    _, db = ws
    other = "run-3"
    db.upsert("runs", [dict(run_id=other, preset="smoke", config={"x": 1}, data_key="d", train_key=TK,
                            status="finished")])
    db.upsert("stage_runs", [dict(run_id=r, stage="evaluate", key=f"ev{step}", status="cached", seconds=0.0)
                             for r in (RUN, other) for step in STEPS]
              + [dict(run_id=RUN, stage="probes", key=f"pk{step}", status="computed", seconds=1.0) for step in STEPS]
              + [dict(run_id=RUN, stage="phases", key="ph", status="computed", seconds=1.0)])
    mine, theirs = report_data.RunData(db, RUN, "smoke", []), report_data.RunData(db, other, "smoke", [])
    assert not mine.summary.empty and not mine.interventions.empty
    assert theirs.summary.empty and theirs.controls.empty and theirs.interventions.empty
    assert theirs.metric_frame()["acc_spec"].iloc[-1] == pytest.approx(0.85)  # the shared evaluation


def test_interventions_are_the_phases_stages_own(ws):
    """Two phases stages over the same probe grids (the second after an edit to how drops are
    computed) write their interventions side by side: each run reads its own, not the last written."""
    _, db = ws
    other = "run-4"
    db.upsert("runs", [dict(run_id=other, preset="smoke", config={"x": 1}, data_key="d", train_key=TK,
                            status="finished")])
    probes = [dict(stage="probes", key=f"pk{step}", status="cached", seconds=0.0) for step in STEPS]
    db.upsert("stage_runs", [dict(s, run_id=r) for r in (RUN, other) for s in probes]
              + [dict(run_id=r, stage="phases", key=k, status="computed", seconds=1.0)
                 for r, k in ((RUN, "ph"), (other, "ph-new"))])
    theirs = db.query("SELECT * FROM interventions WHERE feature = 'direction'").assign(phases_key="ph-new", content=0.5)
    db.upsert("interventions", theirs)
    mine, new = report_data.RunData(db, RUN, "smoke", []), report_data.RunData(db, other, "smoke", [])
    assert set(new.interventions["phases_key"]) == {"ph-new"} and (new.interventions["content"] == 0.5).all()
    assert set(mine.interventions["phases_key"]) == {"ph"} and (mine.interventions["content"] < 0.5).all()
    assert set(mine.interventions["feature"]) == {"direction", "rel_start", "facing_wall"}


def test_each_key_number_names_the_step_it_was_read_at(ws):
    """A metric the last evaluation did not record is read at the last checkpoint that has it,
    and the key-numbers table names that step, not the run's last."""
    root, db = ws
    with db.connect() as con:
        con.execute("DELETE FROM checkpoint_metrics WHERE step = 800 AND metric = 'acc_all'")
    db.upsert("checkpoint_metrics", [dict(checkpoint_key=f"ck{s}", eval_key=f"ev{s}", train_key=TK, step=s,
                                          metric="n_specs", value=n) for s, n in ((600, 100.0), (800, 300.0))])
    out = build_report(str(root), RUN, "smoke")
    acc = [r for r in out["table"] if r["metric"].startswith("generative accuracy, 5 spec pairs, final")]
    held = [r for r in out["table"] if r["metric"].startswith("generative accuracy incl.")]
    assert acc[0]["metric"].endswith("(step 800)") and "300 specs" in acc[0]["this run"]
    assert held[0]["metric"].endswith("(step 600)") and out["numbers"]["acc_all"] == pytest.approx(0.54)
