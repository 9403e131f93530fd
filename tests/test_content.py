"""Semantic content per checkpoint (tasks.phases): raw, and beyond the random-init model."""

import numpy as np
import pandas as pd
import pytest

from tasks.phases import CONTENT_PROBE, MEAN_FEATURE, init_content, interventions, interventions_vs_init


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
    # a random-init grid at another offset (-1 on fed reference programs) gets its own rows
    at_minus1 = interventions_vs_init(
        pd.concat([trained, pd.DataFrame(_grid("original", [0.7, 0.7, 0.7], offset=-1) + _grid("flip", [0.5, 0.5, 0.5], offset=-1))]),
        pd.concat([init, pd.DataFrame(_grid("original", [0.4, 0.4, 0.4], offset=-1) + _grid("flip", [0.3, 0.3, 0.3], offset=-1))]))
    assert at_minus1.set_index("offset")["content"].to_dict() == pytest.approx({0: 0.09, -1: 0.1})
    # seed means alone (what the controls table keeps) would give the same value and no CI
    m = interventions(trained).set_index(["semantics", "offset"]).loc[("flip", 0)]
    assert m["content"] - 0.02 == pytest.approx(flip["content"])


def test_the_mean_over_main_features_pairs_each_seed_before_its_ci():
    """The ``main_mean`` row averages the features' drops within each seed, then takes the CI over
    seeds; a seed without every main feature is left out."""
    trained, init = [], []
    per_feature = {"direction": [0.10, 0.20, 0.30], "rel_start": [0.00, 0.05, 0.10], "facing_wall": [0.02, 0.02, 0.02]}
    for f, drops in per_feature.items():
        trained += _grid("original", [0.6, 0.6, 0.6], feature=f) + _grid("flip", [0.6 - x for x in drops], feature=f)
        init += _grid("original", [0.5, 0.5, 0.5], feature=f) + _grid("flip", [0.5, 0.5, 0.5], feature=f)
    # a fourth seed read for direction only: not part of the mean
    trained += [dict(r, seed=3) for r in _grid("original", [0.9], feature="direction") + _grid("flip", [0.0], feature="direction")]
    init += [dict(r, seed=3) for r in _grid("original", [0.5], feature="direction") + _grid("flip", [0.5], feature="direction")]
    out = interventions_vs_init(pd.DataFrame(trained), pd.DataFrame(init)).set_index("feature")
    assert set(out.index) == {"direction", "rel_start", "facing_wall", MEAN_FEATURE}
    mean = out.loc[MEAN_FEATURE]
    seeds = np.array([0.04, 0.09, 0.14])  # per seed: mean of (0.10, 0.00, 0.02), (0.20, 0.05, 0.02), ...
    assert mean["content"] == pytest.approx(seeds.mean())
    half = 4.3027 * seeds.std(ddof=1) / 3 ** 0.5  # t(0.975, 2 df)
    assert mean["ci_low"] == pytest.approx(seeds.mean() - half, abs=1e-5)
    assert mean["ci_high"] == pytest.approx(seeds.mean() + half, abs=1e-5)
    assert mean["probe_key"] == "pk-flip" and mean["semantics"] == "flip" and mean["offset"] == 0
    # the direction row keeps its fourth seed (0.9 drop): the mean row does not
    assert out.loc["direction", "content"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.9) / 4)
    # without one main feature there is no mean row
    no_wall = interventions_vs_init(pd.DataFrame([r for r in trained if r["feature"] != "facing_wall"]),
                                    pd.DataFrame(init))
    assert MEAN_FEATURE not in set(no_wall["feature"])
