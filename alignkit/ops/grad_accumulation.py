"""Add weight gradients straight into `param.grad` instead of handing autograd a new tensor.

Autograd gives each use of a weight its own gradient tensor and sums them before adding
the result to `param.grad`. For a language model's vocabulary matrix (V, H) that costs
memory and time twice over:

- a tied matrix is used first (input embedding) and last (output head); the head's
  (V, H) gradient is computed at the start of backward and waits in autograd's input
  buffer until the embedding's arrives at the very end (113 MiB held for the whole
  backward pass of SmolLM2-135M);
- the embedding's gradient is a dense (V, H) tensor of zeros with the batch's few hundred
  rows filled in, then added twice more (to the buffer, to `param.grad`).

With fusion the head adds each chunk's gradient into `param.grad` in place and the
embedding adds only the rows of the batch's tokens (`index_add_`). The same idea as
Megatron-LM's `gradient_accumulation_fusion` (linear layers accumulating into `main_grad`).

When it applies: gradients are accumulated by `.backward()` into an already allocated
float32 `param.grad` (`alignkit.train.memory.allocate_state`), in one process. Autograd
never sees a fused weight's gradient (hooks on the weight receive None), so
DistributedDataParallel, which reduces gradients as autograd delivers them, would miss
it: the training loop turns fusion off under torchrun, and `torch.autograd.grad` must not
be used on a module with fusion on. When `param.grad` is missing or of another dtype at
backward time, the gradient goes to autograd as usual, so results never depend on the
fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Parameters whose gradient a fused kernel added into `.grad` since the training step
# last cleared this set. Autograd's hooks never see these writes, and the optimizer step
# must know which parameters got a gradient (`alignkit.train.memory.MemoryPlan`).
# Kept as `id(param)`: tensors compare elementwise, so they cannot be set members.
_WRITTEN_IN_PLACE: set[int] = set()


def written_in_place() -> set[int]:
    """`id`s of the parameters that received a fused in-place gradient since the last
    `.clear()`."""
    return _WRITTEN_IN_PLACE


def accumulation_target(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """`param.grad` if a gradient of `dtype` can be added into it in place (the caller
    then must), else None."""
    grad = param.grad
    if grad is None or not param.is_leaf or grad.dtype != dtype or grad.layout != torch.strided:
        return None
    _WRITTEN_IN_PLACE.add(id(param))
    return grad


class _FusedEmbedding(torch.autograd.Function):
    """Embedding lookup whose backward adds the looked-up rows' gradients into
    `weight.grad` (rows of `padding_idx` get none, as in `nn.Embedding`)."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        # ids: (B, T) int64; weight: (V, H) -> (B, T, H)
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        flat_ids, rows = ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.padding_idx is not None:
            keep = flat_ids != ctx.padding_idx
            flat_ids, rows = flat_ids[keep], rows[keep]
        target = accumulation_target(weight, weight.dtype)
        if target is not None:
            target.index_add_(0, flat_ids, rows.to(target.dtype))
            return None, None, None
        grad = torch.zeros_like(weight).index_add_(0, flat_ids, rows.to(weight.dtype))
        return None, grad, None


def fusable_embedding(module: nn.Module) -> bool:
    """Whether `module` is a plain trainable `nn.Embedding` that `fused_embedding` matches
    exactly (no max_norm renormalisation, frequency scaling, sparse gradients or hooks)."""
    return (
        type(module) is nn.Embedding
        and module.weight.requires_grad
        and module.max_norm is None
        and not module.scale_grad_by_freq
        and not module.sparse
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def fused_embedding(module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """`module(ids)` with the weight gradient added into `module.weight.grad` in place.

    ids: (...) token ids -> (..., H). Check `fusable_embedding(module)` first.
    """
    return _FusedEmbedding.apply(ids, module.weight, module.padding_idx)
