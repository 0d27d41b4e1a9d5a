"""Risk-averse reward (Inverse Reward Design): an ensemble reward model scores
mean - k * std over its heads, from Python and from the RL configs."""

import pytest
import torch

from alignkit.config import ConfigError, PPOConfig, load_config
from alignkit.errors import AlignkitError
from alignkit.feedback.reward_model import RewardModelJudge

PROMPTS, REPLIES = ["Say hi", "Tell me a story"], ["hi there", "once upon a time"]


def save_reward_model(folder, tokenizer, heads):
    """A tiny random 3-head (or 1-head) classifier saved as transformers saves one."""
    from transformers import LlamaForSequenceClassification

    from alignkit.models.tiny import tiny_config

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=heads)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def head_rewards(model, tokenizer, prompt, reply):
    """The K heads' rewards as transformers reads them (string records: prompt tokens,
    reply tokens, EOS; the folder has no reward offset)."""
    ids = tokenizer(prompt)["input_ids"] + tokenizer(reply, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(torch.tensor([ids + [tokenizer.eos_token_id]])).logits[0]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("rm-ensemble")
    return folder, save_reward_model(folder, tokenizer, heads=3)


def test_scores_are_mean_minus_k_std_of_the_heads(ensemble, tokenizer):
    """For each reply: heads h (3,), score = mean(h) - k * sqrt(mean((h - mean)^2))."""
    folder, model = ensemble
    plain = RewardModelJudge(folder, device="cpu").score_batch(PROMPTS, REPLIES)
    averse = RewardModelJudge(folder, device="cpu", risk_aversion=2.0)
    scored = averse.score_records(
        [{"prompt": p, "completion": r} for p, r in zip(PROMPTS, REPLIES, strict=True)]
    )
    for i, (prompt, reply) in enumerate(zip(PROMPTS, REPLIES, strict=True)):
        h = head_rewards(model, tokenizer, prompt, reply)
        mean = h.mean().item()
        std = ((h - h.mean()) ** 2).mean().sqrt().item()
        assert std > 1e-3  # random heads disagree
        assert plain[i] == pytest.approx(mean, abs=1e-5)
        assert scored.scores[i] == pytest.approx(mean - 2.0 * std, abs=1e-5)
        assert scored.stds[i] == pytest.approx(std, abs=1e-5)  # the std itself is unchanged
    assert averse.score_batch(PROMPTS, REPLIES) == scored.scores
    # compare() follows the risk-averse scores: sigma(s_a - s_b)
    p = averse.compare(PROMPTS[0], REPLIES[0], REPLIES[1])
    s_a, s_b = averse.score_batch([PROMPTS[0]] * 2, REPLIES)
    assert p == pytest.approx(torch.sigmoid(torch.tensor(s_a - s_b)).item(), abs=1e-6)


def test_risk_aversion_needs_an_ensemble(tmp_path, tokenizer):
    save_reward_model(tmp_path, tokenizer, heads=1)
    with pytest.raises(AlignkitError, match="num_heads > 1"):
        RewardModelJudge(tmp_path, device="cpu", risk_aversion=1.0)
    RewardModelJudge(tmp_path, device="cpu", risk_aversion=0.0)  # k = 0 is the plain score
    with pytest.raises(AlignkitError, match=">= 0"):
        RewardModelJudge(tmp_path, device="cpu", risk_aversion=-1.0)


def test_rl_configs_pass_reward_risk_aversion_to_the_reward_source(ensemble):
    from alignkit.methods.rl import load_reward_source

    folder, _ = ensemble
    config = load_config(
        PPOConfig, overrides=[f"reward={folder}", "reward_risk_aversion=1.5", "device=cpu"]
    )
    judge = load_reward_source(config)
    assert isinstance(judge, RewardModelJudge) and judge.risk_aversion == 1.5
    assert load_reward_source(PPOConfig(reward=str(folder), device="cpu")).risk_aversion == 0.0
    with pytest.raises(ConfigError, match="not a reward model"):
        load_reward_source(PPOConfig(task="sentiment", reward_risk_aversion=1.0))
    with pytest.raises(ConfigError, match=">= 0"):
        PPOConfig(task="sentiment", reward_risk_aversion=-0.5)
