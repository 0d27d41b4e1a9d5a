"""KV-cached decoders: the part of sampling that runs the model.

The sampler (`rollout.sampling.sample`) drives a decoder through three calls:
`prefill(prompts) -> logits` for every prompt's next token, `step(tokens) -> logits` to
append one token per row, and `keep(rows)` to drop rows whose completion has ended (so
finished rows stop costing compute). Logits are (B, V) float32 for the B rows kept.

Two decoders implement it:

- `LlamaDecoder`, for Llama-family models (Llama, Qwen2, Mistral without a sliding
  window): it runs the model's own modules with a preallocated KV cache, prefills all
  prompts packed into one sequence, each prompt attending causally to itself only (no
  compute is spent on padding, which for long-tailed prompt lengths is most of a padded
  batch), and on the CPU in float32 multiplies by weights pre-packed for oneDNN (about
  1.5x faster than plain `F.linear` for the few-row products of a decode step; profile
  in docs/benchmarks.md). The arithmetic follows transformers' Llama code op for op, so
  logits agree with the model's forward to float rounding (tested).
- `ModelDecoder`, for any other causal LM: the model's forward with its DynamicCache,
  prompts left-padded.

`open_decoder` picks the first that supports the model.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.data.collators import PaddingCollator
from alignkit.ops.modules import unwrap

# Tokens per packed prefill forward: bounds the activations of one prefill pass.
PREFILL_TOKENS = 2048
# A prefix shared by all prompts (a chat template's system prompt) is prefilled once when
# that saves at least this many token positions; below it, the extra pass costs more.
SHARED_PREFIX_MIN_SAVING = 32


class Decoder(Protocol):
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def keep(self, rows: torch.Tensor) -> None: ...


def open_decoder(model: nn.Module, *, max_new_tokens: int, pad_id: int) -> Decoder:
    """The fastest decoder that supports `model` (in eval mode, no gradients)."""
    if LlamaDecoder.supports(model):
        return LlamaDecoder(model, max_new_tokens=max_new_tokens)
    return ModelDecoder(model, pad_id=pad_id)


class ModelDecoder:
    """Any transformers causal LM: its own forward, DynamicCache, left-padded prompts
    (position ids count real tokens only, so padding does not shift a prompt)."""

    def __init__(self, model: nn.Module, *, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns)
        parameters = inspect.signature(unwrap(model).forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        batch = PaddingCollator(self.pad_id, padding_side="left")(
            [{"input_ids": p} for p in prompts]
        )
        self.attention = batch["attention_mask"].to(self.device)
        self.positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        return self._forward(batch["input_ids"].to(self.device))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], 1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(tokens[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attention = self.attention[rows]
        self.positions = self.positions[rows]

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.attention,
            position_ids=self.positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: self.cache},
        )
        self.cache = out.past_key_values
        return out.logits[:, -1].float()


# model_type -> does this config use only what LlamaDecoder computes?
_LLAMA_FAMILY = {
    "llama": lambda config: True,
    "qwen2": lambda config: not getattr(config, "use_sliding_window", False),
    "mistral": lambda config: getattr(config, "sliding_window", None) is None,
}
# Rotary variants whose frequencies are fixed at load time (the `inv_freq` buffer);
# "dynamic" and "longrope" change them with the sequence length.
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


class LlamaDecoder:
    """Llama-family decoding with a preallocated cache (see the module docstring).

    Cache layout: keys/values (B, H_kv, S, D) per layer with S = longest prompt +
    max_new_tokens; prompts are right-aligned at column P (the longest prompt's length),
    so every row writes its next token at the same column and `valid` (B, S) marks the
    real entries."""

    def __init__(self, model: nn.Module, *, max_new_tokens: int):
        base = unwrap(model)
        self.max_new_tokens = max_new_tokens
        self.inner = base.model
        self.lm_head = Projection(base.lm_head)
        self.layers = [_Layer(layer) for layer in self.inner.layers]
        self.projections = [p for layer in self.layers for p in layer.projections()]
        self.projections.append(self.lm_head)
        self.final_norm = _rms_norm(self.inner.norm)
        rotary = self.inner.rotary_emb
        self.inv_freq = rotary.inv_freq
        self.rotary_scale = getattr(rotary, "attention_scaling", 1.0)
        attention = self.inner.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.heads = base.config.num_attention_heads
        self.kv_heads = base.config.num_key_value_heads
        self.scale = attention.scaling
        self.weight = self.inner.embed_tokens.weight

    @staticmethod
    def supports(model: nn.Module) -> bool:
        base = unwrap(model)
        config = getattr(base, "config", None)
        inner = getattr(base, "model", None)
        rope_type = getattr(getattr(inner, "rotary_emb", None), "rope_type", None)
        return (
            config is not None
            and _LLAMA_FAMILY.get(config.model_type, lambda c: False)(config)
            and getattr(config, "hidden_act", None) == "silu"
            and rope_type in _STATIC_ROPE
            and hasattr(base, "lm_head")
        )

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        device, dtype = self.weight.device, self.weight.dtype
        rows, longest = len(prompts), max(len(p) for p in prompts)
        columns = longest + self.max_new_tokens
        shape = (rows, self.kv_heads, columns, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        self.valid = torch.arange(columns, device=device)[None, :] >= (longest - lengths)[:, None]
        self.valid[:, longest:] = False
        self.positions = lengths.clone()
        self.column = longest
        for projection in self.projections:
            projection.unpack()  # prefill products have many rows: plain F.linear is fastest
        # K samples of one prompt are prefilled once, their cache rows copied after
        owner = {}
        source = [owner.setdefault(tuple(p), r) for r, p in enumerate(prompts)]
        distinct = sorted(owner.values())
        plan = _Prefill(prompts, distinct, longest)
        prefix = self._prefill_prefix(plan) if plan.shared else None
        last = []
        for chunk in _chunks([prompts[r][plan.shared :] for r in distinct], PREFILL_TOKENS):
            last.append(self._prefill_chunk(plan, [distinct[i] for i in chunk], prefix))
        hidden = torch.cat(last)
        duplicates = [r for r in range(rows) if source[r] != r]
        if duplicates:
            to = torch.tensor(duplicates, device=device)
            frm = torch.tensor([source[r] for r in duplicates], device=device)
            for cache in (*self.keys, *self.values):
                cache[to] = cache[frm]
        for projection in self.projections:
            projection.pack(rows)
        logits = self.lm_head(self.final_norm(hidden)).float()
        order = {r: i for i, r in enumerate(distinct)}
        return logits[torch.tensor([order[source[r]] for r in range(rows)], device=device)]

    def _prefill_prefix(self, plan: _Prefill) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The tokens every prompt starts with, run once as a (1, C) sequence; writes
        them into every prompt's cache row and returns each layer's keys/values
        (1, H_kv, C, D) for the prompts' remaining tokens to attend to."""
        device = self.weight.device
        ids = torch.tensor(plan.prompts[plan.rows[0]][: plan.shared], device=device)
        kept = []

        def store(index, key, value):
            for r in plan.rows:
                begin = plan.start(r)
                self.keys[index][r, :, begin : begin + plan.shared] = key[0]
                self.values[index][r, :, begin : begin + plan.shared] = value[0]
            kept.append((key, value))
            return key, value

        def attend(index, q, k, v):
            return self._attention(q, k, v, None)

        positions = torch.arange(plan.shared, device=device)[None]
        self._layers(self.inner.embed_tokens(ids)[None], positions, attend, store)
        return kept

    def _prefill_chunk(self, plan: _Prefill, rows: list[int], prefix) -> torch.Tensor:
        """The prompts of `rows`, after their shared prefix, packed into one (1, T)
        sequence; fills their cache rows and returns the last position's hidden state per
        prompt, (len(rows), hidden)."""
        device = self.weight.device
        prompts, shared = plan.prompts, plan.shared
        ids = torch.tensor([t for r in rows for t in prompts[r][shared:]], device=device)
        positions = torch.cat([torch.arange(shared, len(prompts[r]), device=device) for r in rows])
        spans, start = [], 0
        for r in rows:
            spans.append((r, start, start + len(prompts[r]) - shared))
            start += len(prompts[r]) - shared

        def store(index, key, value):
            for r, begin, end in spans:
                self.keys[index][r, :, plan.start(r) + shared : plan.longest] = key[0, :, begin:end]
                self.values[index][r, :, plan.start(r) + shared : plan.longest] = value[
                    0, :, begin:end
                ]
            return key, value

        def attend(index, q, k, v):
            # each prompt attends causally to itself (and the shared prefix) only: one
            # small product per prompt instead of a (T, T) block-diagonal mask that is
            # mostly zeros
            before = None if prefix is None else prefix[index]
            return torch.cat(
                [
                    self._own_attention(q[:, :, b:e], k[:, :, b:e], v[:, :, b:e], before)
                    for _, b, e in spans
                ],
                dim=2,
            )

        hidden = self._layers(self.inner.embed_tokens(ids)[None], positions[None], attend, store)
        ends = torch.tensor([end - 1 for _, _, end in spans], device=device)
        return hidden[0, ends]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        column = self.column
        if column >= self.valid.shape[1]:
            raise RuntimeError(f"more than max_new_tokens={self.max_new_tokens} steps")
        self.valid[:, column] = True
        mask = self.valid[:, None, None, : column + 1]

        def attend(index, q, k, v):
            return self._attention(q, k, v, mask)

        def store(index, key, value):
            self.keys[index][:, :, column] = key[:, :, 0]
            self.values[index][:, :, column] = value[:, :, 0]
            return self.keys[index][:, :, : column + 1], self.values[index][:, :, : column + 1]

        hidden = self._layers(
            self.inner.embed_tokens(tokens)[:, None], self.positions[:, None], attend, store
        )
        self.column += 1
        self.positions = self.positions + 1
        return self.lm_head(self.final_norm(hidden[:, 0])).float()

    def keep(self, rows: torch.Tensor) -> None:
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.valid = self.valid[rows]
        self.positions = self.positions[rows]

    def _own_attention(self, q, k, v, before):
        """One prompt's tokens (1, H, L, D) attending causally to their own keys/values
        (1, H_kv, L, D) and, when `before` holds the shared prefix's (keys, values)
        (1, H_kv, C, D) each, to all of those first."""
        if before is None:
            return self._attention(q, k, v, None)
        prefix = before[0].shape[2]
        return self._attention(
            q,
            torch.cat((before[0], k), dim=2),
            torch.cat((before[1], v), dim=2),
            _after_prefix_mask(q.shape[2], prefix, q.device),
        )

    def _attention(self, q, k, v, mask):
        """q (N, H, T, D), k/v (N, H_kv, S, D), mask (N, 1, T, S) bool or None for causal."""
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            scale=self.scale,
            enable_gqa=self.heads != self.kv_heads,
        )

    def _layers(self, x, positions, attend, store) -> torch.Tensor:
        """x (N, T, hidden) at `positions` (N, T). store(layer, keys, values) caches this
        pass's keys/values (N, H_kv, T, D) and returns those to attend to; attend(layer, q,
        k, v) -> (N, H, T, D). Returns the final layer's output (N, T, hidden)."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * self.rotary_scale).to(x.dtype)[:, None]
        sin = (angles.sin() * self.rotary_scale).to(x.dtype)[:, None]
        n, t = x.shape[:2]
        for index, layer in enumerate(self.layers):
            h = layer.input_norm(x)
            q, k, v = layer.qkv(h)
            q = q.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)
            k = k.reshape(n, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.reshape(n, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k, v = store(index, k, v)
            attended = attend(index, q, k, v)
            x = x + layer.o(attended.transpose(1, 2).reshape(n, t, -1))
            h = layer.post_norm(x)
            gate, up = layer.gate_up(h)
            x = x + layer.down(F.silu(gate) * up)
        return x


class _Prefill:
    """Where each prompt goes in the right-aligned cache, and how many leading tokens
    all the distinct prompts share (`shared`: prefilled once; 0 when too few to pay
    for the extra pass, and always leaving every prompt at least one token of its own)."""

    def __init__(self, prompts: list[list[int]], rows: list[int], longest: int):
        self.prompts, self.rows, self.longest = prompts, rows, longest
        firsts = [prompts[r] for r in rows]
        shared = min(len(p) for p in firsts) - 1
        for i in range(shared):
            if any(p[i] != firsts[0][i] for p in firsts[1:]):
                shared = i
                break
        self.shared = shared if shared * (len(rows) - 1) >= SHARED_PREFIX_MIN_SAVING else 0

    def start(self, row: int) -> int:
        """The cache column of the row's first prompt token."""
        return self.longest - len(self.prompts[row])


