"""Statistics over masked token positions (RL advantages, values, KL).

All functions take `values` and a same-shaped `mask` (bool or 0/1) and ignore positions
where the mask is 0: padding after a completion's end must not move a mean or a variance.
"""

from __future__ import annotations

from collections.abc import Callable

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
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(values - mean) / std over masked-in positions (Bessel-corrected variance); with
    `shift_mean=False` the mean is added back (rescaling only). Masked-out positions come
    back as 0. `sum_fn` turns local sums into global ones (e.g. summed over processes), so
    shards of a batch are whitened with the statistics of the whole batch."""
    total = sum_fn or (lambda tensor: tensor)
    weights = mask.to(values.dtype)
    value_sum, count = total(torch.stack([(values * weights).sum(), weights.sum()]))
    mean = value_sum / count.clamp(min=1)
    squares = total(((values - mean) ** 2 * weights).sum())
    variance = squares / (count - 1) if count >= 2 else torch.zeros_like(squares)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * weights
