"""probes.stats: t-intervals over seeds, by hand (scipy's t.ppf(0.975, df) for the quantiles)."""

import math

import numpy as np
import pandas as pd
import pytest

from probes.stats import mean_ci, paired_diff, proportion_ci, summarize, t_quantile


@pytest.mark.parametrize("df,want", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (30, 2.042272)])
def test_t_quantile(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-5)


def test_mean_ci_by_hand_and_with_too_few_values():
    m, lo, hi = mean_ci([0.80, 0.85, 0.90])
    assert (m, lo, hi) == pytest.approx((0.85, 0.85 - 4.302653 * 0.05 / math.sqrt(3), 0.85 + 4.302653 * 0.05 / math.sqrt(3)))
    m, lo, hi = mean_ci([0.7, float("nan")])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)


@pytest.mark.parametrize("p,n,want", [(0.0, 10, (0.0, 0.277533)), (1.0, 10, (0.722467, 1.0)),
                                      (0.5, 100, (0.403832, 0.596168)), (0.75, 150, (0.675049, 0.812466))])
def test_wilson_interval_of_a_share(p, n, want):
    """Known Wilson intervals (e.g. 0 of 10: upper 0.2775, the 'rule of three' cousin)."""
    assert proportion_ci(p, n) == pytest.approx(want, abs=1e-6)


def test_wilson_interval_without_data_and_with_bad_input():
    assert all(math.isnan(b) for b in proportion_ci(float("nan"), 10) + proportion_ci(0.5, 0))
    with pytest.raises(ValueError, match="p must be"):
        proportion_ci(1.2, 10)
    with pytest.raises(ValueError, match="level"):
        proportion_ci(0.5, 10, level=95)


def test_summarize_counts_only_seeds_with_a_value():
    df = pd.DataFrame({"probe": "mlp1", "seed": [0, 1, 2], "accuracy": [0.5, float("nan"), 0.7]})
    row = summarize(df).iloc[0]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(0.6)


def test_paired_diff_pairs_by_seed_and_broadcasts_a_shared_baseline():
    """Paired: a baseline that moves with the seed's split cancels; the unpaired spread does not.
    A baseline without a probe column (the majority) serves every probe kind."""
    probe = pd.DataFrame({"feature": "direction", "probe": ["linear"] * 3 + ["mlp1"] * 3,
                          "seed": [0, 1, 2] * 2, "accuracy": [0.30, 0.50, 0.70, 0.31, 0.52, 0.73]})
    base = pd.DataFrame({"feature": "direction", "seed": [0, 1, 2], "accuracy": [0.25, 0.45, 0.65]})
    out = paired_diff(probe, base, on=["feature"], by=["feature", "probe"]).set_index("probe")
    assert out.loc["linear", "mean"] == pytest.approx(0.05) and out.loc["linear", "ci_low"] == pytest.approx(0.05)
    d = np.array([0.06, 0.07, 0.08])
    assert out.loc["mlp1", "ci_low"] == pytest.approx(d.mean() - 4.302653 * d.std(ddof=1) / math.sqrt(3))
    assert (out["n_seeds"] == 3).all()
    assert out.loc["linear", "a_mean"] == pytest.approx(0.5) and out.loc["mlp1", "b_mean"] == pytest.approx(0.45)
    # unpaired, the probe's own lower bound is below the baseline's mean (0.45): paired it is clear
    assert mean_ci(probe["accuracy"][:3])[1] < base["accuracy"].mean()
    with pytest.raises(ValueError, match="'seed'"):
        paired_diff(probe, base.drop(columns="seed"), on=["feature"], by=["feature", "probe"])
