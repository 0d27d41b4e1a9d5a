"""Log-probabilities of target tokens without materialising `(B, T, V)` logits.

`token_logps(hidden, weight, bias, targets)` returns `log softmax(hidden @ weight.T + bias)`
at each target id. The output projection is applied to `chunk` tokens at a time; the
forward keeps only each token's log-sum-exp, and the backward recomputes one chunk of
logits at a time. Peak extra memory is `chunk x V` floats instead of `B x T x V`, for one
extra matmul in the backward pass.

`CausalLMLogps` wraps a Hugging Face causal LM so that its `forward` returns next-token
log-probs through this path; data-parallel wrappers (DDP) wrap it, which keeps their
gradient hooks in the forward they expect. In one process the training loop turns on its
`fuse_grad_accumulation`: the vocabulary matrix's gradients (head and input embedding)
are then added straight into `param.grad` (`alignkit.ops.grad_accumulation`).
"""

from __future__ import annotations

import torch
from torch import nn

from alignkit.ops.attention import (
    packed_forward_kwargs,
    shared_prefix_forward_kwargs,
    use_packed_attention,
)
from alignkit.ops.grad_accumulation import accumulation_target, fusable_embedding, fused_embedding
from alignkit.ops.modules import unwrap

IGNORE_INDEX = -100
# Logits elements per chunk. On CPU 4M floats (16 MiB) stays under glibc's mmap threshold,
# so chunks reuse heap memory instead of page-faulting fresh mappings (measured 20-35%
# faster than 32M on a 2-core CPU); GPUs prefer fewer, larger matmuls.
CHUNK_ELEMENTS = {"cpu": 1 << 22}
DEFAULT_CHUNK_ELEMENTS = 1 << 25


def default_chunk(vocab_size: int, device_type: str = "cpu") -> int:
    return max(1, CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS) // vocab_size)


class _ChunkedTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, fuse):
        # hidden: (N, H); weight: (V, H); bias: (V,) or None; targets: (N,) int64 in [0, V);
        # fuse: add the weight's gradient into weight.grad in place when it can
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        logps = torch.empty(hidden.shape[0], dtype=out_dtype, device=hidden.device)
        lse = torch.empty_like(logps)
        w = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            logits = _logits(hidden[start:end], w, bias)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            logps[start:end] = logits.gather(-1, targets[start:end, None])[:, 0] - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.weight = chunk, (weight if fuse else None)
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        w = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        acc = lse.dtype  # float32, or float64 for float64 inputs
        fused = (
            accumulation_target(ctx.weight, acc)
            if ctx.weight is not None and ctx.needs_input_grad[1]
            else None
        )
        grad_weight = fused
        if grad_weight is None and ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = (
            torch.zeros(weight.shape[0], dtype=acc, device=weight.device)
            if bias is not None and ctx.needs_input_grad[2]
            else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = start + ctx.chunk
            h = hidden[start:end]
            # d logp_t / d logits = onehot(target) - softmax(logits)
            # in place: one (chunk, V) buffer becomes the softmax, then -g * softmax
            grad_logits = _logits(h, w, bias).sub_(lse[start:end, None]).exp_()
            grad_logits.mul_(-grad_logps[start:end, None])
            grad_logits.scatter_add_(
                -1, targets[start:end, None], grad_logps[start:end, None].to(acc)
            )
            if grad_hidden is not None:
                grad_hidden[start:end] = (grad_logits.to(h.dtype) @ w).to(hidden.dtype)
            if grad_weight is not None:
                if h.dtype == acc:  # in place: no (V, H) temporary per chunk
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += grad_logits.T.to(h.dtype).matmul(h).to(acc)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        if fused is not None:  # already in weight.grad
            grad_weight = None
        elif grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int | None = None,
    fuse_grad_accumulation: bool = False,
) -> torch.Tensor:
    """Log-prob of each target under a linear output head, chunk by chunk.

    hidden: (..., H); weight: (V, H); bias: (V,) or None; targets: (...) ids in [0, V).
    Returns (...) log-probs in float32 (float64 for float64 inputs). Gradients flow to
    `hidden`, `weight` and `bias`; with `fuse_grad_accumulation` the weight's is added
    into an allocated `weight.grad` in place (`alignkit.ops.grad_accumulation`).
    """
    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    out = _ChunkedTokenLogps.apply(
        flat_hidden,
        weight,
        bias,
        flat_targets,
        chunk or default_chunk(weight.shape[0], hidden.device.type),
        fuse_grad_accumulation,
    )
    return out.reshape(shape)


