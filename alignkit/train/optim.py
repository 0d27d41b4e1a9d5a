"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D).

    Fused kernels on CPU and CUDA: on a 2-core CPU the fused step of a 135M model took
    86 ms and no extra memory, the foreach path 604 ms and +515 MiB of temporaries.
    """
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=tuple(config.adam_betas),
        fused=True,
    )


def allocate_state(optimizer: torch.optim.AdamW) -> None:
    """Create every gradient and AdamW moment now, before the first activation exists,
    each kind in one flat buffer that the per-parameter tensors are views of.

    Why: created lazily, the first step's gradients and moments are allocated in the
    middle of that step's activations. On CPU glibc's heap cannot hand back memory that
    lies below a live block, so every freed activation between them stays resident: in a
    DPO step of the 135M model the heap held 2 GB of free memory next to 1.5 GB in use.
    Created here, the state is three large allocations that the C library maps outside
    its heap, so activations come and go in a heap holding little else, whatever earlier
    work in the process left behind. The loop keeps gradients allocated between steps
    (zeroed, not freed). The values are exactly what AdamW would create on its first step
    (zero moments, step 0), so results are unchanged. A resumed optimizer already has its
    state and is left as it is (its gradients are still created here). One difference
    from freeing gradients: a parameter that gets no gradient in a step sees a zero one,
    so AdamW still decays its moments and applies weight decay (plain PyTorch's
    `zero_grad(set_to_none=False)` behaviour); every trainable parameter of the models
    alignkit trains gets a gradient every step.
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    if any(group.get("amsgrad") for group in optimizer.param_groups):
        raise ValueError("allocate_state does not handle amsgrad")
    missing = [param for param in params if param.grad is None]
    for param, grad in zip(missing, flat_zeros(missing), strict=True):
        param.grad = grad
    fresh = [param for param in params if not optimizer.state[param]]
    for param, exp_avg, exp_avg_sq in zip(fresh, flat_zeros(fresh), flat_zeros(fresh), strict=True):
        optimizer.state[param].update(
            # Fused AdamW keeps its step count as a float32 tensor on the parameter's device.
            step=torch.zeros((), dtype=torch.float32, device=param.device),
            exp_avg=exp_avg,
            exp_avg_sq=exp_avg_sq,
        )


def flat_zeros(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero tensors shaped like `params`, views into one buffer per (device, dtype).

    A parameter that is not contiguous gets a tensor of its own in its memory format.
    """
    out: list[torch.Tensor | None] = [None] * len(params)
    buckets: dict[tuple, list[int]] = {}
    for i, param in enumerate(params):
        if param.is_contiguous():
            buckets.setdefault((param.device, param.dtype), []).append(i)
        else:
            out[i] = torch.zeros_like(param, memory_format=torch.preserve_format)
    for (device, dtype), members in buckets.items():
        buffer = torch.zeros(sum(params[i].numel() for i in members), dtype=dtype, device=device)
        offset = 0
        for i in members:
            size = params[i].numel()
            out[i] = buffer[offset : offset + size].view_as(params[i])
            offset += size
    return out


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
