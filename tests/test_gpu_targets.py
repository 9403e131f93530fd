"""The GPU session's probe keys and their reading as issue 7's targets (benchmarks/gpu_targets.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu_emergence import grid_key
from benchmarks.gpu_targets import content, probed, report
from probes.labels import MAIN_FEATURES


def test_grid_key_names_semantics_and_offset_only_when_not_the_default():
    assert grid_key("grid", "mlp2", "direction") == "grid_mlp2_direction"
    assert grid_key("grid_init", "linear", "facing_wall", "adversarial") == "grid_init_linear_facing_wall@adversarial"
    assert grid_key("grid_control", "mlp1", "rel_start", offset=1) == "grid_control_mlp1_rel_start+1"
    assert grid_key("grid", "mlp1", "direction", "flip", -2) == "grid_mlp1_direction@flip-2"


def record(step, acc, orig, alt, init_orig, init_alt, kind="mlp1"):
    """An evaluation record whose every main feature reads ``orig`` under original and ``alt``
    under flip (trained states), and ``init_orig`` / ``init_alt`` on the random-init states."""
    r = {"part": "eval", "tag": "t", "step": step, "tokens_seen": step * 1000, "acc_spec": acc,
         "acc_spec_len6_10": acc, "grid_pairs": 100}
    for f in MAIN_FEATURES:
        r[grid_key("grid", kind, f)], r[grid_key("grid", kind, f, "flip")] = orig, alt
        r[grid_key("grid_init", kind, f)], r[grid_key("grid_init", kind, f, "flip")] = init_orig, init_alt
    return r


def test_content_is_original_minus_alternative_on_each_state():
    r = record(100, 0.5, 0.60, 0.45, 0.40, 0.38)
    assert content(r, "mlp1", ["flip"]) == pytest.approx(0.15)
    assert content(r, "mlp1", ["flip"], "grid_init") == pytest.approx(0.02)
    assert content(r, "mlp2", ["flip"]) is None  # no such probes


def test_report_fits_content_against_accuracy(tmp_path):
    # raw content falls with accuracy (slope -0.1), content beyond random-init rises with it
    # (+0.1), both exactly (R^2 1)
    recs = [record(s, a, 0.5, 0.4, 0.5, 0.4 + 0.2 * a) for s, a in ((500, 0.1), (1000, 0.3), (2000, 0.6))]
    for r in recs:  # raw content = 0.1 - 0.1 * acc
        for f in MAIN_FEATURES:
            r[grid_key("grid", "mlp1", f, "flip")] = 0.4 + 0.1 * r["acc_spec"]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"part": "config", "tag": "t"}, *recs]))
    runs = probed(str(path))
    assert list(runs) == ["t"] and [r["step"] for r in runs["t"]] == [500, 1000, 2000]
    text = "\n".join(report("t", runs["t"], "mlp1"))
    assert "- content vs accuracy: R^2 = 1.000, slope -0.100 over 3 checkpoints" in text
    # beyond random-init: (0.1 - 0.1 a) - (0.1 - 0.2 a) = 0.1 a
    assert "- content beyond random-init vs accuracy: R^2 = 1.000, slope +0.100 over 3 checkpoints" in text


def test_margins_pair_each_probe_with_its_baseline_by_seed():
    """Three probe seeds: the probe beats its random-init twin by 10, 20 and 30 points on the
    same seeds (mean +20, t-interval over the three), and the flip drop is 5 points on every seed
    (a zero-width interval); a baseline without per-seed values shows no interval."""
    r = {"part": "eval", "tag": "t", "step": 6000, "tokens_seen": 1, "acc_spec": 0.5, "acc_spec_len6_10": 0.4}
    for f in MAIN_FEATURES:
        for name, vals in (("grid", [0.6, 0.7, 0.8]), ("grid_init", [0.5, 0.5, 0.5])):
            r[grid_key(name, "mlp1", f)] = sum(vals) / 3
            r[grid_key(name, "mlp1", f) + "#seeds"] = vals
            alt = [v - 0.05 for v in vals]
            r[grid_key(name, "mlp1", f, "flip")] = sum(alt) / 3
            r[grid_key(name, "mlp1", f, "flip") + "#seeds"] = alt
    text = "\n".join(report("t", [r], "mlp1"))
    assert "- offset +0, direction, mlp1: over majority -; over control task -; over random-init +20.0 [-4.8, +44.8]" in text
    assert "- flip, direction, mlp1: drop +5.0 [+5.0, +5.0]; beyond random-init +0.0 [+0.0, +0.0]" in text
