"""The deployment units a study fans out to (flows/units.py) and the fan-out's keys
(flows/fanout.py), without a Prefect server or workers: keys, journals, and both unit flows run
in-process on the smoke preset. The fan-out through real workers is in test_distributed.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deployment_runs import idempotency_key
from flows.presets import load_preset
from flows.units import checkpoint_unit_key, is_probed, train_unit_key
from model.config import checkpoint_steps
from tasks import record
from tasks.dataset import dataset_key
from tasks.results import ResultsDB
from tasks.training import train_key

REPO = Path(__file__).resolve().parents[1]


def test_unit_keys_name_what_the_unit_computes():
    cfg = load_preset("smoke")
    assert train_unit_key(cfg) == train_key(cfg.model, cfg.train, dataset_key(cfg.data))
    assert train_unit_key(load_preset("smoke", ["eval.n_test_specs=5"])) == train_unit_key(cfg)
    keys = {checkpoint_unit_key(cfg, s) for s in (0, 6, 12)}
    assert len(keys) == 3
    # the resolved config counts, not its spelling
    same = load_preset("smoke", [f"eval.batch_size={cfg.eval.batch_size}"])
    assert checkpoint_unit_key(same, 6) == checkpoint_unit_key(cfg, 6)
    # every stage the unit runs is in its key: evaluation, activations, probes, the checkpoint
    for override in ("eval.n_test_specs=5", "activations.n_train_specs=7", "probe.epochs=2", "train.seed=9"):
        assert checkpoint_unit_key(load_preset("smoke", [override]), 6) != checkpoint_unit_key(cfg, 6), override


@pytest.mark.parametrize("package,module", [("tasks", "phases.py"), ("tasks", "evaluation.py"), ("flows", "pipeline.py")])
def test_unit_and_point_keys_change_with_the_code_of_stages_and_flows(monkeypatch, package, module):
    """A deployment run's key names all the code a study runs: after an edit to a task module or
    a flow, a rerun is a new run, never the earlier run's results replayed."""
    from flows.sweep import point_key
    from tasks import cachekey

    cfg = load_preset("smoke")
    before = checkpoint_unit_key(cfg, 6), point_key("smoke", [])
    files = cachekey._sources(package)
    edited = [(rel, data + b"\nEDITED = 1\n" if rel == module else data) for rel, data in files]
    assert edited != files
    monkeypatch.setitem(cachekey._PINNED, package, edited)
    after = checkpoint_unit_key(cfg, 6), point_key("smoke", [])
    assert after[0] != before[0] and after[1] != before[1]


def test_unprobed_checkpoint_unit_ignores_probe_configs():
    cfg = load_preset("cpu")  # probes 5 of its checkpoints
    steps = checkpoint_steps(cfg.train)
    unprobed = next(s for s in steps if not is_probed(cfg, s))
    probed = next(s for s in steps if is_probed(cfg, s))
    epochs = load_preset("cpu", ["probe.epochs=2"])
    assert checkpoint_unit_key(epochs, unprobed) == checkpoint_unit_key(cfg, unprobed)
    assert checkpoint_unit_key(epochs, probed) != checkpoint_unit_key(cfg, probed)


def test_idempotency_keys_chain_per_workspace():
    k1 = idempotency_key("checkpoint", "abc", "/shared/a")
    assert k1.startswith("semprobe-checkpoint-abc-") and "~" not in k1
    assert idempotency_key("checkpoint", "abc", "/shared/a", 2) == k1 + "~2"
    assert idempotency_key("checkpoint", "abc", "/shared/b") != k1
    assert idempotency_key("train", "abc", "/shared/a") != k1


