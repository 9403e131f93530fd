"""tasks.report_targets: a verdict never rests on a missing baseline, probe kind or checkpoint,
and each target reads what issue 7 names (rows from the synthetic database of ``report_db``)."""

from tasks.report_data import RunData
from tasks.report_targets import issue_targets

from report_db import RUN, STEPS, TK, populate, ws  # noqa: F401 (ws: a fixture)


def targets(db):
    return issue_targets(RunData(db, RUN, "smoke", []))


def expect(db, n: int, met: str, *phrases: str, sql: str | None = None) -> None:
    """Target ``n`` (0-based), once ``sql`` (if any) has changed the planted rows, reads ``met``
    and its measurement holds every phrase."""
    if sql:
        db.query(sql)
    t = targets(db)[n]
    assert t["met"] == met and all(p in t["measured"] for p in phrases), t


def test_accuracy_is_read_at_the_last_checkpoint_beside_its_held_out_pairs(ws):
    _, db = ws
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck800", eval_key="ev800", train_key=TK, step=800,
                                          metric=m, value=v) for m, v in (("acc_spec_len6_10", 0.75),
                                                                           ("acc_all_len6_10", 0.66))])
    assert targets(db)[0]["measured"] == "75.0% at step 800; with held-out pairs 66.0%"
    expect(db, 0, "yes")
    # with the number of specs stored, the share's Wilson interval stands beside it
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="ck800", eval_key="ev800", train_key=TK, step=800,
                                          metric="n_specs_len6_10", value=150.0)])
    assert targets(db)[0]["measured"].startswith("75.0% (95% CI 67.5-81.2%, 150 specs) at step 800")
    # a checkpoint after the last evaluated one: the verdict waits for it
    db.upsert("checkpoints", [dict(key="ck1000", train_key=TK, step=1000, tokens_seen=10**6, path="/c/1000")])
    expect(db, 0, "no data", "step 1000) is not evaluated")


def test_phases_must_each_cover_a_checkpoint(ws):
    _, db = ws
    db.upsert("phases", [dict(phases_key="ph", train_key=TK, phase="syntax", start_step=0)])
    expect(db, 1, "no", "babbling 0, syntax 0")


def test_current_state_probes_need_every_kind_and_baseline(ws):
    _, db = ws
    expect(db, 2, "no data", "rel_start: no mlp2 rows",
           sql="DELETE FROM probe_summary WHERE probe = 'mlp2' AND feature = 'rel_start'")
    # a baseline missing: the probes cannot be shown above it
    populate(db)
    expect(db, 2, "no data", "direction linear: no control task baseline",
           sql="DELETE FROM controls WHERE kind = 'control_task' AND feature = 'direction' AND probe = 'linear'")


def test_a_reversed_order_says_whether_it_is_within_the_seeds_spread(ws):
    """The ordering reads the means, as the issue does; a reversal says how far apart the kinds'
    95% CIs are, so a tie within the seeds' spread is not read as a real reversal."""
    _, db = ws
    # direction at step 800: mlp1 0.6835 and mlp2 0.69625 (CIs +-0.02); mlp1 nudged above mlp2
    expect(db, 2, "no", "(rises, not ordered: mlp1 69.7% > mlp2 69.6%, within their 95% CIs, above baselines)",
           sql="UPDATE probe_summary SET mean = 0.697 WHERE step = 800 AND feature = 'direction' AND probe = 'mlp1' "
               "AND \"offset\" = 0 AND split = 'test'")
    expect(db, 2, "no", "not ordered: mlp1 80.0% > mlp2 69.6%, their 95% CIs apart, above",
           sql="UPDATE probe_summary SET mean = 0.8, ci_low = 0.78, ci_high = 0.82 WHERE step = 800 "
               "AND feature = 'direction' AND probe = 'mlp1' AND \"offset\" = 0 AND split = 'test'")
    expect(db, 2, "no", "not ordered: mlp1 80.0% > mlp2 69.6%, no 95% CIs, above",
           sql="UPDATE probe_summary SET ci_low = NULL WHERE step = 800 AND feature = 'direction' "
               "AND probe = 'mlp1' AND \"offset\" = 0 AND split = 'test'")


