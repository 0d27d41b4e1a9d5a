"""Tiny randomly initialised Llama-family models for tests and smoke runs.

They use the real SmolLM2 tokenizer and chat template (vocabulary 49,152), so tests
exercise real tokenization while a forward pass takes milliseconds.
"""

from __future__ import annotations

from alignkit.models.builtin import DEFAULT_MODEL


def tiny_tokenizer():
    """The default model's tokenizer (cached on its own; no model weights needed)."""
    from alignkit.models.loading import load_builtin_tokenizer

    return load_builtin_tokenizer(DEFAULT_MODEL)


def tiny_config(tokenizer=None, **overrides):
    """A LlamaConfig with 2 layers and hidden size 64; keyword arguments override."""
    from transformers import LlamaConfig

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(seed: int = 0, tokenizer=None, **overrides):
    """A freshly initialised tiny LlamaForCausalLM; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
