"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch


def build_optimizer(groups: list[dict], config) -> torch.optim.Optimizer:
    """AdamW over parameter `groups` (`parameter_groups`: no weight decay on biases and
    norm weights) at `config.learning_rate` unless a group sets its own.

    Fused kernels on CPU and CUDA: on a 2-core CPU the fused step of a 135M model took
    86 ms and no extra memory, the foreach path 604 ms and +515 MiB of temporaries.
    """
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=tuple(config.adam_betas),
        fused=True,
    )


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, lr: float | None = None
) -> list[dict]:
    """AdamW groups of `model`'s trainable parameters: matrices decay, 1-D ones (biases,
    norm weights) do not; `lr` sets a group learning rate (e.g. a critic's own)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    extra = {} if lr is None else {"lr": lr}
    groups = [{"params": decay, "weight_decay": weight_decay, **extra}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Factor applied to the peak learning rate at optimizer step `step` (0-based).

    Linear warm-up from 1/(warmup+1) to 1, then cosine to 0, linear to 0, or constant.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            schedule=config.lr_schedule,
        ),
    )