def naive_token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference implementation: full log_softmax then gather. logits (..., V)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


class CausalLMLogps(nn.Module):
    """A causal LM whose forward returns next-token log-probs of `labels`.

    forward(input_ids (B, T), labels (B, T), attention_mask (B, T) | None,
            position_ids (B, T) | None, cu_seqlens (S+1,) | None)
        -> (logps (B, T-1), mask (B, T-1))

    `logps[:, t]` is log p(labels[:, t+1] | tokens <= t), zero where `mask` is False
    (labels == IGNORE_INDEX). With a packed row pass `position_ids` and `cu_seqlens` and
    no attention mask; the model is switched to `alignkit_packed` attention
    (`alignkit.ops.attention`), which attends within each sequence only.

    `fuse_grad_accumulation` (off by default; the single-process training loop turns it
    on): the output head's and a plain input embedding's weight gradients go straight into
    their allocated `.grad` (`alignkit.ops.grad_accumulation` says when that is safe).
    """

    def __init__(self, model: nn.Module, chunk: int | None = None, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.fuse_grad_accumulation = False
        # log-probs of softmax(logits / temperature): what a sampler at that temperature
        # drew from (RL ratios must compare the same distribution)
        self.temperature = temperature
        use_packed_attention(self.causal_lm)

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers model (inside a PEFT wrapper, if any)."""
        return unwrap(self.model)

    def forward(
        self,
        input_ids,
        labels=None,
        attention_mask=None,
        position_ids=None,
        cu_seqlens=None,
        *,
        shared_prefix=None,
        target_index=None,
        target_ids=None,
        **_ignored,
    ):
        """Per-position log-probs (see the class docstring), or, for a shared-prompt row
        (`SharedPrefixCollator`: `shared_prefix=(segments, layout)`, `target_index` (M,),
        `target_ids` (M,)), the (M,) log-probs of its targets and None."""
        lm = self.causal_lm
        inputs = {"attention_mask": attention_mask, "position_ids": position_ids}
        if shared_prefix is not None:
            inputs.update(shared_prefix_forward_kwargs(lm, input_ids, *shared_prefix))
        elif cu_seqlens is not None:
            inputs.update(packed_forward_kwargs(lm, input_ids, cu_seqlens))
        embed = lm.get_input_embeddings()
        if self.fuse_grad_accumulation and torch.is_grad_enabled() and fusable_embedding(embed):
            inputs["inputs_embeds"] = fused_embedding(embed, input_ids)
        else:
            inputs["input_ids"] = input_ids
        hidden = lm.get_decoder()(use_cache=False, **inputs).last_hidden_state
        if target_index is not None:
            return self._head_logps(hidden[0, target_index], target_ids), None
        (logps,), mask = self._label_logps(hidden, labels, (self.temperature,))
        return logps, mask

    def at_temperatures(
        self, input_ids: torch.Tensor, labels: torch.Tensor, temperatures: tuple[float, ...]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`forward` for padded rows at several temperatures from one decoder pass:
        ([logps (B, T-1) per temperature], mask (B, T-1)). Only the output head runs per
        temperature, so two temperatures cost little more than one."""
        hidden = self.causal_lm.get_decoder()(input_ids=input_ids, use_cache=False)
        return self._label_logps(hidden.last_hidden_state, labels, temperatures)

    def _label_logps(
        self, hidden: torch.Tensor, labels: torch.Tensor, temperatures: tuple[float, ...]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Next-token log-probs of `labels` (B, T) from the decoder's `hidden` (B, T, H), one
        (B, T-1) tensor per temperature, zero where the mask (B, T-1) is False."""
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        targets = targets.masked_fill(~mask, 0)
        hidden = hidden[:, :-1]
        return [self._head_logps(hidden, targets, t) * mask for t in temperatures], mask

    def _head_logps(
        self, hidden: torch.Tensor, targets: torch.Tensor, temperature: float | None = None
    ) -> torch.Tensor:
        """log softmax(head(hidden) / temperature) at `targets` (default: this module's
        temperature): hidden (..., H) -> (...)."""
        head = self.causal_lm.get_output_embeddings()
        temperature = self.temperature if temperature is None else temperature
        scale = 1.0 / temperature if temperature not in (0, 1) else None
        if type(head) is nn.Linear:
            bias = head.bias
            if scale is not None:  # (h W + b) / t == (h / t) W + b / t
                hidden, bias = hidden * scale, (bias * scale if bias is not None else None)
            return token_logps(
                hidden, head.weight, targets, bias, self.chunk, self.fuse_grad_accumulation
            )
        # an adapted or unusual head: fall back to full logits
        logits = head(hidden)
        return naive_token_logps(logits * scale if scale is not None else logits, targets)


def sequence_stats(module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (summed target log-prob, target count), each (S,), for any collated
    batch: padded, packed, or shared-prompt (S = its sequences, in input order)."""
    if "target_index" in batch:
        logps, _ = module(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            shared_prefix=(batch["segments"], batch["layout"]),
            target_index=batch["target_index"],
            target_ids=batch["target_ids"],
        )
        owner, count = batch["target_sequence"], batch["num_sequences"]
        sums = logps.new_zeros(count).index_add(0, owner, logps)
        counts = torch.zeros(count, device=logps.device).index_add(0, owner, torch.ones_like(logps))
        return sums, counts
    logps, mask, cu_seqlens = batch_token_logps(module, batch)
    ones = torch.ones_like(logps)
    return reduce_sequences(logps, mask, cu_seqlens), reduce_sequences(ones, mask, cu_seqlens)


def sequence_logps(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sequence log-probs from (summed target log-prob, target count): the one place
    sum vs mean is decided, for the policy (`sequence_stats`) and for cached reference
    tables of the same two numbers alike, so both sides of a log-ratio are reduced the same way.

    sums, counts: (...) of the same shape. `reduction="sum"` returns `sums`; `"mean"` the
    per-token mean `sums / counts` (0 for a sequence with no targets, not NaN).
    """
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / counts.clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def batch_token_logps(module: nn.Module, batch: dict):
    """Run a `CausalLMLogps` (or its DDP wrapper) on a collated batch.

    Returns (logps, mask, cu_seqlens): cu_seqlens is None for padded batches. Packed rows
    need their restarting `position_ids`. Right-padded rows need neither attention mask
    nor positions: under causal attention no real token sees the pads after it, so the
    results are identical, and SDPA can take its fused causal path.
    """
    packed = "cu_seqlens" in batch
    logps, mask = module(
        input_ids=batch["input_ids"],
        labels=batch["labels"],
        position_ids=batch["position_ids"] if packed else None,
        cu_seqlens=batch["cu_seqlens"] if packed else None,
    )
    return logps, mask, batch["cu_seqlens"] if packed else None


def reduce_sequences(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Per-sequence log-probs from per-token ones, reduced by `sequence_logps`.

    Padded: token_logps, mask (B, T-1) -> (B,). Packed: token_logps, mask (1, N-1) with
    `cu_seqlens` (S+1,) -> (S,); position t belongs to the sequence holding token t+1's
    predecessor, i.e. the sequence that starts at or before t. `reduction="mean"` divides
    by the number of target tokens.
    """
    values = token_logps * mask
    counts = mask.to(values.dtype)
    if cu_seqlens is None:
        sums, sizes = values.sum(-1), counts.sum(-1)
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths)[
            :-1
        ]
        sums = values.new_zeros(len(lengths)).index_add(0, owner, values[0])
        sizes = counts.new_zeros(len(lengths)).index_add(0, owner, counts[0])
    return sequence_logps(sums, sizes, reduction)


def set_grad_accumulation_fusion(module: nn.Module, enabled: bool) -> None:
    """Turn `fuse_grad_accumulation` on or off in every `CausalLMLogps` inside `module`."""
    for sub in module.modules():
        if isinstance(sub, CausalLMLogps):
            sub.fuse_grad_accumulation = enabled
