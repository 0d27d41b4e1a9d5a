"""Padding-free packed attention that costs sum(L_i^2), not N^2, on any device.

A packed row holds several sequences back to back (`PackingCollator`). transformers
isolates them by building an (N, N) block-diagonal mask from the restarting
`position_ids` and running attention over the whole row: quadratic in the row's total
length, although all but the diagonal blocks are masked out. On a 2-core CPU this was
22% of a DPO step's time at 8 sequences per row (measured with torch.profiler), growing
with every sequence added.

`alignkit_packed` is registered as a transformers attention implementation. Given
`cu_seq_lens_q` (the row's cumulative sequence lengths, passed through the model's
forward as flash-attention kwargs) it runs causal scaled-dot-product attention on each
sequence separately. Called any other way (an attention mask, no packing) it is exactly
transformers' SDPA path, so a model set to it still generates and evaluates normally.

Callers pass an all-ones 2D attention mask with packed rows: that keeps transformers from
building the (N, N) packed mask (its mask builder then sees no padding and skips the
mask altogether), while the restarting `position_ids` still drive the rotary embeddings.

Shared prompts (`SharedPrefixCollator`): a span of the row may also attend to an
earlier span, its prompt (`alignkit_prefixes`, one entry per span): its queries see the
whole prompt and, causally, themselves; what the span's sequence would see alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "alignkit_packed"
_registered = False


def packed_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """transformers attention interface: query (B, Hq, N, D), key/value (B, Hkv, N, D)
    -> (attn_output (B, N, Hq, D), None)."""
    bounds = kwargs.get("cu_seq_lens_q")
    prefixes = kwargs.get("alignkit_prefixes")
    if bounds is None or attention_mask is not None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: share each key/value head with its group
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    edges = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
    prefixes = prefixes if prefixes is not None else [None] * (len(edges) - 1)
    outputs = []
    for start, end, prefix in zip(edges[:-1], edges[1:], prefixes, strict=True):
        if end <= start:
            continue
        span = slice(start, end)
        if prefix is None:
            outputs.append(
                F.scaled_dot_product_attention(
                    query[:, :, span],
                    key[:, :, span],
                    value[:, :, span],
                    is_causal=True,
                    dropout_p=dropout,
                    scale=scaling,
                )
            )
            continue
        # The span's queries see its prompt's keys, then their own causally (lower right).
        seen = slice(*prefix)
        own = end - start
        visible = torch.ones(
            own, prefix[1] - prefix[0] + own, dtype=torch.bool, device=query.device
        )
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, span],
                torch.cat([key[:, :, seen], key[:, :, span]], dim=2),
                torch.cat([value[:, :, seen], value[:, :, span]], dim=2),
                attn_mask=visible.tril(diagonal=prefix[1] - prefix[0]),
                dropout_p=dropout,
                scale=scaling,
            )
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    _registered = True


def uses_packed_attention(model) -> bool:
    """Whether a transformers model runs `alignkit_packed` attention."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == PACKED_ATTENTION


def use_packed_attention(model) -> bool:
    """Switch a transformers model from SDPA (or eager) to `alignkit_packed`; models on
    flash-attention keep it (it handles packed rows natively). Returns whether the model
    now uses it."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if uses_packed_attention(model):
        return True
    if getattr(config, "_attn_implementation", None) not in (None, "sdpa", "eager"):
        return False
    register()
    model.set_attn_implementation(PACKED_ATTENTION)
    return True


def packed_forward_kwargs(model, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> dict:
    """Extra decoder-forward arguments for one packed row (input_ids (1, N), cu_seqlens
    (S+1,)): with `alignkit_packed`, an all-ones mask and the sequence bounds (kept on
    the CPU: they are read as Python ints); otherwise nothing, and transformers builds
    its packed mask from the position ids."""
    if not uses_packed_attention(model):
        return {}
    return _span_kwargs(input_ids, cu_seqlens.detach().to("cpu", torch.int32))


def shared_prefix_forward_kwargs(
    model, input_ids: torch.Tensor, segments: list[int], layout: list[tuple]
) -> dict:
    """Decoder-forward arguments for a `SharedPrefixCollator` row: input_ids (1, N);
    segments: the G+1 group bounds; layout: (prefix_start, prefix_end, rest_start,
    rest_end) of each span that attends to a prompt. Needs `alignkit_packed`."""
    if not uses_packed_attention(model):
        raise ValueError(
            "shared-prompt rows need alignkit's packed attention, and this model uses "
            f"{model.config._attn_implementation!r}; set share_prompt=false"
        )
    rows = [tuple(row) for row in layout]
    prompt_of = {(rest_start, rest_end): (start, end) for start, end, rest_start, rest_end in rows}
    cuts = sorted(set(segments) | {c for row in rows for c in row[2:]})
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    return {
        **_span_kwargs(input_ids, torch.tensor(cuts, dtype=torch.int32)),
        "alignkit_prefixes": [prompt_of.get(span) for span in spans],
    }


def _span_kwargs(input_ids: torch.Tensor, bounds: torch.Tensor) -> dict:
    """An all-ones mask (so transformers builds none) and the row's span bounds (S+1,)
    int32 on the CPU, passed the way flash-attention kwargs are."""
    longest = int((bounds[1:] - bounds[:-1]).max())
    return {
        "attention_mask": torch.ones_like(input_ids),
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }
