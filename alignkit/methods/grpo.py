"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, no critic, and
the KL to the reference as a k3 term in the loss (weight `beta`) instead of the reward.

The loss is a sum over completions of each completion's token mean (the paper's
1/G sum_i 1/|o_i| sum_t), so the step's units are completions.
"""

from __future__ import annotations

import torch

from alignkit.config import GRPOConfig
from alignkit.losses.ppo import grpo_advantages, grpo_loss
from alignkit.train.run import TrainResult


class GRPO:
    uses_critic = False

    def __init__(self, config: GRPOConfig):
        self.config = config
        self.group = config.num_generations

    def targets(self, rollout, sum_fn) -> tuple[dict[str, torch.Tensor], dict]:
        """Group-normalised advantages (R,) of the rewards; the reference log-probs ride
        along for the loss's KL term. Groups never span processes."""
        advantages = grpo_advantages(rollout.rewards.view(-1, self.group)).reshape(-1)
        return {"old_logps": rollout.old, "ref_logps": rollout.ref, "advantages": advantages}, {}

    @staticmethod
    def units(batch: dict) -> float:
        return float(len(batch["mask"]))

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        losses, metrics = grpo_loss(
            outputs["logps"],
            batch["old_logps"],
            batch["ref_logps"],
            batch["advantages"],
            batch["mask"],
            clip=self.config.cliprange,
            beta=self.config.beta,
        )
        return losses.sum(), {**metrics, "policy/loss": losses.detach().mean()}


def run_grpo(config: GRPOConfig) -> TrainResult:
    from alignkit.methods.rl import run_policy_gradient

    return run_policy_gradient(config, GRPO(config))
