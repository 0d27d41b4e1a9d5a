"""PPO / RLOO / GRPO estimators and losses against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.losses.ppo import (
    AdaptiveKLController,
    explained_variance,
    gae,
    grpo_advantages,
    kl_estimate,
    policy_loss,
    rloo_advantages,
    token_rewards,
    value_loss,
)
from alignkit.ops.stats import masked_mean, masked_var, masked_whiten


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_masked_statistics_ignore_padding():
    """values [1, 2, 3, 100], last masked out: mean 2, unbiased var 1, whitened [-1, 0, 1, 0]."""
    values, mask = t([1.0, 2.0, 3.0, 100.0]), t([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert_close(masked_whiten(values, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    assert_close(
        masked_whiten(values, mask, shift_mean=False), t([1.0, 2.0, 3.0, 0.0]), atol=1e-6, rtol=0
    )
    assert masked_mean(values, mask, dim=-1).item() == pytest.approx(2.0)


def test_gae_worked_example():
    """gamma 1, lambda 0.9, rewards [0, 0, 1], values [0.5, 0.6, 0.7]:
    delta = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.9*0.3 = 0.37, A0 = 0.1 + 0.9*0.37 = 0.433;
    returns = A + V = [0.933, 0.97, 1.0].
    Second row ends after 2 tokens (value 9 at the pad is ignored), rewards [0, 1]:
    A1 = 1 - 0.6 = 0.4, A0 = (0.6 - 0.5) + 0.9*0.4 = 0.46, A2 = 0."""
    advantages, returns = gae(
        t([0.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
        t([0.5, 0.6, 0.7], [0.5, 0.6, 9.0]),
        t([1, 1, 1], [1, 1, 0]),
        gamma=1.0,
        lam=0.9,
    )
    assert_close(advantages, t([0.433, 0.37, 0.3], [0.46, 0.4, 0.0]), atol=1e-6, rtol=0)
    assert_close(returns, t([0.933, 0.97, 1.0], [0.96, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_gae_with_lambda_1_gives_discounted_returns():
    """gamma 0.5, lambda 1: returns are the discounted reward-to-go [0.25, 0.5, 1]."""
    _, returns = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=0.5, lam=1.0)
    assert_close(returns, t([0.25, 0.5, 1.0]), atol=1e-6, rtol=0)


def test_kl_estimators():
    """pi = 0.5, pi_ref = 0.25: log r = log 0.5. k1 = 0.693147, k2 = 0.240227,
    k3 = (0.5 - 1) + 0.693147 = 0.193147."""
    logp, ref = t(math.log(0.5)), t(math.log(0.25))
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    """Sampling from p = softmax([1, 0, -1]) against q = uniform: both estimators average
    to KL(p||q) = sum p log(p/q)."""
    p = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    q = torch.full((3,), 1 / 3)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(
        p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    logp, logq = p.log()[samples], q.log()[samples]
    for kind in ("k1", "k3"):
        assert kl_estimate(logp, logq, kind).mean().item() == pytest.approx(true_kl, abs=3e-3)


def test_token_rewards_put_the_score_on_the_last_real_token():
    """kl [0.1, 0.2, 0.3], mask [1, 1, 0], coef 0.5, score 2: [-0.05, -0.1 + 2, 0]."""
    rewards, non_score = token_rewards(t(2.0), t([0.1, 0.2, 0.3]), t([1, 1, 0]), 0.5)
    assert_close(rewards, t([-0.05, 1.9, 0.0]), atol=1e-6, rtol=0)
    assert_close(non_score, t([-0.05, -0.1, 0.0]), atol=1e-6, rtol=0)


def test_clipped_policy_loss():
    """clip 0.2. ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped). ratio 0.5, A=+1:
    max(-0.5, -0.8) = -0.5. ratio 1.5, A=-1: max(1.5, 1.2) = 1.5. ratio 0.5, A=-1:
    max(0.5, 0.8) = 0.8 (clipped). Per token [-1.2, -0.5, 1.5, 0.8], 0 on the padded
    fifth; clipfrac 0.5; approxkl = 0.5 * mean(log(1.5)^2, log(0.5)^2, ...) = 0.161214."""
    old = torch.zeros(1, 5)
    logps = torch.log(t([1.5, 0.5, 1.5, 0.5, 3.0]))
    mask = t([1, 1, 1, 1, 0])
    loss, metrics = policy_loss(logps, old, t([1.0, 1.0, -1.0, -1.0, 1.0]), mask, clip=0.2)
    assert_close(loss, t([-1.2, -0.5, 1.5, 0.8, 0.0]), atol=1e-6, rtol=0)
    assert metrics["policy/clipfrac"].item() == pytest.approx(0.5)
    assert metrics["policy/approxkl"].item() == pytest.approx(0.161214, abs=1e-6)


def test_policy_gradient_is_zero_where_clipped():
    logps = torch.log(t([1.5, 0.5])).requires_grad_()
    loss, _ = policy_loss(logps, torch.zeros(2), t([1.0, 1.0]), torch.ones(2), clip=0.2)
    loss.sum().backward()
    # token 0 clipped: no gradient; token 1: d(-ratio * A)/d logp = -ratio * A = -0.5
    assert_close(logps.grad, t([0.0, -0.5]))


def test_clipped_value_loss():
    """V 1.5, old 1.0, R 2.0: max(0.25, (1.2 - 2)^2 = 0.64) = 0.64; V 1.1, old 1.0, R 0:
    max(1.21, 1.21) = 1.21. Per token 0.5 x those: [0.32, 0.605]; clipfrac 0.5."""
    loss, metrics = value_loss(t(1.5, 1.1), t(1.0, 1.0), t(2.0, 0.0), t(1.0, 1.0), clip=0.2)
    assert_close(loss, t(0.32, 0.605), atol=1e-6, rtol=0)
    assert metrics["value/clipfrac"].item() == pytest.approx(0.5)


def test_explained_variance():
    returns, mask = t([1.0, 2.0, 3.0, 4.0]), torch.ones(4)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns, mask).item() == pytest.approx(0.0)


def test_rloo_and_grpo_advantages():
    """scores [1, 2, 3]: RLOO baselines [2.5, 2, 1.5] -> [-1.5, 0, 1.5];
    GRPO: mean 2, sample std 1 -> [-1, 0, 1]."""
    scores = t([1.0, 2.0, 3.0])
    assert_close(rloo_advantages(scores), t([-1.5, 0.0, 1.5]))
    assert_close(grpo_advantages(scores, eps=0.0), t([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        rloo_advantages(t([1.0]))


def test_adaptive_kl_controller():
    """beta 0.1, target 6, horizon 10000, 256 steps per update:
    KL 12 -> error clipped to 0.2 -> 0.1 * (1 + 0.2 * 0.0256) = 0.100512;
    then KL 6.6 -> error 0.1 -> * (1 + 0.1 * 0.0256) = 0.100769."""
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    controller.update(12.0, 256)
    assert controller.value == pytest.approx(0.100512)
    controller.update(6.6, 256)
    assert controller.value == pytest.approx(0.100512 * 1.00256)
    restored = AdaptiveKLController(0.5, target=6.0, horizon=10_000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_grpo_loss_normalises_per_completion():
    """Two completions, advantages [1, -1], no clipping (ratio 1), beta 0.1.
    Completion 0 (2 tokens), policy = ref: per token -1 -> mean -1.
    Completion 1 (1 real token of 2), log ratio to ref log 0.5 (pi_ref = pi/2 -> r = 0.5):
    k3 = (0.5 - 1) - log 0.5 = 0.193147; per token +1 + 0.0193147 -> 1.0193147.
    Mean over completions: (-1 + 1.0193147) / 2 = 0.0096574."""
    from alignkit.losses.ppo import grpo_loss

    logps = torch.zeros(2, 2)
    ref = torch.tensor([[0.0, 0.0], [math.log(0.5), 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    losses, metrics = grpo_loss(logps, logps, ref, t(1.0, -1.0), mask, clip=0.2, beta=0.1)
    assert_close(losses, t(-1.0, 1.0193147), atol=1e-6, rtol=0)
    assert losses.mean().item() == pytest.approx(0.0096574, abs=1e-6)
    assert metrics["policy/clipfrac"].item() == 0.0


def rollout_tensors(**fields):
    from alignkit.methods.rl import RolloutTensors

    base = dict(old=None, ref=None, values=None, kl=None, kl_coef=0.0)
    return RolloutTensors(**{**base, **fields})


def test_ppo_targets_on_a_hand_made_rollout():
    """One completion of 2 tokens (a padded third): score 1, KL [0.2, 0.4], coef 0.5,
    values [0.5, 0.3], gamma 1, lambda 0.5, no whitening. Token rewards [-0.1, -0.2 + 1].
    delta_1 = 0.8 - 0.3 = 0.5 -> A_1 = 0.5; delta_0 = -0.1 + 0.3 - 0.5 = -0.3 ->
    A_0 = -0.3 + 0.5 * 0.5 = -0.05. Returns A + V = [0.45, 0.8]."""
    from alignkit.config import PPOConfig
    from alignkit.methods.ppo import PPO

    ppo = PPO(PPOConfig(data="x.jsonl", gamma=1.0, lam=0.5, whiten_advantages=False))
    rollout = rollout_tensors(
        mask=t([1, 1, 0]),
        scores=t(1.0),
        old=t([-1.0, -2.0, 0.0]),
        values=t([0.5, 0.3, 9.0]),
        kl=t([0.2, 0.4, 0.0]),
        rewards=t(0.4),
        kl_coef=0.5,
    )
    per_row, metrics = ppo.targets(rollout, lambda x: x)
    assert_close(per_row["advantages"], t([-0.05, 0.5, 0.0]), atol=1e-6, rtol=0)
    assert_close(per_row["returns"], t([0.45, 0.8, 0.0]), atol=1e-6, rtol=0)
    assert_close(per_row["old_logps"], rollout.old)
    assert metrics["objective/non_score_reward"].item() == pytest.approx(-0.3)


def test_ppo_whitening_uses_every_process_rows():
    """Whitening one process's rows with sums doubled (two processes holding the same
    rows) equals whitening the two copies together in one process."""
    from alignkit.ops.stats import masked_whiten

    values, mask = t([1.0, 2.0, 7.0], [4.0, 0.0, 0.0]), t([1, 1, 1], [1, 0, 0])
    together = masked_whiten(torch.cat([values, values]), torch.cat([mask, mask]))
    assert_close(masked_whiten(values, mask, sum_fn=lambda x: 2 * x), together[:2])
    # and the plain case against a hand computation: mean 3.5, sample var 7, std 2.6458
    plain = masked_whiten(values, mask)
    assert_close(plain[0, 0], torch.tensor((1.0 - 3.5) / 7**0.5), atol=1e-6, rtol=0)


def test_rloo_and_grpo_targets_by_hand():
    """RLOO, groups of 2, rewards [1, 3 | 2, 6]: each minus the other -> [-2, 2 | -4, 4],
    at every real token. GRPO, rewards [1, 3]: mean 2, sample std sqrt(2) ->
    [-1, 1] / (sqrt(2) + 1e-4)."""
    from alignkit.config import GRPOConfig, RLOOConfig
    from alignkit.methods.grpo import GRPO
    from alignkit.methods.rloo import RLOO

    mask = t([1, 1], [1, 0], [1, 1], [0, 0])
    rloo = RLOO(RLOOConfig(data="x.jsonl", num_generations=2))
    per_row, _ = rloo.targets(
        rollout_tensors(mask=mask, scores=None, rewards=t(1.0, 3, 2, 6)), None
    )
    assert_close(per_row["advantages"], t([-2.0, -2], [2, 0], [-4, -4], [0, 0]))
    grpo = GRPO(GRPOConfig(data="x.jsonl", num_generations=2))
    per_row, _ = grpo.targets(rollout_tensors(mask=mask[:2], scores=None, rewards=t(1.0, 3)), None)
    expected = 1 / (2**0.5 + 1e-4)
    assert_close(per_row["advantages"], t(-expected, expected))
