"""How a policy does on held-out prompts: mean reward and KL to a reference.

Completions are sampled from the policy at the given temperature; the KL is the k1
estimate sum_t [log pi(y_t) - log pi_ref(y_t)] per completion, averaged, with both
log-probs taken at that same temperature, so it estimates KL between the two sampling
distributions (unbiased, since the samples come from the policy's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.ops.logprobs import CausalLMLogps
from alignkit.rollout.batch import completion_logps, completion_rows
from alignkit.rollout.sampling import SamplingSettings, row_seed, sample


@dataclass
class PolicyEvaluation:
    reward: float  # mean judge score (nan without a judge)
    reward_sem: float  # standard error of that mean
    kl: float  # mean per-completion KL(pi || pi_ref) estimate
    kl_sem: float  # standard error of that mean (0 without a reference)
    length: float  # mean completion length in tokens
    # prompt, completion, score (None without a judge), kl, length, finished
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
    reference_context: Callable | None = None,
    batch_size: int = 16,
    row_ids: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PolicyEvaluation:
    """Sample one completion per prompt (text or messages), score it, and measure KL to
    the reference: `reference` (a causal LM with the same tokenizer), or `model` itself
    inside `reference_context()` (e.g. a LoRA policy with its adapter disabled); neither:
    KL reported as 0. Prompt i is sampled with seed `row_seed(settings.seed, row_ids[i])`
    (default row_ids: 0, 1, ...), so a shard of a prompt list, given the prompts' places in
    the whole list, samples what the whole list would. `judge` None: no scores (reward
    nan). `progress(n)`, if given, is called after each batch with its prompt count.
    A sample's `finished` is False where it was cut at max_new_tokens."""
    encoder = ChatEncoder(tokenizer)
    eos, pad = encoder.stop_token_ids, pad_token_id(tokenizer)
    temperature = settings.temperature if settings.temperature > 0 else 1.0
    policy_logps = CausalLMLogps(model, temperature=temperature)
    if reference is not None:
        ref_logps, reference_context = CausalLMLogps(reference, temperature=temperature), None
    else:
        ref_logps = policy_logps if reference_context is not None else None
    device = next(model.parameters()).device
    scores, kls, lengths, samples = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [encoder.encode_prompt(p) for p in chunk]
        seeds = None
        if settings.seed is not None:
            ids_of_rows = row_ids or range(len(prompts))
            seeds = [row_seed(settings.seed, ids_of_rows[start + i]) for i in range(len(chunk))]
        rollout = sample(
            model, ids, settings, eos_ids=eos, pad_id=pad, tokenizer=tokenizer, row_seeds=seeds
        )
        texts = [t.strip() for t in rollout.texts(tokenizer)]
        batch_scores = (
            [float(x) for x in judge.score_batch(chunk, texts)]
            if judge is not None
            else [None] * len(chunk)
        )
        rows = {k: v.to(device) for k, v in completion_rows(rollout, ids, pad).items()}
        batch_kls = [0.0] * len(chunk)
        if ref_logps is not None:
            mine = completion_logps(policy_logps, rows)
            with reference_context() if reference_context else contextlib.nullcontext():
                theirs = completion_logps(ref_logps, rows)
            batch_kls = ((mine - theirs) * rows["mask"]).sum(-1).tolist()
            kls.extend(batch_kls)
        batch_lengths = rollout.completion_mask.sum(-1).tolist()
        lengths.extend(batch_lengths)
        scores.extend(s for s in batch_scores if s is not None)
        finished = rollout.finished.tolist()
        samples.extend(
            {"prompt": p, "completion": t, "score": s, "kl": k, "length": n, "finished": f}
            for p, t, s, k, n, f in zip(
                chunk, texts, batch_scores, batch_kls, batch_lengths, finished, strict=True
            )
        )
        if progress is not None:
            progress(len(chunk))
    reward, reward_sem = _mean_and_sem(scores)
    kl, kl_sem = _mean_and_sem(kls)
    return PolicyEvaluation(
        reward=reward,
        reward_sem=reward_sem,
        kl=kl if kls else 0.0,
        kl_sem=kl_sem,
        length=float(torch.tensor(lengths, dtype=torch.float64).mean()),
        samples=samples,
    )


def _mean_and_sem(values: list[float]) -> tuple[float, float]:
    """Mean (nan if empty) and its standard error (sample std / sqrt(n); 0 below 2 values)."""
    data = torch.tensor(values, dtype=torch.float64)
    mean = float(data.mean()) if values else float("nan")
    return mean, float(data.std() / len(values) ** 0.5) if len(values) > 1 else 0.0
