"""A synthetic results database of one run for the report tests (``populate``, the ``ws``
fixture): five checkpoints with evaluation metrics, probe summaries, controls, interventions and
phases, and a second training run's row that must not leak into the report."""

import numpy as np
import pytest

from tasks.results import ResultsDB

STEPS = [0, 200, 400, 600, 800]
TK = "train-abc"
RUN = "run-1"


def populate(db: ResultsDB, steps=STEPS, layers=True, interventions=True, phases=True, programs=None):
    """Rows of a run whose current offset is 0, or -1 (every offset shifted) with ``programs=reference``."""
    cur = -1 if programs == "reference" else 0
    config = {"x": 1} if programs is None else {"activations": {"programs": programs}}
    db.upsert("runs", [dict(run_id=RUN, preset="smoke", config=config, data_key="d",
                            train_key=TK, status="finished")])
    # a second training run's rows must not leak into this report
    db.upsert("checkpoint_metrics", [dict(checkpoint_key="other-ck", eval_key="other-ev", train_key="other",
                                          step=800, metric="acc_spec", value=0.01)])
    n = len(steps)
    acc = np.array([0.0, 0.05, 0.2, 0.6, 0.85])[:n]
    ck_rows, m_rows, s_rows, c_rows, i_rows = [], [], [], [], []
    for i, step in enumerate(steps):
        ck = f"ck{step}"
        pk = f"pk{step}"
        ck_rows.append(dict(key=ck, train_key=TK, step=step, tokens_seen=step * 1000, path=f"/c/{step}"))
        metrics = dict(acc_spec=acc[i], acc_all=acc[i] * 0.9, acc_spec_len6_10=acc[i] * 0.8,
                       diversity=min(1.0, 0.1 + 0.3 * i), ppl_all=20.0 / (i + 1),
                       ppl_program=8.0 / (i + 1), parse_rate=min(1.0, 0.3 + 0.2 * i))
        m_rows += [dict(checkpoint_key=ck, eval_key=f"ev{step}", train_key=TK, step=step, metric=k, value=float(v))
                   for k, v in metrics.items()]
        for feat, base in (("direction", 0.25), ("rel_start", 0.39), ("facing_wall", 0.61)):
            for kind, bonus in (("linear", 0.0), ("mlp1", 0.08), ("mlp2", 0.1)):
                for off in (-2, -1, 0, 1, 2):
                    mean = base + (1 - base) * acc[i] * (0.6 + bonus) - 0.03 * abs(off)
                    s_rows.append(dict(probe_key=pk, checkpoint_key=ck, step=step,
                                       semantics="original", feature=feat, offset=off + cur, probe=kind,
                                       layer=-1, split="test", mean=mean, ci_low=mean - 0.02,
                                       ci_high=mean + 0.02, n_seeds=3))
                    s_rows.append(dict(s_rows[-1], split="val", mean=mean + 0.01))
                c_rows += [dict(probe_key=pk, checkpoint_key=ck, step=step, semantics="original", feature=feat,
                                offset=off + cur, kind="control_task", probe=kind, value=base + 0.05)
                           for off in (-2, -1, 0, 1, 2)]
                c_rows.append(dict(probe_key=pk, checkpoint_key=ck, step=step, semantics="original", feature=feat,
                                   offset=cur, kind="selectivity", probe=kind, value=0.1 * i))
                if step > 0:  # the random-init model on this checkpoint's programs
                    c_rows.append(dict(probe_key=pk, checkpoint_key=ck, step=step, semantics="original", feature=feat,
                                       offset=cur, kind="random_init", probe=kind, value=base + 0.02))
                if layers and step == steps[-1] and kind == "linear":
                    for layer in range(5):
                        mean = base + 0.1 * layer
                        s_rows.append(dict(probe_key=pk, checkpoint_key=ck, step=step,
                                           semantics="original", feature=feat, offset=cur,
                                           probe=kind, layer=layer, split="test", mean=mean,
                                           ci_low=mean - 0.01, ci_high=mean + 0.01, n_seeds=3))
                if interventions:
                    orig = base + (1 - base) * acc[i] * (0.6 + bonus)
                    for alt, drop in (("flip", 0.1), ("adversarial", 0.2)):
                        content = drop * acc[i] ** 2
                        i_rows.append(dict(phases_key="ph", probe_key=pk, checkpoint_key=ck, step=step,
                                           semantics=alt, feature=feat, offset=cur, probe=kind,
                                           layer=-1, original=orig, alternative=orig - content,
                                           content=content, ci_low=content - 0.02,
                                           ci_high=content + 0.02))
            c_rows += [dict(probe_key=pk, checkpoint_key=ck, step=step, semantics="original", feature=feat,
                            offset=off + cur, kind="majority", probe="none", value=base) for off in (-2, -1, 0, 1, 2)]
    db.upsert("checkpoints", ck_rows)
    db.upsert("checkpoint_metrics", m_rows)
    db.upsert("probe_summary", s_rows)
    db.upsert("controls", c_rows)
    if i_rows:
        db.upsert("interventions", i_rows)
    if phases:
        db.upsert("phases", [dict(phases_key="ph", train_key=TK, phase="babbling", start_step=0),
                             dict(phases_key="ph", train_key=TK, phase="syntax", start_step=steps[1]),
                             dict(phases_key="ph", train_key=TK, phase="semantics", start_step=steps[-2])])


def row(table, prefix):
    hits = [r for r in table if r["metric"].startswith(prefix)]
    assert len(hits) == 1, (prefix, [r["metric"] for r in table])
    return hits[0]


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    db = ResultsDB(root / "results.duckdb")
    populate(db)
    return root, db
