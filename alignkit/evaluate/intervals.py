"""Confidence intervals for the rates and means every evaluation reports.

- `wilson_interval(k, n)`: a binomial rate k/n (attack success, refusal, compliance).
  Wilson's score interval (Wilson 1927) keeps its coverage near the nominal level for
  small n and rates near 0 or 1, where the normal ("Wald") interval collapses to a point.
- `bootstrap_interval(values, statistic)`: any statistic of per-item values (mean
  reward, win rate with ties counted half), the percentile bootstrap (Efron & Tibshirani
  1993, ch. 13): resample the items with replacement, recompute, take the 2.5% and 97.5%
  quantiles. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def _normal_quantile(level: float) -> float:
    """z with P(|Z| <= z) = level for a standard normal Z (e.g. 1.96 for 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate: center (p + z^2/2n) / (1 + z^2/n),
    half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), with p = k/n. (0, 1) when n = 0."""
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    z = _normal_quantile(level)
    p, n = successes / trials, trials
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the edges
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values` (N,) or (N, ...): rows
    are resampled together, so paired measurements stay paired. A single value (or none)
    has no spread to resample: (v, v) / (nan, nan)."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return math.nan, math.nan
    if len(data) == 1:
        value = float(statistic(data))
        return value, value
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    estimates = np.array([statistic(data[rows]) for rows in picks])
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)
