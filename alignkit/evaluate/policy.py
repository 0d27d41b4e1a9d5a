"""How a policy does on held-out prompts: mean reward and KL to a reference.

Completions are sampled from the policy at the given temperature; the KL is the k1
estimate sum_t [log pi(y_t) - log pi_ref(y_t)] per completion, averaged, with both
log-probs taken at that same temperature, so it estimates KL between the two sampling
distributions (unbiased, since the samples come from the policy's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.ops.logprobs import CausalLMLogps
from alignkit.rollout.sampling import SamplingSettings, sample


@dataclass
class PolicyEvaluation:
    reward: float  # mean judge score
    reward_sem: float  # standard error of that mean
    kl: float  # mean per-completion KL(pi || pi_ref) estimate
    length: float  # mean completion length in tokens
    samples: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate_policy(
    model,
    tokenizer,
    prompts: list,
    judge,
    settings: SamplingSettings,
    *,
    reference=None,
    batch_size: int = 16,
) -> PolicyEvaluation:
    """Sample one completion per prompt (text or messages), score it, and measure KL to
    `reference` (a causal LM with the same tokenizer; None: KL reported as 0)."""
    from alignkit.methods.rl import build_batch, completion_logps

    encoder = ChatEncoder(tokenizer)
    eos, pad = encoder.stop_token_ids, pad_token_id(tokenizer)
    temperature = settings.temperature if settings.temperature > 0 else 1.0
    policy_logps = CausalLMLogps(model, temperature=temperature)
    ref_logps = CausalLMLogps(reference, temperature=temperature) if reference is not None else None
    device = next(model.parameters()).device
    scores, kls, lengths, samples = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [encoder.encode_prompt(p) for p in chunk]
        step_settings = SamplingSettings(
            **{**vars(settings), "seed": None if settings.seed is None else settings.seed + start}
        )
        rollout = sample(model, ids, step_settings, eos_ids=eos, pad_id=pad, tokenizer=tokenizer)
        texts = [t.strip() for t in rollout.texts(tokenizer)]
        batch_scores = judge.score_batch(chunk, texts)
        rows = {k: v.to(device) for k, v in build_batch(rollout, ids, pad).items()}
        if ref_logps is not None:
            mine = completion_logps(policy_logps, rows)
            theirs = completion_logps(ref_logps, rows)
            kls.extend(((mine - theirs) * rows["mask"]).sum(-1).tolist())
        lengths.extend(rollout.completion_mask.sum(-1).tolist())
        scores.extend(batch_scores)
        samples.extend(
            {"prompt": p, "completion": t, "score": s}
            for p, t, s in zip(chunk, texts, batch_scores, strict=True)
        )
    values = torch.tensor(scores, dtype=torch.float64)
    sem = float(values.std() / len(values) ** 0.5) if len(values) > 1 else 0.0
    return PolicyEvaluation(
        reward=float(values.mean()),
        reward_sem=sem,
        kl=float(torch.tensor(kls).mean()) if kls else 0.0,
        length=float(torch.tensor(lengths, dtype=torch.float64).mean()),
        samples=samples,
    )
