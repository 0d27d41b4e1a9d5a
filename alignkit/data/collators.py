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


def shared_prefix_length(sequences: Sequence[Example]) -> int:
    """Tokens at the start that every sequence has in common and trains on in none (the
    shared prompt), leaving each sequence at least one token of its own."""
    first = sequences[0]
    limit = min(len(s["input_ids"]) for s in sequences) - 1
    length = 0
    while length < limit and all(
        s["input_ids"][length] == first["input_ids"][length]
        and s.get("labels", s["input_ids"])[length] == IGNORE_INDEX
        for s in sequences
    ):
        length += 1
    return length


class SharedPrefixCollator:
    """Pack groups of sequences that share a prompt into one row, the prompt once per group.

    A group (e.g. a preference pair: chosen, rejected) becomes `[prompt, rest_0, rest_1,
    ...]`. `rest_0` continues the prompt as in a plain packed row; every later `rest_i`
    takes its positions from the end of the prompt and attends to the prompt and to
    itself only (`alignkit.ops.attention`), so each sequence's log-probs are those of the
    sequence run alone, while the prompt's tokens are computed once instead of once per
    sequence. On chat preference data the prompt is typically a quarter to a half of each
    sequence.

    Takes a list of groups (each a list of examples with `input_ids` and `labels`).
    Returns:
      input_ids, position_ids: (1, N);
      segments: G + 1 cumulative bounds of the groups' columns (a list of ints: read on
        the host, never moved to a device);
      layout: one (prefix_start, prefix_end, rest_start, rest_end) tuple of columns per
        `rest_i` with i >= 1 (a list, like `segments`);
      target_index: (M,) the column whose hidden state predicts each target token;
      target_ids: (M,) the target token ids;
      target_sequence: (M,) which sequence, in input order over all groups, each target
        belongs to; num_sequences: the number of sequences (an int).
    """

    def __call__(self, groups: Sequence[Sequence[Example]]) -> dict:
        if not groups:
            raise ValueError("cannot collate an empty list of groups")
        ids: list[int] = []
        positions: list[int] = []
        layout: list[tuple[int, int, int, int]] = []
        segments = [0]
        target_index: list[int] = []
        target_ids: list[int] = []
        target_sequence: list[int] = []
        sequence = 0
        for group in groups:
            prefix = shared_prefix_length(group)
            start = len(ids)
            ids.extend(group[0]["input_ids"][:prefix])
            positions.extend(range(prefix))
            for i, example in enumerate(group):
                tokens = example["input_ids"]
                labels = example.get("labels", tokens)
                rest_start = len(ids)
                ids.extend(tokens[prefix:])
                positions.extend(range(prefix, len(tokens)))
                if i > 0:
                    layout.append((start, start + prefix, rest_start, len(ids)))
                # column of token t: start + t in the prompt, rest_start + t - prefix after it
                for t in range(1, len(tokens)):
                    if labels[t] == IGNORE_INDEX:
                        continue
                    before = t - 1
                    column = start + before if before < prefix else rest_start + before - prefix
                    target_index.append(column)
                    target_ids.append(tokens[t])
                    target_sequence.append(sequence)
                sequence += 1
            segments.append(len(ids))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "segments": segments,
            "layout": layout,
            "target_index": torch.tensor(target_index, dtype=torch.long),
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "target_sequence": torch.tensor(target_sequence, dtype=torch.long),
            "num_sequences": sequence,
        }


def batch_to(batch: dict, device) -> dict:
    """A collated batch with its tensors on `device`; host-side values (the lists and ints
    that `SharedPrefixCollator` returns) stay as they are; nested batches move too."""
    return {
        k: v.to(device) if torch.is_tensor(v) else batch_to(v, device) if isinstance(v, dict) else v
        for k, v in batch.items()
    }
