"""Preference losses against values worked out by hand.

Shared example: policy_chosen = -1, policy_rejected = -3, ref_chosen = ref_rejected = -2, so
h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2.
Identities used: -log sigma(-x) = x - log sigma(x); sigma(-1) = 0.2689414214;
-log sigma(1) = 0.3132616875; -log sigma(0.5) = 0.4740769842.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.losses.preference import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)

PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
NLS1 = 0.3132616875  # -log sigma(1)


def close(actual, expected):
    assert_close(actual, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_dpo():
    """beta = 0.5: beta h = 1, loss = -log sigma(1) = 0.3132617."""
    losses, metrics = dpo_loss(PC, PR, RC, RR, beta=0.5)
    close(losses, NLS1)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)  # 0.5 * (-1 - -2)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == 1.0
    assert metrics["logps/chosen"].item() == -1.0 and metrics["logps/rejected"].item() == -3.0


def test_dpo_gradient_is_minus_beta_sigma_minus_beta_h():
    """d/d policy_chosen = -beta sigma(-beta h) = -0.5 * 0.2689414 = -0.1344707."""
    policy_chosen = PC.clone().requires_grad_()
    dpo_loss(policy_chosen, PR, RC, RR, beta=0.5)[0].sum().backward()
    close(policy_chosen.grad, -0.5 * 0.2689414214)
    for beta, pc in ((0.1, -4.0), (2.0, 0.5)):  # more points: h = pc + 3
        x = torch.tensor([pc], requires_grad=True)
        dpo_loss(x, PR, RC, RR, beta=beta)[0].sum().backward()
        h = pc + 3
        close(x.grad, -beta / (1 + math.exp(beta * h)))


def test_cdpo_label_smoothing():
    """e = 0.2: -(0.8) log sigma(1) - 0.2 log sigma(-1) = 0.8*0.3132617 + 0.2*1.3132617 = 0.5132617.
    In general the loss is -log sigma(beta h) + e * beta h."""
    close(dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)[0], 0.5132617)
    # e = 0.5: 0.3132617 + 0.5 = 0.8132617; it equals log 2 only at h = 0.
    close(dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.5)[0], 0.8132617)
    zero = torch.tensor([0.0])
    close(dpo_loss(zero, zero, zero, zero, beta=0.5, label_smoothing=0.5)[0], math.log(2))
    # e = 1: the label is certainly wrong: -log sigma(-1) = 1.3132617.
    close(dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=1.0)[0], 1.3132617)


def test_dpo_per_record_soft_labels():
    smoothing = torch.tensor([0.0, 0.2])  # p_chosen = 1.0 and 0.8
    two = [torch.cat([t, t]) for t in (PC, PR, RC, RR)]
    assert_close(
        dpo_loss(*two, beta=0.5, label_smoothing=smoothing)[0],
        torch.tensor([NLS1, 0.5132617]),
        atol=1e-6,
        rtol=0,
    )


def test_dpo_beta_zero_is_log_two():
    close(dpo_loss(PC, PR, RC, RR, beta=0.0)[0], math.log(2))


def test_ipo():
    """(h - 1/(2 beta))^2: beta 0.5 -> (2 - 1)^2 = 1; beta 0.25 -> (2 - 2)^2 = 0; beta 1 -> 1.5^2 = 2.25."""
    close(ipo_loss(PC, PR, RC, RR, beta=0.5)[0], 1.0)
    close(ipo_loss(PC, PR, RC, RR, beta=0.25)[0], 0.0)
    close(ipo_loss(PC, PR, RC, RR, beta=1.0)[0], 2.25)


def test_hinge():
    """max(0, 1 - beta h): beta 0.5 -> 0; beta 0.25 -> 0.5; beta 0.1 -> 0.8."""
    close(hinge_loss(PC, PR, RC, RR, beta=0.5)[0], 0.0)
    close(hinge_loss(PC, PR, RC, RR, beta=0.25)[0], 0.5)
    close(hinge_loss(PC, PR, RC, RR, beta=0.1)[0], 0.8)


def test_robust_dpo():
    """e = 0.2, beta h = 1: (0.8 * 0.3132617 - 0.2 * 1.3132617) / 0.6 = -0.0120430 / 0.6 = -0.0200717.
    e = 0 reduces to DPO."""
    close(robust_dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)[0], -0.0200717)
    close(robust_dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.0)[0], NLS1)
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        robust_dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)


def test_simpo():
    """mean logps -0.5 / -1.0, beta 2, gamma 0.5: 2*0.5 - 0.5 = 0.5 -> -log sigma(0.5) = 0.4740770."""
    losses, metrics = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.0]), beta=2.0, gamma=0.5)
    close(losses, 0.4740769842)
    assert metrics["rewards/chosen"].item() == -1.0 and metrics["rewards/margins"].item() == 1.0


def test_orpo():
    """P_chosen = 0.5, P_rejected = 0.25 (mean logps log 0.5, log 0.25): odds 1 and 1/3,
    log odds ratio = log 3, -log sigma(log 3) = -log(3/4) = 0.2876821; NLL = log 2 = 0.6931472.
    beta 0.1: 0.6931472 + 0.0287682 = 0.7219154."""
    losses, metrics = orpo_loss(
        torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), beta=0.1
    )
    close(losses, 0.7219154)
    assert metrics["log_odds_ratio"].item() == pytest.approx(math.log(3), abs=1e-6)


def test_kto():
    """beta 2, kl 0.5. Desirable r = 1: 1 - sigma(2 * 0.5) = 1 - 0.7310586 = 0.2689414.
    Undesirable r = -1: 1 - sigma(2 * 1.5) = 1 - 0.9525741 = 0.0474259; x lambda_U 1.5 = 0.0711388."""
    losses, metrics = kto_loss(
        torch.tensor([0.0, -3.0]),
        torch.tensor([-1.0, -2.0]),
        torch.tensor([True, False]),
        kl=torch.tensor(0.5),
        beta=2.0,
        undesirable_weight=1.5,
    )
    assert_close(losses, torch.tensor([0.2689414, 0.0711388]), atol=1e-6, rtol=0)
    assert metrics["rewards/chosen"].item() == pytest.approx(2.0) and metrics[
        "rewards/rejected"
    ].item() == pytest.approx(-2.0)


def test_kto_kl_is_clamped_and_not_differentiated():
    """A negative KL estimate counts as 0: desirable r = 1, beta 1 -> 1 - sigma(1) = 0.2689414."""
    kl = torch.tensor(-3.0, requires_grad=True)
    policy = torch.tensor([0.0], requires_grad=True)
    losses, metrics = kto_loss(policy, torch.tensor([-1.0]), torch.tensor([True]), kl=kl, beta=1.0)
    close(losses, 0.2689414)
    losses.sum().backward()
    assert kl.grad is None and policy.grad is not None and metrics["kl"].item() == 0.0
