"""RLHF with PPO, and the critic-free RLOO and GRPO: estimators and losses.

Shapes: B completions, T completion tokens (right-padded), `mask` (B, T) marks real
completion tokens. Log-probs are per token, (B, T).

- KL estimators between the policy pi and the reference pi_ref at sampled tokens
  (Schulman 2020, "Approximating KL divergence"), with log r = log pi_ref - log pi:
  k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2, k3 = (r - 1) - log r
  (unbiased and always >= 0).
- Token rewards (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2): every token
  gets -beta * KL_t, the last real token also the score.
- GAE (Schulman et al. 2016, Eq. 11-16): delta_t = r_t + gamma V_{t+1} - V_t,
  A_t = sum_l (gamma lambda)^l delta_{t+l}; returns = A + V. No bootstrap past the end.
- Clipped surrogate (Schulman et al. 2017, Eq. 7) and clipped value loss (the PPO2 /
  InstructGPT form): 0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).
- RLOO (Ahmadian et al. 2024, Eq. 5): baseline = mean score of the other K-1 samples of
  the same prompt. GRPO (Shao et al. 2024, Eq. 3): advantage = (score - group mean) /
  (group std + eps), the same for every token of a completion.
"""

from __future__ import annotations

import torch

from alignkit.ops.stats import masked_mean, masked_var

Tensor = torch.Tensor


def _k1(log_ratio: Tensor) -> Tensor:
    return -log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio**2


def _k3(log_ratio: Tensor) -> Tensor:
    return torch.expm1(log_ratio) - log_ratio


# Each estimator maps log r = log pi_ref - log pi (per sampled token) to its KL term.
KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate at sampled tokens; shapes as the inputs."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kind must be one of {', '.join(KL_ESTIMATORS)}, got {kind!r}")
    return KL_ESTIMATORS[kind](ref_logps - logps)


def token_rewards(
    scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """(B, T) rewards: -kl_coef * kl at every real token, plus `scores` (B,) at the last.
    Returns (rewards, non_score_rewards)."""
    non_score = -kl_coef * kl * mask
    last = mask.long().sum(-1).clamp(min=1) - 1
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, non_score


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, both (B, T), zero past the end."""
    mask = mask.to(rewards.dtype)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate per token, (B, T), zero where `mask` is 0: max(-A rho,
    -A clip(rho, 1-c, 1+c)) with rho = exp(logps - old_logps). Metrics (means over real
    tokens): policy/approxkl (0.5 (log rho)^2), policy/clipfrac (share of tokens whose
    ratio left the clip range in the direction the clip stops)."""
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    losses = torch.maximum(unclipped, clipped) * mask
    metrics = {
        "policy/approxkl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "policy/clipfrac": masked_mean((clipped > unclipped).float().detach(), mask),
    }
    return losses, metrics


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    beta: float = 0.04,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO objective (Shao et al. 2024, Eq. 3), negated: per token
    -min(rho A, clip(rho) A) + beta * k3(pi || pi_ref), averaged over each completion's
    tokens. advantages: (B,), one per completion. Returns the per-completion losses (B,)
    and metrics (means over real tokens)."""
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]
    surrogate = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
    kl = kl_estimate(logps, ref_logps, "k3")
    per_token = surrogate + beta * kl
    losses = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    metrics = {
        "policy/approxkl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "policy/clipfrac": masked_mean(
            ((ratio - 1).abs() > clip).float() * (surrogate > -adv * ratio).float(), mask
        ).detach(),
        "policy/kl_to_ref": masked_mean(kl.detach(), mask),
    }
    return losses, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss per token, (B, T), zero where `mask` is 0:
    0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2). Metric: value/clipfrac."""
    mask = mask.to(values.dtype)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    losses = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2) * mask
    clipfrac = masked_mean(
        ((clipped_values - returns) ** 2 > (values - returns) ** 2).float(), mask
    )
    return losses, {"value/clipfrac": clipfrac.detach()}


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 is perfect, <= 0 is
    no better than a constant)."""
    residual = masked_var(returns - values, mask)
    return 1 - residual / masked_var(returns, mask).clamp(min=1e-8)


def rloo_advantages(scores: Tensor) -> Tensor:
    """scores (P, K): K samples per prompt -> leave-one-out advantages (P, K)."""
    k = scores.shape[1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    baseline = (scores.sum(1, keepdim=True) - scores) / (k - 1)
    return scores - baseline


def grpo_advantages(scores: Tensor, eps: float = 1e-4) -> Tensor:
    """scores (P, K) -> group-normalised advantages (P, K) (sample std, as in the paper)."""
    if scores.shape[1] < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    mean = scores.mean(1, keepdim=True)
    std = scores.std(1, keepdim=True)
    return (scores - mean) / (std + eps)


class AdaptiveKLController:
    """Ziegler et al. 2019, Sec. 2.2: beta_{t+1} = beta_t (1 + K_beta e_t) with
    e_t = clip(KL_t / target - 1, -0.2, 0.2) and K_beta = n_steps / horizon."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    def __init__(self, coef: float):
        self.value = coef

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
