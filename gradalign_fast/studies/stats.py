"""Interval estimates for the study tables: Wilson intervals for rates (collapsed runs / seeds),
percentile-bootstrap intervals for mean paired differences (method - reference, same seed),
and a one-sided Fisher exact test for "collapses more often than the reference"."""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n (n >= 1)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_ci(values, n_boot: int = 10000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its percentile-bootstrap interval (resampling
    the values with replacement); lo and hi are NaN for a single value (no interval can be
    estimated from one). For paired differences pass the per-seed differences."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_mean_ci: no values")
    if v.size == 1:
        return float(v[0]), math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(v.mean()), float(lo), float(hi)


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that rate 1 (k1/n1) exceeds rate 2 (k2/n2): the
    probability, with both margins fixed, of k1 or more events in group 1."""
    k, n = k1 + k2, n1 + n2
    total = math.comb(n, k)
    return sum(math.comb(n1, i) * math.comb(n2, k - i)
               for i in range(k1, min(n1, k) + 1)) / total
