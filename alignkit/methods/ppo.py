"""RLHF with PPO (Ouyang et al. 2022; Ziegler et al. 2019; Schulman et al. 2017).

Per-token KL penalty folded into the reward, GAE advantages (whitened over the rollout
batch), clipped policy loss, clipped value loss with a separate critic, several epochs
over minibatches per rollout batch, optional PPO-ptx term (InstructGPT, Eq. 2). The
rollout phase and the optimizer steps live in `alignkit.methods.rl`; this file holds
what is PPO's own: its targets and its loss, both pure functions of tensors.

The loss is a sum over completion tokens (the step's units): policy and value terms
are token means over the whole optimizer step however it is split into micro-batches
or processes, and the ptx term is the mean NLL over the step's ptx tokens.
"""

from __future__ import annotations

import torch

from alignkit.config import PPOConfig
from alignkit.losses.ppo import explained_variance, gae, policy_loss, token_rewards, value_loss
from alignkit.ops.stats import masked_mean, masked_whiten
from alignkit.train.run import TrainResult


class PPO:
    group = 1
    uses_critic = True

    def __init__(self, config: PPOConfig):
        self.config = config

    def targets(self, rollout, sum_fn) -> tuple[dict[str, torch.Tensor], dict]:
        """GAE on the per-token reward (-kl_coef x KL at every token, the score at the
        last), whitened over the rollout batch of every process. Per-row tensors (R, C):
        old log-probs, old values, advantages, returns."""
        config, mask = self.config, rollout.mask
        per_token, non_score = token_rewards(rollout.scores, rollout.kl, mask, rollout.kl_coef)
        advantages, returns = gae(per_token, rollout.values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask, sum_fn=sum_fn)
        metrics = {
            "value/explained_var": explained_variance(rollout.values, returns, mask),
            "objective/non_score_reward": non_score.sum(-1).mean(),
        }
        per_row = {
            "old_logps": rollout.old,
            "old_values": rollout.values,
            "advantages": advantages,
            "returns": returns,
        }
        return per_row, metrics

    @staticmethod
    def units(batch: dict) -> float:
        return float(batch["mask"].sum())

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """Summed over the batch's completion tokens: clipped surrogate + vf_coef x
        clipped value loss (+ ptx_coef x the ptx NLL, scaled to the step's ptx mean)."""
        config, mask = self.config, batch["mask"]
        p_losses, metrics = policy_loss(
            outputs["logps"], batch["old_logps"], batch["advantages"], mask, config.cliprange
        )
        v_losses, v_metrics = value_loss(
            outputs["values"], batch["old_values"], batch["returns"], mask, config.cliprange_value
        )
        total = p_losses.sum() + config.vf_coef * v_losses.sum()
        metrics = {
            **metrics,
            **v_metrics,
            "policy/loss": masked_mean(p_losses.detach(), mask),
            "value/loss": masked_mean(v_losses.detach(), mask),
        }
        if "ptx" in batch:
            total = total + config.ptx_coef * batch["ptx_scale"] * outputs["ptx_nll"]
            tokens = (batch["ptx"]["labels"][:, 1:] != -100).sum().clamp(min=1)
            metrics["ptx/loss"] = outputs["ptx_nll"].detach() / tokens
        return total, metrics

    def ptx_examples(self, encoder) -> list[dict]:
        """Encoded SFT examples of `ptx_data` for the PPO-ptx term ([] when off)."""
        if not (self.config.ptx_data and self.config.ptx_coef):
            return []
        from alignkit.methods.common import load_encoded

        def encode(record):
            encoded = encoder.encode_sft(record)
            return encoded.features() if encoded is not None else None

        return load_encoded(
            self.config.ptx_data,
            "sft",
            encode,
            self.config,
            rejects_name="ptx_rejects.jsonl",
            encoder=encoder,
        )


def run_ppo(config: PPOConfig) -> TrainResult:
    from alignkit.methods.rl import run_policy_gradient

    return run_policy_gradient(config, PPO(config))
