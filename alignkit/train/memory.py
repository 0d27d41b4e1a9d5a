"""Training memory measures, in one place behind one setting (`lean_memory`, default on).

What they do, and why each one lowers peak memory without changing a result:

- **State before activations** (`allocate_state`): every gradient and AdamW moment is
  created before the first forward pass, each kind in one flat buffer that the
  per-parameter tensors are views of. Created lazily, the first step's state lands in
  the middle of that step's activations; on CPU glibc cannot hand back heap memory
  below a live block, so freed activations stayed resident (a DPO step of the 135M model
  held 2 GB of free heap next to 1.5 GB in use). The flat buffers are large allocations
  that the C library maps outside its heap. Gradients stay allocated between steps.
- **Largest forward pass first** (`order`): the largest pass sets the high-water mark
  (glibc's heap on CPU, the caching allocator on CUDA); run first, it claims that memory
  once and smaller passes reuse it (DPO probe: -60 MiB). Only summation order changes.
- **Free heap pages back to the OS before each pass** (`before_pass`, CPU only): glibc's
  `malloc_trim` (DPO probe: 2529 -> 2430 MiB peak, same time).

The token cap per forward pass (`micro_batch_tokens`, default `auto`, `token_cap`) bounds
activation memory where lengths are long-tailed; `auto` sizes it from the model so that
activations stay near half of the weights + gradients + AdamW state (135M model: 1024
tokens; DPO benchmark of 8 pairs up to 1024 tokens, docs/benchmarks.md: no cap 97.6 s /
5779 MiB, 1024 tokens 74.8 s / 3405 MiB, 512 tokens 81.7 s / 2913 MiB).

Keeping gradients allocated must not change what the optimizer does: a parameter that
got no gradient in a step is shown to AdamW without one (its `.grad` is set to None for
the update and restored afterwards), so it is neither decayed nor are its moments moved,
exactly as with PyTorch's default `zero_grad(set_to_none=True)`. Which parameters got a
gradient is recorded by autograd hooks, plus the fused kernels' own in-place writes
(`alignkit.ops.grad_accumulation.written_in_place`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignkit.ops.grad_accumulation import written_in_place
from alignkit.train.heap import release_free_heap

# Activation floats kept per token for the backward pass of a Llama-like decoder, per
# layer: about 6 x hidden (norm inputs, attention projections and output) + 2 x
# intermediate (MLP); plus the vocabulary-wide logits. Fitted to the 135M model's
# measured growth (0.96 MiB per token; this estimate gives 0.98 MiB).
_HIDDEN_FLOATS, _INTERMEDIATE_FLOATS = 6, 2
_CAP_RANGE = (256, 16384)


def token_cap(setting, model) -> int | None:
    """The tokens per forward pass for `micro_batch_tokens` = `setting` (a number, None
    for no cap, or "auto": activations near half the weights + gradients + AdamW state,
    4 bytes per weight and 12 more per trained one, in multiples of 256). Only blocks
    with trained weights keep activations for backward (`trainable_layers`)."""
    if setting != "auto":
        return setting
    config = getattr(model, "config", None)
    sizes = [getattr(config, k, None) for k in ("num_hidden_layers", "hidden_size", "vocab_size")]
    if None in sizes:
        return None  # not a transformers decoder: no estimate, no cap
    layers, hidden, vocab = sizes
    layers = _trained_blocks(model, layers)
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    per_token = 4 * (
        layers * (_HIDDEN_FLOATS * hidden + _INTERMEDIATE_FLOATS * intermediate) + vocab
    )
    weights = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = (4 * weights + 12 * trained) / 2
    low, high = _CAP_RANGE
    return int(min(high, max(low, budget / per_token)) // 256 * 256)


def _trained_blocks(model, layers: int) -> int:
    """How many of the `layers` transformer blocks have a weight that is trained."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return sum(any(p.requires_grad for p in block.parameters()) for block in module)
    return layers


class MemoryPlan:
    """The measures for one run: `enabled` is the config's `lean_memory`; `device` decides
    whether heap trimming applies (CPU only)."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.trim_heap = enabled and device.type == "cpu"
        self._params: list[torch.Tensor] = []
        self._touched: set[int] = set()
        self._hooks: list = []

    def order(self, groups: list[list], size_fn: Callable) -> list[list]:
        """`groups` of a step's forward passes, largest (by `size_fn` of its items) first
        when enabled (stable for equal sizes)."""
        if not self.enabled:
            return groups
        return sorted(groups, key=lambda group: -sum(size_fn(item) for item in group))

    def before_pass(self) -> None:
        if self.trim_heap:
            release_free_heap()

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Allocate the optimizer's state up front (when enabled) and start recording
        which parameters receive a gradient."""
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.enabled:
            allocate_state(optimizer)
        for param in self._params:
            self._hooks.append(param.register_post_accumulate_grad_hook(self._record))

    def _record(self, param: torch.Tensor) -> None:
        self._touched.add(id(param))

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()` seeing only the gradients this step produced; then clear
        them (zeroed in place when allocated up front, freed otherwise)."""
        fused = written_in_place()
        untouched = [
            (p, p.grad)
            for p in self._params
            if p.grad is not None and id(p) not in self._touched and id(p) not in fused
        ]
        for param, _ in untouched:
            param.grad = None
        optimizer.step()
        for param, grad in untouched:
            param.grad = grad
        optimizer.zero_grad(set_to_none=not self.enabled)
        self._touched.clear()
        written_in_place().clear()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def allocate_state(optimizer: torch.optim.AdamW) -> None:
    """Create every gradient and AdamW moment now, each kind in one flat buffer (see the
    module docstring). The values are exactly what AdamW would create on its first step
    (zero moments, step 0), so results are unchanged. A resumed optimizer already has its
    state and is left as it is (its gradients are still created here)."""
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
