"""Models: the one loader, built-in names, GGUF conversion, LoRA and tiny test models."""

from alignkit.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from alignkit.models.device import select_device, select_dtype
from alignkit.models.loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from alignkit.models.lora import LoraSettings, apply_lora

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoraSettings",
    "apply_lora",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model_path",
    "select_device",
    "select_dtype",
]