def test_r2_needs_five_checkpoints(tmp_path):
    from tasks.results import ResultsDB

    db = ResultsDB(tmp_path / "results.duckdb")
    populate(db, steps=STEPS[:1] + STEPS[2:])  # four checkpoints
    expect(db, 3, "no data", "over 4 checkpoints", "too few", "activations.checkpoints=5")


def test_r2_is_judged_on_every_checkpoint_and_shows_the_fit_without_step_0(ws):
    """The step-0 point (degenerate programs) can alone turn the slope: its fit is shown beside
    the verdict, which still reads every checkpoint."""
    _, db = ws
    expect(db, 3, "yes", "over 5 checkpoints", "without step 0 R^2 = 0.957 over 4 checkpoints, slope +0.134")
    expect(db, 3, "no", "content falls as accuracy rises", "without step 0 R^2 = 0.957 over 4 checkpoints, slope +0.134",
           sql="UPDATE interventions SET content = 5.0 WHERE step = 0")


def test_the_untrained_model_is_the_random_init_states_on_the_same_programs(ws):
    """A step-0 model whose own programs are degenerate (its probes read them perfectly) is no
    floor where the random-init states over the last checkpoint's programs exist; without those,
    the first probed checkpoint is."""
    _, db = ws
    expect(db, 2, "yes", "random-init 27.0%/27.0%/27.0%",
           sql="UPDATE probe_summary SET mean = 0.99, ci_low = 0.98 WHERE step = 0")
    expect(db, 2, "no", "step 0 99.0%/99.0%/99.0% (no rise", sql="DELETE FROM controls WHERE kind = 'random_init'")


def test_one_probed_checkpoint_is_read_against_the_random_init_states(ws):
    """Probing only the last checkpoint (``activations.probe_step0=false``, one checkpoint)
    leaves the random-init control as the untrained floor; without it, nothing is untrained:
    no data, never the last checkpoint compared with itself."""
    _, db = ws
    db.query("DELETE FROM probe_summary WHERE step <> (SELECT max(step) FROM probe_summary)")
    expect(db, 2, "yes", "random-init 27.0%/27.0%/27.0%")
    expect(db, 2, "no data", "none untrained", sql="DELETE FROM controls WHERE kind = 'random_init'")


def test_future_probes_need_their_baselines_and_beat_the_random_init_states(ws):
    _, db = ws
    expect(db, 5, "no data", "facing_wall +2: ", sql="DELETE FROM controls WHERE kind = 'majority' AND \"offset\" = 2")
    populate(db)
    expect(db, 5, "yes")
    # the random-init states over the same programs read direction two actions ahead as well
    db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                feature="direction", offset=2, kind="random_init", probe="mlp1", value=0.99)])
    expect(db, 5, "no", "direction +2: ", "/99.0%")


def _margin(db, kind, value, offset=0, feature="direction", probe="linear"):
    db.upsert("controls", [dict(probe_key="pk800", checkpoint_key="ck800", step=800, semantics="original",
                                feature=feature, offset=offset, kind=kind, probe=probe, value=value)])


