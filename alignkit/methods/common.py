"""Set-up every training method shares: records -> encoded examples, model -> trainable."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from alignkit.data.collators import PackingCollator, PaddingCollator
from alignkit.data.loading import load_records
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import AlignkitError
from alignkit.models.loading import load_model, load_tokenizer
from alignkit.models.lora import apply_lora
from alignkit.models.partial import train_top_layers
from alignkit.train.run import check_output_dir

log = logging.getLogger("alignkit")


def build_collator(tokenizer, packing: bool):
    """Padding-free packing, or right padding with the tokenizer's pad id (EOS if none)."""
    if packing:
        return PackingCollator()
    return PaddingCollator(pad_token_id(tokenizer))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(config):
    """What every method does first: check `data`, seed everything, load the policy."""
    if config.data is None:
        from alignkit.config import ConfigError

        raise ConfigError("data is required: data=path/to/train.jsonl")
    check_output_dir(config)  # before any expensive preparation
    seed_everything(config.seed)
    return load_trainable_model(config)


def load_trainable_model(config):
    """The policy in float32 (bf16 comes from autocast), with LoRA adapters if asked."""
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, device="cpu", dtype="float32")
    train_top_layers(model, config.trainable_layers)
    if config.lora is not None:
        model = apply_lora(model, config.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "LoRA: training %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total
        )
    return model, tokenizer


def load_encoded(
    path: str, kind, encode, config, *, rejects_name: str, encoder: ChatEncoder | None = None
) -> list:
    """Load, validate and encode one data file; warn about what truncation dropped (the
    count, and with `encoder` the longest dropped record's length)."""
    records = load_records(
        path,
        kind,
        skip_invalid=config.skip_invalid,
        rejects_path=Path(config.output_dir) / rejects_name,
    )
    encoded = [encode(record) for record in records.records]
    examples = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(examples)
    log.info(
        "%s: %d %s records, %d examples",
        path,
        len(records),
        "/".join(Kind(k).value for k in kind) if isinstance(kind, tuple) else Kind(kind).value,
        len(examples),
    )
    if dropped:
        longest = (
            f"; the longest is {encoder.report.longest_dropped} tokens"
            if encoder is not None and encoder.report.longest_dropped
            else ""
        )
        log.warning(
            "%s: %d of %d records dropped: no room for a target token within max_length=%s%s. "
            "Raise max_length (or max_prompt_length lower) to keep them",
            path,
            dropped,
            len(encoded),
            getattr(config, "max_length", None),
            longest,
        )
    if not examples:
        raise AlignkitError(f"{path}: every record was dropped by truncation; raise max_length")
    return examples
