"""Planted signals for the single-probe estimators."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import probes
from probes import LinearProbe, MLPProbe

FAST = dict(epochs=15, batch_size=256)


def linear_data(n=3000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d))
    x[:, :4] += 4.0 * np.eye(4)[y]
    return x, y


def test_linear_signal_is_found():
    x, y = linear_data()
    acc = LinearProbe(seed=0, **FAST).fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    assert acc > 0.97


def test_independent_states_stay_at_majority():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16))
    y = (rng.random(3000) < 0.7).astype(int)  # majority 70%
    probe = MLPProbe(hidden=(32,), seed=0, **FAST)
    acc = probe.fit(x[:2000], y[:2000], x[2000:2500], y[2000:2500]).score(x[2500:], y[2500:])
    assert abs(acc - (y[2500:] == 1).mean()) < 0.06


def test_xor_found_by_mlp_not_linear():
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2, (3000, 2))
    y = bits[:, 0] ^ bits[:, 1]
    x = np.c_[2 * bits - 1 + 0.1 * rng.normal(size=(3000, 2)), rng.normal(size=(3000, 6))]
    lin = LinearProbe(seed=0, **FAST).fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    mlp = MLPProbe(hidden=(32,), seed=0, **FAST).fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    mlp2 = MLPProbe(hidden=(32, 64), seed=0, **FAST).fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    assert lin < 0.65 and mlp > 0.95 and mlp2 > 0.95


def test_deterministic_params_and_multi_head():
    x, y = linear_data(1200)
    a = MLPProbe(hidden=(16,), seed=3, epochs=3).fit(x, y).predict(x)
    b = MLPProbe(hidden=(16,), seed=3, epochs=3).fit(x, y).predict(x)
    assert (a == b).all()
    p = MLPProbe(hidden=(16,), seed=0)
    assert p.get_params()["hidden"] == (16,)
    assert p.set_params(epochs=2).epochs == 2
    yy = np.c_[y, y % 2 + 10]  # two heads, scored jointly; arbitrary label values
    probe = LinearProbe(seed=0, **FAST).fit(x, yy, x[:100], yy[:100])
    assert probe.predict(x[:5]).shape == (5, 2) and set(probe.classes_[1]) == {10, 11}
    assert probe.score(x, yy) > 0.9
    assert 1 <= probe.best_epoch_ <= FAST["epochs"]
    assert probe.mean_.shape == (16,)


def test_bad_shapes_raise():
    x, y = linear_data(100)
    with pytest.raises(ValueError, match="y"):
        LinearProbe().fit(x, y[:50])
    with pytest.raises(ValueError, match="X"):
        LinearProbe().fit(x[:, 0], y)
    with pytest.raises(ValueError, match="X_val"):
        LinearProbe(epochs=1).fit(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="hidden"):
        MLPProbe(hidden=(), epochs=1).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        LinearProbe(epochs=1).fit(x, y).score(x[:, :3], y)


def test_few_steps_start_from_the_majority():
    # one batch per epoch, 5 epochs: the head bias starts at the log label prior, so a probe
    # with too few steps to learn anything still predicts the majority class
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 16)) + 3.0
    y = np.zeros(600, int)
    for probe in (LinearProbe(seed=0, epochs=5, batch_size=1024),
                  MLPProbe(hidden=(32,), seed=0, epochs=5, batch_size=1024)):
        assert probe.fit(x[:400], y[:400]).score(x[400:], y[400:]) == 1.0
    y = (rng.random(600) < 0.8).astype(int)  # 80% ones, independent of x
    acc = LinearProbe(seed=0, epochs=5, batch_size=1024).fit(x[:400], y[:400]).score(x[400:], y[400:])
    assert acc >= (y[400:] == 1).mean() - 0.05


def test_a_last_batch_of_one_row_trains():
    """n = 2 batches + 1 row: BatchNorm cannot train on one row, so it joins the batch before."""
    from probes.stacked_training import batch_bounds

    assert batch_bounds(513, 256) == [(0, 256), (256, 513)]
    assert batch_bounds(512, 256) == [(0, 256), (256, 512)] and batch_bounds(1, 256) == [(0, 1)]
    x, y = linear_data(n=513 + 200)
    acc = MLPProbe(hidden=(16, 32), seed=0, epochs=3, batch_size=256).fit(x[:513], y[:513]).score(x[513:], y[513:])
    assert acc > 0.5


def test_the_estimators_load_scikit_learn_on_first_use():
    """``import probes`` (every stage, ``semprobe status``) does not pay scikit-learn's ~2 s import."""
    code = ("import sys, probes, flows.status; assert 'sklearn' not in sys.modules; "
            "from probes import MLPProbe; assert 'sklearn' in sys.modules and MLPProbe.__name__ == 'MLPProbe'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        probes.Nope  # noqa: B018