def test_a_stored_paired_margin_decides_over_the_unpaired_comparison(ws):
    """The planted probes clear every baseline mean with their own lower bound; a margin over
    the control task whose paired lower bound is below zero still fails target 3, and a paired
    bound above zero passes where the unpaired comparison would not."""
    _, db = ws
    expect(db, 2, "yes", "compared unpaired")  # the planted run has no margins: it says so
    _margin(db, "control_task_margin_low", -0.01)
    expect(db, 2, "no", "direction: ", "(rises, ordered, not above the control task)")
    db.query("DELETE FROM controls WHERE kind LIKE '%_margin_low'")
    populate(db)
    db.query("UPDATE controls SET value = 0.99 WHERE kind = 'random_init' AND feature = 'direction' "
             "AND probe = 'linear' AND step = 800")  # unpaired: the probe's lower bound is below it
    expect(db, 2, "no", "not above the untrained model)")
    _margin(db, "random_init_margin_low", 0.01)  # paired by seed it is above
    expect(db, 2, "yes")
    # target 6 reads the same margins at +1 and +2 (the picked kind, mlp1)
    _margin(db, "majority_margin_low", -0.02, offset=1, probe="mlp1")
    expect(db, 5, "no", "direction +1: ")


def test_two_probe_configurations_at_a_checkpoint_are_judged_by_their_lowest_bound(ws):
    """Rows of two probe configurations at the last checkpoint: a mean of their lower bounds is
    no bound, so each verdict holds for both or fails, and the page says how they were merged."""
    _, db = ws
    _margin(db, "control_task_margin_low", 0.05)  # paired: above for this configuration
    db.upsert("controls", [dict(probe_key="pk800-b", checkpoint_key="ck800", step=800, semantics="original",
                                feature="direction", offset=0, kind="control_task_margin_low", probe="linear",
                                value=-0.01)])  # and below for the other: their mean (+0.02) would pass
    expect(db, 2, "no", "direction: ", "not above the control task")
    populate(db)
    db.query("DELETE FROM controls WHERE kind LIKE '%_margin_low'")
    # a second configuration's +1 direction probe whose bound sits under the majority (0.25):
    # averaged with the first's (0.63), the bound would clear it
    db.upsert("probe_summary", [dict(probe_key="pk800-b", checkpoint_key="ck800", step=800, semantics="original",
                                     feature="direction", offset=1, probe="mlp1", layer=-1, split="test",
                                     mean=0.7, ci_low=0.2, ci_high=0.9, n_seeds=3)])
    notes = []
    assert issue_targets(RunData(db, RUN, "smoke", notes))[5]["met"] == "no"
    assert any("their 95% bounds the widest of theirs" in n for n in notes), notes
    # the second configuration had one seed (no bound): the merged row has none either
    expect(db, 5, "no data", sql="UPDATE probe_summary SET ci_low = NULL WHERE probe_key = 'pk800-b'")


def test_a_bound_one_seed_cannot_give_is_no_data(ws):
    _, db = ws
    _margin(db, "majority_margin_low", float("nan"))
    expect(db, 2, "no data", "direction linear: no 95% bound vs the majority")
    populate(db)
    db.query("UPDATE probe_summary SET ci_low = NULL WHERE step = 800 AND \"offset\" = 1 AND probe = 'mlp1'")
    expect(db, 5, "no data")


def test_the_targets_read_at_the_end_wait_for_the_last_checkpoints_probes(ws):
    """A stopped run evaluated its last checkpoint but did not probe it: targets 3, 5 and 6 are
    no data, not verdicts on an earlier checkpoint."""
    _, db = ws
    for table in ("probe_summary", "controls", "interventions"):
        db.query(f"DELETE FROM {table} WHERE step = 800")
    t = targets(db)
    assert [t[n]["met"] for n in (2, 4, 5)] == ["no data"] * 3, t
    assert all(t[n]["measured"].startswith("the last checkpoint (step 800) is not probed: ") for n in (2, 4, 5))


def test_interventions_without_a_bound_are_no_data_and_adversarial_must_drop_more(ws):
    _, db = ws
    expect(db, 4, "yes", "drop flip +7.2 pp, adversarial +14.4 pp")
    expect(db, 4, "no data", "95% bound missing", sql="UPDATE interventions SET ci_low = 'NaN'::DOUBLE")
    populate(db)
    expect(db, 4, "no data", sql="DELETE FROM interventions WHERE feature = 'rel_start'")
    populate(db)
    expect(db, 4, "no", sql="UPDATE interventions SET ci_low = -0.01 WHERE feature = 'rel_start' AND semantics = 'flip'")
    populate(db)
    expect(db, 4, "no", sql="UPDATE interventions SET content = 0.5 WHERE semantics = 'flip'")


