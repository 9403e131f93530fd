"""Means and 95% t-intervals over seeds, and Wilson intervals for proportions (numpy only; no scipy)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd


def _t_cdf_upper_half(x: float, df: int, n: int = 20001) -> float:
    """P(0 <= T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    t = np.linspace(0.0, x, n)
    f = c * (1 + t * t / df) ** (-(df + 1) / 2)
    h = x / (n - 1)
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (q in (0.5, 1)) of Student's t, by bisection on its CDF."""
    if not 0.5 < q < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 < q < 1 and df >= 1, got q={q}, df={df}")
    lo, hi = 0.0, 1.0
    while 0.5 + _t_cdf_upper_half(hi, df) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 + _t_cdf_upper_half(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): t-interval over independent values (NaN bounds for n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = t_quantile(0.5 + level / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, m - half, m + half


def proportion_ci(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """(lower, upper): the Wilson score interval of a proportion ``p`` observed on ``n`` trials
    (a share of test specs solved, say); NaN bounds for n < 1 or a NaN ``p``."""
    if not 0 < level < 1:
        raise ValueError(f"proportion_ci: level must be in (0, 1), got {level}")
    if n < 1 or math.isnan(p):
        return float("nan"), float("nan")
    if not 0 <= p <= 1:
        raise ValueError(f"proportion_ci: p must be in [0, 1], got {p}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(df: pd.DataFrame, value: str = "accuracy", over: str = "seed",
              level: float = 0.95) -> pd.DataFrame:
    """Mean and t-interval of ``value`` over ``over`` (seeds), grouped by every other key column.

    Key columns are all columns except ``value``, ``over`` and ``n``. Returns the keys plus
    ``mean``, ``ci_low``, ``ci_high``, ``n_seeds`` and ``n`` (mean rows per seed).
    """
    for col in (value, over):
        if col not in df.columns:
            raise ValueError(f"summarize: column {col!r} not in {list(df.columns)}")
    keys = [c for c in df.columns if c not in (value, over, "n")]
    rows = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        m, lo, hi = mean_ci(g[value].to_numpy(), level)
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(mean=m, ci_low=lo, ci_high=hi, n_seeds=int(g.loc[g[value].notna(), over].nunique()))
        if "n" in g:
            row["n"] = float(g["n"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def paired_diff(a: pd.DataFrame, b: pd.DataFrame, on: list[str], by: list[str], over: str = "seed",
                value: str = "accuracy", level: float = 0.95) -> pd.DataFrame:
    """Mean and t-interval of ``a[value] - b[value]``, paired on ``on`` + ``over`` (e.g. a probe
    and its baseline on the same seed's split), per group of ``by`` (columns of ``a``, ``on``
    among them). Returns ``by`` plus ``a_mean`` and ``b_mean`` (each side's mean over the
    pairs), ``mean``, ``ci_low``, ``ci_high`` (of the differences) and ``n_seeds`` (pairs with
    both values)."""
    for col in [*on, over, value]:
        for name, df in (("a", a), ("b", b)):
            if col not in df.columns:
                raise ValueError(f"paired_diff: column {col!r} not in {name} ({list(df.columns)})")
    merged = a.merge(b[[*on, over, value]], on=[*on, over], suffixes=("", "_base"))
    merged = merged.assign(_diff=merged[value] - merged[value + "_base"])
    rows = []
    for key, g in merged.groupby(by, sort=False, dropna=False):
        m, lo, hi = mean_ci(g["_diff"].to_numpy(), level)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "a_mean": float(g[value].mean()), "b_mean": float(g[value + "_base"].mean()),
                     "mean": m, "ci_low": lo, "ci_high": hi, "n_seeds": int(g["_diff"].notna().sum())})
    return pd.DataFrame(rows, columns=[*by, "a_mean", "b_mean", "mean", "ci_low", "ci_high", "n_seeds"])
