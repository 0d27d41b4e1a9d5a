"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, no critic, and
the KL to the reference as a k3 term in the loss (weight `beta`) instead of the reward."""

from __future__ import annotations

from alignkit.config import GRPOConfig
from alignkit.losses.ppo import grpo_advantages, grpo_loss
from alignkit.methods.rl import PolicyGradientRun, completion_logps
from alignkit.train.loop import TrainResult


class GRPO:
    uses_critic = False

    def __init__(self, config: GRPOConfig):
        self.config = config
        self.group = config.num_generations

    def prepare(self, run, batch, old, ref, values, kl, rewards) -> dict:
        advantages = grpo_advantages(rewards.view(-1, self.group)).reshape(-1)
        return {"old": old, "ref": ref, "advantages": advantages, "metrics": {}}

    def loss(self, run, part, prepared, which, minibatch_tokens):
        mask = part["mask"]
        device = mask.device
        logps = completion_logps(run.policy_logps, part)
        losses, metrics = grpo_loss(
            logps,
            prepared["old"][which].to(device),
            prepared["ref"][which].to(device),
            prepared["advantages"][which].to(device),
            mask,
            clip=self.config.cliprange,
            beta=self.config.beta,
        )
        minibatch_rows = len(prepared["advantages"]) // self.config.num_minibatches
        return losses.sum() / minibatch_rows, {**metrics, "loss": losses.mean().detach()}


def run_grpo(config: GRPOConfig) -> TrainResult:
    return PolicyGradientRun(config, GRPO(config)).run()