def test_semantic_content_is_the_main_features_and_flat_content_tracks_nothing(ws):
    """Target 4 reads the content of the three main features, whatever else a run probes, and a
    content that does not move as accuracy rises is R^2 0 (no), not a fit that cannot be made."""
    import json

    _, db = ws
    expect(db, 3, "yes")
    db.query("UPDATE runs SET config = ?", [json.dumps({"probe": {"features": [
        "direction", "rel_start", "facing_wall", "abs_position"]}})])
    extra = db.query("SELECT * FROM interventions WHERE feature = 'direction'")
    db.upsert("interventions", extra.assign(feature="abs_position", content=[0.5 if s == 0 else 0.0
                                                                             for s in extra["step"]]))
    expect(db, 3, "yes")
    expect(db, 3, "no", "R^2 = 0.000 over 5 checkpoints", "content flat", sql="UPDATE interventions SET content = 0.0")


def test_compare_sets_runs_side_by_side_and_never_writes(tmp_path, capsys):
    """``semprobe compare``: one column per workspace (its latest finished run, or the run named
    after a colon), each cell the run's own verdict and measurement; a file of another schema
    version is refused and left as it was."""
    import duckdb

    from flows.cli import main
    from tasks.results import SCHEMA_VERSION, ResultsDB

    a, b = tmp_path / "a", tmp_path / "b"
    populate(ResultsDB(a / "results.duckdb"))
    populate(ResultsDB(b / "results.duckdb"), steps=STEPS[:3])
    want = [targets(ResultsDB(p / "results.duckdb")) for p in (a, b)]
    before = (a / "results.duckdb").read_bytes()
    # run b has a checkpoint evaluated under two configurations: its report would say so, and so does compare
    ResultsDB(b / "results.duckdb").upsert("checkpoint_metrics", [dict(
        checkpoint_key="ck0", eval_key="ev-other", train_key=TK, step=0, metric="acc_spec", value=0.0)])
    assert main(["--workspace", str(tmp_path / "w"), "compare", str(a), f"{b}:{RUN}"]) == 0
    out = capsys.readouterr().out
    lines, notes = out.split("\n\nNotes:\n")
    lines = lines.splitlines()
    assert lines[0] == f"| target | smoke, run {RUN[:8]} (a) | smoke, run {RUN[:8]} (b) |" and len(lines) == 2 + 6
    assert notes.splitlines() == [f"- smoke, run {RUN[:8]} (b): checkpoint metrics: some checkpoints have rows "
                                  "from several evaluation configurations; their values are averaged."]
    for line, ra, rb in zip(lines[2:], *want):
        assert line.startswith(f"| {ra['target']} | **{ra['met']}**")
        assert f"**{rb['met']}**: {rb['measured'].replace('|', chr(92) + '|')} |" in line
    assert want[0][3]["met"] != want[1][3]["met"]  # the runs differ, and so do their columns
    assert (a / "results.duckdb").read_bytes() == before
    with duckdb.connect(str(b / "results.duckdb")) as con:
        con.execute("UPDATE schema_info SET version = 5")
    assert main(["--workspace", str(tmp_path / "w"), "compare", str(a), str(b)]) == 2
    assert f"schema version 5, this code reads {SCHEMA_VERSION}" in capsys.readouterr().err
    with duckdb.connect(str(b / "results.duckdb")) as con:
        assert con.execute("SELECT max(version) FROM schema_info").fetchone()[0] == 5
    assert main(["--workspace", str(tmp_path / "w"), "compare", f"{a}:no-such-run"]) == 2
    assert "no run no-such-run in" in capsys.readouterr().err
