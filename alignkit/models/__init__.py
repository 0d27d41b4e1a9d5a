"""Models: the one loader, built-in names, GGUF conversion, LoRA and tiny test models.

Exports resolve lazily so that `alignkit --help` and data commands do not import torch.
"""

import importlib

_EXPORTS = {
    "BUILTIN_MODELS": "alignkit.models.builtin",
    "DEFAULT_MODEL": "alignkit.models.builtin",
    "select_device": "alignkit.models.device",
    "select_dtype": "alignkit.models.device",
    "load_model": "alignkit.models.loading",
    "load_model_and_tokenizer": "alignkit.models.loading",
    "load_tokenizer": "alignkit.models.loading",
    "resolve_model_path": "alignkit.models.loading",
    "LoraSettings": "alignkit.models.lora",
    "apply_lora": "alignkit.models.lora",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignkit.models' has no attribute {name!r}")
