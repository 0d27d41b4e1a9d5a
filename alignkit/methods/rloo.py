"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline, no critic.

Each prompt gets K completions; a completion's reward is its score minus the KL penalty
(summed over its tokens), and its advantage is that reward minus the mean reward of the
other K-1. The loss is the clipped surrogate with that advantage at every token, summed
over completion tokens (a token mean over the optimizer step).
"""

from __future__ import annotations

import torch

from alignkit.config import RLOOConfig
from alignkit.losses.ppo import policy_loss, rloo_advantages
from alignkit.ops.stats import masked_mean
from alignkit.train.run import TrainResult


class RLOO:
    uses_critic = False

    def __init__(self, config: RLOOConfig):
        self.config = config
        self.group = config.num_generations

    def targets(self, rollout, sum_fn) -> tuple[dict[str, torch.Tensor], dict]:
        """Leave-one-out advantages of the RLHF rewards within each prompt's group, at
        every token of the completion. Groups never span processes."""
        advantages = rloo_advantages(rollout.rewards.view(-1, self.group)).reshape(-1)
        per_row = {"old_logps": rollout.old, "advantages": advantages[:, None] * rollout.mask}
        return per_row, {}

    @staticmethod
    def units(batch: dict) -> float:
        return float(batch["mask"].sum())

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        losses, metrics = policy_loss(
            outputs["logps"],
            batch["old_logps"],
            batch["advantages"],
            batch["mask"],
            self.config.cliprange,
        )
        return losses.sum(), {**metrics, "policy/loss": masked_mean(losses.detach(), batch["mask"])}


def run_rloo(config: RLOOConfig) -> TrainResult:
    from alignkit.methods.rl import run_policy_gradient

    return run_policy_gradient(config, RLOO(config))
