"""The anchored Bradley-Terry ensemble loss against values worked out by hand.

Shared example: K = 2 members, M = 2 pairs, p_a = [1, 0.8].
rewards_a = [[2, 0], [1, -1]], rewards_b = [[0.5, 0], [0, 1]] -> d = [[1.5, 0], [1, -2]].
Member 0: pair 0: -log sigma(1.5) = 0.201413; pair 1 (d = 0): log 2 = 0.693147 whatever p;
          mean 0.447280.
Member 1: pair 0: -log sigma(1) = 0.313262; pair 1: -(0.8 log sigma(-2) + 0.2 log sigma(2))
          = 0.8 * 2.126928 + 0.2 * 0.126928 = 1.726928; mean 1.020095.
Anchors: theta_0 = [1, 2, 0] vs [0, 0, 0]: ||.||^2 = 5; theta_1 = [0, 1, 1] vs [1, 1, 1]: 1.
lambda = 2, n_data = 10: anchor terms 2/10 * 5 = 1.0 and 2/10 * 1 = 0.2.
loss = (0.447280 + 1.0) + (1.020095 + 0.2) = 2.667375.
"""

import pytest
import torch
from torch.testing import assert_close

from alignkit.losses.ensemble import anchored_bt_loss

RA = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
RB = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
P = torch.tensor([1.0, 0.8])
THETA = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
ANCHOR = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_loss_and_metrics_by_hand():
    loss, metrics = anchored_bt_loss(RA, RB, P, THETA, ANCHOR, anchor_weight=2.0, n_data=10)
    assert loss.item() == pytest.approx(2.667375, abs=1e-6)
    assert metrics["loss/bt"].item() == pytest.approx((0.447280 + 1.020095) / 2, abs=1e-6)
    assert metrics["loss/anchor"].item() == pytest.approx((1.0 + 0.2) / 2, abs=1e-6)
    # agreement of d > 0 with p > 0.5 (both labels say "a"): d = 1.5, 0, 1, -2 -> 2 of 4
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == pytest.approx((1.5 + 0 + 1 - 2) / 4)


def test_params_as_lists_of_flat_tensors_equal_the_stacked_form():
    listed, _ = anchored_bt_loss(
        RA, RB, P, list(THETA), [a.clone() for a in ANCHOR], anchor_weight=2.0, n_data=10
    )
    stacked, _ = anchored_bt_loss(RA, RB, P, THETA, ANCHOR, anchor_weight=2.0, n_data=10)
    assert_close(listed, stacked)


def test_anchor_shrinks_with_the_data_seen():
    """n_data = 40 quarters the anchor: 0.447280 + 0.25 + 1.020095 + 0.05 = 1.767375;
    lambda = 0 leaves the Bradley-Terry sum 1.467375."""
    loss, _ = anchored_bt_loss(RA, RB, P, THETA, ANCHOR, anchor_weight=2.0, n_data=40)
    assert loss.item() == pytest.approx(1.767375, abs=1e-6)
    loss, _ = anchored_bt_loss(RA, RB, P, THETA, ANCHOR, anchor_weight=0.0, n_data=1)
    assert loss.item() == pytest.approx(1.467375, abs=1e-6)


def test_gradients_match_the_closed_form():
    """d loss / d r_a[k, m] = (sigma(d_km) - p_m) / M, d / d r_b = -that;
    d loss / d theta_k = 2 lambda / n_data (theta_k - theta_k^0); no gradient to anchors."""
    ra, rb = RA.clone().requires_grad_(), RB.clone().requires_grad_()
    theta, anchor = THETA.clone().requires_grad_(), ANCHOR.clone().requires_grad_()
    loss, _ = anchored_bt_loss(ra, rb, P, theta, anchor, anchor_weight=2.0, n_data=10)
    loss.backward()
    expected = (torch.sigmoid(RA - RB) - P) / 2
    assert_close(ra.grad, expected)
    assert_close(rb.grad, -expected)
    assert_close(theta.grad, 2 * 2.0 / 10 * (THETA - ANCHOR))
    assert anchor.grad is None


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\(K, M\)"):
        anchored_bt_loss(RA[0], RB[0], P, THETA, ANCHOR, 1.0, 1)
    with pytest.raises(ValueError, match="K = 2 members"):
        anchored_bt_loss(RA, RB, P, THETA[:1], ANCHOR[:1], 1.0, 1)
    with pytest.raises(ValueError, match="n_data"):
        anchored_bt_loss(RA, RB, P, THETA, ANCHOR, 1.0, 0)
