"""Reward models: a causal-LM backbone plus a scalar head on one read-out of its states.

A reward model is stored in the transformers `*ForSequenceClassification` form (the
backbone plus a bias-free linear `score` head), with `num_labels = K` heads: K = 1 is an
ordinary reward model, K > 1 an ensemble of heads over one shared backbone whose spread
estimates epistemic uncertainty. Any tool that loads `AutoModelForSequenceClassification`
therefore loads ours, and folders it saved load here.

Two details keep the two readings identical:
- transformers reads the rightmost token that is not `config.pad_token_id`. Chat models
  often use their end-of-turn token as pad, which is exactly the token a scored
  sequence ends with; a saved reward model therefore gets a pad id that never ends a
  sequence (`reward_pad_id`), so "rightmost non-pad" is the last real token.
- After training, rewards are shifted so a reference set scores mean 0. The head has no
  bias to fold the shift into, so it is stored as `config.reward_offset` and subtracted
  by alignkit's scorer: `score = logits - config.reward_offset`.

The read-out (`config.reward_pooling`, see `POOLINGS`) is the last real token's hidden
state (`last`, the transformers convention, the default) or the mean of the response
tokens' hidden states (`mean`). A `mean` reward model is alignkit's own: transformers
would read its head at the last token. On short chat replies the mean carries the
reply's content better: linear probes of SmolLM2-135M's states predict which of two
replies the sentiment oracle prefers at 0.81-0.91 accuracy from the mean against
0.66-0.75 from the last (end-of-turn) token (docs/rl.md).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import AlignkitError
from alignkit.ops.attention import packed_forward_kwargs, use_packed_attention
from alignkit.ops.modules import unwrap

log = logging.getLogger("alignkit")

OFFSET_KEY = "reward_offset"
POOLING_KEY = "reward_pooling"
POOLINGS = ("last", "mean")


def reward_pooling(model) -> str:
    """The read-out a reward model was trained with ("last" when it does not say)."""
    pooling = getattr(unwrap(model).config, POOLING_KEY, None) or "last"
    if pooling not in POOLINGS:
        raise AlignkitError(
            f"reward model config says {POOLING_KEY}={pooling!r}; expected one of {POOLINGS}"
        )
    return pooling


def load_reward_model(
    spec: str | Path,
    *,
    num_heads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
):
    """A `*ForSequenceClassification` model for `spec`.

    A reward-model folder loads with its own heads (`num_heads`, if given, must match).
    Anything else is a causal-LM backbone (built-in name, folder, GGUF): its LM head is
    dropped and `num_heads` fresh scalar heads are initialised from `seed`.
    """
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.loading import is_reward_model_folder, load_model, resolve_model_path

    path = resolve_model_path(spec)
    if is_reward_model_folder(path):
        model = load_model(
            path, device=device, dtype=dtype, model_class=AutoModelForSequenceClassification
        )
        if num_heads is not None and model.config.num_labels != num_heads:
            raise AlignkitError(
                f"{spec} is a reward model with {model.config.num_labels} head(s), "
                f"but num_heads={num_heads} was asked for"
            )
        return model
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "newly initialized: score.weight" is expected here
    try:
        model = load_model(
            path,
            device=device,
            dtype=dtype,
            model_class=AutoModelForSequenceClassification,
            num_labels=num_heads or 1,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    init_heads(model, seed)
    log.info("%s: backbone loaded; %d fresh reward head(s)", spec, num_heads or 1)
    return model


def score_head(model) -> nn.Linear:
    """The scalar head(s): a Linear (H -> K)."""
    base = unwrap(model)
    for name in ("score", "classifier"):
        head = getattr(base, name, None)
        if head is not None:
            return head
    raise AlignkitError(f"{type(base).__name__} has no 'score' head; is it a reward model?")


def init_heads(model, seed: int) -> None:
    """Head k ~ N(0, 1/H) from its own generator (seed, k): with unit-scale hidden states
    the initial rewards have unit scale, and ensemble heads start from different priors,
    which is what makes their disagreement grow away from the training data."""
    head = score_head(model)
    hidden = head.weight.shape[1]
    with torch.no_grad():
        for k in range(head.weight.shape[0]):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + k)
            row = torch.randn(hidden, generator=generator) / math.sqrt(hidden)
            head.weight[k].copy_(row.to(head.weight))
        if head.bias is not None:
            head.bias.zero_()


def reward_pad_id(tokenizer, end_ids: set[int]) -> int | None:
    """A token id that never ends a scored sequence (see the module docstring), or None.

    `end_ids`: tokens a scored sequence can end with (EOS, end-of-turn).
    """
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, *tokenizer.all_special_ids]
    for candidate in candidates:
        if candidate is not None and candidate not in end_ids:
            return candidate
    return None


class RewardScores(nn.Module):
    """Rewards of sequences, one read-out each (the model's `reward_pooling`).

    forward(input_ids (B, T), score_index (S,), position_ids (B, T) | None,
            cu_seqlens (S+1,) | None, response_mask (B, T) bool | None) -> (S, K)

    `score_index` indexes the flattened (B*T) positions of each sequence's last real
    token (see `score_positions`), in increasing order. `response_mask` marks the
    response tokens the `mean` read-out averages (the `labels != -100` positions); the
    `last` read-out ignores it. Right padding needs no attention mask (causal attention:
    no real token sees the pads after it); packed rows need their restarting
    `position_ids` and `cu_seqlens`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pooling = reward_pooling(model)
        use_packed_attention(unwrap(model))

    def forward(
        self,
        input_ids,
        score_index,
        position_ids=None,
        cu_seqlens=None,
        response_mask=None,
        **_ignored,
    ):
        base = unwrap(self.model)
        packed = (
            packed_forward_kwargs(base, input_ids, cu_seqlens) if cu_seqlens is not None else {}
        )
        hidden = base.base_model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **packed
        ).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
        if self.pooling == "mean":
            if response_mask is None:
                raise AlignkitError("a mean-pooled reward model needs the response tokens' mask")
            picked = mean_over_responses(flat, score_index, response_mask.reshape(-1))
        else:
            picked = flat[score_index]
        return score_head(self.model)(picked).float()


