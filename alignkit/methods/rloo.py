"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline, no critic.

Each prompt gets K completions; a completion's reward is its score minus the KL penalty
(summed over its tokens), and its advantage is that reward minus the mean reward of the
other K-1. The loss is the clipped surrogate with that advantage at every token.
"""

from __future__ import annotations

from alignkit.config import RLOOConfig
from alignkit.losses.ppo import policy_loss, rloo_advantages
from alignkit.methods.rl import PolicyGradientRun, completion_logps
from alignkit.train.loop import TrainResult


class RLOO:
    uses_critic = False

    def __init__(self, config: RLOOConfig):
        self.config = config
        self.group = config.num_generations

    def prepare(self, run, batch, old, ref, values, kl, rewards) -> dict:
        advantages = rloo_advantages(rewards.view(-1, self.group)).reshape(-1)
        return {
            "old": old,
            "advantages": advantages[:, None] * batch.mask,
            "metrics": {"objective/advantage_std": float(advantages.std())},
        }

    def loss(self, run, part, prepared, which, minibatch_tokens):
        mask = part["mask"]
        device = mask.device
        logps = completion_logps(run.policy_logps, part)
        loss, metrics = policy_loss(
            logps,
            prepared["old"][which].to(device),
            prepared["advantages"][which].to(device),
            mask,
            self.config.cliprange,
        )
        return loss * (float(mask.sum()) / minibatch_tokens), {**metrics, "loss": loss.detach()}


def run_rloo(config: RLOOConfig) -> TrainResult:
    return PolicyGradientRun(config, RLOO(config)).run()
