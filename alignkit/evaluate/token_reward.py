"""Per-token implicit reward: which tokens a trained policy learned to prefer.

DPO's policy defines a reward through its log-ratio to the reference (Rafailov et al.
2023, eq. 5): r(x, y) = beta * log pi(y | x) / pi_ref(y | x) + beta * log Z(x). The
sequence log-ratio is a sum over the response's tokens, so each token carries

    r_t = beta * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)),

and sum_t r_t is the implicit reward up to the prompt-only term beta * log Z(x). Positive
tokens are ones the policy now favours over the reference; negative ones it moved away
from. The response is tokenized exactly as preference training tokenizes it (the
`ChatEncoder`: chat prompts get the template and the end-of-turn token is a target; plain
text prompts get EOS), so the sum is the quantity DPO trained, and the map shows the
end-of-turn token's share too.

`token_rewards(...)` computes the maps (teacher-forced, batched, through `CausalLMLogps`);
`TokenRewardMap.to_json()` exports one; the report (alignkit/report) draws them as coloured
text, each token's background from `colour(value, scale)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignkit.data.collators import PaddingCollator
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.feedback.judge import Text
from alignkit.ops.logprobs import CausalLMLogps


@dataclass
class TokenRewardMap:
    """One response's per-token implicit rewards. tokens: (C,) text pieces that join to
    the response as tokenized (special tokens such as end-of-turn shown literally);
    token_ids, values: (C,) the target ids and beta * (log pi - log pi_ref) of each."""

    prompt: Text
    response: str
    beta: float
    tokens: list[str]
    token_ids: list[int]
    values: list[float]

    @property
    def total(self) -> float:
        """sum_t r_t: the implicit reward without its beta * log Z(x) term."""
        return float(sum(self.values))

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "beta": self.beta,
            "total": self.total,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "values": self.values,
        }


@torch.no_grad()
def token_rewards(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[Text],
    responses: Sequence[str],
    *,
    beta: float = 0.1,
    batch_size: int = 8,
    reference_context: Callable | None = None,
) -> list[TokenRewardMap]:
    """Per-token implicit rewards of `responses[i]` (assistant text) to `prompts[i]`
    (text, or a list of chat messages). `reference`: a causal LM with the same tokenizer,
    or None to use `policy` itself inside `reference_context()` (a LoRA policy with its
    adapter disabled). Log-probs are at temperature 1, as in DPO's objective."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if reference is None and reference_context is None:
        raise ValueError("token rewards need a reference model or a reference_context")
    encoder = ChatEncoder(tokenizer)
    collate = PaddingCollator(pad_token_id(tokenizer))
    policy_logps = CausalLMLogps(policy)
    ref_logps = CausalLMLogps(reference) if reference is not None else policy_logps
    reference_context = None if reference is not None else reference_context
    device = next(policy.parameters()).device
    maps = []
    for start in range(0, len(prompts), batch_size):
        pairs = list(
            zip(
                prompts[start : start + batch_size],
                responses[start : start + batch_size],
                strict=True,
            )
        )
        sequences = [
            encoder.encode_completion(p, _as_completion(p, r)).sequence() for p, r in pairs
        ]
        batch = collate([s.features() for s in sequences])
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        mine, mask = policy_logps(input_ids=input_ids, labels=labels)  # (B, T-1) each
        with reference_context() if reference_context else contextlib.nullcontext():
            theirs, _ = ref_logps(input_ids=input_ids, labels=labels)
        rewards = beta * (mine.double() - theirs.double())
        targets = labels[:, 1:]
        for row, (prompt, response) in enumerate(pairs):
            ids = targets[row][mask[row]].tolist()
            maps.append(
                TokenRewardMap(
                    prompt=prompt,
                    response=response,
                    beta=beta,
                    tokens=token_pieces(tokenizer, ids),
                    token_ids=ids,
                    values=rewards[row][mask[row]].tolist(),
                )
            )
    return maps


def _as_completion(prompt: Text, response: str) -> Text:
    """A chat prompt takes its response as an assistant message (so the end-of-turn
    token is a target); a text prompt takes plain text (EOS appended)."""
    return [{"role": "assistant", "content": response}] if isinstance(prompt, list) else response


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, decoding incrementally: piece t is decode(ids[:t+1])
    minus decode(ids[:t]), so pieces join to the decoded text and a character split over
    several byte-level tokens appears once, on the token that completes it (earlier ones
    get ''). Special tokens are kept (an end-of-turn token shows as itself)."""
    pieces, previous = [], ""
    for t in range(len(ids)):
        text = tokenizer.decode(ids[: t + 1], skip_special_tokens=False)
        if text.endswith("\ufffd") and t + 1 < len(ids):  # an unfinished character: wait
            pieces.append("")
            continue
        if text.startswith(previous):
            pieces.append(text[len(previous) :])
        else:  # decoding is not prefix-stable here (rare clean-up rules): show the token alone
            pieces.append(tokenizer.decode(ids[t : t + 1], skip_special_tokens=False))
        previous = text
    return pieces


# ---- colour --------------------------------------------------------------------------

# A diverging scale centred at 0: white at 0, blue for reward the policy gained, red for
# reward it lost (ColorBrewer RdBu end points; readable by red-green colour-blind readers).
_NEGATIVE = (178, 24, 43)
_POSITIVE = (33, 102, 172)
_WHITE = (255, 255, 255)


def colour(value: float, scale: float) -> str:
    """CSS rgb() for `value` on the diverging scale saturating at |value| = scale."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    end = _POSITIVE if t > 0 else _NEGATIVE
    r, g, b = (round(w + abs(t) * (e - w)) for w, e in zip(_WHITE, end, strict=True))
    return f"rgb({r}, {g}, {b})"