def test_unit_journal_status_and_replay_writes_no_run(tmp_path):
    j = record.Journal("unit-run")
    j.stage({"stage": "evaluate", "key": "e1", "status": "computed", "seconds": 0.5, "path": "/x", "meta": {},
             "finished_at": "2026-12-03T12:00:05+00:00"})
    assert j.status() is None
    j.unit("checkpoint", "failed", {"error": "x"})
    j.unit("checkpoint", "finished")
    j.write(tmp_path)
    back = record.Journal.read(tmp_path, "unit-run")
    assert back.status() == "finished" and [s["key"] for s in back.stages()] == ["e1"]
    db = ResultsDB(tmp_path / "r.duckdb")
    record.replay(back, record.Recorder(db, "study-run", None))
    assert db.count("runs") == 0  # the study records its own run row
    assert db.table("stage_runs")[["run_id", "stage", "key"]].values.tolist() == [["study-run", "evaluate", "e1"]]
    # the task's own finish time, not the replay's
    assert str(db.table("stage_runs")["finished_at"][0]).startswith("2026-12-03 12:00:05")


UNITS_SCRIPT = """
import json, sys
from tasks.workspace import configure_environment
ws = configure_environment(sys.argv[1])
from flows.units import probe_checkpoint, train_model
out = {"train": train_model(preset="smoke", workspace=str(ws.root))}
from tasks.training import checkpoint_key
lost = checkpoint_key(out["train"]["train"], 6)
ws.store.delete("checkpoint", lost)  # a cached training publishes nothing: the unit republishes it
train_model(preset="smoke", workspace=str(ws.root))
out["republished"] = ws.store.is_complete("checkpoint", lost)
out["ckpt"] = probe_checkpoint(preset="smoke", step=12, workspace=str(ws.root))
out["again"] = probe_checkpoint(preset="smoke", step=12, workspace=str(ws.root))
try:
    probe_checkpoint(preset="smoke", overrides=["train.seed=77"], step=6, workspace=str(ws.root))
except FileNotFoundError as e:
    out["unpublished"] = str(e)
try:
    probe_checkpoint(preset="smoke", step=5, workspace=str(ws.root))
except ValueError as e:
    out["bad_step"] = str(e)
print("RESULT" + json.dumps(out))
"""


def journal(ws: Path, run_id: str) -> list[tuple[str, list]]:
    return [(n, a) for n, a in json.loads((ws / "journals" / f"{run_id}.json").read_text())["calls"]]


def test_units_in_process_journal_what_the_study_records(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-c", UNITS_SCRIPT, str(ws)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout[proc.stdout.rindex("RESULT") + 6:].splitlines()[0])
    cfg = load_preset("smoke")

    assert out["republished"]
    train = journal(ws, out["train"]["run_id"])
    assert [n for n, _ in train] == ["dataset", "stage", "unit"]
    assert train[1][1][0]["stage"] == "train" and train[1][1][0]["key"] == train_unit_key(cfg)
    assert train[2][1][:2] == ["train", "finished"] and train[2][1][2]["steps"] == [0, 6, 12]

    ckpt = journal(ws, out["ckpt"]["run_id"])
    assert [n for n, _ in ckpt] == ["checkpoint", "stage", "probes", "probes", "probes", "unit"]
    c, ev = ckpt[0][1]
    assert c["step"] == 12 and c["key"] == out["ckpt"]["checkpoint"] and "acc_all" in ev["metrics"]
    assert ckpt[1][1][0]["stage"] == "activations"
    assert [a[0]["meta"]["semantics"] for n, a in ckpt if n == "probes"] == list(cfg.probe.semantics)
    assert ckpt[-1][1][:2] == ["checkpoint", "finished"]
    assert {s["status"] for s in record.Journal.read(ws, out["ckpt"]["run_id"]).stages()} == {"computed"}

    # a duplicate run of the unit computes nothing
    again = journal(ws, out["again"]["run_id"])
    assert [n for n, _ in again] == [n for n, _ in ckpt]
    assert {s["status"] for s in record.Journal.read(ws, out["again"]["run_id"]).stages()} == {"cached"}

    # a checkpoint that is not published, and a step that is not a checkpoint, are errors
    assert "not published" in out["unpublished"] and "step 5 is not a checkpoint" in out["bad_step"]
    failed = [p for p in (ws / "journals").glob("*.json") if json.loads(p.read_text())["calls"][-1][1][1] == "failed"]
    assert len(failed) == 1
    # units write no DuckDB and no MLflow: only the study that fans out does
    assert not (ws / "results.duckdb").exists() and not (ws / "mlflow.db").exists()