def _after_prefix_mask(length: int, prefix: int, device) -> torch.Tensor:
    """(length, prefix + length) bool: each of a prompt's own tokens sees the shared
    prefix and its own tokens up to itself."""
    return torch.ones(length, prefix + length, dtype=torch.bool, device=device).tril(prefix)


def _rms_norm(module: nn.Module):
    """The Llama RMSNorm `module` as one fused kernel: weight * x / sqrt(mean(x^2) + eps),
    the same formula (equal outputs checked in tests)."""
    weight, eps = module.weight, module.variance_epsilon
    return lambda x: F.rms_norm(x, weight.shape, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _chunks(prompts: list[list[int]], budget: int) -> list[range]:
    """Consecutive prompt ranges of at most `budget` tokens each (a longer prompt alone)."""
    chunks, start, used = [], 0, 0
    for i, prompt in enumerate(prompts):
        if used and used + len(prompt) > budget:
            chunks.append(range(start, i))
            start, used = i, 0
        used += len(prompt)
    chunks.append(range(start, len(prompts)))
    return chunks


class _Layer:
    """One decoder layer's modules under short names; the query/key/value and the
    gate/up projections are grouped so that, packed, each group is one product."""

    def __init__(self, layer: nn.Module):
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = _rms_norm(layer.input_layernorm)
        self.post_norm = _rms_norm(layer.post_attention_layernorm)
        self.qkv = Projection(attention.q_proj, attention.k_proj, attention.v_proj)
        self.o = Projection(attention.o_proj)
        self.gate_up = Projection(mlp.gate_proj, mlp.up_proj)
        self.down = Projection(mlp.down_proj)

    def projections(self) -> tuple[Projection, ...]:
        return (self.qkv, self.o, self.gate_up, self.down)


class Projection:
    """Linear layers applied to the same input, returning one output per layer (or the
    output itself for a single layer).

    On the CPU in float32 they can run as one product on a oneDNN-packed copy of their
    stacked weights: for decode steps (few rows per product) the packed layout streams
    the weights once instead of re-blocking them on every call. Anything else (LoRA
    layers, GPU, autocast, half precision) calls the modules unchanged."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.sizes = [m.out_features if isinstance(m, nn.Linear) else None for m in modules]
        self.packed = None
        self.bias = None

    def pack(self, rows: int) -> None:
        weights = [getattr(m, "weight", None) for m in self.modules]
        if not (
            all(type(m) is nn.Linear for m in self.modules)
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
            and not torch.is_autocast_enabled("cpu")
            and _mkldnn_linear_available()
        ):
            return
        stacked = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(stacked.detach(), rows)
        if any(m.bias is not None for m in self.modules):
            self.bias = torch.cat(
                [
                    m.bias.detach() if m.bias is not None else weights[0].new_zeros(size)
                    for m, size in zip(self.modules, self.sizes, strict=True)
                ]
            )

    def unpack(self) -> None:
        self.packed = self.bias = None

    def __call__(self, x: torch.Tensor):
        if self.packed is None:
            outputs = tuple(m(x) for m in self.modules)
        else:
            joint = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            outputs = joint.split(self.sizes, dim=-1)
        return outputs if len(outputs) > 1 else outputs[0]


def _mkldnn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )
