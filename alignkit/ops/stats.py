"""Statistics over masked token positions (RL advantages, values, KL).

All functions take `values` and a same-shaped `mask` (bool or 0/1) and ignore positions
where the mask is 0: padding after a completion's end must not move a mean or a variance.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over masked-in positions (all of them, or along `dim`); 0 where none are."""
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked-in positions (Bessel-corrected by default)."""
    mean = masked_mean(values, mask)
    centred = (values - mean) ** 2
    variance = masked_mean(centred, mask)
    if unbiased:
        count = mask.to(values.dtype).sum()
        if count < 2:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(values - mean) / std over masked-in positions; with `shift_mean=False` the mean is
    added back (rescaling only). Masked-out positions come back as 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)
