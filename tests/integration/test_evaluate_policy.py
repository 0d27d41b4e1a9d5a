"""`evaluate_policy` (held-out reward and KL to a reference) against an independent
computation with plain transformers."""

import pytest
import torch

from alignkit.data.templating import ChatEncoder
from alignkit.feedback.function import FunctionJudge
from alignkit.models.tiny import tiny_model
from alignkit.rollout.evaluation import evaluate_policy
from alignkit.rollout.sampling import SamplingSettings


def letter_share(prompt, completion):
    """A reward that depends on the text: the share of 'e' among its characters."""
    return completion.count("e") / max(len(completion), 1)


def test_greedy_reward_and_kl_equal_a_plain_transformers_computation(tokenizer):
    """Greedy completions (temperature 0) are transformers' greedy `generate` output; the
    KL of each is sum_t [log pi(y_t) - log pi_ref(y_t)] over its tokens (k1 at
    temperature 1), with both log-probs from a full forward of prompt + completion; the
    reward is the judge on the decoded text. Two differently seeded tiny models, so the
    KL is far from 0."""
    policy = tiny_model(seed=0, tokenizer=tokenizer).eval()
    reference = tiny_model(seed=1, tokenizer=tokenizer).eval()
    prompts = ["Hello there", "Name a colour", "Count to three"]
    result = evaluate_policy(
        policy,
        tokenizer,
        prompts,
        FunctionJudge(letter_share),
        SamplingSettings(max_new_tokens=6, temperature=0.0),
        reference=reference,
        batch_size=2,
    )
    encoder = ChatEncoder(tokenizer)
    stop = encoder.stop_token_ids
    kls, rewards = [], []
    for prompt in prompts:
        ids = torch.tensor([encoder.encode_prompt(prompt)])
        completion = []
        with torch.no_grad():
            for _ in range(6):  # greedy decoding by hand: full forward each token
                logits = policy(
                    input_ids=torch.cat([ids, torch.tensor([completion], dtype=torch.long)], 1)
                ).logits
                token = int(logits[0, -1].argmax())
                completion.append(token)
                if token in stop:
                    break
            full = torch.cat([ids, torch.tensor([completion], dtype=torch.long)], 1)
            positions = torch.arange(ids.shape[1] - 1, full.shape[1] - 1)
            targets = full[0, ids.shape[1] :]

            def logps(model, full=full, positions=positions, targets=targets):
                logits = model(input_ids=full).logits[0, positions]
                return torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).sum()

            kls.append(float(logps(policy) - logps(reference)))
        text = tokenizer.decode(completion, skip_special_tokens=True).strip()
        rewards.append(letter_share(prompt, text))
    assert [s["kl"] for s in result.samples] == pytest.approx(kls, abs=1e-3)
    assert abs(kls[0]) > 0.1  # the models differ: the check is not 0 == 0
    assert result.kl == pytest.approx(sum(kls) / 3, abs=1e-3)
    assert result.reward == pytest.approx(sum(rewards) / 3, abs=1e-9)