def mean_over_responses(
    flat_hidden: torch.Tensor, score_index: torch.Tensor, flat_mask: torch.Tensor
) -> torch.Tensor:
    """(S, H): each sequence's mean hidden state over its masked (response) positions.

    flat_hidden: (N, H); score_index: (S,) increasing last positions; flat_mask: (N,) bool.
    A position p belongs to the first sequence whose last position is >= p, which holds
    for right-padded rows (pads are unmasked) and for packed rows alike. A sequence with
    no masked position falls back to its last token. Sums in float32 (bf16 sums of a few
    hundred states can lose digits).
    """
    positions = flat_mask.nonzero().squeeze(-1)
    owner = torch.searchsorted(score_index, positions)  # (M,) sequence of each position
    sums = torch.zeros(
        len(score_index), flat_hidden.shape[-1], device=flat_hidden.device, dtype=torch.float32
    ).index_add_(0, owner, flat_hidden[positions].float())
    counts = torch.bincount(owner, minlength=len(score_index)).unsqueeze(-1)
    means = (sums / counts.clamp(min=1)).to(flat_hidden.dtype)
    return torch.where(counts > 0, means, flat_hidden[score_index])


class TokenValues(nn.Module):
    """A value model (PPO's critic): the scalar head read at every position.

    forward(input_ids (B, T), position_ids | None) -> (B, T) float32. Right-padded rows
    need no attention mask (see `RewardScores`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        use_packed_attention(unwrap(model))

    def forward(self, input_ids, position_ids=None, **_ignored):
        base = unwrap(self.model)
        hidden = base.base_model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return score_head(self.model)(hidden)[..., 0].float()


def score_positions(batch: dict) -> torch.Tensor:
    """(S,) flat positions of each sequence's last real token in a collated batch."""
    if "cu_seqlens" in batch:
        return batch["cu_seqlens"][1:].long() - 1
    mask = batch["attention_mask"]
    width = mask.shape[1]
    rows = torch.arange(mask.shape[0], device=mask.device)
    return rows * width + mask.sum(-1) - 1


def response_mask(batch: dict) -> torch.Tensor | None:
    """(B, T) bool: the response tokens of a collated batch (its `labels`), or None."""
    from alignkit.data.templating import IGNORE_INDEX

    labels = batch.get("labels")
    return None if labels is None else labels != IGNORE_INDEX


@torch.no_grad()
def score_sequences(
    module: RewardScores,
    sequences: list[dict],
    *,
    pad_id: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Raw rewards (N, K) of sequences (`{"input_ids", "labels"}` features; labels mark
    the response, which the `mean` read-out needs), in their order.

    Sequences are sorted by length so each right-padded batch wastes little, then the
    results are put back in order.
    """
    from alignkit.data.collators import PaddingCollator

    collate = PaddingCollator(pad_id)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]["input_ids"]))
    out: torch.Tensor | None = None
    was_training = module.training
    module.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([sequences[i] for i in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            rewards = module(
                batch["input_ids"], score_positions(batch), response_mask=response_mask(batch)
            ).cpu()
            if out is None:
                out = torch.empty(len(sequences), rewards.shape[1])
            out[torch.tensor(chunk)] = rewards
    finally:
        module.train(was_training)
    if out is None:
        return torch.empty(0, 1)
    return out
