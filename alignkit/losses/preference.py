"""Preference losses: DPO and its family, KTO, SimPO, ORPO.

Every function takes per-sequence log-probabilities, shape (B,), and returns
`(losses, metrics)`: `losses` (B,) unreduced, `metrics` a dict of detached scalars.
Notation: for a pair, the implicit reward of a response is `beta * (policy - ref)`,
and `h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`.

Whether log-probs are summed or averaged over tokens is the caller's choice: each loss's
entry in `alignkit.losses.registry` states it, and `alignkit.ops.logprobs.sequence_logps`
applies it to the policy and the reference alike. DPO, cDPO, hinge and robust DPO use
sums; IPO, SimPO and ORPO per-token means (a silent sum-for-mean swap was a real IPO bug).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _pair_metrics(
    policy_chosen, policy_rejected, chosen_rewards, rejected_rewards
) -> dict[str, Tensor]:
    return {
        "rewards/chosen": chosen_rewards.detach().mean(),
        "rewards/rejected": rejected_rewards.detach().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).detach().mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }


def _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    return chosen, rejected, chosen - rejected


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (Rafailov et al. 2023, Eq. 7): `-log sigma(beta * h)` on summed log-probs.

    `label_smoothing` e > 0 gives conservative DPO (cDPO; Mitchell 2023): the label is
    right with probability 1 - e, so `-(1-e) log sigma(beta h) - e log sigma(-beta h)`.
    It may be a (B,) tensor: per-record soft labels, e = 1 - p_chosen.
    Gradient w.r.t. `policy_chosen_logps` at e = 0: `-beta * sigma(-beta h)`.
    """
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    return losses, _pair_metrics(
        policy_chosen_logps, policy_rejected_logps, beta * chosen, beta * rejected
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO (Azar et al. 2023, Eq. 17): `(h - 1/(2 beta))^2`, on per-token *mean* log-probs."""
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, _pair_metrics(
        policy_chosen_logps, policy_rejected_logps, beta * chosen, beta * rejected
    )


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC hinge (Zhao et al. 2023, Eq. 2, with the reference ratio as in DPO):
    `max(0, 1 - beta * h)`."""
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1 - beta * h)
    return losses, _pair_metrics(
        policy_chosen_logps, policy_rejected_logps, beta * chosen, beta * rejected
    )


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Robust DPO (Chowdhury et al. 2024, Eq. 8): an unbiased loss when labels flip with
    probability e < 1/2: `[(1-e)(-log sigma(beta h)) - e(-log sigma(-beta h))] / (1 - 2e)`.
    (It can be negative; its expectation under the noise equals the clean DPO loss.)"""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    e = label_smoothing
    losses = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
    return losses, _pair_metrics(
        policy_chosen_logps, policy_rejected_logps, beta * chosen, beta * rejected
    )


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO (Meng et al. 2024, Eq. 6), reference-free, on per-token *mean* log-probs:
    `-log sigma(beta * chosen - beta * rejected - gamma)`; rewards are `beta * mean logp`."""
    chosen_rewards, rejected_rewards = beta * policy_chosen_logps, beta * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, _pair_metrics(
        policy_chosen_logps, policy_rejected_logps, chosen_rewards, rejected_rewards
    )


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO (Hong et al. 2024, Eqs. 6-7), reference-free, on per-token *mean* log-probs p:
    `-p_chosen + beta * -log sigma(log odds(chosen) - log odds(rejected))`, where
    `odds = P / (1 - P)` with `P = exp(p)`, so `log odds = p - log(1 - exp(p))`.
    The first term is the SFT loss on the chosen response; beta is the paper's lambda."""
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log1p(-torch.exp(policy_chosen_logps))
        - torch.log1p(-torch.exp(policy_rejected_logps))
    )
    odds_ratio_loss = -F.logsigmoid(log_odds)
    losses = -policy_chosen_logps + beta * odds_ratio_loss
    metrics = _pair_metrics(
        policy_chosen_logps,
        policy_rejected_logps,
        beta * policy_chosen_logps,
        beta * policy_rejected_logps,
    )
    metrics["log_odds_ratio"] = log_odds.detach().mean()
    metrics["nll_loss"] = -policy_chosen_logps.detach().mean()
    return losses, metrics


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    *,
    kl: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO (Ethayarajh et al. 2024, Eq. 8), on summed log-probs of unpaired completions.

    `r = policy - ref`; desirable: `lambda_D (1 - sigma(beta (r - kl)))`; undesirable:
    `lambda_U (1 - sigma(beta (kl - r)))`. `kl` is the method's batch estimate of
    KL(policy || ref) from mismatched prompt/completion pairs; it is a reference point,
    not a gradient path, so it is detached and clamped at 0 here.
    policy_logps, ref_logps: (B,); desirable: (B,) bool.
    """
    z0 = kl.detach().clamp(min=0)
    r = policy_logps - ref_logps
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    rewards = (beta * r).detach()

    def mean_where(mask):
        return rewards[mask].mean() if mask.any() else torch.zeros((), device=rewards.device)

    metrics = {
        "rewards/chosen": mean_where(desirable),
        "rewards/rejected": mean_where(~desirable),
        "kl": z0,
    }
    return losses, metrics
