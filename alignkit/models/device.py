"""Device and dtype selection, the same rules everywhere."""

from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def select_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> CUDA when present, else CPU. Anything else is passed to `torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def select_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """`auto` -> bfloat16 on a GPU that supports it, float32 otherwise (CPU default).

    Training keeps float32 weights and uses bf16 autocast instead (see the train loop);
    `auto` here is the choice for inference.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and bf16_supported(device) else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; expected auto or one of {', '.join(_DTYPES)}"
        ) from None
