"""``semprobe estimate``: every stage of a preset timed at a small scale in a temporary workspace
and scaled up; the arithmetic that scales it and fits a run to a time budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from flows.estimate import Part, linear, probe_wall, steps_within, SIDE_BY_SIDE
from flows.presets import load_preset
from model.config import checkpoint_steps


def test_linear_splits_a_fixed_and_a_per_unit_cost():
    assert linear(3.0, 1, 5.0, 2, 10) == pytest.approx(1.0 + 2.0 * 10)
    # timing noise: the larger size measured faster counts as all fixed cost, never a negative slope
    assert linear(5.0, 1, 4.0, 2, 10) == pytest.approx(5.0)
    # a slope steeper than a fixed part >= 0 allows (noise in the second timing) is bounded by the
    # first: never more than n / n1 times t1, and the fixed part never negative
    assert linear(1.0, 1, 5.0, 2, 3) == pytest.approx(3.0)
    assert linear(10.1, 1, 25.0, 2, 30) == pytest.approx(30 * 10.1)
    assert linear(2.0, 0.1, 3.0, 0.2, 1.0) == pytest.approx(2.0 - 10.0 * 0.1 + 10.0)


def test_probe_wall_is_the_grids_side_by_side_and_never_less_than_the_longest():
    assert probe_wall([10.0, 20.0, 30.0], 1) == pytest.approx(60.0)
    assert probe_wall([10.0, 20.0, 30.0], 2) == pytest.approx(60.0 / (2 * SIDE_BY_SIDE))
    assert probe_wall([100.0, 1.0, 1.0], 3) == pytest.approx(100.0)
    assert probe_wall([], 2) == 0.0


def test_steps_within_is_the_most_steps_that_fit():
    cfg = load_preset("cpu")
    parts = [Part("dataset", 1, 5, 5), Part("train", 1, 0, 0), Part("evaluate", 13, 30, 390),
             Part("activations", 3, 150, 450), Part("probes", 9, 200, 1000)]
    first, per_step = 3.0, 1.3

    def total(steps):
        evals = len(checkpoint_steps(replace(cfg.train, steps=steps))) * 30
        return 5 + 450 + 1000 + first + per_step * (steps - 1) + evals

    budget = 3600.0
    steps = steps_within(budget, parts, cfg, first, per_step)
    assert steps > 0 and total(steps) <= budget < total(steps + 1)
    assert steps_within(1000.0, parts, cfg, first, per_step) == 0  # the probes alone take longer


def semprobe(ws, *args, env=None):
    cmd = [sys.executable, "-m", "flows.cli", "--workspace", str(ws), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_estimate_times_every_stage_of_the_run_and_writes_nowhere(tmp_path):
    ws, shared = tmp_path / "ws", tmp_path / "shared-store"
    env = {**os.environ, "SEMPROBE_ARTIFACTS": str(shared)}  # a user's shared store must stay untouched
    proc = semprobe(ws, "estimate", "--preset", "smoke", "--set", "activations.checkpoints=2", "--json",
                    "--minutes", "30", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    parts = {p["stage"]: p for p in out["parts"]}
    assert list(parts) == ["dataset", "train", "evaluate", "activations", "probes"]
    cfg = load_preset("smoke", ["activations.checkpoints=2"])
    schedule = checkpoint_steps(cfg.train)
    assert parts["evaluate"]["runs"] == len(schedule)
    assert parts["activations"]["runs"] == len(cfg.probed_steps()) == 2
    assert parts["probes"]["runs"] == 2 * len(cfg.probe.semantics)
    assert all(p["seconds"] > 0 and p["each"] > 0 for p in out["parts"])
    assert out["seconds"] == pytest.approx(sum(p["seconds"] for p in out["parts"]))
    assert f"{cfg.train.steps:,} steps" in parts["train"]["detail"]
    assert out["train_steps_within"] > cfg.train.steps  # a smoke run is seconds, 30 minutes fit far more
    assert not shared.exists() and not (ws / "artifacts").exists()


def test_estimate_rejects_a_bad_override_before_measuring(tmp_path, capsys):
    from flows.cli import main  # in this process: a subprocess spends ~9 s importing before it refuses

    assert main(["--workspace", str(tmp_path), "estimate", "--preset", "smoke", "--set", "probe.epochz=1"]) == 2
    assert "epochz" in capsys.readouterr().err
    assert main(["--workspace", str(tmp_path), "estimate", "--preset", "smoke", "--train-steps", "0"]) == 2
    assert "--train-steps" in capsys.readouterr().err


@pytest.mark.parametrize("isa, preset, noted", [(["avx2"], "cpu", True), (["avx2"], "cpu-long", True),
                                                (["avx2"], "smoke", False),
                                                (["avx512_bf16", "avx512f", "avx2"], "cpu", False)])
def test_run_points_to_estimate_on_a_cpu_that_would_emulate_bf16(monkeypatch, isa, preset, noted):
    """`semprobe run` of a preset sized on bf16 CPUs, on a float32-only one, says so and names the
    estimate command before the hours start; on a CPU with bf16, or for smoke, it says nothing."""
    from flows.cli import slow_cpu_note
    from model import machine

    monkeypatch.setattr(machine, "cpu_identity", lambda: {"cpu": "Test CPU", "cpu_isa": isa})
    note = slow_cpu_note(preset, load_preset(preset, ["train.device=cpu"]))
    assert (note is not None) == noted
    if noted:
        assert "Test CPU" in note and f"semprobe estimate --preset {preset} --minutes 60" in note
