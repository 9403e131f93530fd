"""Semantic content per checkpoint (tasks.phases): raw, and beyond the random-init model."""

import pandas as pd
import pytest

from tasks.phases import CONTENT_PROBE, init_content, interventions, interventions_vs_init


def _rows(step, semantics, values, probe=CONTENT_PROBE, kind="random_init", offset=0):
    return [dict(checkpoint_key=f"ck{step}", step=step, feature=f, offset=offset, kind=kind, probe=probe,
                 value=v, semantics=semantics) for f, v in values.items()]


def test_init_content_is_original_minus_each_alternative_averaged():
    c = pd.DataFrame(
        _rows(6, "original", {"direction": 0.5, "facing_wall": 0.7})
        + _rows(6, "flip", {"direction": 0.3, "facing_wall": 0.7})
        + _rows(6, "adversarial", {"direction": 0.4, "facing_wall": 0.9})
        # none of these count: another kind, probe, offset, feature
        + _rows(6, "flip", {"direction": 0.0}, kind="majority")
        + _rows(6, "flip", {"direction": 0.0}, probe="linear")
        + _rows(6, "flip", {"direction": 0.0}, offset=1)
        + _rows(6, "flip", {"rel_end": 0.0})
        + _rows(12, "original", {"direction": 0.6}) + _rows(12, "flip", {"direction": 0.6}))
    out = init_content(c, ("direction", "facing_wall")).set_index("step")["init_content"]
    # step 6: direction (0.2 + 0.1) / 2, facing_wall (0.0 - 0.2) / 2 -> mean 0.025
    assert out[6] == pytest.approx(((0.5 - 0.3) + (0.5 - 0.4) + (0.7 - 0.7) + (0.7 - 0.9)) / 4)
    assert out[12] == pytest.approx(0.0)


def test_init_content_needs_the_original_semantics():
    c = pd.DataFrame(_rows(6, "flip", {"direction": 0.3}))
    assert init_content(c, ("direction",)).empty
    assert init_content(pd.DataFrame(), ("direction",)).empty


def _grid(semantics, accs, feature="direction", probe=CONTENT_PROBE, offset=0, split="test"):
    """Per-seed grid rows of one checkpoint (step 6) and grid."""
    return [dict(probe_key=f"pk-{semantics}", checkpoint_key="ck6", step=6, semantics=semantics, feature=feature,
                 offset=offset, probe=probe, layer=-1, seed=s, split=split, accuracy=a) for s, a in enumerate(accs)]


def test_drops_beyond_random_init_pair_the_seeds():
    trained = pd.DataFrame(_grid("original", [0.60, 0.62, 0.64]) + _grid("flip", [0.50, 0.51, 0.52])
                           + _grid("adversarial", [0.40, 0.40, 0.40])
                           + _grid("flip", [0.0, 0.0, 0.0], offset=1) + _grid("flip", [0.0, 0.0, 0.0], split="val"))
    init = pd.DataFrame(_grid("original", [0.30, 0.32, 0.34]) + _grid("flip", [0.30, 0.30, 0.30]))
    out = interventions_vs_init(trained, init).set_index("semantics")
    # no random-init grid under adversarial: no row for it
    assert list(out.index) == ["flip"]
    flip = out.loc["flip"]
    # per seed: (0.10, 0.11, 0.12) trained minus (0.00, 0.02, 0.04) random-init = (0.10, 0.09, 0.08)
    assert flip["trained_drop"] == pytest.approx(0.11) and flip["init_drop"] == pytest.approx(0.02)
    assert flip["content"] == pytest.approx(0.09)
    assert flip["ci_low"] == pytest.approx(0.09 - 4.303 * 0.01 / 3 ** 0.5, abs=1e-3) and flip["ci_high"] > 0.09
    assert flip["probe_key"] == "pk-flip" and flip["offset"] == 0 and flip["layer"] == -1
    # seed means alone (what the controls table keeps) would give the same value and no CI
    m = interventions(trained).set_index(["semantics", "offset"]).loc[("flip", 0)]
    assert m["content"] - 0.02 == pytest.approx(flip["content"])
