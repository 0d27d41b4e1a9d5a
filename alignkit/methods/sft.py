"""Supervised fine-tuning: next-token loss on assistant tokens only.

Loss per micro-batch = sum over target tokens of -log p(token); the loop divides by the
number of target tokens in the whole optimizer step (see `alignkit.train.loop`).
"""

from __future__ import annotations

import logging

import torch

from alignkit.config import SFTConfig
from alignkit.data.templating import ChatEncoder
from alignkit.methods.common import build_collator, load_encoded, prepare
from alignkit.ops.logprobs import CausalLMLogps, batch_token_logps
from alignkit.train.loop import train
from alignkit.train.run import TrainResult

log = logging.getLogger("alignkit")


def sft_step(module: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed negative log-likelihood of the target tokens of one micro-batch."""
    logps, _mask, _cu_seqlens = batch_token_logps(module, batch)
    return -logps.sum(), {}


def run_sft(config: SFTConfig) -> TrainResult:
    model, tokenizer = prepare(config)
    encoder = ChatEncoder(
        tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )

    def encode(record):
        encoded = encoder.encode_sft(record)
        return encoded.features() if encoded is not None else None

    examples = load_encoded(
        config.data, "sft", encode, config, rejects_name="rejects.jsonl", encoder=encoder
    )
    eval_examples = (
        load_encoded(
            config.eval_data,
            "sft",
            encode,
            config,
            rejects_name="eval_rejects.jsonl",
            encoder=encoder,
        )
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
        max_tokens=config.micro_batch_tokens,
    )
