"""The anchored ensemble loss: Bradley-Terry on labelled pairs, each member pulled toward
its own random initialisation.

An ensemble of K reward models trained on the same pairs would agree wherever their
function class lets them fit the data and disagree elsewhere only by accident of
initialisation. Anchored ensembles (Pearce et al. 2020, "Uncertainty in Neural
Networks: Approximately Bayesian Ensembling", Eq. 9; the randomised-prior idea of
Osband et al. 2018) make that disagreement a posterior: member k starts from its own
draw theta_k^0 of the prior and is regularised toward *that draw*, not toward zero, so
each trained member is a sample of the posterior over reward functions. SEA (Liu et al.
2024, "Sample-Efficient Alignment for LLMs", Sec. 4.1) trains its epistemic reward
model this way on the preferences queried so far.

Per member k, over a batch of M labelled pairs (a, b) with soft labels p = P(a > b):

    L_k = (1/M) sum_m -[p_m log sigma(d_km) + (1 - p_m) log sigma(-d_km)]
          + (anchor_weight / n_data) * ||theta_k - theta_k^0||^2
    d_km = r_k(a_m) - r_k(b_m)

The first term is the Bradley-Terry NLL (`alignkit.losses.reward.bradley_terry_loss`);
the second is the anchor of Pearce et al. Eq. 9 with the data term averaged, so it
shrinks as 1/n_data: with few labels the prior dominates and members stay spread out,
with many the likelihood does. `n_data` is the number of labelled pairs the model has
seen in all (not M: a minibatch of M pairs estimates the mean over all n_data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.losses.reward import bradley_terry_loss

Tensor = torch.Tensor


def anchored_bt_loss(
    rewards_a: Tensor,
    rewards_b: Tensor,
    p_a: Tensor,
    params: Sequence[Tensor] | Tensor,
    anchors: Sequence[Tensor] | Tensor,
    anchor_weight: float,
    n_data: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The anchored Bradley-Terry ensemble loss (module docstring; Pearce et al. 2020,
    Eq. 9, with the Bradley-Terry likelihood of Ouyang et al. 2022, Eq. 1).

    rewards_a, rewards_b: (K, M) rewards of each pair's two responses under each of the
    K members; p_a: (M,) probability that a is preferred (1.0 for a hard "a wins").
    params, anchors: each member's parameters and its initial draw, either a list of K
    flat tensors (P,) or one (K, P) tensor; anchors are treated as constants.
    anchor_weight: lambda; n_data: labelled pairs seen so far (> 0).

    Returns `(loss, metrics)`: `loss` is the scalar sum_k L_k. The members share no
    parameters, so the gradient of the sum w.r.t. member k's parameters is exactly the
    gradient of its own L_k. Metrics (detached, averaged over members): `loss/bt` the
    Bradley-Terry term, `loss/anchor` the anchor term, `accuracy` the share of
    (member, pair) with the sign of d agreeing with p_a > 0.5, `margin` the mean gap in
    the labelled direction, d * sign(p_a - 1/2) (pairs labelled 1/2 count as 0).
    """
    if rewards_a.dim() != 2 or rewards_a.shape != rewards_b.shape:
        raise ValueError(
            f"rewards_a and rewards_b must both be (K, M); got {tuple(rewards_a.shape)} "
            f"and {tuple(rewards_b.shape)}"
        )
    if n_data <= 0:
        raise ValueError(f"n_data (labelled pairs seen) must be positive, got {n_data}")
    theta, theta0 = _stacked(params), _stacked(anchors).detach()
    members = rewards_a.shape[0]
    if theta.shape[0] != members or theta.shape != theta0.shape:
        raise ValueError(
            f"params {tuple(theta.shape)} and anchors {tuple(theta0.shape)} must both be "
            f"(K, P) with K = {members} members"
        )
    p = torch.as_tensor(p_a, dtype=rewards_a.dtype, device=rewards_a.device)
    # bradley_terry_loss takes (M, K) rewards with per-pair labels broadcast over members
    nll, _ = bradley_terry_loss(rewards_a.T, rewards_b.T, p_chosen=p)  # (M, K)
    bt = nll.mean(0)  # (K,)
    anchor = (anchor_weight / n_data) * ((theta - theta0) ** 2).sum(-1)  # (K,)
    loss = (bt + anchor).sum()
    d = (rewards_a - rewards_b).detach()
    metrics = {
        "loss/bt": bt.detach().mean(),
        "loss/anchor": anchor.detach().mean(),
        "accuracy": ((d > 0) == (p > 0.5)).float().mean(),
        "margin": (d * torch.sign(p - 0.5)).mean(),
    }
    return loss, metrics


def _stacked(values: Sequence[Tensor] | Tensor) -> Tensor:
    """K flat tensors or a (K, P) tensor -> (K, P)."""
    if isinstance(values, Tensor):
        if values.dim() != 2:
            raise ValueError(f"expected a (K, P) tensor, got shape {tuple(values.shape)}")
        return values
    return torch.stack([v.reshape(-1) for v in values])
