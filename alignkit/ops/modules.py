"""Reaching the transformers model that the ops work on, inside whatever wraps it."""

from __future__ import annotations


def unwrap(model):
    """The transformers model inside a PEFT wrapper (the model itself if unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
