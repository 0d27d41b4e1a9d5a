import pytest
import torch

from alignkit.ops.calibration import expected_calibration_error, reliability_table


def test_ece_worked_example():
    """Predictions 0.9, 0.9, 0.3 that chosen wins (hard labels: it always does).
    Symmetrised: (0.9,1) (0.9,1) (0.3,1) (0.1,0) (0.1,0) (0.7,0), 10 bins.
    Bin 9: {0.9, 0.9}, outcomes {1, 1}: |1 - 0.9| = 0.1, weight 2/6.
    Bin 3: {0.3}: |1 - 0.3| = 0.7, weight 1/6. Bin 1: {0.1, 0.1}: |0 - 0.1| = 0.1, 2/6.
    Bin 7: {0.7}: |0 - 0.7| = 0.7, 1/6. ECE = (0.2 + 0.7 + 0.2 + 0.7) / 6 = 0.3."""
    assert expected_calibration_error(torch.tensor([0.9, 0.9, 0.3])) == pytest.approx(0.3)


def test_calibrated_soft_labels_give_zero():
    """A model predicting exactly the labellers' p_chosen is perfectly calibrated."""
    p = torch.tensor([0.62, 0.75, 0.91, 0.55])
    assert expected_calibration_error(p, p) == pytest.approx(0.0, abs=1e-12)


def test_overconfidence_is_measured():
    """Always predicting 0.99 while only 60% of the labels agree: bin 9 holds the 0.99s
    with outcome mean 0.6 -> 0.39; bin 0 holds the 0.01s with outcome mean 0.4 -> 0.39."""
    probs = torch.full((10,), 0.99)
    outcomes = torch.tensor([1.0] * 6 + [0.0] * 4)
    assert expected_calibration_error(probs, outcomes) == pytest.approx(0.39)


def test_reliability_table_is_the_diagram_behind_ece():
    """Predictions 0.85, 0.85, 0.35 (hard labels), both orders: bin 1 {0.15, 0.15} -> 0,
    bin 3 {0.35} -> 1, bin 6 {0.65} -> 0, bin 8 {0.85, 0.85} -> 1. ECE is the
    count-weighted mean gap of its rows: (0.3 + 0.65 + 0.65 + 0.3) / 6."""
    probs = torch.tensor([0.85, 0.85, 0.35], dtype=torch.float64)
    rows = reliability_table(probs)
    assert [(r["low"], r["count"], r["frequency"]) for r in rows] == [
        (0.1, 2, 0.0),
        (0.3, 1, 1.0),
        (0.6, 1, 0.0),
        (0.8, 2, 1.0),
    ]
    assert [r["high"] for r in rows] == [0.2, 0.4, 0.7, 0.9]
    assert [r["mean_prob"] for r in rows] == pytest.approx([0.15, 0.35, 0.65, 0.85])
    assert expected_calibration_error(probs) == pytest.approx(1.9 / 6)
    with pytest.raises(ValueError):
        reliability_table(torch.tensor([]))
