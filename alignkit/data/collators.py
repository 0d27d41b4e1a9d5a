"""Batch encoded sequences into tensors.

Masks are built from each sequence's length, never from `input_ids == pad_token_id`:
SmolLM2's tokenizer uses `<|im_end|>` as both EOS and pad, and a mask derived from the
pad id would erase every trained EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.data.templating import IGNORE_INDEX

Example = dict  # {"input_ids": list[int], "labels": list[int] (optional)}


class PaddingCollator:
    """Pad a list of examples to one rectangular batch.

    Returns `input_ids` (B, T), `attention_mask` (B, T) with 1 on real tokens,
    `position_ids` (B, T) counting real tokens from 0, and `labels` (B, T) with
    `IGNORE_INDEX` on pads when the examples carry labels.
    `padding_side="right"` is for training, `"left"` for generation (every prompt then
    ends at the last column, where new tokens are appended).
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        has_labels = "labels" in examples[0]
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
            cols = (
                slice(0, length) if self.padding_side == "right" else slice(width - length, width)
            )
            input_ids[row, cols] = torch.tensor(example["input_ids"], dtype=torch.long)
            attention_mask[row, cols] = 1
            position_ids[row, cols] = torch.arange(length)
            if labels is not None:
                labels[row, cols] = torch.tensor(example["labels"], dtype=torch.long)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        }
        if labels is not None:
            out["labels"] = labels
        return out


class PackingCollator:
    """Concatenate examples into one row with no padding (padding-free packing).

    Returns `input_ids`, `position_ids`, `labels`: (1, N) with N the total length, and
    `cu_seqlens`: (B + 1,) int32 cumulative lengths, so sequence b occupies columns
    `cu_seqlens[b]:cu_seqlens[b+1]` (`split_packed` recovers per-sequence values).

    `position_ids` restart at 0 for every sequence. Hugging Face models turn such
    position ids into a block-diagonal causal mask when no `attention_mask` is passed and
    `use_cache=False`, so tokens never attend across sequences. The first label of every
    sequence is `IGNORE_INDEX`: after the model's one-token shift it would otherwise be
    predicted from the previous sequence's last token.
    """

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        ids, positions, labels, lengths = [], [], [], []
        for example in examples:
            length = len(example["input_ids"])
            if length == 0:
                raise ValueError("cannot pack an empty sequence")
            ids.extend(example["input_ids"])
            positions.extend(range(length))
            seq_labels = list(example.get("labels", example["input_ids"]))
            seq_labels[0] = IGNORE_INDEX
            labels.extend(seq_labels)
            lengths.append(length)
        cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths), 0)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "cu_seqlens": cu_seqlens,
        }


def split_packed(values: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Split a packed (1, N, ...) or (N, ...) tensor into its B sequences."""
    if values.dim() >= 2 and values.shape[0] == 1:
        values = values[0]
    bounds = cu_seqlens.tolist()
    return [values[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
