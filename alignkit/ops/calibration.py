"""Calibration of predicted preference probabilities.

A reward model predicts P(a beats b) = sigma(r_a - r_b). Expected calibration error
(Naeini et al. 2015; Guo et al. 2017, Eq. 3) bins the predictions and averages, weighted
by bin size, |observed frequency - mean prediction|.

Preference data only holds comparisons written chosen-first, so the outcome "chosen wins"
is always 1 and a plain ECE would reward predicting 1 everywhere. Each comparison is
therefore counted in both orders, (p, y) and (1 - p, 1 - y); this is the reliability
diagram of the symmetric question "which response wins?".
"""

from __future__ import annotations

import torch


def reliability_table(
    probs: torch.Tensor, outcomes: torch.Tensor | None = None, *, num_bins: int = 10
) -> list[dict]:
    """The reliability diagram behind `expected_calibration_error`, one row per non-empty
    bin: `low`, `high` (the bin's edges), `count` (predictions in it, both orders
    counted), `mean_prob` (mean prediction) and `frequency` (mean outcome). Arguments as
    for `expected_calibration_error`; the table is symmetric about 0.5 by construction."""
    probs = probs.detach().double().flatten()
    outcomes = torch.ones_like(probs) if outcomes is None else outcomes.detach().double().flatten()
    if probs.numel() == 0:
        raise ValueError("calibration needs at least one prediction")
    p = torch.cat([probs, 1 - probs])
    y = torch.cat([outcomes, 1 - outcomes])
    bins = (p * num_bins).long().clamp(max=num_bins - 1)
    rows = []
    for b in range(num_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count:
            rows.append(
                {
                    "low": b / num_bins,
                    "high": (b + 1) / num_bins,
                    "count": count,
                    "mean_prob": float(p[in_bin].mean()),
                    "frequency": float(y[in_bin].mean()),
                }
            )
    return rows


def expected_calibration_error(
    probs: torch.Tensor, outcomes: torch.Tensor | None = None, *, num_bins: int = 10
) -> float:
    """ECE of predicted probabilities that the chosen response wins.

    probs: (N,) sigma(r_c - r_r); outcomes: (N,) 1 for hard labels (default) or the
    soft label p_chosen. Bins are equal-width on [0, 1]; the last bin includes 1.0.
    """
    rows = reliability_table(probs, outcomes, num_bins=num_bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["frequency"] - row["mean_prob"]) for row in rows) / total
