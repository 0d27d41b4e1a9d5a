"""DPO and its family (cDPO, IPO, hinge, robust DPO) and the reference-free SimPO and ORPO.

Chosen and rejected responses of a micro-batch go through one forward pass, packed
padding-free into one row by default (`packing=true`) or padded into one batch. Packed,
each pair's prompt is run once by default (`share_prompt=true`,
`alignkit.data.collators.SharedPrefixCollator`): the same log-probs for about a quarter
fewer tokens on chat data. The reference log-probs come from a table computed once
before training (`alignkit.methods.reference`), the same way.
"""

from __future__ import annotations

import functools
import logging

import torch

from alignkit.config import DPOConfig
from alignkit.data.collators import SharedPrefixCollator
from alignkit.data.templating import ChatEncoder
from alignkit.losses.registry import PREFERENCE_LOSSES
from alignkit.methods.common import build_collator, load_encoded, prepare
from alignkit.methods.reference import reference_table
from alignkit.ops.attention import uses_packed_attention
from alignkit.ops.logprobs import CausalLMLogps, sequence_logps, sequence_stats
from alignkit.train.loop import train
from alignkit.train.run import TrainResult

log = logging.getLogger("alignkit")


class PairCollator:
    """Pairs -> one batch of 2B sequences ordered chosen_0, rejected_0, chosen_1, ...

    `inner` collates the sequences (padding or packing); with `share_prompt` each pair
    is one group of a `SharedPrefixCollator` row instead. Adds `pair_index` (B,) (row of
    the reference table) and `label_smoothing` (B,).
    """

    def __init__(self, inner, share_prompt: bool = False):
        self.inner = inner
        self.shared = SharedPrefixCollator() if share_prompt else None

    def __call__(self, pairs: list[dict]) -> dict:
        groups = [[pair["chosen"], pair["rejected"]] for pair in pairs]
        if self.shared is not None:
            batch = self.shared(groups)
        else:
            batch = self.inner([seq for group in groups for seq in group])
        batch["pair_index"] = torch.tensor([pair["index"] for pair in pairs], dtype=torch.long)
        batch["label_smoothing"] = torch.tensor(
            [pair["label_smoothing"] for pair in pairs], dtype=torch.float32
        )
        return batch


def count_pairs(batch: dict) -> int:
    return len(batch["pair_index"])


def dpo_step(
    module, batch: dict, *, config: DPOConfig, reference: torch.Tensor | None
) -> tuple[torch.Tensor, dict]:
    """Summed preference loss of one micro-batch of B pairs (2B sequences, chosen and
    rejected alternating) and its metrics.

    Everything loss-specific comes from the loss's `PREFERENCE_LOSSES` entry: the
    reduction, whether the reference takes part, and the keyword arguments. `reference`
    is the (pairs, 2, 2) table of [chosen, rejected] x [summed log-prob, target count],
    reduced by the same `sequence_logps` as the policy; None for reference-free losses.
    """
    sums, counts = sequence_stats(module, batch)  # (2B,) each
    losses, metrics = pair_losses(sums, counts, batch, config=config, reference=reference)
    return losses.sum(), metrics


def pair_losses(
    sums: torch.Tensor, counts: torch.Tensor, batch: dict, *, config, reference
) -> tuple[torch.Tensor, dict]:
    """Per-pair losses (B,) and metrics from the policy's summed log-probs and target
    counts (2B,) of a `PairCollator` batch (chosen and rejected alternating); `dpo_step`
    without the forward pass, for steps that add terms of their own (online DPO)."""
    entry = PREFERENCE_LOSSES[config.loss]
    policy = sequence_logps(sums, counts, entry.reduction)
    logps = [policy[0::2], policy[1::2]]  # chosen, rejected: (B,) each
    if entry.needs_reference:
        # (B, 2, 2); .to is a no-op once the table is on the device
        table = reference.to(sums.device)[batch["pair_index"]]
        ref = sequence_logps(table[..., 0], table[..., 1], entry.reduction)  # (B, 2)
        logps += [ref[:, 0], ref[:, 1]]
    return entry.resolve()(*logps, **entry.kwargs(config, batch))


def encode_pairs(encoder: ChatEncoder, config: DPOConfig, offset: int):
    """Return the per-record encoder used by `load_encoded` (pair index counts from `offset`)."""
    counter = {"next": offset}

    def encode(record):
        pair = encoder.encode_pair(record)
        if pair is None:
            return None
        index = counter["next"]
        counter["next"] += 1
        smoothing = (
            1.0 - record["p_chosen"]
            if record.get("p_chosen") is not None
            else config.label_smoothing
        )
        return {
            "chosen": pair.chosen.sequence().features(),
            "rejected": pair.rejected.sequence().features(),
            "index": index,
            "label_smoothing": smoothing,
        }

    return encode


def build_reference_table(
    model, pairs: list[dict], collate: PairCollator, config: DPOConfig
) -> torch.Tensor:
    """(pairs, 2, 2): [chosen, rejected] x [summed log-prob, target count]."""
    sequences = [seq for pair in pairs for seq in (pair["chosen"], pair["rejected"])]
    table = reference_table(model, sequences, collate, config, items=pairs)
    return table.reshape(len(pairs), 2, 2)


def run_dpo(config: DPOConfig) -> TrainResult:
    model, tokenizer = prepare(config)
    encoder = ChatEncoder(
        tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    pairs = load_encoded(
        config.data,
        "preference",
        encode_pairs(encoder, config, 0),
        config,
        rejects_name="rejects.jsonl",
        encoder=encoder,
    )
    eval_pairs = None
    if config.eval_data:
        eval_pairs = load_encoded(
            config.eval_data,
            "preference",
            encode_pairs(encoder, config, len(pairs)),
            config,
            rejects_name="eval_rejects.jsonl",
            encoder=encoder,
        )
    forward_module = CausalLMLogps(model)
    share_prompt = config.packing and config.share_prompt
    if share_prompt and not uses_packed_attention(forward_module.causal_lm):
        log.info("share_prompt: off (the model's attention implementation runs plain packed rows)")
        share_prompt = False
    collate = PairCollator(build_collator(tokenizer, config.packing), share_prompt)
    reference = None
    if PREFERENCE_LOSSES[config.loss].needs_reference:
        reference = build_reference_table(model, pairs + (eval_pairs or []), collate, config)
    step = functools.partial(dpo_step, config=config, reference=reference)
    return train(
        model,
        pairs,
        collate,
        step,
        config,
        tokenizer=tokenizer,
        forward_module=forward_module,
        eval_examples=eval_pairs,
        units_fn=count_pairs,
        max_tokens=config.micro_batch_tokens,
    )
