"""RLHF with PPO (Ouyang et al. 2022; Ziegler et al. 2019; Schulman et al. 2017).

Per-token KL penalty folded into the reward, GAE advantages (whitened over the rollout
batch), clipped policy loss, clipped value loss with a separate critic, several epochs
over minibatches per rollout batch, optional PPO-ptx term. The shared loop lives in
`alignkit.methods.rl`.
"""

from __future__ import annotations

import torch

from alignkit.config import PPOConfig
from alignkit.losses.ppo import explained_variance, gae, policy_loss, token_rewards, value_loss
from alignkit.methods.rl import PolicyGradientRun, completion_logps, completion_values
from alignkit.ops.logprobs import CausalLMLogps, batch_token_logps
from alignkit.ops.stats import masked_whiten
from alignkit.train.loop import TrainResult


class PPO:
    group = 1
    uses_critic = True

    def __init__(self, config: PPOConfig):
        self.config = config
        self.ptx_examples: list[dict] = []
        self.ptx_cursor = 0
        self.ptx_logps = None

    def prepare(self, run, batch, old, ref, values, kl, rewards) -> dict:
        # GAE needs the reward per token (KL penalty at every token, score at the last),
        # not the per-completion `rewards` that RLOO and GRPO use.
        config = self.config
        mask = batch.mask
        per_token, non_score = token_rewards(batch.scores, kl, mask, run.kl_controller.value)
        advantages, returns = gae(per_token, values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return {
            "old": old,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "metrics": {
                "value/explained_var": float(explained_variance(values, returns, mask)),
                "objective/non_score_reward": float(non_score.sum(-1).mean()),
            },
        }

    def loss(self, run, part, prepared, which, minibatch_tokens):
        config = self.config
        device = part["mask"].device
        mask = part["mask"]
        share = float(mask.sum()) / minibatch_tokens  # this micro-batch's share of the tokens
        logps = completion_logps(run.policy_logps, part)
        pick = {
            k: prepared[k][which].to(device) for k in ("old", "values", "advantages", "returns")
        }
        p_loss, metrics = policy_loss(
            logps, pick["old"], pick["advantages"], mask, config.cliprange
        )
        values = completion_values(run.values, part)
        v_loss, v_metrics = value_loss(
            values, pick["values"], pick["returns"], mask, config.cliprange_value
        )
        total = (p_loss + config.vf_coef * v_loss) * share
        metrics = {**metrics, **v_metrics, "loss": p_loss.detach(), "value/loss": v_loss.detach()}
        if config.ptx_coef and self.ptx_examples:
            ptx = self._ptx_loss(run)
            total = total + config.ptx_coef * ptx * share
            metrics["ptx/loss"] = ptx.detach()
        return total, metrics

    def _ptx_loss(self, run) -> torch.Tensor:
        """Mean token NLL of the next micro-batch of SFT examples (cycling)."""
        from alignkit.data.collators import PackingCollator

        size = run.config.micro_batch
        chosen = [
            self.ptx_examples[(self.ptx_cursor + i) % len(self.ptx_examples)] for i in range(size)
        ]
        self.ptx_cursor = (self.ptx_cursor + size) % len(self.ptx_examples)
        batch = {k: v.to(run.device) for k, v in PackingCollator()(chosen).items()}
        logps, mask, _ = batch_token_logps(self.ptx_logps, batch)
        return -logps.sum() / mask.sum().clamp(min=1)

    def attach(self, run) -> None:
        if not self.config.ptx_data:
            return
        from alignkit.methods.common import load_encoded

        def encode(record):
            encoded = run.encoder.encode_sft(record)
            return encoded.features() if encoded is not None else None

        self.ptx_examples = load_encoded(
            self.config.ptx_data, "sft", encode, self.config, rejects_name="ptx_rejects.jsonl"
        )
        self.ptx_logps = CausalLMLogps(run.model.policy)


def run_ppo(config: PPOConfig) -> TrainResult:
    algorithm = PPO(config)
    run = PolicyGradientRun(config, algorithm)
    algorithm.attach(run)
    return run.run()
