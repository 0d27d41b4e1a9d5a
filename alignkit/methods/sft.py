"""Supervised fine-tuning: next-token loss on assistant tokens only.

Loss per micro-batch = sum over target tokens of -log p(token); the loop divides by the
number of target tokens in the whole optimizer step (see `alignkit.train.loop`).
"""

from __future__ import annotations

import logging

import torch

from alignkit.config import SFTConfig
from alignkit.data.collators import PackingCollator, PaddingCollator
from alignkit.data.templating import ChatEncoder
from alignkit.methods.common import load_encoded, prepare
from alignkit.ops.logprobs import CausalLMLogps
from alignkit.train.loop import TrainResult, train

log = logging.getLogger("alignkit")


def sft_step(module: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed negative log-likelihood of the target tokens of one micro-batch."""
    logps, mask = module(
        input_ids=batch["input_ids"],
        labels=batch["labels"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
    )
    return -logps.sum(), {}


def build_collator(tokenizer, packing: bool):
    if packing:
        return PackingCollator()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PaddingCollator(pad)


def run_sft(config: SFTConfig) -> TrainResult:
    model, tokenizer = prepare(config)
    encoder = ChatEncoder(
        tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )

    def encode(record):
        encoded = encoder.encode_sft(record)
        return encoded.features() if encoded is not None else None

    examples = load_encoded(config.data, "sft", encode, config, rejects_name="rejects.jsonl")
    eval_examples = (
        load_encoded(config.eval_data, "sft", encode, config, rejects_name="eval_rejects.jsonl")
        if config.eval_data
        else None
    )
    return train(
        model,
        examples,
        build_collator(tokenizer, config.packing),
        sft_step,
        config,
        tokenizer=tokenizer,
        forward_module=CausalLMLogps(model),
        eval_examples=eval_examples,
    )
