"""Interval estimators against worked examples and their coverage."""

import numpy as np
import pytest

from alignkit.evaluate.intervals import bootstrap_interval, wilson_interval


def test_wilson_worked_example():
    """k = 8 of n = 10 at 95% (z = 1.959964): center (0.8 + 0.19207) / 1.38415 = 0.71679,
    half-width 1.959964 * sqrt(0.016 + 0.0096036) / 1.38415 = 0.22657 ->
    (0.4902, 0.9433), the textbook values."""
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges():
    low, high = wilson_interval(0, 20)  # no successes: still a useful upper bound
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_wilson_coverage_near_nominal():
    """Over many simulated experiments (n = 30, p = 0.1) the 95% interval covers p in
    about 95% of them (Wilson's coverage stays within a few points of nominal)."""
    rng = np.random.default_rng(0)
    hits = rng.binomial(30, 0.1, size=4000)
    covered = np.mean([lo <= 0.1 <= hi for lo, hi in (wilson_interval(int(k), 30) for k in hits)])
    assert 0.92 <= covered <= 0.98


def test_bootstrap_covers_the_mean_at_about_the_nominal_rate():
    """Normal samples of size 40: the percentile interval of the mean covers the true
    mean in roughly 95% of 300 experiments (the percentile bootstrap runs a little
    narrow at this n, hence the 0.90 floor)."""
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(300):
        sample = rng.normal(2.0, 1.0, size=40)
        low, high = bootstrap_interval(sample, resamples=500, seed=trial)
        covered += low <= 2.0 <= high
    assert 0.90 <= covered / 300 <= 0.99


def test_bootstrap_is_seeded_and_keeps_rows_paired():
    values = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    difference = lambda rows: float(np.mean(rows[:, 0] - rows[:, 1]))  # noqa: E731
    assert bootstrap_interval(values, difference, seed=3) == bootstrap_interval(
        values, difference, seed=3
    )
    same = np.array([[0.5, 0.5]] * 6)
    assert bootstrap_interval(same, difference) == (0.0, 0.0)
    assert bootstrap_interval([3.0]) == (3.0, 3.0)
